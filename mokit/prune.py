"""Pruning, unstructured and structured, and growing networks back (the inverse of pruning).

    masks = prune_global(model, 0.92)             # zero the 92% smallest weights, model-wide
    train(model, data, epochs=2, on_step=masks)   # masks stay applied while fine-tuning
    small = prune_channels(model, 0.5)            # a genuinely smaller nn.Sequential
    wide = widen(model, 0, 400)                   # Net2Net: same function, more neurons

Definitions used throughout: sparsity = #zeros / #elements of the prunable weights
(Linear and Conv2d weights that train; biases and BatchNorm are not counted, and a frozen weight -
the CIFAR net's data-set whitening conv - is a fixed preprocessing step, never pruned),
kept fraction = 1 - sparsity. Masks live on their weight's device: nothing is copied per step.
Importance criteria are callables `importance(module) -> scores shaped like module.weight`;
a larger score means "keep".
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .data import DataOrBatches, TensorData
from .metrics import Table
from .models import Scale
from .train import StepInfo, check_data, check_seed, check_train_args, evaluate, train

PRUNABLE = (nn.Linear, nn.Conv2d)

# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def check_sparsity(sparsity) -> float:
    """sparsity as a float in [0, 1), else ValueError naming the value."""
    return validate.number("sparsity", sparsity, low=0, high=1, high_open=True, what="fraction of weights removed")


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


def prunable_layers(model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
    """name -> module for every Linear and Conv2d of `model` whose weight trains (requires_grad);
    frozen ones (a fixed whitening conv) are left alone. ValueError if there are none."""
    _check_model(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE) and m.weight.requires_grad}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no trainable Linear or Conv2d layers to prune (empty model?)")
    return layers


def _layer_names(layers, all_layers: Mapping[str, nn.Module]) -> list[str]:
    """`layers` (None: all of all_layers) as a list of distinct prunable layer names, else ValueError."""
    valid = ", ".join(all_layers)
    if layers is None:
        return list(all_layers)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ValueError(f"layers must be a list of layer names (or None for every one), got {layers!r}; "
                         f"layers: {valid}")
    names = list(layers)
    if not names:
        raise ValueError(f"layers is empty; name at least one of: {valid} (or pass None for every one)")
    unknown = [n for n in names if not isinstance(n, str) or n not in all_layers]
    if unknown:
        raise ValueError(f"no prunable layer named {unknown}; layers: {valid}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"layers names {twice} more than once; name each layer once")
    return names


# ---------------------------------------------------------------------------------------------
# Importance criteria: module -> one score per weight (bigger = more important)
# ---------------------------------------------------------------------------------------------


def l1_importance(module: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """|w| - magnitude pruning (Han et al. 2015)."""
    return module.weight.detach().abs()


def l2_importance(module: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """w^2 - per weight it ranks like |w|; summed per channel it is the squared L2 norm."""
    return module.weight.detach() ** 2


def taylor_importance(module: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """|w * dL/dw| - the first-order Taylor estimate of the loss change when w is zeroed
    (Molchanov et al. 2017). Needs gradients: call `compute_gradients` first."""
    if module.weight.grad is None:
        raise ValueError("taylor importance needs gradients: call compute_gradients(model, data) first")
    return (module.weight.detach() * module.weight.grad).abs()


def random_importance(module: nn.Linear | nn.Conv2d) -> torch.Tensor:
    """Uniform random scores - the baseline every criterion must beat (seed with seed_everything)."""
    return torch.rand_like(module.weight, dtype=torch.float32)


IMPORTANCE: dict[str, Callable[[nn.Linear | nn.Conv2d], torch.Tensor]] = {
    "l1": l1_importance, "l2": l2_importance, "taylor": taylor_importance, "random": random_importance,
}


def get_importance(importance: str | Callable) -> Callable[[nn.Linear | nn.Conv2d], torch.Tensor]:
    """The criterion called `importance`, or `importance` itself when it is a callable."""
    if callable(importance):
        return importance
    try:
        return validate.choice("importance", importance, IMPORTANCE)
    except ValueError as e:
        raise ValueError(f"{e} (or pass a callable module -> scores)") from None


def compute_gradients(model: nn.Module, data: TensorData, *, batches: int = 10,
                      batch_size: int = 256) -> nn.Module:
    """Accumulate dL/dw of the cross-entropy over `batches` batches of `data` into .grad (for Taylor)."""
    _check_model(model)
    check_data(data)
    batches = validate.integer("batches", batches, low=1)
    batch_size = validate.integer("batch_size", batch_size, low=1)
    p = next(iter(model.parameters()), None)
    if p is None:
        raise ValueError(f"{type(model).__name__} has no parameters to take gradients of")
    device = p.device
    model.zero_grad(set_to_none=True)
    model.eval()                                     # BN statistics stay as they are
    for i, (xb, yb) in enumerate(data.batches(batch_size, seed=0)):
        if i == batches:
            break
        F.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
    return model


# ---------------------------------------------------------------------------------------------
# Unstructured pruning: masks
# ---------------------------------------------------------------------------------------------


def magnitude_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """0/1 mask zeroing the k = round(sparsity * n) smallest scores (ties as torch.nn.utils.prune)."""
    k = round(check_sparsity(sparsity) * scores.numel())
    mask = torch.ones(scores.shape, dtype=torch.float32, device=scores.device)   # contiguous, whatever the
    if k:                                                                        # scores' layout (channels_last)
        mask.view(-1)[torch.topk(scores.flatten(), k, largest=False).indices] = 0
    return mask


def threshold_mask(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """0/1 mask keeping scores > threshold (Han et al. prune |w| <= quality * std(w))."""
    return (scores > check_threshold(threshold)).float()


def check_threshold(threshold) -> float:
    """threshold as a finite float >= 0 (NaN would prune every weight), else ValueError."""
    return validate.number("threshold", threshold, low=0, what="scores at or below it are pruned")


class Masks(dict):
    """layer name -> 0/1 mask of that layer's weight. The state that must outlive one call.

    `masks.apply(model)` zeroes the pruned weights; passed as `on_step=masks` to `train` it
    re-applies them after every optimizer step, so pruned weights stay zero while training.
    """

    def check(self, model: nn.Module) -> dict[str, nn.Linear | nn.Conv2d]:
        """name -> layer for every mask: ValueError / TypeError naming a mask that fits no Linear or
        Conv2d of `model` (no such layer, not a tensor, another shape), before any weight changes."""
        _check_model(model)
        layers = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
        unknown = [n for n in self if n not in layers]
        if unknown:
            raise ValueError(f"no Linear or Conv2d layer named {unknown} in {type(model).__name__} to mask; "
                             f"its layers: {', '.join(layers)}")
        for name, mask in self.items():
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask {name!r} must be a tensor shaped like the layer's weight, "
                                f"got {type(mask).__name__}")
            if mask.shape != layers[name].weight.shape:
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)} but layer {name!r}'s weight "
                                 f"has shape {tuple(layers[name].weight.shape)}")
        return layers

    def apply(self, model: nn.Module) -> nn.Module:
        modules = self.check(model)            # every mask fits before the first weight changes
        with torch.no_grad():
            for name, mask in self.items():
                w = modules[name].weight
                if mask.device != w.device or mask.dtype != w.dtype:   # the model moved: move the mask once
                    mask = self[name] = mask.to(w.device, w.dtype)
                w.mul_(mask)
        return model

    def __call__(self, model: nn.Module, info: StepInfo | None = None) -> None:
        self.apply(model)

    @property
    def kept_fraction(self) -> float:
        """Surviving weights / all masked weights."""
        total = sum(m.numel() for m in self.values())
        return sum(float(m.sum()) for m in self.values()) / max(total, 1)


def prune_layerwise(model: nn.Module, sparsity: float | dict[str, float], *,
                    importance: str | Callable = "l1") -> Masks:
    """Prune every layer to the same sparsity (or sparsity[name] per layer); returns the Masks."""
    layers = prunable_layers(model)
    per_layer = sparsity if isinstance(sparsity, dict) else {n: sparsity for n in layers}
    unknown = set(per_layer) - set(layers)
    if unknown:
        raise ValueError(f"no prunable layer named {sorted(unknown)}; layers: {', '.join(layers)}")
    for s in per_layer.values():
        check_sparsity(s)
    score = get_importance(importance)
    masks = Masks({n: magnitude_mask(score(layers[n]), s).to(layers[n].weight) for n, s in per_layer.items()})
    masks.apply(model)
    return masks


def prune_global(model: nn.Module, sparsity: float, *, importance: str | Callable = "l1",
                 layers: Sequence[str] | None = None) -> Masks:
    """One threshold for all layers: zero the round(sparsity * N) lowest scores over all N weights."""
    check_sparsity(sparsity)
    all_layers = prunable_layers(model)
    names = _layer_names(layers, all_layers)
    score = get_importance(importance)
    scores = [score(all_layers[n]) for n in names]
    device = scores[0].device                              # one threshold needs the scores in one place
    flat = magnitude_mask(torch.cat([s.flatten().float().to(device) for s in scores]), sparsity)
    masks, start = Masks(), 0
    for n, s in zip(names, scores):
        w = all_layers[n].weight                           # each mask on its own weight's device
        masks[n] = flat[start:start + s.numel()].view_as(s).to(w.device, w.dtype)
        start += s.numel()
    masks.apply(model)
    return masks


def prune_threshold(model: nn.Module, threshold: float, *, importance: str | Callable = "l1") -> Masks:
    """Zero every weight whose score is <= threshold."""
    check_threshold(threshold)
    score = get_importance(importance)
    masks = Masks({n: threshold_mask(score(m), threshold).to(m.weight) for n, m in prunable_layers(model).items()})
    masks.apply(model)
    return masks


def prune_random(model: nn.Module, sparsity: float, *, seed: int = 0) -> Masks:
    """The baseline: each layer loses a random `sparsity` fraction of its weights.

    The scores come from a local CPU generator seeded with `seed` (the same masks on any device),
    so the caller's CPU and CUDA random states are left exactly as they were."""
    check_sparsity(sparsity)
    g = torch.Generator().manual_seed(check_seed(seed))

    def scores(module: nn.Linear | nn.Conv2d) -> torch.Tensor:
        return torch.rand(module.weight.shape, generator=g).to(module.weight.device)
    return prune_layerwise(model, sparsity, importance=scores)


