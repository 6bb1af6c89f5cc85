"""Checkers for the notebooks' exercises: `check.magnitude_mask(my_function)`.

Each checker runs the learner's function on small hand-made cases with known answers (and on a
random case against mokit's or torch's own implementation) and prints either a pass,

    ✓ global_magnitude_masks: 5 cases passed

or exactly what is wrong: which case, expected against got, and a hint. A function that still
raises NotImplementedError (the student copy's stub) prints "not done yet" and the hint. Nothing
the learner's code raises escapes a checker, so a notebook always runs on.

Hints come in tiers: the first time an exercise is not passed the checker gives the idea, the
second time the API to use, and only from the third time on the code.

A checker returns a `CheckResult` that is truthy only when every case passed; `passed()` counts
the exercises whose latest check passed in this Python session (what a notebook records).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

_LATEST: dict[str, bool] = {}      # exercise name -> did its latest check pass (this session)
_ASKED: dict[str, int] = {}        # exercise name -> hints shown so far (this session)
TIERS = ("the idea", "the API", "the code")


@dataclass(frozen=True)
class Hints:
    """What a checker says when an exercise is not passed yet, one tier more each time it is asked."""
    idea: str                                   # what the function must do, in words
    api: str                                    # the functions / operations that do it
    code: str                                   # the solution, nearly written out

    def tier(self, asked: int) -> tuple[int, str]:
        """(tier number 1..3, its text) for the `asked`-th time a hint is shown (1-based)."""
        n = min(max(asked, 1), len(TIERS))
        return n, (self.idea, self.api, self.code)[n - 1]


@dataclass(frozen=True)
class Case:
    """One check: `fn(*args)` must equal `expected`; or `call(fn)` when the call is more than that."""
    label: str                                  # shown when the case fails: what is being tested
    args: tuple = ()
    expected: object = None
    call: Callable | None = None                # fn -> value to compare (several calls, a loop...)
    atol: float = 1e-5


@dataclass(frozen=True)
class CheckResult:
    """What a checker found. Truthy only when every case passed."""
    exercise: str
    passed: bool
    cases: int
    message: str = field(repr=False)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"<{self.exercise}: {'passed' if self.passed else 'not passed'}, {self.cases} cases>"


def passed() -> int:
    """How many exercises passed their latest check in this Python session."""
    return sum(_LATEST.values())


def reset() -> None:
    """Forget every check and every hint shown (tests use this)."""
    _LATEST.clear()
    _ASKED.clear()


def _hint(exercise: str, hint: str | Hints) -> str:
    """The hint to show now: a plain string as it is, or the next tier of Hints."""
    if isinstance(hint, str):
        return hint
    _ASKED[exercise] = _ASKED.get(exercise, 0) + 1
    n, text = hint.tier(_ASKED[exercise])
    more = f"; check again for {TIERS[n]}" if n < len(TIERS) else ""
    return f"{text}\n  (hint {n} of {len(TIERS)}: {TIERS[n - 1]}{more})"


# ---------------------------------------------------------------------------------------------
# The one runner every checker uses
# ---------------------------------------------------------------------------------------------

def _short(value) -> str:
    """A value in a few characters: small tensors in full (4 decimals), big ones by shape."""
    if torch.is_tensor(value):
        if value.numel() <= 12:
            return str(_round(value.tolist()))
        return f"tensor of shape {tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = repr(_round(value))
    return text if len(text) <= 120 else text[:117] + "..."


def _round(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (list, tuple)):
        return type(v)(_round(x) for x in v)
    return v


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (torch.is_tensor(v) and v.dim() == 0)


def _diff(got: Any, expected: Any, atol: float, where: str = "result") -> str | None:
    """None when `got` matches `expected`, else one line saying how it differs."""
    if torch.is_tensor(expected) and expected.dim() > 0:
        if isinstance(got, (list, tuple)):
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                got = torch.as_tensor(got)
        if not torch.is_tensor(got):
            return f"{where}: expected a tensor of shape {tuple(expected.shape)}, got a {type(got).__name__}"
        if got.shape != expected.shape:
            return f"{where}: expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        g, e = got.detach().cpu().double(), expected.detach().cpu().double()
        close = torch.isclose(g, e, atol=atol, rtol=1e-4)
        if bool(close.all()):
            return None
        if expected.numel() <= 12:
            return f"{where}: expected {_short(expected)}, got {_short(got.detach().cpu())}"
        first = tuple(int(i) for i in (~close).nonzero()[0])
        return (f"{where}: {int((~close).sum())} of {expected.numel()} values differ; first at index {first}: "
                f"expected {e[first].item():.6g}, got {g[first].item():.6g}")
    if _is_number(expected):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not _is_number(got):
            return f"{where}: expected a number ({_short(float(expected))}), got {_short(got)}"
        gv, ev = float(got), float(expected)
        if math.isclose(gv, ev, abs_tol=atol, rel_tol=1e-4):
            return None
        return f"{where}: expected {ev:.6g}, got {gv:.6g}"
    if isinstance(expected, (list, tuple)):
        if torch.is_tensor(got) and got.dim() > 0:
            got = list(got.unbind(0))
        if not isinstance(got, (list, tuple)):
            return f"{where}: expected a list of {len(expected)}, got {_short(got)}"
        if len(got) != len(expected):
            return f"{where}: expected {len(expected)} items {_short(expected)}, got {len(got)}: {_short(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _diff(g, e, atol, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{where}: expected a dict {_short(expected)}, got {_short(got)}"
        if set(got) != set(expected):
            return f"{where}: expected the keys {sorted(expected)}, got {sorted(got)}"
        for k in expected:
            problem = _diff(got[k], expected[k], atol, f"{where}[{k!r}]")
            if problem:
                return problem
        return None
    if got is expected or got == expected:
        return None
    return f"{where}: expected {_short(expected)}, got {_short(got)}"


def _run_case(fn: Callable, case: Case):
    """The value `fn` gives on `case`, and a problem if it changed its arguments in place."""
    args = copy.deepcopy(case.args)
    got = case.call(fn) if case.call else fn(*args)
    changed = next((i for i, (a, b) in enumerate(zip(args, case.args)) if _diff(a, b, 0.0)), None)
    return got, None if changed is None else (
        f"it changed its argument {changed + 1} in place; leave the inputs alone and return a new value")


def run_checks(exercise: str, fn: Callable, cases: Sequence[Case], hint: str | Hints) -> CheckResult:
    """Run `fn` on every case, stop at the first that fails, print a pass or what went wrong."""
    if not callable(fn):
        message = (f"✗ {exercise}: expected your function, got {_short(fn)}\n"
                   "  hint: pass the function itself, not its result")
        return _finish(exercise, False, len(cases), message)
    for n, case in enumerate(cases, 1):
        try:
            got, problem = _run_case(fn, case)
            problem = problem or _diff(got, case.expected, case.atol)
        except NotImplementedError:
            return _finish(exercise, False, len(cases),
                           f"… {exercise}: not done yet (it raises NotImplementedError).\n"
                           f"  hint: {_hint(exercise, hint)}")
        except Exception as e:                   # the learner's bug, reported; never crashes the notebook
            problem = f"it raised {type(e).__name__}: {e}"
        if problem:
            message = (f"✗ {exercise}: case {n} of {len(cases)} ({case.label}) is wrong\n"
                       f"  {problem}\n  hint: {_hint(exercise, hint)}")
            return _finish(exercise, False, len(cases), message)
    return _finish(exercise, True, len(cases), f"✓ {exercise}: {len(cases)} cases passed")


def _finish(exercise: str, ok: bool, cases: int, message: str) -> CheckResult:
    print(message)
    _LATEST[exercise] = ok
    return CheckResult(exercise, ok, cases, message)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# 01 training strategies
# ---------------------------------------------------------------------------------------------

def warmup_cosine(fn: Callable[[float, float], float]) -> CheckResult:
    """fn(t, warmup) = t / warmup for t < warmup, then 0.5 (1 + cos(pi (t - warmup) / (1 - warmup)))."""
    from .train import warmup_cosine
    cases = [Case("t=0: the start of the warm-up", (0.0, 0.1), 0.0),
             Case("t=0.05, warmup=0.1: halfway up", (0.05, 0.1), 0.5),
             Case("t=0.1, warmup=0.1: the peak", (0.1, 0.1), 1.0),
             Case("t=0.55, warmup=0.1: halfway down the cosine", (0.55, 0.1), 0.5),
             Case("t=1: the end", (1.0, 0.1), 0.0),
             Case("t=0.1, warmup=0.2: another warm-up length", (0.1, 0.2), 0.5)]
    cases += [Case(f"t={t}, warmup=0.25 against mokit.train", (t, 0.25), warmup_cosine(t, 0.25))
              for t in (0.13, 0.4, 0.87)]
    return run_checks("warmup_cosine", fn, cases, Hints(
        'rise in a straight line from 0 to 1 while t < warmup, '
        'then follow half a cosine wave from 1 down to 0 over the rest of training',
        'math.cos and math.pi; '
        'rescale the time after the warm-up to u = (t - warmup) / (1 - warmup), which runs from 0 to 1',
        "f(t) = t / warmup while t < warmup, then 0.5 * (1 + cos(pi * (t - warmup) / (1 - warmup)))"))


def _torch_steps(opt_cls, w0: torch.Tensor, steps: int, **kw) -> torch.Tensor:
    w = w0.clone().requires_grad_()
    opt = opt_cls([w], **kw)
    for _ in range(steps):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    return w.detach()


def _our_steps(fn: Callable, w0: torch.Tensor, steps: int, *hyper) -> torch.Tensor:
    """The learner's step fn(w, g, state, *hyper) -> (w, state) run on sum(w^2), state starting at 0."""
    w, state = w0.clone(), torch.zeros_like(w0)
    for _ in range(steps):
        w, state = fn(w, 2 * w, state, *hyper)        # the gradient of sum(w^2) is 2w
    return w


