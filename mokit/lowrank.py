"""Low-rank factorisation: a layer's weight replaced by the product of two thinner ones (truncated SVD).

A Linear W (out x in) becomes Linear(in -> r) then Linear(r -> out) with W ~ U_r S_r V_r^T, the best rank-r
approximation in the Frobenius norm (Eckart-Young): r * (in + out) weights instead of in * out. A Conv2d
k_h x k_w becomes a k_h x 1 conv into r channels then a 1 x k_w conv out of them (Jaderberg et al. 2014's
spatially separable scheme, by SVD of the weight viewed as (in * k_h) x (out * k_w)). The rank comes from a
retained energy (the share of sum(sigma^2) kept) or from a parameter budget; `factorize` returns a new model
and leaves the original as it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from . import validate
from .prune import prunable_layers

__all__ = ["factorizable", "factorize", "max_rank", "rank_for_energy", "rank_for_params", "singular_values",
           "split_conv", "svd_linear"]


def _check_layer(layer) -> nn.Linear | nn.Conv2d:
    if isinstance(layer, nn.Linear):
        return layer
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.dilation != (1, 1) or not isinstance(layer.padding, tuple):
            raise ValueError(f"only plain convs factorise (groups=1, dilation=1, numeric padding), got {layer}")
        return layer
    raise ValueError(f"layer must be an nn.Linear or an nn.Conv2d, got {type(layer).__name__}")


def _matrix(layer: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """The weight as the matrix whose SVD factorises it: out x in (Linear), (in*kh) x (out*kw) (Conv2d)."""
    w = layer.weight.detach().float()
    if isinstance(layer, nn.Linear):
        return w
    o, i, kh, kw = w.shape
    return w.permute(1, 2, 0, 3).reshape(i * kh, o * kw)


def max_rank(layer: nn.Linear | nn.Conv2d) -> int:
    """The largest rank the layer's weight has room for: min of its matrix's two sides."""
    return min(_matrix(_check_layer(layer)).shape)


def singular_values(layer: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """The singular values of the layer's weight matrix, largest first."""
    return torch.linalg.svdvals(_matrix(_check_layer(layer)))


def rank_for_energy(layer: nn.Linear | nn.Conv2d, energy: float) -> int:
    """The smallest rank that keeps `energy` (0 < energy <= 1) of sum(sigma^2)."""
    energy = validate.number("energy", energy, low=0.0, high=1.0, low_open=True, what="the share of sum(sigma^2) kept")
    s2 = singular_values(layer) ** 2
    kept = torch.cumsum(s2, 0) / s2.sum().clamp_min(1e-30)
    return min(int((kept < energy - 1e-9).sum().item()) + 1, len(s2))


def _factor_params(layer: nn.Linear | nn.Conv2d, rank: int) -> int:
    """Weights of the two factors at `rank` (biases aside)."""
    if isinstance(layer, nn.Linear):
        return rank * (layer.in_features + layer.out_features)
    o, i, kh, kw = layer.weight.shape
    return rank * (i * kh + o * kw)


def rank_for_params(layer: nn.Linear | nn.Conv2d, ratio: float) -> int:
    """The largest rank (at least 1) whose two factors hold at most `ratio` of the layer's weights."""
    ratio = validate.number("ratio", ratio, low=0.0, high=1.0, low_open=True, what="the share of weights kept")
    per_rank = _factor_params(_check_layer(layer), 1)
    return max(1, min(max_rank(layer), math.floor(ratio * layer.weight.numel() / per_rank)))


def _check_rank(layer: nn.Linear | nn.Conv2d, rank, name: str) -> int:
    return validate.integer(f"rank of layer {name!r}", rank, low=1, high=max_rank(layer),
                            what=f"at most the layer's {tuple(_matrix(layer).shape)} weight matrix allows")


def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Linear(in -> rank, no bias) then Linear(rank -> out, the layer's bias): W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)."""
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"svd_linear takes an nn.Linear, got {type(layer).__name__}")
    rank = _check_rank(layer, rank, "linear")
    u, s, vh = torch.linalg.svd(_matrix(layer), full_matrices=False)
    root = s[:rank].sqrt()
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(root[:, None] * vh[:rank])
        second.weight.copy_(u[:, :rank] * root)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(layer.weight.device, layer.weight.dtype)