def sparsity_report(model: nn.Module) -> Table:
    """Per prunable layer: weights, nonzeros, sparsity % = 100 * #zeros / #weights; then a total."""
    rows, total, nonzero = Table(), 0, 0
    for name, m in prunable_layers(model).items():
        n, nz = m.weight.numel(), int((m.weight != 0).sum())
        rows.append({"layer": name, "type": type(m).__name__, "shape": "x".join(map(str, m.weight.shape)),
                     "weights": n, "nonzeros": nz, "sparsity %": 100.0 * (1 - nz / n)})
        total, nonzero = total + n, nonzero + nz
    rows.append({"layer": "total", "weights": total, "nonzeros": nonzero,
                 "sparsity %": 100.0 * (1 - nonzero / total)})
    return rows


def weight_sparsity(model: nn.Module) -> float:
    """#zero weights / #weights over the prunable layers."""
    layers = prunable_layers(model).values()
    return sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)


# ---------------------------------------------------------------------------------------------
# N:M semi-structured sparsity (2:4: the pattern sparse tensor cores run)
# ---------------------------------------------------------------------------------------------

def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """0/1 mask keeping the n highest scores of every m consecutive weights along each output row's
    inputs (a Linear row, or a conv filter flattened over in_channels x kh x kw): the N:M pattern.

    The row length must be a multiple of m. Ties keep the earlier weight. Same shape as `scores`.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() < 2:
        raise ValueError(f"scores must be a weight-shaped tensor (out, in, ...), got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    m = validate.integer("m", m, low=1, high=64, what="the group size")
    n = validate.integer("n", n, low=1, high=m, what=f"weights kept per group of m={m}")
    rows = scores.reshape(scores.shape[0], -1).float()
    if rows.shape[1] % m:
        raise ValueError(f"each output row has {rows.shape[1]} inputs, not a multiple of m={m}: "
                         f"an N:M pattern needs whole groups")
    groups = rows.reshape(rows.shape[0], -1, m)
    keep = groups.topk(n, dim=-1, sorted=False).indices
    mask = torch.zeros_like(groups).scatter_(-1, keep, 1.0)
    return mask.reshape(scores.shape)


def prune_nm(model: nn.Module, n: int = 2, m: int = 4, *, importance: str | Callable = "l1",
             layers: Sequence[str] | None = None) -> Masks:
    """N:M masks (default 2:4, half the weights) for `layers` (None: every prunable layer whose rows
    split into groups of m), applied to the model; train with on_step=masks to keep the pattern."""
    all_layers = prunable_layers(model)
    if layers is None:
        layers = [k for k, mod in all_layers.items() if mod.weight[0].numel() % m == 0]
        if not layers:
            raise ValueError(f"no layer of {type(model).__name__} has rows that split into groups of m={m}")
    names = _layer_names(layers, all_layers)
    score = get_importance(importance)
    masks = Masks({k: nm_mask(score(all_layers[k]), n, m).to(all_layers[k].weight.dtype) for k in names})
    masks.apply(model)
    return masks


# ---------------------------------------------------------------------------------------------
# Schedules: one-shot, iterative, gradual (AGP)
# ---------------------------------------------------------------------------------------------


def agp_sparsity(t: float, sparsity: float, initial: float = 0.0) -> float:
    """Zhu & Gupta 2017: s(t) = s_f + (s_i - s_f) * (1 - t)^3 for progress t in [0, 1] (clipped)."""
    t = min(max(validate.number("t", t, what="training progress"), 0.0), 1.0)
    sparsity = check_sparsity(sparsity)
    initial = validate.number("initial", initial, low=0, high=1, high_open=True, what="starting sparsity")
    return sparsity + (initial - sparsity) * (1 - t) ** 3


class GradualPruning:
    """on_step hook: raise sparsity along the AGP curve between progress `begin` and `end`,
    re-pruning every `every` steps (global magnitude by default); masks stay applied in between."""

    def __init__(self, sparsity: float, *, begin: float = 0.0, end: float = 0.7, every: int = 20,
                 prune: Callable[..., Masks] = prune_global):
        self.sparsity = check_sparsity(sparsity)
        self.begin = validate.number("begin", begin, low=0, high=1, what="training progress where pruning starts")
        self.end = validate.number("end", end, low=0, high=1, what="training progress where it reaches sparsity")
        if not self.begin < self.end:
            raise ValueError(f"need 0 <= begin < end <= 1, got begin={begin}, end={end}")
        self.every = validate.integer("every", every, low=1, what="steps between re-prunings")
        self.prune = _check_prune(prune)
        self.masks, self.current = Masks(), 0.0

    def __call__(self, model: nn.Module, info: StepInfo) -> None:
        t = (info.step / info.total_steps - self.begin) / (self.end - self.begin)
        target = agp_sparsity(t, self.sparsity) if t > 0 else 0.0
        due = info.step % self.every == 0 or (t >= 1 and self.current < self.sparsity)
        if due and target > self.current:
            self.masks, self.current = self.prune(model, target), target
        else:
            self.masks.apply(model)


def _check_prune(prune) -> Callable[..., Masks]:
    if not callable(prune):
        raise TypeError(f"prune must be a callable (model, sparsity) -> Masks such as prune_global, got {prune!r}")
    return prune


def _check_fine_tune(model: nn.Module, data, epochs, train_kw: dict) -> None:
    """The train() arguments of a prune-then-train run, checked before the first weight is pruned."""
    if "on_step" in train_kw:
        raise ValueError("on_step is taken: the pruning passes its masks to train() as on_step; "
                         "to run your own hook too, "
                         "train() yourself with on_step=lambda m, i: (masks(m, i), hook(m, i))")
    check_train_args(model, data, epochs=epochs, **train_kw)


def prune_oneshot(model: nn.Module, data: DataOrBatches, sparsity: float, *, epochs: int,
                  prune: Callable[..., Masks] = prune_global, **train_kw) -> Masks:
    """Prune once to `sparsity`, then fine-tune `epochs` epochs with the masks held.
    Every argument, train()'s included, is checked before the pruning."""
    check_sparsity(sparsity)
    _check_prune(prune)
    _check_fine_tune(model, data, epochs, train_kw)
    masks = prune(model, sparsity)
    train(model, data, epochs=epochs, on_step=masks, **train_kw)
    return masks