def momentum_step(fn: Callable) -> CheckResult:
    """fn(w, g, v, lr, momentum) -> (w, v):  v <- momentum * v + g,  w <- w - lr * v."""
    t = torch.tensor
    w0 = _randn(5, seed=1)
    cases = [Case("first step (v = 0): plain SGD", (t([1.0, 2.0]), t([0.5, -1.0]), t([0.0, 0.0]), 0.1, 0.9),
                  [t([0.95, 2.1]), t([0.5, -1.0])]),
             Case("second step, v = previous velocity", (t([0.95, 2.1]), t([0.5, -1.0]), t([0.5, -1.0]), 0.1, 0.9),
                  [t([0.855, 2.29]), t([0.95, -1.9])]),
             Case("momentum 0 is plain SGD", (t([1.0]), t([2.0]), t([5.0]), 0.5, 0.0), [t([0.0]), t([2.0])]),
             Case("3 steps on sum(w^2) against torch.optim.SGD(momentum=0.9)",
                  call=lambda fn: _our_steps(fn, w0, 3, 0.05, 0.9),
                  expected=_torch_steps(torch.optim.SGD, w0, 3, lr=0.05, momentum=0.9))]
    return run_checks("momentum_step", fn, cases, Hints(
        'the velocity remembers past gradients: decay it by momentum, add the new gradient, '
        'then step the weights along the velocity',
        'plain tensor arithmetic (*, +, -) that makes new tensors; '
        'no in-place updates (-=, .add_), since the inputs must stay as they are',
        "v = momentum * v + g, then w = w - lr * v; return (w, v), both new tensors"))


# ---------------------------------------------------------------------------------------------
# 02 pruning
# ---------------------------------------------------------------------------------------------

