"""One-shot NAS: a supernet whose subnets share weights, trained once, then searched without training.

    net = Supernet(in_shape=(1, 28, 28))                 # elastic depth, width and kernel per stage
    train(net, data, epochs=3, on_step=SubnetSampler(net, rule="sandwich"))   # a new subnet every step
    sub = net.extract(config)                            # a plain nn.Sequential with the inherited weights
    recalibrate_bn(sub, calib)                           # BatchNorm statistics of *this* subnet
    evaluate(sub, val)                                   # no retraining

A subnet config is a flat dict of decisions: d0, w0, k0, d1, w1, k1, ... (depth, width and kernel size of
each stage), so mokit.search's strategies search it unchanged (`net.space()`).

Weight sharing (OFA, Cai et al. 2020; SPOS, Guo et al. 2020): every stage keeps its widest, deepest,
largest-kernel weights; a subnet uses
  - depth d: the first d blocks of the stage (blocks after the first are residual, so skipping one is
    skipping an x + f(x));
  - width w: the first w output channels of each conv (and the first input channels the previous layer
    kept);
  - kernel k: the centre k x k of the largest kernel.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .data import TensorData
from .search import choice, validate_space

__all__ = ["SAMPLING_RULES", "Residual", "SubnetSampler", "Supernet", "center_crop", "recalibrate_bn"]


def center_crop(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The centre k x k of a conv weight (out, in, K, K): the smaller kernel that shares the larger's weights."""
    K = weight.shape[-1]
    if not 1 <= k <= K or (K - k) % 2:
        raise ValueError(f"kernel {k} cannot be cut from the centre of a {K}x{K} kernel (odd, 1..{K}, same parity)")
    lo = (K - k) // 2
    return weight[..., lo:lo + k, lo:lo + k]