def prune_iterative(model: nn.Module, data: DataOrBatches, sparsity: float, *, rounds: int, epochs: int,
                    prune: Callable[..., Masks] = prune_global, **train_kw) -> Masks:
    """`rounds` prune -> retrain cycles; round r keeps (1 - sparsity)^(r / rounds) of the weights,
    and the `epochs` are shared out evenly (the same budget as one-shot)."""
    check_sparsity(sparsity)
    _check_prune(prune)
    epochs = validate.integer("epochs", epochs, low=1, what="passes over the data, shared out over the rounds")
    rounds = validate.integer("rounds", rounds, low=1, high=epochs,
                              what=f"each round trains >= 1 of the {epochs} epochs")
    _check_fine_tune(model, data, epochs, train_kw)
    masks = Masks()
    for r in range(1, rounds + 1):
        masks = prune(model, 1 - (1 - sparsity) ** (r / rounds))
        share = epochs // rounds + (1 if r <= epochs % rounds else 0)
        train(model, data, epochs=share, on_step=masks, **train_kw)
    return masks


def prune_gradual(model: nn.Module, data: DataOrBatches, sparsity: float, *, epochs: int, begin: float = 0.0,
                  end: float = 0.7, every: int = 20, prune: Callable[..., Masks] = prune_global,
                  **train_kw) -> Masks:
    """Train `epochs` epochs while sparsity follows the cubic AGP schedule up to `sparsity`."""
    hook = GradualPruning(sparsity, begin=begin, end=end, every=every, prune=prune)
    _check_fine_tune(model, data, epochs, train_kw)
    train(model, data, epochs=epochs, on_step=hook, **train_kw)
    return hook.masks