def _global_reference(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    from .prune import magnitude_mask
    flat = magnitude_mask(torch.cat([w.abs().flatten() for w in weights]), sparsity)
    return [m.view_as(w) for m, w in zip(flat.split([w.numel() for w in weights]), weights)]


def global_magnitude_masks(fn: Callable) -> CheckResult:
    """fn(weights, sparsity) -> one 0/1 mask per tensor, zeroing the round(sparsity * n) smallest
    |w| over all tensors together (one threshold for the whole model)."""
    t = torch.tensor
    a, b = t([0.1, -3.0, 0.5]), t([2.0, -0.2, 0.05, 0.3, -0.7])
    rand = [_randn(6, 5, seed=2), _randn(4, 6, seed=3) * 0.1, _randn(3, 4, seed=4)]
    cases = [Case("sparsity 0 keeps everything", ([a, b], 0.0), [t([1.0, 1, 1]), t([1.0, 1, 1, 1, 1])]),
             Case("two layers, sparsity 0.5: 0.05, 0.1, -0.2, 0.3 go", ([a, b], 0.5),
                  [t([0.0, 1, 1]), t([1.0, 0, 0, 0, 1])]),
             Case("two layers, sparsity 0.75", ([a, b], 0.75), [t([0.0, 1, 0]), t([1.0, 0, 0, 0, 0])]),
             Case("a 2-D layer keeps its shape", ([t([[0.4, -0.1], [0.2, 0.9]])], 0.5), [t([[1.0, 0], [0, 1]])]),
             Case("three random layers at sparsity 0.8 against mokit.prune.magnitude_mask", (rand, 0.8),
                  _global_reference(rand, 0.8))]
    return run_checks("global_magnitude_masks", fn, cases, Hints(
        'one threshold for the whole network: the weights whose |w| is among the smallest '
        '`sparsity` fraction of all weights are zeroed, whichever layer they are in',
        "torch.cat of every layer's w.abs().flatten() gives all magnitudes; "
        "torch.kthvalue(all, k).values is the k-th smallest",
        "k = round(sparsity * total number of weights); the threshold is the k-th smallest |w| over "
                      "all layers together (torch.cat the flattened |w|, then kthvalue); mask = (|w| > threshold)"))


def agp_sparsity(fn: Callable[[float, float], float]) -> CheckResult:
    """fn(t, sparsity) = sparsity * (1 - (1 - t)^3), with t clipped to [0, 1]."""
    from .prune import agp_sparsity as reference
    cases = [Case("t=0: nothing pruned yet", (0.0, 0.9), 0.0),
             Case("t=0.5, final 0.9", (0.5, 0.9), 0.7875),
             Case("t=1: the final sparsity", (1.0, 0.9), 0.9),
             Case("t past the end stays at the final sparsity", (1.5, 0.9), 0.9),
             Case("t before the start stays at 0", (-0.2, 0.9), 0.0)]
    cases += [Case(f"t={t}, final 0.8 against mokit.prune.agp_sparsity", (t, 0.8), reference(t, 0.8))
              for t in (0.1, 0.33, 0.9)]
    return run_checks("agp_sparsity", fn, cases, Hints(
        'the sparsity grows fast at first and slowly at the end (a cubic in t), '
        'reaching the target at t = 1 and staying there',
        'min(max(t, 0.0), 1.0) clips t; the cubic ramp is 1 - (1 - t) ** 3',
        "clip t into [0, 1] (min/max), then s = sparsity * (1 - (1 - t) ** 3): fast at first, slow at the end"))


# ---------------------------------------------------------------------------------------------
# 03 structured pruning
# ---------------------------------------------------------------------------------------------

def _keep_reference(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    from torch import nn

    from .prune import select_channels
    n = weight.shape[0]
    first = nn.Linear(weight.shape[1], n) if weight.dim() == 2 else nn.Conv2d(weight.shape[1], n, weight.shape[2])
    with torch.no_grad():
        first.weight.copy_(weight)
    nxt = nn.Linear(n, 2) if weight.dim() == 2 else nn.Conv2d(n, 2, 1)
    return select_channels(nn.Sequential(first, nn.ReLU(), nxt), {0: sparsity}, importance="l1")[0]


def channels_to_keep(fn: Callable) -> CheckResult:
    """fn(weight, sparsity) -> sorted indices of the output units (rows / filters) to keep: the
    max(1, round((1 - sparsity) * n)) with the largest L1 norm sum |w| over everything but dim 0."""
    t = torch.tensor
    lin = t([[1.0, -2, 3], [0.5, 0.5, 0], [-1.0, 1, 1], [4.0, -4, 2]])          # L1 norms 6, 1, 3, 10
    conv = torch.stack([torch.ones(1, 2, 2), -2 * torch.ones(1, 2, 2), 0.5 * torch.ones(1, 2, 2)])   # 4, 8, 2
    rand = _randn(8, 5, 3, 3, seed=5)
    cases = [Case("4 neurons (L1 6, 1, 3, 10), sparsity 0.5", (lin, 0.5), t([0, 3])),
             Case("4 neurons, sparsity 0.25: keep 3", (lin, 0.25), t([0, 2, 3])),
             Case("sparsity 0.99 still keeps one", (lin, 0.99), t([3])),
             Case("3 conv filters (L1 4, 8, 2), sparsity 1/3", (conv, 1 / 3), t([0, 1])),
             Case("random conv layer, sparsity 0.5, against mokit.prune.select_channels", (rand, 0.5),
                  _keep_reference(rand, 0.5))]
    return run_checks("channels_to_keep", fn, cases, Hints(
        'score each output channel by the size of its weights and keep the highest-scoring ones, '
        'listed in their original order',
        'weight.abs().flatten(1).sum(1) gives one L1 score per output channel; '
        'torch.topk picks the largest, .sort() restores the order',
        "scores = weight.abs().flatten(1).sum(1); n_keep = max(1, round((1 - sparsity) * n)); "
                      "torch.topk(scores, n_keep).indices, then .sort() so the kept order is the original one"))


# ---------------------------------------------------------------------------------------------
# 04 quantization
# ---------------------------------------------------------------------------------------------

def per_channel_qparams(fn: Callable) -> CheckResult:
    """fn(w, num_bits) -> (scale, zero_point), one per row: the row's range widened to contain 0,
    s = (hi - lo) / (2^b - 1), z = round(-lo / s)."""
    from .quantize import compute_qparams, minmax_range
    t = torch.tensor
    rand = _randn(6, 20, seed=6)
    cases = [Case("2 rows, 2 bits", (t([[-1.0, 0, 2], [0.5, 1, 1.5]]), 2), [t([1.0, 0.5]), t([1, 0])]),
             Case("a row of negatives only (the range must contain 0)", (t([[-3.0, -1.5, -0.75]]), 2),
                  [t([1.0]), t([3])]),
             Case("3 bits", (t([[-0.7, 0.0], [0.0, 1.4]]), 3), [t([0.1, 0.2]), t([7, 0])]),
             Case("random (6, 20) at 8 bits against mokit.quantize.compute_qparams", (rand, 8),
                  list(compute_qparams(*minmax_range(rand, axis=0), 8)))]
    return run_checks("per_channel_qparams", fn, cases, Hints(
        'each row gets its own range [lo, hi] that always contains 0, spread over the 2 ** num_bits integer levels; '
        'the zero point is the level that stands for 0.0',
        "w.amin(1) / w.amax(1) give each row's extremes; "
        ".clamp(max=0) / .clamp(min=0) make the range contain 0; torch.round for the zero point",
        "lo = w.amin(1).clamp(max=0), hi = w.amax(1).clamp(min=0) (one per row); "
                      "scale = (hi - lo) / (2 ** num_bits - 1); zero_point = torch.round(-lo / scale)"))


def fake_quantize(fn: Callable) -> CheckResult:
    """fn(w, scale, zero_point, num_bits) -> x_hat = s (q - z), q = clamp(round(w / s) + z, 0, 2^b - 1),
    with one scale and zero-point per row."""
    from .quantize import compute_qparams, dequantize, minmax_range, quantize
    t = torch.tensor
    rand = _randn(5, 16, seed=7)
    s, z = compute_qparams(*minmax_range(rand, axis=0), 4)
    cases = [Case("values on the grid come back unchanged",
                  (t([[-1.0, 0, 2], [0.5, 1, 1.5]]), t([1.0, 0.5]), t([1, 0]), 2),
                  t([[-1.0, 0, 2], [0.5, 1, 1.5]])),
             Case("rounding to the nearest step", (t([[0.26, -0.74]]), t([0.5]), t([2]), 3), t([[0.5, -0.5]])),
             Case("clamping: 2.6 is above the top of the 2-bit grid", (t([[-0.4, 0.7, 2.6]]), t([1.0]), t([1]), 2),
                  t([[0.0, 1.0, 2.0]])),
             Case("random (5, 16) at 4 bits against mokit.quantize", (rand, s, z, 4),
                  dequantize(quantize(rand, s, z, 4, axis=0), s, z, axis=0))]
    return run_checks("fake_quantize", fn, cases, Hints(
        "map each weight to the nearest level of its row's integer grid, clip it to the grid, "
        "and map it back to a float: the error is what int storage would cost",
        'scale[:, None] and zero_point[:, None] broadcast one value per row; '
        'torch.round, then .clamp(0, 2 ** num_bits - 1)',
        "reshape the per-row scale and zero-point to (C, 1) (scale[:, None]) so they broadcast; "
                      "q = (torch.round(w / s) + z).clamp(0, 2 ** num_bits - 1); return s * (q - z)"))


# ---------------------------------------------------------------------------------------------
# 05 distillation
# ---------------------------------------------------------------------------------------------

def soft_targets(fn: Callable) -> CheckResult:
    """fn(logits, temperature) = softmax(logits / T) row by row."""
    from .distill import soft_targets as reference
    t = torch.tensor
    ln2 = math.log(2.0)
    rand = _randn(4, 10, seed=8) * 3
    cases = [Case("equal logits: equal probabilities", (t([[0.0, 0.0]]), 1.0), t([[0.5, 0.5]])),
             Case("T=1: plain softmax", (t([[2 * ln2, 0.0]]), 1.0), t([[0.8, 0.2]])),
             Case("T=2 softens", (t([[2 * ln2, 0.0]]), 2.0), t([[2 / 3, 1 / 3]])),
             Case("2 rows: softmax along the classes (dim 1)", (t([[0.0, 0.0], [2 * ln2, 0.0]]), 1.0),
                  t([[0.5, 0.5], [0.8, 0.2]])),
             Case("random (4, 10) at T=4 against mokit.distill.soft_targets", (rand, 4.0), reference(rand, 4.0))]
    return run_checks("soft_targets", fn, cases, Hints(
        'divide the logits by the temperature before the softmax: a higher temperature gives a flatter distribution',
        'torch.softmax(x, dim=1) normalises each row into a distribution',
        "torch.softmax(logits / temperature, dim=1): one distribution per row"))


def _kd_reference(z, v, y, temperature, alpha) -> float:
    soft = F.kl_div(F.log_softmax(z / temperature, 1), F.softmax(v / temperature, 1), reduction="batchmean")
    return float(alpha * temperature ** 2 * soft + (1 - alpha) * F.cross_entropy(z, y))


def kd_loss(fn: Callable) -> CheckResult:
    """fn(z, v, y, T, alpha) = alpha T^2 KL(softmax(v/T) || softmax(z/T)) + (1 - alpha) CE(z, y)."""
    from .distill import kd_loss as reference
    t = torch.tensor
    same = t([[1.0, 2.0, 3.0]])
    z, v = _randn(6, 10, seed=9), _randn(6, 10, seed=10) * 2
    y = torch.arange(6) % 10
    cases = [Case("student = teacher: the KL term is 0", (same, same, t([2]), 4.0, 0.5),
                  0.5 * float(F.cross_entropy(same, t([2])))),
             Case("alpha = 0: labels only (cross-entropy)",
                  (t([[2.0, 1.0, 0.1]]), t([[3.0, 2.5, -1.0]]), t([0]), 4.0, 0.0),
                  float(F.cross_entropy(t([[2.0, 1.0, 0.1]]), t([0])))),
             Case("the notebook's logits, T=4, alpha=0.9, against F.kl_div",
                  (t([[2.0, 1.0, 0.1]]), t([[3.0, 2.5, -1.0]]), t([0]), 4.0, 0.9),
                  _kd_reference(t([[2.0, 1.0, 0.1]]), t([[3.0, 2.5, -1.0]]), t([0]), 4.0, 0.9)),
             Case("a batch of 6 (mean over examples), T=2, alpha=0.7, against mokit.distill.kd_loss",
                  (z, v, y, 2.0, 0.7), float(reference(z, v, y, temperature=2.0, alpha=0.7)))]
    return run_checks("kd_loss", fn, cases, Hints(
        "mix two losses: the KL divergence from the teacher's softened distribution to the student's "
        "(scaled by T squared, so its gradients keep their size), and the usual cross-entropy on the labels, "
        "weighted by alpha and 1 - alpha",
        'F.softmax / F.log_softmax with dim=1 on logits / T; '
        'sum p * (log p - log q) over the classes and average over the batch; F.cross_entropy(z, y) for the hard loss',
        "p = softmax(v / T), log q = log_softmax(z / T); KL = sum p * (log p - log q) per row, "
                      "mean over the batch; loss = alpha * T * T * KL + (1 - alpha) * F.cross_entropy(z, y)"))


# ---------------------------------------------------------------------------------------------
# 06 ensembles
# ---------------------------------------------------------------------------------------------

def average_probs(fn: Callable) -> CheckResult:
    """fn(logits (M, N, K), weights (M,)) -> (N, K) probabilities: sum_m w_m softmax(z_m)."""
    from .ensemble import average_probs as reference
    t = torch.tensor
    ln3 = math.log(3.0)
    two = t([[[0.0, 0.0]], [[ln3, 0.0]]])                 # (M=2, N=1, K=2): softmax 0.5/0.5 and 0.75/0.25
    rand, w = _randn(3, 4, 5, seed=11) * 2, t([0.2, 0.3, 0.5])
    cases = [Case("2 members, equal weights", (two, t([0.5, 0.5])), t([[0.625, 0.375]])),
             Case("weights (1, 0): the first member alone", (two, t([1.0, 0.0])), t([[0.5, 0.5]])),
             Case("weights (0.25, 0.75)", (two, t([0.25, 0.75])), t([[0.6875, 0.3125]])),
             Case("3 members, 4 examples, 5 classes, against mokit.ensemble.average_probs", (rand, w),
                  reference(rand, w).exp())]
    return run_checks("average_probs", fn, cases, Hints(
        "turn each member's logits into class probabilities, weight each member, and add them up",
        'torch.softmax(logits, dim=2) for logits of shape (members, N, K); '
        'weights.view(-1, 1, 1) broadcasts over N and K; .sum(0) over the members',
        "softmax over the classes (dim 2), multiply member m by weights[m] "
                      "(weights.view(-1, 1, 1)), sum over the members (dim 0)"))


def majority_vote(fn: Callable) -> CheckResult:
    """fn(logits (M, N, K)) -> (N,) the class most members pick; a tie goes to the class with the
    larger mean probability."""
    from .ensemble import vote
    t = torch.tensor
    three = t([[[5.0, 0, 0], [0, 5.0, 0]], [[5.0, 0, 0], [0, 0, 5.0]], [[0, 5.0, 0], [0, 0, 5.0]]])
    rand = _randn(5, 8, 4, seed=12)
    cases = [Case("3 members, 2 examples: clear majorities", (three,), t([0, 2])),
             Case("a 1-1 tie: the confident member wins", (t([[[4.0, 0, 0]], [[0, 1.0, 0.9]]]),), t([0])),
             Case("a 1-1 tie the other way", (t([[[1.0, 0, 0]], [[0, 5.0, 0]]]),), t([1])),
             Case("5 members, 8 examples, against mokit.ensemble.vote", (rand,), vote(rand))]
    return run_checks("majority_vote", fn, cases, Hints(
        'each member votes for its top class; the class with the most votes wins, '
        'and a tie goes to the class the members are most confident about on average',
        "logits.argmax(2) is each member's vote; F.one_hot(votes, K).sum(0) counts them per class; "
        "a small tie-breaker must stay below one vote",
        "votes = F.one_hot(logits.argmax(2), K).sum(0) (N, K); add softmax(logits, 2).mean(0) / 2 "
                      "(less than one vote, so it only breaks ties) and take argmax(1)"))


# ---------------------------------------------------------------------------------------------
# 07 hyperparameter search, 08 architecture search
# ---------------------------------------------------------------------------------------------

def keep_top(fn: Callable) -> CheckResult:
    """fn(configs, scores, eta) -> the best max(1, len(configs) // eta) configs, best first
    (higher score is better; equal scores keep their original order)."""
    configs = list("abcdefghi")
    scores = [3, 9, 1, 7, 5, 8, 2, 6, 4]
    random_scores = [round(float(s), 3) for s in _randn(27, seed=13)]
    names = [f"c{i}" for i in range(27)]
    best = [c for _, c in sorted(zip(random_scores, names), key=lambda p: -p[0])][:9]
    cases = [Case("9 configs, eta 3: the best 3", (configs, scores, 3), ["b", "f", "d"]),
             Case("5 configs, eta 2: the best 2", (configs[:5], scores[:5], 2), ["b", "d"]),
             Case("2 configs, eta 3: always keep at least one", (configs[:2], scores[:2], 3), ["b"]),
             Case("a tie: the earlier config first", (["x", "y", "z"], [5, 5, 1], 3), ["x"]),
             Case("27 random scores, eta 3", (names, random_scores, 3), best)]
    return run_checks("keep_top", fn, cases, Hints(
        'successive halving keeps the best 1/eta of the configs (at least one) for the next rung, best first',
        'len(configs) // eta, at least 1; '
        'sorted(range(n), key=...) is stable, so configs with equal scores keep their order',
        "n_keep = max(1, len(configs) // eta); sort the indices by score, highest first "
                      "(sorted is stable: ties keep their order); return [configs[i] for the first n_keep]"))


def widen(fn: Callable) -> CheckResult:
    """fn(config, name, options) -> a new config with config[name] moved to the next larger option,
    or None when it is already the largest; `config` itself is left unchanged."""
    arch = {"n_conv": 2, "c0": 8, "c1": 16, "activation": "relu"}
    widths = (4, 8, 16, 32)
    cases = [Case("widen c1: 16 -> 32", (arch, "c1", widths), {**arch, "c1": 32}),
             Case("widen c0: 8 -> 16", (arch, "c0", widths), {**arch, "c0": 16}),
             Case("already the widest: None", ({**arch, "c1": 32}, "c1", widths), None),
             Case("unsorted options: the next larger value, not the next position",
                  ({"d0": 32}, "d0", (64, 16, 128, 32)), {"d0": 64})]
    return run_checks("widen", fn, cases, Hints(
        'move the named decision to the next larger option, if there is one, in a new config (the old one unchanged)',
        'min() of the options larger than the current value; {**config, name: value} builds a new dict',
        "larger = [o for o in options if o > config[name]]; None if there is none, "
                      "else {**config, name: min(larger)} (a new dict: do not change config)"))


def _point(acc: float, params: int) -> dict:
    return {"acc": acc, "params": params}


def dominates(fn: Callable) -> CheckResult:
    """fn(a, b, objectives) -> True when point a is no worse than b on every objective and better on
    one; objectives maps a name to True (maximize) or False (minimize)."""
    from .nas import dominates as reference
    acc_params = {"acc": True, "params": False}
    three = {"acc": True, "params": False, "latency_ms": False}
    gen = torch.Generator().manual_seed(14)
    pts = [{k: float(v) for k, v in zip(three, torch.randint(0, 3, (3,), generator=gen))} for _ in range(8)]
    pairs = [(a, b) for a in pts for b in pts]
    cases = [Case("better on both", (_point(98, 10), _point(97, 20), acc_params), True),
             Case("the same point does not dominate itself", (_point(98, 10), _point(98, 10), acc_params), False),
             Case("more accurate but bigger: a trade-off", (_point(98, 30), _point(97, 20), acc_params), False),
             Case("as accurate and smaller", (_point(98, 10), _point(98, 20), acc_params), True),
             Case("worse on both", (_point(97, 20), _point(98, 10), acc_params), False),
             Case("64 pairs of points on 3 objectives against mokit.nas.dominates",
                  call=lambda fn: [bool(fn(a, b, three)) for a, b in pairs],
                  expected=[reference(a, b, three) for a, b in pairs])]
    return run_checks("dominates", fn, cases, Hints(
        'a dominates b when it is at least as good on every objective and strictly better on at least one',
        'negate the minimised objectives so that larger is always better; '
        'all(...) and any(...) over the pairs of values',
        "flip the sign of minimized objectives; a dominates b when a >= b on every objective "
                      "(all(...)) and a > b on at least one (any(...))"))


# ---------------------------------------------------------------------------------------------
# 02 pruning: the 2:4 pattern
# ---------------------------------------------------------------------------------------------

def nm_mask(fn: Callable) -> CheckResult:
    """fn(w, n, m) -> a 0/1 mask like w keeping the n largest |w| of every m consecutive weights of each
    row (rows: w.reshape(w.shape[0], -1)); compared with mokit.prune.nm_mask."""
    from .prune import nm_mask as reference
    w4 = torch.tensor([[0.1, -0.9, 0.3, 0.05, 2.0, -0.01, 0.5, -0.6]])
    lin, conv = _randn(6, 16, seed=24), _randn(4, 2, 2, 2, seed=25)
    cases = [Case("one row, two groups of 4, 2:4", (w4, 2, 4), torch.tensor([[0., 1., 1., 0., 1., 0., 0., 1.]])),
             Case("1:4 keeps the largest of each group", (w4, 1, 4), torch.tensor([[0., 1., 0., 0., 1., 0., 0., 0.]])),
             Case("a 6 x 16 weight at 2:4 against mokit.prune.nm_mask", (lin, 2, 4), reference(lin.abs(), 2, 4)),
             Case("a conv filter (4, 2, 2, 2), groups over in x kh x kw", (conv, 2, 4), reference(conv.abs(), 2, 4))]
    return run_checks("nm_mask", fn, cases, Hints(
        "cut each row into groups of m consecutive weights; in every group keep the n of largest magnitude",
        "w.reshape(rows, -1, m) makes the groups; .abs().topk(n, dim=-1).indices finds the keepers; "
        "torch.zeros_like(...).scatter_(-1, indices, 1.0) writes the mask; reshape back to w.shape",
        "g = w.reshape(w.shape[0], -1, m).abs(); keep = g.topk(n, dim=-1).indices; "
        "return torch.zeros_like(g).scatter_(-1, keep, 1.0).reshape(w.shape)"))



def subnet_weight(fn: Callable) -> CheckResult:
    """fn(weight, width, c_in, k) -> the subnet's conv weight shared from the supernet's (out, in, K, K):
    the first `width` filters, their first `c_in` input channels, the centre k x k; compared with
    mokit.supernet.center_crop of the slice."""
    from .supernet import center_crop
    w = torch.arange(4 * 3 * 25, dtype=torch.float32).reshape(4, 3, 5, 5)
    big = _randn(8, 6, 7, 7, seed=31)
    cases = [Case("the whole weight: width 4, 3 inputs, 5 x 5", (w, 4, 3, 5), w),
             Case("width 2, 1 input, the centre 3 x 3", (w, 2, 1, 3), w[:2, :1, 1:4, 1:4]),
             Case("a 1 x 1 kernel is the centre pixel", (w, 3, 2, 1), w[:3, :2, 2:3, 2:3]),
             Case("an (8, 6, 7, 7) weight, width 5, 4 inputs, 3 x 3", (big, 5, 4, 3), center_crop(big[:5, :4], 3))]
    return run_checks("subnet_weight", fn, cases, Hints(
        "a subnet keeps the first filters, the first input channels and the middle of each kernel",
        "slice the first two dimensions with [:width, :c_in]; the k x k centre of a K x K kernel starts at "
        "(K - k) // 2 in both spatial dimensions",
        "lo = (weight.shape[-1] - k) // 2; return weight[:width, :c_in, lo:lo + k, lo:lo + k]"))


def _gptq_step_reference(w: torch.Tensor, i: int, q: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    err = (w[:, i] - q) / u[i, i]
    out = w.clone()
    out[:, i:] -= err[:, None] * u[i, i:][None, :]
    return out


def gptq_step(fn: Callable) -> CheckResult:
    """fn(w, i, q, u) -> a new w after GPTQ quantizes column i to q: err = (w[:, i] - q) / u[i, i], then every
    column j >= i loses err * u[i, j] (u: the upper Cholesky factor of H^-1); column i itself becomes q."""
    w = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    u = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.25], [0.0, 0.0, 4.0]])
    q = torch.tensor([1.5, -1.0])
    big, h = _randn(5, 8, seed=41), _randn(40, 8, seed=42)
    ub = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h.T @ h + torch.eye(8))), upper=True)
    qb = torch.round(big[:, 2] * 4) / 4
    cases = [Case("column 0 of a 2 x 3 weight, a hand-made u", (w, 0, q, u), _gptq_step_reference(w, 0, q, u)),
             Case("column 1: the columns before it stay as they are", (w, 1, q, u), _gptq_step_reference(w, 1, q, u)),
             Case("a 5 x 8 weight, u from a real H, column 2", (big, 2, qb, ub), _gptq_step_reference(big, 2, qb, ub))]
    return run_checks("gptq_step", fn, cases, Hints(
        "the rounding error of column i, scaled by 1 / u[i, i], is taken off every later column in proportion "
        "to u[i, j]",
        "err = (w[:, i] - q) / u[i, i] has one entry per row; err[:, None] * u[i, i:][None, :] is the update of "
        "columns i.. (an outer product); work on w.clone()",
        "out = w.clone(); err = (w[:, i] - q) / u[i, i]; out[:, i:] -= err[:, None] * u[i, i:][None, :]; return out"))