def split_conv(layer: nn.Conv2d, rank: int) -> nn.Sequential:
    """A kh x kw conv as a kh x 1 conv (in -> rank) then a 1 x kw conv (rank -> out, the layer's bias)."""
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"split_conv takes an nn.Conv2d, got {type(layer).__name__}")
    _check_layer(layer)
    rank = _check_rank(layer, rank, "conv")
    o, i, kh, kw = layer.weight.shape
    u, s, vh = torch.linalg.svd(_matrix(layer), full_matrices=False)      # rows (i, kh), columns (o, kw)
    root = s[:rank].sqrt()
    (sh, sw), (ph, pw) = layer.stride, cast("tuple[int, int]", layer.padding)     # _check_layer: numeric
    vertical = nn.Conv2d(i, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), bias=False)
    horizontal = nn.Conv2d(rank, o, (1, kw), stride=(1, sw), padding=(0, pw), bias=layer.bias is not None)
    with torch.no_grad():
        vertical.weight.copy_((u[:, :rank] * root).reshape(i, kh, rank).permute(2, 0, 1)[..., None])
        horizontal.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, o, kw).permute(1, 0, 2)[:, :, None, :])
        if layer.bias is not None and horizontal.bias is not None:
            horizontal.bias.copy_(layer.bias)
    return nn.Sequential(vertical, horizontal).to(layer.weight.device, layer.weight.dtype)


def factorizable(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """The layers factorize can replace, by name: every Linear and plain Conv2d but the network's last layer."""
    layers = prunable_layers(model)
    last = list(layers)[-1] if layers else None
    return {k: m for k, m in layers.items() if k != last and (isinstance(m, nn.Linear) or (
        m.groups == 1 and m.dilation == (1, 1) and isinstance(m.padding, tuple) and m.kernel_size != (1, 1)))}


def _budget_plan(model: nn.Module, layers: dict, ratio: float) -> tuple[dict[str, int], int]:
    """The ranks of rank_for_params(ratio) for the layers that shrink at them, and the model's parameters then."""
    plan = {k: rank_for_params(m, ratio) for k, m in layers.items()}
    plan = {k: r for k, r in plan.items() if _factor_params(layers[k], r) < layers[k].weight.numel()}
    total = sum(p.numel() for p in model.parameters())
    return plan, total + sum(_factor_params(layers[k], r) - layers[k].weight.numel() for k, r in plan.items())


def _plan_for_total(model: nn.Module, layers: dict, total) -> dict[str, int]:
    """The ranks of the largest shared ratio whose factorised model has at most `total` parameters."""
    total = validate.integer("total", total, low=1, what="parameters of the factorised model")
    lo, hi = 1e-9, 1.0                   # the parameter count only grows with the ratio: bisect on it
    fewest = _budget_plan(model, layers, lo)[1]
    if fewest > total:
        raise ValueError(f"total={total} parameters is out of reach: at rank 1 everywhere the model keeps {fewest}")
    for _ in range(40):
        mid = (lo + hi) / 2
        if _budget_plan(model, layers, mid)[1] <= total:
            lo = mid
        else:
            hi = mid
    return _budget_plan(model, layers, lo)[0]


def factorize(model: nn.Module, ranks: Mapping[str, int] | None = None, *, energy: float | None = None,
              params: float | None = None, total: int | None = None) -> nn.Module:
    """A copy of `model` with layers factorised: ranks {name: rank}, or one rule for every factorizable layer,
    energy (the share of sum(sigma^2) kept), params (the share of each layer's weights kept) or total (the
    most parameters the whole model may keep: one share for every layer, the largest that fits, e.g. the
    count of a pruned model to compare with). Under a rule, only layers that come out smaller are replaced."""
    given = [k for k, v in (("ranks", ranks), ("energy", energy), ("params", params), ("total", total))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of ranks, energy, params or total, got {given or 'none'}")
    layers, plan = factorizable(model), {}
    if ranks is not None:
        if not isinstance(ranks, Mapping) or not ranks:
            raise ValueError(f"ranks must be a non-empty dict {{layer name: rank}}, got {ranks!r}")
        if unknown := sorted(set(ranks) - set(layers)):
            raise ValueError(f"no factorizable layer named {unknown}; valid: {sorted(layers)}")
        plan = {k: _check_rank(layers[k], r, k) for k, r in ranks.items()}
    elif energy is not None:
        plan = {k: rank_for_energy(m, energy) for k, m in layers.items()}
    elif params is not None:
        plan = {k: rank_for_params(m, params) for k, m in layers.items()}
    else:
        plan = _plan_for_total(model, layers, total)
    new = copy.deepcopy(model)
    for name, rank in plan.items():
        layer = layers[name]
        if ranks is None and _factor_params(layer, rank) >= layer.weight.numel():
            continue                                            # no smaller at this rank: keep it whole
        parent, _, child = name.rpartition(".")
        owner = new.get_submodule(parent) if parent else new
        setattr(owner, child, svd_linear(layer, rank) if isinstance(layer, nn.Linear) else split_conv(layer, rank))
    return new