# ---------------------------------------------------------------------------------------------
# Sensitivity scan and lottery tickets
# ---------------------------------------------------------------------------------------------


def sensitivity_scan(model: nn.Module, data: TensorData, sparsities: Sequence[float], *,
                     importance: str | Callable = "l1",
                     layers: Sequence[str] | None = None) -> dict[str, dict[float, float]]:
    """accuracy[layer][sparsity]: each layer pruned alone (the others dense), then restored.

    layers: the names to scan (default: every prunable layer). Sparsity 0 is the dense model,
    evaluated once."""
    if isinstance(sparsities, (str, bytes)) or not isinstance(sparsities, Iterable):
        raise ValueError(f"sparsities must be a list of fractions in [0, 1), got {sparsities!r}")
    sparsities = list(sparsities)
    for s in sparsities:
        check_sparsity(s)
    all_layers = prunable_layers(model)
    names = _layer_names(layers, all_layers)
    score = get_importance(importance)
    check_data(data)
    dense = evaluate(model, data)["accuracy"] if 0 in sparsities else None
    out: dict[str, dict[float, float]] = {}
    for name in names:
        m = all_layers[name]
        original, scores = m.weight.detach().clone(), score(m)
        out[name] = {}
        for s in sparsities:
            if s == 0:
                assert dense is not None                     # evaluated above: 0 is in sparsities
                out[name][s] = dense
                continue
            with torch.no_grad():
                m.weight.mul_(magnitude_mask(scores, s).to(m.weight))
            try:
                out[name][s] = evaluate(model, data)["accuracy"]
            finally:                                         # the layer is restored whatever happens
                with torch.no_grad():
                    m.weight.copy_(original)
    return out