# ---------------------------------------------------------------------------------------------
# 00 setup: a latency measurement done right
# ---------------------------------------------------------------------------------------------

class _FakeTimer:
    """A model call whose durations are scripted, and the clock that sees them (no real waiting)."""

    def __init__(self, durations: Sequence[float]):
        self.durations, self.now, self.calls = list(durations), 0.0, 0

    def run(self) -> None:
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1

    def clock(self) -> float:
        return self.now


def _timed(fn: Callable, durations: Sequence[float], warmup: int, repeats: int):
    timer = _FakeTimer(durations)
    value = fn(timer.run, timer.clock, warmup, repeats)
    return [value, timer.calls]


def timed_median(fn: Callable) -> CheckResult:
    """fn(run, clock, warmup, repeats) -> seconds: call run() `warmup` times untimed, then `repeats`
    times, each timed alone with clock(); return the median of those times."""
    slow_start = [0.050, 0.020, 0.010, 0.011, 0.009, 0.012, 0.010]
    cases = [Case("2 warm-up calls are not timed; median of 5", call=lambda f: _timed(f, slow_start, 2, 5),
                  expected=[0.010, 7]),
             Case("no warm-up: the slow first call counts (the median resists it)",
                  call=lambda f: _timed(f, [0.05, 0.01, 0.01], 0, 3), expected=[0.010, 3]),
             Case("an even number of repeats: the mean of the middle two",
                  call=lambda f: _timed(f, [0.1, 0.001, 0.003, 0.002, 0.004], 1, 4), expected=[0.0025, 5]),
             Case("one outlier among 5 does not move the median",
                  call=lambda f: _timed(f, [0.01, 0.01, 0.9, 0.01, 0.01, 0.01], 1, 5), expected=[0.01, 6])]
    return run_checks("timed_median", fn, cases, Hints(
        "warm up first (caches, lazy initialisation and the allocator make the first calls slow), then time "
        "each call on its own and take the middle value, which one slow call (the OS, another program) cannot move",
        "call clock() just before and just after each timed run(); statistics.median of the list of differences",
        "for _ in range(warmup): run(); then times = []; for _ in range(repeats): t0 = clock(); run(); "
        "times.append(clock() - t0); return statistics.median(times)"))