class Residual(nn.Sequential):
    """x + body(x): a block that a shallower subnet can leave out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class _ElasticConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU at its largest; forward(x, width, kernel) slices both."""

    def __init__(self, c_in: int, c_out: int, k_max: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k_max, padding=k_max // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor, width: int, kernel: int) -> torch.Tensor:
        w = center_crop(self.conv.weight[:width, :x.shape[1]], kernel)     # (width, C_in, k, k)
        y = F.conv2d(x, w, padding=kernel // 2)
        bn, factor = self.bn, self.bn.momentum
        if self.training and factor is None:                    # momentum None: a cumulative average, as in
            tracked = bn.num_batches_tracked                    # nn.BatchNorm2d
            assert tracked is not None                          # track_running_stats is always on here
            tracked += 1
            factor = 1.0 / float(tracked)
        # the slices of the running buffers are views: training updates the first `width` entries in place
        y = F.batch_norm(y, bn.running_mean[:width], bn.running_var[:width],  # type: ignore[index]
                         bn.weight[:width], bn.bias[:width], self.training, factor or 0.0, bn.eps)
        return F.relu(y)

    def extract(self, c_in: int, width: int, kernel: int) -> list[nn.Module]:
        """The same layer as plain modules of the subnet's size, weights and statistics copied."""
        conv = nn.Conv2d(c_in, width, kernel, padding=kernel // 2, bias=False)
        bn = nn.BatchNorm2d(width)
        with torch.no_grad():
            conv.weight.copy_(center_crop(self.conv.weight[:width, :c_in], kernel))
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(self.bn, name)[:width])
        return [conv, bn, nn.ReLU()]


def _options(name: str, values, low: int, high: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of integers, got {values!r}")
    out = tuple(sorted({validate.integer(name, v, low=low, high=high) for v in values}))
    return out


class Supernet(nn.Module):
    """Stages of up to max(depths) conv blocks, each stage followed by 2x2 max pooling; a global average
    pool and a linear head. `active` is the subnet the forward pass runs (set it with `set`)."""

    def __init__(self, in_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, *,
                 widths: Sequence[Sequence[int]] = ((4, 8, 16), (8, 16, 32), (16, 32, 64)),
                 depths: Sequence[int] = (1, 2), kernels: Sequence[int] = (3, 5)):
        super().__init__()
        from .models import check_in_shape, check_num_classes

        self.in_shape = check_in_shape(in_shape)
        self.num_classes = check_num_classes(num_classes)
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or not widths:
            raise ValueError(f"widths must be a non-empty sequence of per-stage width options, got {widths!r}")
        self.widths = tuple(_options(f"widths[{s}]", w, 1, 1024) for s, w in enumerate(widths))
        self.depths = _options("depths", depths, 1, 8)
        self.kernels = _options("kernels", kernels, 1, 9)
        if any(k % 2 == 0 for k in self.kernels) or any((self.kernels[-1] - k) % 2 for k in self.kernels):
            raise ValueError(f"kernels must be odd (a centre to crop around), got {self.kernels}")
        side = min(self.in_shape[1:])
        if side >> len(self.widths) < 1:
            raise ValueError(f"{len(self.widths)} stages halve a {side}-pixel input below one pixel; use fewer stages")
        c_in, k_max = self.in_shape[0], self.kernels[-1]
        self.stages: list[nn.ModuleList] = nn.ModuleList()  # type: ignore[assignment]  # stages[s][b]: a block
        for w in self.widths:
            self.stages.append(nn.ModuleList(
                _ElasticConvBN(c_in if b == 0 else w[-1], w[-1], k_max) for b in range(self.depths[-1])))
            c_in = w[-1]
        self.head = nn.Linear(c_in, self.num_classes)
        self.active = self.largest()

    # -- the space of subnets -------------------------------------------------------------------
    def space(self) -> dict:
        """The subnets as a mokit.search space: d{s}, w{s}, k{s} for every stage s."""
        space: dict = {}
        for s, w in enumerate(self.widths):
            space |= {f"d{s}": choice(*self.depths), f"w{s}": choice(*w), f"k{s}": choice(*self.kernels)}
        return validate_space(space)

    def largest(self) -> dict:
        return {k: p.options[-1] for k, p in self.space().items()}

    def smallest(self) -> dict:
        return {k: p.options[0] for k, p in self.space().items()}

    def check_config(self, config: dict) -> dict:
        """config, checked: exactly the space's decisions, each one of its options (else ValueError)."""
        if not isinstance(config, dict):
            raise TypeError(f"a subnet config must be a dict of decisions, got {type(config).__name__}")
        space = self.space()
        if set(config) != set(space):
            raise ValueError(f"a subnet config needs exactly the decisions {list(space)}; got {sorted(config)}")
        for k, p in space.items():
            if config[k] not in p.options:
                raise ValueError(f"subnet decision {k}={config[k]!r} is outside this supernet; allowed: "
                                 f"{list(p.options)}")
        return {k: config[k] for k in space}

    def set(self, config: dict) -> Supernet:
        """Make `config` the subnet the forward pass runs."""
        self.active = self.check_config(config)
        return self

    # -- forward and extraction -----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:       # x: (B, C, H, W)
        c = self.active
        for s, stage in enumerate(self.stages):
            for b in range(c[f"d{s}"]):
                y = stage[b](x, c[f"w{s}"], c[f"k{s}"])
                x = x + y if b else y                            # blocks after the first are residual
            x = F.max_pool2d(x, 2)                               # (B, w_s, H / 2^(s+1), W / 2^(s+1))
        x = x.mean(dim=(2, 3))                                   # (B, w_last)
        return F.linear(x, self.head.weight[:, :x.shape[1]], self.head.bias)

    def extract(self, config: dict | None = None) -> nn.Sequential:
        """The subnet `config` (default: active) as a plain nn.Sequential of real, smaller layers that
        inherit this supernet's weights and BatchNorm statistics (copies: training one leaves the other)."""
        c = self.check_config(self.active if config is None else config)
        layers: list[nn.Module] = []
        c_in = self.in_shape[0]
        for s, stage in enumerate(self.stages):
            w, k = c[f"w{s}"], c[f"k{s}"]
            for b in range(c[f"d{s}"]):
                block = cast(_ElasticConvBN, stage[b]).extract(c_in, w, k)
                layers += block if b == 0 else [Residual(*block)]
                c_in = w
            layers.append(nn.MaxPool2d(2))
        head = nn.Linear(c_in, self.num_classes)
        with torch.no_grad():
            head.weight.copy_(self.head.weight[:, :c_in])
            head.bias.copy_(self.head.bias)
        device = self.head.weight.device
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).to(device)


SAMPLING_RULES = ("uniform", "sandwich")


class SubnetSampler:
    """on_step hook for train(): after every optimizer step, the supernet runs a new subnet.

    uniform (SPOS): a subnet drawn uniformly from the space every step.
    sandwich (BigNAS / OFA's rule, spread over steps): largest, smallest, then two uniform draws, in turn, so
    the extremes of the space are trained as often as any two random subnets."""

    def __init__(self, net: Supernet, *, rule: str = "sandwich", seed: int = 0):
        if not isinstance(net, Supernet):
            raise TypeError(f"SubnetSampler needs a Supernet, got {type(net).__name__}")
        self.net, self.rule = net, validate.choice("rule", rule, SAMPLING_RULES)
        self.rng, self.space, self.calls = random.Random(validate.integer("seed", seed)), net.space(), 0
        self.counts: dict[str, int] = {"largest": 0, "smallest": 0, "random": 0}
        self.next()

    def next(self) -> dict:
        turn = self.calls % 4 if self.rule == "sandwich" else 2
        self.calls += 1
        kind = ("largest", "smallest", "random", "random")[turn]
        self.counts[kind] += 1
        config = (self.net.largest() if kind == "largest" else self.net.smallest() if kind == "smallest"
                  else {k: self.rng.choice(p.options) for k, p in self.space.items()})
        self.net.set(config)
        return config

    def __call__(self, model: nn.Module, info) -> None:
        self.next()


def recalibrate_bn(model: nn.Module, data: TensorData | Iterable, *, batch_size: int = 256,
                   max_batches: int | None = None) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as the plain average over `data`
    (train-mode forward passes, no gradients, no weight changes). Returns the examples seen."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        raise ValueError("recalibrate_bn: the model has no BatchNorm layer to recalibrate")
    batch_size = validate.integer("batch_size", batch_size, low=1)
    if max_batches is not None:
        max_batches = validate.integer("max_batches", max_batches, low=1)
    if isinstance(data, TensorData):
        if len(data) == 0:
            raise ValueError("recalibrate_bn needs at least one example, got an empty TensorData")
        batches: Iterable = ((data.x[i:i + batch_size], None) for i in range(0, len(data), batch_size))
    else:
        batches = data
    saved = [(m, m.momentum) for m in bns]
    was_training, seen = model.training, 0
    device = next(model.parameters()).device
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None                                   # None: a cumulative (plain) average
        model.train()
        with torch.no_grad():
            for n, (xb, _) in enumerate(batches):
                if max_batches is not None and n >= max_batches:
                    break
                model(xb.to(device))
                seen += len(xb)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    if not seen:
        raise ValueError("recalibrate_bn saw no batch: data is empty")
    return seen