def _check_scan(scan, sizes) -> None:
    """A sensitivity scan {layer: {sparsity: accuracy}} and sizes {layer: weights} that fit together."""
    if not isinstance(scan, dict):
        raise TypeError(f"scan must be a dict layer -> {{sparsity: accuracy}} (sensitivity_scan's result), "
                        f"got {type(scan).__name__}")
    if not isinstance(sizes, dict):
        raise TypeError(f"sizes must be a dict layer -> number of weights, got {type(sizes).__name__}")
    if not scan:
        raise ValueError("scan is empty: scan at least one layer")
    if set(scan) != set(sizes):
        raise ValueError(f"scan and sizes must name the same layers, got {sorted(map(str, scan))} and "
                         f"{sorted(map(str, sizes))}")
    for name, curve in scan.items():
        validate.integer(f"sizes[{name!r}]", sizes[name], low=1, what="weights in the layer")
        if not isinstance(curve, dict):
            raise TypeError(f"the scan of layer {name!r} must be a dict sparsity -> accuracy, "
                            f"got {type(curve).__name__}")
        for s, acc in curve.items():
            check_sparsity(s)
            validate.number(f"the accuracy of layer {name!r} at sparsity {s}", acc)


def allocate_sparsity(scan: dict[str, dict[float, float]], sizes: dict[str, int],
                      sparsity: float) -> dict[str, float]:
    """Per-layer sparsities chosen from a sensitivity scan, reaching `sparsity` over the scanned weights.

    The rule - cheapest weights first. Each layer's scan curve, as drop(s) = acc(0) - acc(s) (made
    non-decreasing, then replaced by its lower convex hull), is cut into steps s_j -> s_(j+1); a step
    removes n_layer * (s_(j+1) - s_j) weights and costs drop(s_(j+1)) - drop(s_j) points, so its
    price is points per weight removed. Steps are bought in order of price until
    sum_l n_l * s_l = sparsity * sum_l n_l (the last one in part, linearly). Were the layers' drops
    additive, this would minimise the total drop (a fractional knapsack). Each scan needs sparsity 0.
    """
    target = check_sparsity(sparsity)
    _check_scan(scan, sizes)
    steps = []                                               # (price, layer, s_from, s_to)
    for name, curve in scan.items():
        if 0 not in curve:
            raise ValueError(f"the scan of layer {name!r} needs sparsity 0 (the dense model), has {sorted(curve)}")
        points, worst = [], 0.0
        for s in sorted(curve):
            worst = max(worst, curve[0] - curve[s])          # drop, non-decreasing in s
            points.append((s, worst))
        hull: list[tuple[float, float]] = []                 # lower convex hull: prices rise along the layer
        for pt in points:
            while len(hull) >= 2 and ((hull[-1][1] - hull[-2][1]) * (pt[0] - hull[-2][0])
                                      >= (pt[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0])):
                hull.pop()
            hull.append(pt)
        for (s0, d0), (s1, d1) in pairwise(hull):
            steps.append(((d1 - d0) / (sizes[name] * (s1 - s0)), name, s0, s1))
    total = sum(sizes.values())
    reachable = sum(sizes[n] * max(scan[n]) for n in scan) / total
    if target > reachable + 1e-12:
        raise ValueError(f"sparsity {target} is beyond the scan: at most {reachable:.4f} with every layer at "
                         f"its largest scanned sparsity; scan higher sparsities")
    chosen = dict.fromkeys(scan, 0.0)
    need = target * total                                    # weights still to remove
    for _, name, s0, s1 in sorted(steps, key=lambda st: (st[0], st[2])):   # a layer's steps in order
        if need <= 1e-9 * total:                             # reached (up to rounding)
            break
        take = min(s1 - s0, need / sizes[name])
        chosen[name] = s0 + take
        need -= take * sizes[name]
    return chosen


def rewind(model: nn.Module, masks: Masks, init_state: dict) -> nn.Module:
    """Lottery ticket (Frankle & Carbin 2019): surviving weights back to their initial values."""
    masks = _as_masks(masks)
    masks.check(model)
    _check_state(model, init_state, "init_state")
    model.load_state_dict(init_state)
    return masks.apply(model)


def _as_masks(masks) -> Masks:
    if isinstance(masks, Masks):
        return masks
    if isinstance(masks, dict):
        return Masks(masks)
    raise TypeError(f"masks must be a Masks (or a dict layer name -> 0/1 mask), got {type(masks).__name__}")


def _check_state(model: nn.Module, state, name: str) -> None:
    """`state` fits model.load_state_dict exactly (same names and shapes), checked before loading:
    load_state_dict copies what fits and only then raises, leaving a half-loaded model."""
    if not isinstance(state, dict):
        raise TypeError(f"{name} must be a state dict (model.state_dict()), got {type(state).__name__}")
    own = model.state_dict()
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or extra:
        raise ValueError(f"{name} does not fit {type(model).__name__}: missing {missing}, unexpected {extra}")
    for k, v in own.items():
        if not isinstance(state[k], torch.Tensor) or state[k].shape != v.shape:
            got = tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__
            raise ValueError(f"{name}[{k!r}] must be a tensor of shape {tuple(v.shape)}, got {got}")


def reinit(model: nn.Module, masks: Masks, *, seed: int) -> nn.Module:
    """The control: the same mask on a fresh random initialisation (seeded).

    The fresh values are drawn on a CPU copy from the CPU generator alone, seeded with `seed`
    inside fork_rng, then copied in: the caller's CPU and CUDA random states are untouched and
    the initialisation is the same on any device."""
    seed = check_seed(seed)
    masks = _as_masks(masks)
    masks.check(model)
    fresh = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)   # the CPU generator only (torch.manual_seed seeds CUDA too)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                cast(Callable[[], None], m.reset_parameters)()   # the layer's own method (not typed on Module)
    with torch.no_grad():
        for target, source in zip(model.state_dict().values(), fresh.state_dict().values()):
            target.copy_(source)
    return masks.apply(model)