# ---------------------------------------------------------------------------------------------
# 01 training strategies: the adaptive update rules
# ---------------------------------------------------------------------------------------------

def adagrad_step(fn: Callable) -> CheckResult:
    """fn(w, g, s, lr, eps) -> (w, s):  s <- s + g^2,  w <- w - lr * g / (sqrt(s) + eps)."""
    t = torch.tensor
    w0 = _randn(5, seed=11)
    cases = [Case("first step from s = 0", (t([1.0, -2.0]), t([2.0, -4.0]), t([0.0, 0.0]), 0.1, 1e-10),
                  [t([0.9, -1.9]), t([4.0, 16.0])]),
             Case("s keeps growing: steps shrink", (t([0.9]), t([2.0]), t([4.0]), 0.1, 1e-10),
                  [t([0.9 - 0.2 / math.sqrt(8.0)]), t([8.0])]),
             Case("5 steps on sum(w^2) against torch.optim.Adagrad",
                  call=lambda f: _our_steps(f, w0, 5, 0.3, 1e-10),
                  expected=_torch_steps(torch.optim.Adagrad, w0, 5, lr=0.3, eps=1e-10))]
    return run_checks("adagrad_step", fn, cases, Hints(
        "each weight gets its own step size: divide the step by the root of the sum of all its squared "
        "gradients so far, so weights with large gradients slow down for good",
        "tensor arithmetic and torch.sqrt; s is the running sum (not an average) of g * g",
        "s = s + g * g; w = w - lr * g / (torch.sqrt(s) + eps); return (w, s)"))


def rmsprop_step(fn: Callable) -> CheckResult:
    """fn(w, g, s, lr, alpha, eps) -> (w, s):  s <- alpha s + (1 - alpha) g^2,  w <- w - lr g / (sqrt(s) + eps)."""
    t = torch.tensor
    w0 = _randn(5, seed=12)
    cases = [Case("first step from s = 0", (t([1.0]), t([2.0]), t([0.0]), 0.01, 0.99, 1e-8),
                  [t([1.0 - 0.01 * 2.0 / (math.sqrt(0.04) + 1e-8)]), t([0.04])]),
             Case("alpha 0: s is the last g^2 only", (t([1.0, 1.0]), t([3.0, -1.0]), t([9.0, 9.0]), 0.1, 0.0, 1e-8),
                  [t([0.9, 1.1]), t([9.0, 1.0])]),
             Case("5 steps on sum(w^2) against torch.optim.RMSprop",
                  call=lambda f: _our_steps(f, w0, 5, 0.01, 0.9, 1e-8),
                  expected=_torch_steps(torch.optim.RMSprop, w0, 5, lr=0.01, alpha=0.9, eps=1e-8))]
    return run_checks("rmsprop_step", fn, cases, Hints(
        "like AdaGrad, but the squared gradients are an exponential moving average, so old gradients are "
        "forgotten and the step size can grow again",
        "s is alpha * s + (1 - alpha) * g * g; torch.sqrt for the root; eps keeps the division finite",
        "s = alpha * s + (1 - alpha) * g * g; w = w - lr * g / (torch.sqrt(s) + eps); return (w, s)"))


# ---------------------------------------------------------------------------------------------
# 02 pruning: an open task, sparsities chosen from the sensitivity scan
# ---------------------------------------------------------------------------------------------

def _overall(sparsities: dict, sizes: dict) -> float:
    return sum(sparsities[k] * sizes[k] for k in sizes) / sum(sizes.values())


def _allocation_verdict(fn: Callable, scan: dict, sizes: dict, max_drop: float) -> dict:
    chosen = fn(copy.deepcopy(scan), dict(sizes), max_drop)
    if not isinstance(chosen, dict) or set(chosen) != set(scan):
        return {"one sparsity per layer of the scan": False}
    levels_ok = all(chosen[k] in scan[k] for k in scan)
    drop = sum(scan[k][chosen[k]] for k in scan) if levels_ok else math.inf
    uniform = max((s for s in scan[next(iter(scan))] if sum(scan[k].get(s, math.inf) for k in scan) <= max_drop),
                  default=0.0)
    return {"one sparsity per layer of the scan": True, "every sparsity is a scanned level": levels_ok,
            f"summed drop within {max_drop} points": drop <= max_drop + 1e-9,
            "at least the best uniform sparsity overall": levels_ok and _overall(chosen, sizes) >= uniform - 1e-9}


def allocate_sparsity(fn: Callable) -> CheckResult:
    """fn(scan, sizes, max_drop) -> {layer: sparsity}: scan[layer][sparsity] = accuracy points lost when
    only that layer is pruned; sizes[layer] = its weights. Choose scanned levels whose drops add up to
    at most max_drop, keeping as much sparsity overall as you can (an open task: any answer that
    beats the best uniform choice passes)."""
    levels = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
    scan = {"fc1": dict(zip(levels, (0.0, 0.0, 0.05, 0.1, 0.3, 0.9))),
            "fc2": dict(zip(levels, (0.0, 0.05, 0.2, 0.4, 1.0, 2.5))),
            "fc3": dict(zip(levels, (0.0, 0.3, 0.8, 1.5, 3.0, 6.0)))}
    sizes = {"fc1": 235_200, "fc2": 30_000, "fc3": 1_000}
    expected = lambda budget: {k: True for k in _allocation_verdict(  # noqa: E731
        lambda *a: {name: 0.0 for name in scan}, scan, sizes, budget)}
    cases = [Case(f"LeNet-300-100-like scan, {b} points", call=lambda f, b=b: _allocation_verdict(f, scan, sizes, b),
                  expected=expected(b)) for b in (0.5, 1.0, 0.05)]
    return run_checks("allocate_sparsity", fn, cases, Hints(
        "prune hard where the scan says a layer barely notices, gently where it hurts, and spend the budget "
        "where the weights are (a big layer's sparsity counts for more)",
        "start every layer at 0.0 and raise one layer at a time to its next scanned level, choosing the step "
        "with the most weights removed per point lost, while the summed drop stays within max_drop",
        "chosen = {k: 0.0 for k in scan}; loop: candidates = next levels whose new summed drop <= max_drop; "
        "pick the one maximising sizes[k] * (new - old) / (drop increase + 1e-9); stop when none is left"))


# ---------------------------------------------------------------------------------------------
# 04 quantization: straight-through rounding, BatchNorm folding, the zero-point term
# ---------------------------------------------------------------------------------------------

def _ste_probe(fn: Callable, w: torch.Tensor, scale: float):
    w = w.clone().requires_grad_()
    out = fn(w, scale)
    weights = torch.arange(1.0, w.numel() + 1).view_as(w)
    (out * weights).sum().backward()
    return [out.detach(), w.grad]


def ste_round(fn: Callable) -> CheckResult:
    """fn(w, scale) -> w rounded to multiples of scale in the forward pass, with the gradient of the
    identity in the backward pass (the straight-through estimator QAT trains with)."""
    t = torch.tensor
    w = t([0.26, -0.74, 1.1, 0.04])
    grad = torch.arange(1.0, 5.0)
    cases = [Case("forward rounds, backward passes the gradient straight through", call=lambda f: _ste_probe(f, w, 0.5),
                  expected=[t([0.5, -0.5, 1.0, 0.0]), grad]),
             Case("another scale", call=lambda f: _ste_probe(f, w, 0.25), expected=[t([0.25, -0.75, 1.0, 0.0]), grad]),
             Case("a 2-D tensor keeps its shape",
                  call=lambda f: _ste_probe(f, t([[0.3, 0.6], [-0.2, 0.9]]), 1.0),
                  expected=[t([[0.0, 1.0], [0.0, 1.0]]), torch.arange(1.0, 5.0).view(2, 2)])]
    return run_checks("ste_round", fn, cases, Hints(
        "rounding has a zero gradient almost everywhere, so QAT pretends it is the identity on the way back: "
        "the value is rounded, the gradient is not",
        "x + (r - x).detach() has the value r and the gradient of x: detach() hides what is inside from autograd",
        "r = torch.round(w / scale) * scale; return w + (r - w).detach()"))


def _fold_reference(w, b, mean, var, gamma, beta, eps):
    from torch.nn.utils.fusion import fuse_conv_bn_weights
    fw, fb = fuse_conv_bn_weights(w, b, mean, var, eps, gamma, beta)
    return [fw.detach(), fb.detach()]


def fold_batchnorm(fn: Callable) -> CheckResult:
    """fn(w, b, mean, var, gamma, beta, eps) -> (w', b'): the conv weight and bias that compute
    conv followed by BatchNorm (in eval mode) in one conv."""
    t = torch.tensor
    w1, b1 = t([[[[2.0]]], [[[1.0]]]]), t([1.0, 0.0])
    args1 = (w1, b1, t([1.0, -1.0]), t([4.0, 1.0]), t([1.0, 3.0]), t([0.5, 0.0]), 0.0)
    g = torch.Generator().manual_seed(13)
    w2, b2 = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    args2 = (w2, b2, torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.5,
             torch.randn(4, generator=g), torch.randn(4, generator=g), 0.1)
    cases = [Case("1x1 convs, worked by hand", args1, [t([[[[1.0]]], [[[3.0]]]]), t([0.5, 3.0])]),
             Case("a 3x3 conv against torch.nn.utils.fusion.fuse_conv_bn_weights", args2, _fold_reference(*args2))]
    return run_checks("fold_batchnorm", fn, cases, Hints(
        "BatchNorm in eval mode is y = gamma (x - mean) / sqrt(var + eps) + beta, an affine map per channel: "
        "scale each output channel's filter by its factor and move the bias",
        "factor = gamma / torch.sqrt(var + eps), one per output channel; "
        "factor.view(-1, 1, 1, 1) broadcasts over a filter",
        "f = gamma / torch.sqrt(var + eps); return (w * f.view(-1, 1, 1, 1), (b - mean) * f + beta)"))