# ---------------------------------------------------------------------------------------------
# Structured pruning and growing: re-wire a Sequential chain
# ---------------------------------------------------------------------------------------------

# Layers a unit's index passes through unchanged (BatchNorm is sliced along with its producer).
PASS_THROUGH = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.ELU, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d,
                nn.Identity, Scale)


def _chain(model: nn.Module) -> list[tuple[int, int]]:
    """(producer, consumer) positions of consecutive Linear/Conv2d layers in a Sequential."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"structured pruning re-wires nn.Sequential chains; got {type(model).__name__} "
                        f"(for residual networks use remove_blocks)")
    layers = list(model)
    if not any(isinstance(m, PRUNABLE) for m in layers):
        raise ValueError("model has no Linear or Conv2d layers to prune (empty model?)")
    for m in layers:
        if not isinstance(m, PRUNABLE + PASS_THROUGH):
            raise TypeError(f"structured pruning cannot handle a {type(m).__name__} layer; it handles "
                            f"{', '.join(t.__name__ for t in PRUNABLE + PASS_THROUGH)}")
    pos = [i for i, m in enumerate(layers) if isinstance(m, PRUNABLE)]
    return list(pairwise(pos))


def _units(m: nn.Module) -> int:
    """Output units of a chain position's layer, a Linear or a Conv2d (_chain checked which)."""
    return m.out_features if isinstance(m, nn.Linear) else cast(nn.Conv2d, m).out_channels


def shrink(model: nn.Sequential, plan: dict[int, torch.Tensor]) -> nn.Sequential:
    """A new Sequential where producer p keeps output units plan[p] (indices, repeats allowed).

    The producer's rows (and the BatchNorm after it) are gathered with the index; the consumer's
    input columns likewise, divided by how often each unit appears, so duplicated units (Net2Net
    widening) leave the function unchanged and dropped units simply vanish.
    """
    plan = _check_plan(model, plan, "plan")
    layers = [copy.deepcopy(m) for m in model]
    for p, c in _chain(model):
        if p not in plan:
            continue
        idx = plan[p].cpu()                            # (k,): the producer's units kept, of its n
        count = torch.bincount(idx, minlength=_units(layers[p])).float()[idx]   # (k,): multiplicity per new unit
        producer = cast("nn.Linear | nn.Conv2d", layers[p])      # _chain: p and c are Linear / Conv2d
        consumer = cast("nn.Linear | nn.Conv2d", layers[c])
        layers[p] = _slice(producer, out_idx=idx)      # weight (n, in, ...) -> (k, in, ...), bias (n,) -> (k,)
        for j in range(p + 1, c):
            bn = layers[j]
            if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
                layers[j] = _slice_bn(bn, idx)
        old_in = consumer.in_features if isinstance(consumer, nn.Linear) else consumer.in_channels
        spatial = old_in // _units(model[p])           # > 1 when a Flatten sits between conv and Linear (h * w)
        cols = (idx[:, None] * spatial + torch.arange(spatial)).flatten()   # (k * spatial,): channel-major columns
        scale = count.repeat_interleave(spatial)       # (k * spatial,)
        # the consumer's weight (out, n * spatial, ...) -> (out, k * spatial, ...)
        layers[c] = _slice(consumer, in_idx=cols, in_scale=scale)
    return nn.Sequential(*layers)


def _check_plan(model: nn.Sequential, plan, name: str) -> dict[int, torch.Tensor]:
    """plan {position: unit indices} checked against the chain: each position a producer (a Linear /
    Conv2d followed by another), each index list 1-D integers in [0, units), non-empty."""
    producers = [p for p, _ in _chain(model)]
    if not isinstance(plan, dict):
        raise TypeError(f"{name} must be a dict position -> indices of the units to keep, got {type(plan).__name__}")
    bad = [p for p in plan if isinstance(p, bool) or p not in producers]
    if bad:
        raise ValueError(f"{name} positions {bad} cannot be re-sized; only a Linear/Conv2d followed by another "
                         f"can (positions {producers})")
    out = {}
    for p, idx in plan.items():
        try:
            idx = torch.as_tensor(idx)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name}[{p}] must be a 1-D tensor or list of unit indices, got {idx!r}") from None
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"{name}[{p}] must hold integer unit indices, got dtype {idx.dtype}")
        if idx.dim() != 1:
            raise ValueError(f"{name}[{p}] must be a 1-D list of unit indices, got shape {tuple(idx.shape)}")
        if idx.numel() == 0:
            raise ValueError(f"{name}[{p}] must keep at least one unit, got none")
        n = _units(model[p])
        if int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ValueError(f"{name}[{p}]: unit indices must be in [0, {n}), got {int(idx.min())} to {int(idx.max())}")
        out[p] = idx.long()
    return out