def _zp_reference(q_x: torch.Tensor, z_x: int, q_w: torch.Tensor) -> torch.Tensor:
    return ((q_x.long() - z_x) @ q_w.long().T)


def zero_point_matmul(fn: Callable) -> CheckResult:
    """fn(q_x, z_x, q_w) -> the int accumulator (q_x - z_x) @ q_w.T of an int8 linear layer with
    unsigned activations (zero point z_x) and symmetric weights, computed as q_x @ q_w.T minus the
    zero-point term z_x * (sum of each weight row), in integers."""
    t = torch.tensor
    g = torch.Generator().manual_seed(14)
    qx, qw = (torch.randint(0, 256, (3, 8), generator=g, dtype=torch.uint8),
              torch.randint(-127, 128, (4, 8), generator=g, dtype=torch.int8))
    small = (t([[3, 5]], dtype=torch.uint8), 2, t([[1, -1], [2, 2]], dtype=torch.int8))

    def integer(f, *args):
        out = f(*args)
        return ["an integer tensor" if torch.is_tensor(out) and not out.is_floating_point() else "floats", out]

    cases = [Case("by hand: (3-2)*1 + (5-2)*(-1), (3-2)*2 + (5-2)*2", call=lambda f: integer(f, *small),
                  expected=["an integer tensor", t([[-2, 8]])]),
             Case("random uint8 x int8, z_x = 128", call=lambda f: integer(f, qx, 128, qw),
                  expected=["an integer tensor", _zp_reference(qx, 128, qw)])]
    return run_checks("zero_point_matmul", fn, cases, Hints(
        "(q_x - z_x) @ q_w.T = q_x @ q_w.T - z_x * (row sums of q_w): the second term depends on the weights "
        "only, so a real kernel computes it once, ahead of time, and folds it into the bias",
        "widen to int32/int64 first (.long()): uint8 and int8 products overflow; q_w.sum(1) gives each row's sum",
        "x, w = q_x.long(), q_w.long(); return x @ w.T - z_x * w.sum(1)"))


# ---------------------------------------------------------------------------------------------
# 07 hyperparameter search: successive halving's whole loop
# ---------------------------------------------------------------------------------------------

def _halving_reference(configs: list, objective: Callable, budgets: Sequence[int], eta: int) -> list:
    trials = []
    for i, b in enumerate(budgets):
        scores = [objective(c, b) for c in configs]
        trials += [(c, b, s) for c, s in zip(configs, scores)]
        if i < len(budgets) - 1:
            order = sorted(range(len(configs)), key=lambda j: -scores[j])
            configs = [configs[j] for j in order[:max(1, len(configs) // eta)]]
    return trials


def halving_loop(fn: Callable) -> CheckResult:
    """fn(configs, objective, budgets, eta) -> [(config, budget, score), ...] in the order run: every
    config at budgets[0], the best len // eta (at least 1, ties in their order) at budgets[1], ..."""
    configs = [{"lr": x} for x in (0.3, 0.01, 0.1, 0.03, 1.0, 0.003, 0.05, 0.2, 0.001)]
    objective = lambda c, b: -abs(math.log10(c["lr"]) + 1.3) * (1 + 1 / b)          # noqa: E731 - best near 0.05
    flat = lambda c, b: 1.0                                                            # noqa: E731 - all tied
    cases = [Case("9 configs, budgets 1, 3, 9, eta 3", (configs, objective, [1, 3, 9], 3),
                  _halving_reference(configs, objective, [1, 3, 9], 3)),
             Case("eta 2 with 5 configs: 5, 2, 1", (configs[:5], objective, [1, 2, 4], 2),
                  _halving_reference(configs[:5], objective, [1, 2, 4], 2)),
             Case("ties keep their order", (configs[:4], flat, [1, 2], 2),
                  _halving_reference(configs[:4], flat, [1, 2], 2))]
    return run_checks("halving_loop", fn, cases, Hints(
        "train everyone cheaply, keep the best 1/eta, give the survivors the next, larger budget, and repeat "
        "until the last budget: most compute goes to the promising configs",
        "for i, b in enumerate(budgets): score every config at b; keep_top (your function from above, or a "
        "stable sort on -score) picks the survivors before the next rung, not after the last",
        "trials = []; for i, b in enumerate(budgets): s = [objective(c, b) for c in configs]; trials += "
        "list(zip(configs, [b] * len(configs), s)); if i < len(budgets) - 1: order = sorted(range(len(configs)), "
        "key=lambda j: -s[j]); configs = [configs[j] for j in order[:max(1, len(configs) // eta)]]; return trials"))


# ---------------------------------------------------------------------------------------------
# 09 scaling out: the pipeline bubble, an all-reduce by hand
# ---------------------------------------------------------------------------------------------

def bubble_fraction(fn: Callable[[int, int], float]) -> CheckResult:
    """fn(stages, micro_batches) -> the idle fraction of a GPipe-style pipeline: (S - 1) / (M + S - 1)."""
    cases = [Case("1 stage never idles", (1, 4), 0.0), Case("2 stages, 1 micro-batch: half idle", (2, 1), 0.5),
             Case("2 stages, 4 micro-batches", (2, 4), 0.2), Case("4 stages, 8 micro-batches", (4, 8), 3 / 11),
             Case("more micro-batches, smaller bubble", (4, 100), 3 / 103)]
    return run_checks("bubble_fraction", fn, cases, Hints(
        "draw the schedule: the last stage waits while the first micro-batch fills the pipeline, the first "
        "waits while the last one drains; count the idle slots against all slots",
        "with S stages and M micro-batches each stage is busy M of the M + S - 1 time steps",
        "return (stages - 1) / (micro_batches + stages - 1)"))


def idle_share(fn: Callable[[list, int], float]) -> CheckResult:
    """fn(spans, workers) -> the share of worker time spent waiting: 1 - sum(end - start) / (workers x the
    last end), spans being (start, end) seconds of every trial since the search began (09b)."""
    cases = [Case("one worker, no gaps", ([(0.0, 1.0), (1.0, 3.0)], 1), 0.0),
             Case("two workers, one waits half the time", ([(0.0, 2.0), (0.0, 1.0)], 2), 0.25),
             Case("a rung barrier: both wait for the slow one", ([(0.0, 1.0), (0.0, 3.0), (3.0, 4.0)], 2), 0.375),
             Case("three workers, one never used", ([(0.0, 2.0), (0.0, 2.0)], 3), 1 / 3)]
    return run_checks("idle_share", fn, cases, Hints(
        "every worker could have worked from 0 until the last trial ended; how much of that did trials fill?",
        "busy = the sum of (end - start); available = workers * the largest end",
        "return 1 - sum(e - s for s, e in spans) / (workers * max(e for _, e in spans))"))


def all_reduce_mean(fn: Callable) -> CheckResult:
    """fn(grads) -> new per-worker gradient lists in which every worker holds the mean over workers
    (grads[w][p] is worker w's gradient of parameter p); the inputs are left unchanged."""
    t = torch.tensor
    two = [[t([1.0, 2.0]), t([[4.0]])], [t([3.0, 6.0]), t([[0.0]])]]
    mean2 = [t([2.0, 4.0]), t([[2.0]])]
    g = torch.Generator().manual_seed(15)
    three = [[torch.randn(3, 2, generator=g), torch.randn(5, generator=g)] for _ in range(3)]
    mean3 = [torch.stack([w[p] for w in three]).mean(0) for p in range(2)]
    cases = [Case("2 workers, 2 parameters", (two,), [mean2, mean2]),
             Case("3 workers: every one gets the same mean", (three,), [mean3] * 3),
             Case("1 worker: its own gradients", ([[t([5.0])]],), [[t([5.0])]])]
    return run_checks("all_reduce_mean", fn, cases, Hints(
        "after an all-reduce every worker holds the same average gradient, so every replica takes the same "
        "step and the models stay identical",
        "for each parameter index p, torch.stack([worker[p] for worker in grads]).mean(0); "
        "give each worker its own copy",
        "mean = [torch.stack([w[p] for w in grads]).mean(0) for p in range(len(grads[0]))]; "
        "return [[m.clone() for m in mean] for _ in grads]"))


# ---------------------------------------------------------------------------------------------
# 10 deployment: tail latency
# ---------------------------------------------------------------------------------------------

def percentile(fn: Callable) -> CheckResult:
    """fn(values, q) -> the value at position int(q * (n - 1)) of the sorted values (q in [0, 1]),
    without changing `values`: the rule behind every p50 / p99 in the kit (mokit.metrics.percentile)."""
    from .metrics import percentile as reference
    gen = torch.Generator().manual_seed(10)
    times = [round(float(v), 3) for v in torch.rand(50, generator=gen) * 10]
    cases = [Case("the median of [3, 1, 2]", ([3.0, 1.0, 2.0], 0.5), 2.0),
             Case("p99 of 1..100", ([float(v) for v in range(1, 101)], 0.99), 99.0),
             Case("q = 0 is the fastest", ([4.0, 2.0, 9.0], 0.0), 2.0),
             Case("q = 1 is the slowest", ([4.0, 2.0, 9.0], 1.0), 9.0),
             Case("one value", ([7.5], 0.99), 7.5),
             Case("50 timings at q = 0.5, 0.9, 0.99 against mokit.metrics.percentile",
                  call=lambda f: [f(list(times), q) for q in (0.5, 0.9, 0.99)],
                  expected=[reference(times, q) for q in (0.5, 0.9, 0.99)])]
    return run_checks("percentile", fn, cases, Hints(
        "sort a copy of the timings; the q-quantile is the one that a fraction q of the others are at or below",
        "sorted(values) makes a new list; int(q * (len(values) - 1)) is the position, which gives the smallest "
        "at q = 0 and the largest at q = 1",
        "ordered = sorted(values); return ordered[int(q * (len(ordered) - 1))]"))


# ---------------------------------------------------------------------------------------------
# 10 deployment: a request validator
# ---------------------------------------------------------------------------------------------

def _verdict(fn: Callable, body, in_shape):
    try:
        out = fn(copy.deepcopy(body), in_shape)
    except NotImplementedError:
        raise                                   # the stub: "not done yet"
    except ValueError as e:
        return ["ValueError", bool(str(e))]
    except Exception as e:  # the wrong kind of error is a wrong answer
        return [type(e).__name__, bool(str(e))]
    return ["tensor", out] if torch.is_tensor(out) else [type(out).__name__, out]


def validate_request(fn: Callable) -> CheckResult:
    """fn(body, in_shape) -> a float32 tensor (N, *in_shape) from body = {"inputs": nested lists}, or a
    ValueError with a message for anything else (no key, not a list, wrong shape, NaN / inf, empty)."""
    shape = (1, 2, 2)
    good = {"inputs": [[[[0.5, 1.0], [0.0, -1.0]]]]}
    nan = {"inputs": [[[[float("nan"), 1.0], [0.0, -1.0]]]]}
    cases = [Case("a valid batch of 1", call=lambda f: _verdict(f, good, shape),
                  expected=["tensor", t4 := torch.tensor(good["inputs"], dtype=torch.float32)]),
             Case("two images", call=lambda f: _verdict(f, {"inputs": good["inputs"] * 2}, shape),
                  expected=["tensor", torch.cat([t4, t4])]),
             Case("no 'inputs' key", call=lambda f: _verdict(f, {"x": good["inputs"]}, shape),
                  expected=["ValueError", True]),
             Case("not a dict", call=lambda f: _verdict(f, [1, 2], shape), expected=["ValueError", True]),
             Case("wrong image shape", call=lambda f: _verdict(f, {"inputs": [[[0.5, 1.0]]]}, shape),
                  expected=["ValueError", True]),
             Case("ragged lists", call=lambda f: _verdict(f, {"inputs": [[[[0.5], [0.0, -1.0]]]]}, shape),
                  expected=["ValueError", True]),
             Case("NaN", call=lambda f: _verdict(f, nan, shape), expected=["ValueError", True]),
             Case("an empty batch", call=lambda f: _verdict(f, {"inputs": []}, shape), expected=["ValueError", True]),
             Case("strings", call=lambda f: _verdict(f, {"inputs": "[[1]]"}, shape), expected=["ValueError", True])]
    return run_checks("validate_request", fn, cases, Hints(
        "a service must refuse bad input with a clear message before the model sees it: check the type, the "
        "key, the shape and the values, and only then build the tensor",
        "isinstance(body, dict); torch.tensor(lists, dtype=torch.float32) raises (ValueError / TypeError) on "
        "ragged or non-numeric lists: turn that into your own ValueError; .shape[1:] and torch.isfinite(x).all()",
        "if not isinstance(body, dict) or 'inputs' not in body: raise ValueError(...); "
        "try: x = torch.tensor(body['inputs'], dtype=torch.float32) "
        "except (TypeError, ValueError, RuntimeError): raise ValueError(...); then refuse "
        "x.dim() != len(in_shape) + 1, tuple(x.shape[1:]) != tuple(in_shape), "
        "len(x) == 0, not torch.isfinite(x).all()"))


# ---------------------------------------------------------------------------------------------
# 08c compression search: the fastest model within a point of the baseline
# ---------------------------------------------------------------------------------------------

def _acc_ms(acc: float, ms: float) -> dict:
    return {"val_acc": acc, "latency_ms": ms}


def fastest_within(fn: Callable) -> CheckResult:
    """fn(points, baseline_acc, max_drop) -> the index of the fastest point (lowest "latency_ms") whose
    "val_acc" is at least baseline_acc - max_drop (equal latencies: the more accurate, then the first),
    or None when none qualifies; points with NaN are never picked. Compared with mokit.autocompress."""
    from .autocompress import fastest_within as reference
    pts = [_acc_ms(99.0, 4.0), _acc_ms(98.5, 2.0), _acc_ms(96.0, 0.5), _acc_ms(98.2, 1.5)]
    gen = torch.Generator().manual_seed(17)
    accs, mss = 95 + 5 * torch.rand(30, generator=gen), 0.5 + 4 * torch.rand(30, generator=gen)
    many = [_acc_ms(round(float(a), 1), round(float(m), 1)) for a, m in zip(accs, mss)]
    cases = [Case("the fastest is too inaccurate: the fastest of those within a point", (pts, 99.1, 1.0), 3),
             Case("a tighter bar: half a point", (pts, 99.1, 0.5), 0),
             Case("exactly at the bar counts", (pts, 99.2, 1.0), 3),
             Case("nothing within the bar: None", (pts, 100.5, 1.0), None),
             Case("equal latencies: the more accurate one", ([_acc_ms(98.0, 1.0), _acc_ms(98.6, 1.0)], 99.0, 1.0), 1),
             Case("a NaN accuracy is never picked", expected=1,
                  call=lambda f: f([_acc_ms(float("nan"), 0.1), _acc_ms(98.5, 2.0)], 99.0, 1.0)),
             Case("30 random points, against mokit.autocompress.fastest_within", (many, 99.0, 2.0),
                  reference(many, 99.0, 2.0))]
    return run_checks("fastest_within", fn, cases, Hints(
        "keep the points that lost at most max_drop points against the baseline, then take the fastest of them",
        "a list of the indices i with points[i]['val_acc'] >= baseline_acc - max_drop (math.isnan leaves out NaN); "
        "min(..., key=...) with a key of (latency, -accuracy) breaks ties by accuracy",
        "ok = [i for i, p in enumerate(points) if not math.isnan(p['val_acc']) and p['val_acc'] >= baseline_acc - "
        "max_drop]; return min(ok, key=lambda i: (points[i]['latency_ms'], -points[i]['val_acc'])) if ok else None"))