def _slice(m: nn.Linear | nn.Conv2d, out_idx=None, in_idx=None, in_scale=None) -> nn.Linear | nn.Conv2d:
    """A new Linear/Conv2d with rows out_idx and columns in_idx (divided by in_scale) of m."""
    w = m.weight.detach()
    b = m.bias.detach() if m.bias is not None else None
    if out_idx is not None:                            # Linear (out, in) / Conv2d (out, in, kh, kw): rows
        w, b = w[out_idx], (b[out_idx] if b is not None else None)
    if in_idx is not None:                             # columns, each divided by its multiplicity (1, len, 1, 1)
        w = w[:, in_idx] / in_scale.view(1, -1, *[1] * (w.dim() - 2)).to(w)
    new: nn.Linear | nn.Conv2d
    if isinstance(m, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    else:
        if m.groups != 1:
            raise TypeError(f"structured pruning handles Conv2d with groups=1, got groups={m.groups}")
        # torch annotates _ConvNd's kernel_size, stride, padding, dilation as tuple[int, ...]; a Conv2d's are pairs
        new = nn.Conv2d(w.shape[1], w.shape[0],
                        m.kernel_size, m.stride, m.padding, m.dilation,  # type: ignore[arg-type]
                        bias=b is not None, padding_mode=m.padding_mode)
    new = new.to(w.device)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            assert new.bias is not None                # built with bias=True when b is not None
            new.bias.copy_(b)
    _keep_frozen(new, m)
    return new


def _keep_frozen(new: nn.Module, old: nn.Module) -> None:
    """A frozen parameter stays frozen in the re-built layer (the CIFAR net's fixed BN scale of 1)."""
    for name, p in new.named_parameters():
        p.requires_grad_(getattr(old, name).requires_grad)


def _slice_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm1d | nn.BatchNorm2d:
    new = type(bn)(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats).to(bn.weight.device)
    state = {k: (v[idx] if v.dim() else v) for k, v in bn.state_dict().items()}   # (n,) -> (k,); num_batches_tracked ()
    new.load_state_dict(state)
    _keep_frozen(new, bn)
    return new


def channel_scores(module: nn.Linear | nn.Conv2d, importance: str | Callable = "l1") -> torch.Tensor:
    """One score per output unit: the importance summed over its weights (L1 norm, squared L2 ...)."""
    return get_importance(importance)(module).flatten(1).sum(1)


def select_channels(model: nn.Sequential, sparsity: float | dict[int, float], *,
                    importance: str | Callable = "l1") -> dict[int, torch.Tensor]:
    """position -> sorted indices of the output units to keep (the top (1 - sparsity) by score).

    Every Linear/Conv2d but the last (whose outputs are the classes) and but a frozen one (the
    whitening conv) is pruned unless `sparsity` is a dict {position: sparsity}. Positions are
    indices into the Sequential.
    """
    pairs = _chain(model)
    producers = [p for p, _ in pairs]
    per = sparsity if isinstance(sparsity, dict) else {p: sparsity for p in producers
                                                       if model[p].weight.requires_grad}
    if not isinstance(per, dict):
        raise TypeError(f"sparsity must be a fraction or a dict position -> fraction, got {type(per).__name__}")
    bad = [p for p in per if isinstance(p, bool) or p not in producers]
    if bad:
        raise ValueError(f"positions {bad} are not prunable (the last layer is not); valid: {producers}")
    per = {p: check_sparsity(s) for p, s in per.items()}
    get_importance(importance)
    keep = {}
    for p, s in per.items():
        n = _units(model[p])
        n_keep = max(1, round((1 - s) * n))
        layer = cast("nn.Linear | nn.Conv2d", model[p])   # a producer: _chain checked it is a Linear / Conv2d
        keep[p] = torch.topk(channel_scores(layer, importance), n_keep).indices.sort().values
    return keep


def prune_channels(model: nn.Sequential, sparsity: float | dict[int, float], *,
                   importance: str | Callable = "l1") -> nn.Sequential:
    """A smaller copy of `model` without the least important neurons (Linear) / channels (Conv2d),
    their BatchNorm entries and the next layer's matching inputs."""
    return shrink(model, select_channels(model, sparsity, importance=importance))


def mask_channels(model: nn.Sequential, keep: dict[int, torch.Tensor]) -> nn.Sequential:
    """The same-size copy with every pruned unit zeroed (weights, bias, BatchNorm scale and shift):
    it computes exactly what the shrunk model computes."""
    keep = _check_plan(model, keep, "keep")
    out = copy.deepcopy(model)
    for p, c in _chain(model):
        if p not in keep:
            continue
        drop = torch.ones(_units(model[p]), dtype=torch.bool)
        drop[keep[p]] = False
        with torch.no_grad():
            for j in range(p, c):
                m = out[j]
                if (isinstance(m, (*PRUNABLE, nn.BatchNorm1d, nn.BatchNorm2d))
                        and getattr(m, "weight", None) is not None):
                    m.weight[drop] = 0
                    if m.bias is not None:
                        m.bias[drop] = 0
    return out


def remove_blocks(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy with the named residual blocks replaced by nn.Identity.

    Only blocks whose shortcut is the identity can go: such a block computes relu(F(x) + x), and
    its input x is already >= 0 (it left a ReLU), so without F it passes x through unchanged.
    """
    _check_model(model)
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ValueError(f"names must be a list of block names, got {names!r}; removable: "
                         f"{', '.join(removable_blocks(model))}")
    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    for name in names:
        block = modules.get(name) if isinstance(name, str) else None
        if block is None or not hasattr(block, "shortcut"):
            raise ValueError(f"{name!r} is not a residual block; removable: {', '.join(removable_blocks(model))}")
        if not isinstance(block.shortcut, nn.Identity):
            raise ValueError(f"block {name!r} changes the shape (its shortcut is a projection); "
                             f"removable: {', '.join(removable_blocks(model))}")
        parent, _, leaf = name.rpartition(".")
        setattr(modules[parent] if parent else out, leaf, nn.Identity())
    return out


def removable_blocks(model: nn.Module) -> list[str]:
    """Names of residual blocks with an identity shortcut."""
    return [n for n, m in model.named_modules() if isinstance(getattr(m, "shortcut", None), nn.Identity)]


def resize_like(model: nn.Module, state_dict: dict) -> nn.Module:
    """Re-create `model`'s layers at the shapes in `state_dict` and load it (weights_only-safe:
    a pruned model is saved as a plain state dict and rebuilt from the original architecture)."""
    _check_model(model)
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        raise TypeError(f"state_dict must be a dict of name -> tensor (model.state_dict()), got "
                        f"{type(state_dict).__name__}")

    def weight(name: str) -> torch.Tensor:
        if name + ".weight" not in state_dict:
            raise ValueError(f"state_dict has no {name + '.weight'!r}, which layer {name!r} of "
                             f"{type(model).__name__} needs: is it this architecture's state dict?")
        return state_dict[name + ".weight"]

    def visit(parent: nn.Module, prefix: str) -> None:
        for leaf, m in parent.named_children():
            name = prefix + leaf
            if any(True for _ in m.parameters()) and not any(k.startswith(name + ".") for k in state_dict):
                setattr(parent, leaf, nn.Identity())               # a removed block
            elif isinstance(m, PRUNABLE) and weight(name).shape != m.weight.shape:
                w = weight(name)
                setattr(parent, leaf, _slice(m, out_idx=torch.zeros(w.shape[0], dtype=torch.long),
                                             in_idx=torch.zeros(w.shape[1], dtype=torch.long),
                                             in_scale=torch.ones(w.shape[1])))
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.weight is not None \
                    and weight(name).shape != m.weight.shape:
                setattr(parent, leaf, _slice_bn(m, torch.zeros(len(weight(name)), dtype=torch.long)))
            else:
                visit(m, name + ".")
    model = copy.deepcopy(model)
    visit(model, "")
    model.load_state_dict(state_dict)
    return model


MAX_WIDTH = 65_536     # units a widened layer may have (a typo like 10**18 would try to allocate it)


def widen(model: nn.Sequential, position: int, width: int, *, seed: int = 0) -> nn.Sequential:
    """Net2WiderNet (Chen et al. 2016): layer `position` grows to `width` units by copying random
    existing units; the next layer's weights from each copy are divided by the number of copies,
    so the widened network computes the same function."""
    producers = [p for p, _ in _chain(model)]
    position = validate.integer("position", position, what=f"a layer's index in the Sequential, one of {producers}")
    if position not in producers:
        raise ValueError(f"position {position} cannot be widened; valid positions: {producers}")
    n = _units(model[position])
    width = validate.integer("width", width, low=n, high=MAX_WIDTH, what=f"the current {n} units or more")
    g = torch.Generator().manual_seed(check_seed(seed))
    idx = torch.cat([torch.arange(n), torch.randint(0, n, (width - n,), generator=g)])
    return shrink(model, {position: idx})


def deepen(model: nn.Sequential, position: int) -> nn.Sequential:
    """Net2DeeperNet: insert an identity layer (Linear = I, or a Dirac 3x3 conv) and a ReLU after
    the ReLU at `position`; its input is >= 0, so relu(I x) = x and the function is unchanged."""
    _chain(_check_model(model))
    layers = list(model)
    position = validate.integer("position", position, what="the index of a ReLU in the Sequential")
    if not 0 <= position < len(layers) or not isinstance(layers[position], nn.ReLU):
        raise ValueError(f"position {position} must be a ReLU in the model; ReLUs at "
                         f"{[i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]}")
    before = [m for m in layers[:position] if isinstance(m, (*PRUNABLE, nn.Flatten))]
    last = before[-1] if before else None
    device = next(model.parameters()).device
    new: nn.Linear | nn.Conv2d
    if isinstance(last, nn.Linear):
        new = nn.Linear(last.out_features, last.out_features)
        nn.init.eye_(new.weight)
    elif isinstance(last, nn.Conv2d):
        new = nn.Conv2d(last.out_channels, last.out_channels, 3, padding=1)
        nn.init.dirac_(new.weight)
    else:
        raise ValueError(f"position {position} must follow a Linear or Conv2d directly (not a Flatten)")
    assert new.bias is not None                        # both built with a bias (the default)
    nn.init.zeros_(new.bias)
    return nn.Sequential(*[copy.deepcopy(m) for m in layers[:position + 1]], new.to(device), nn.ReLU(),
                         *[copy.deepcopy(m) for m in layers[position + 1:]])
