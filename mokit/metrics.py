"""What a model scores and what it costs: accuracy, per-class metrics, size, MACs, measured speed.

Speed is measured, never inferred from parameter counts: `measure_latency` times real forward
passes (warm-up, then the median of repeats) and says how many threads it used; `speedup`
compares two models pass by pass, so a busy CPU's noise falls on both alike.
"""

from __future__ import annotations

import io
import math
import numbers
import statistics
import time
import zipfile
from collections.abc import Sequence

import torch
from torch import nn

from . import validate
from .data import TensorData
from .models import check_in_shape

# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------

def _tensor(name: str, t) -> torch.Tensor:
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _labels(name: str, t, num_classes: int | None = None) -> torch.Tensor:
    """A 1-D tensor of integer class labels (in [0, num_classes) when given), as int64 on the CPU."""
    t = _tensor(name, t)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of class labels (N,), got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {t.dtype}")
    t = t.detach().cpu()
    if t.is_floating_point():  # noqa: SIM102 - the float case, then its test
        if not bool(torch.isfinite(t).all()) or not bool((t == t.round()).all()):
            raise ValueError(f"{name} must hold integer class labels; it has non-integer values "
                             f"such as {t[(~torch.isfinite(t)) | (t != t.round())][0].item()!r}")
    t = t.long()
    if num_classes is not None and len(t):
        bad = (t < 0) | (t >= num_classes)
        if bool(bad.any()):
            raise ValueError(f"{name} has labels outside [0, {num_classes - 1}] (num_classes={num_classes}): "
                             f"{sorted(set(t[bad].tolist()))[:10]}")
    return t


def accuracy(output: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of examples whose arg-max (or given label, for 1-D input) equals y.

    output: logits / scores (N, C) or predicted labels (N,); y: labels (N,). Other shapes (a (N, C, 1)
    output, say) are refused: an arg-max over the wrong dimension would score 0 silently.
    """
    output = _tensor("output", output)
    if output.dim() not in (1, 2):
        raise ValueError(f"output must be scores (N, C) or predicted labels (N,), got shape "
                         f"{tuple(output.shape)}")
    y = _labels("y", y)
    pred = output.argmax(1) if output.dim() == 2 else _labels("output", output)
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} predictions but {len(y)} labels")
    if len(y) == 0:
        raise ValueError("accuracy of no examples is undefined: output and y are empty")
    return 100.0 * (pred.cpu() == y).float().mean().item()


def noise_points(a: float, b: float, n: int) -> float:
    """Twice the standard error of the gap between two accuracies a and b (in %) on n test examples.

    The course's rule for "beyond noise": a gap larger than this is unlikely to be the test set's luck.

    >>> round(noise_points(99.0, 98.0, 10_000), 3)
    0.344
    """
    a = validate.number("a", a, low=0, high=100)
    b = validate.number("b", b, low=0, high=100)
    n = validate.integer("n", n, low=1)
    return 2 * 100 * ((a / 100 * (1 - a / 100) + b / 100 * (1 - b / 100)) / n) ** 0.5


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (q in [0, 1]) of `values`: the value at position int(q * (n - 1)) once sorted.

    The rule every latency table and load test of the kit uses (p50, p90, p99); NaN for no values.

    >>> percentile([5, 1, 4, 2, 3], 0.5), percentile(range(1, 101), 0.99)
    (3, 99)
    """
    q = validate.number("q", q, low=0, high=1)
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))] if ordered else float("nan")



def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b rank correlation: sum over pairs of sign(dx) * sign(dy), over
    sqrt(#pairs untied in x * #pairs untied in y); 1: the same order, 0: unrelated, -1: reversed.

    >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])          # one of six pairs swapped: (5 - 1) / 6
    0.6666666666666666
    """
    xs = [validate.number("x entry", v) for v in x]
    ys = [validate.number("y entry", v) for v in y]
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"kendall_tau needs two sequences of the same length >= 2, got {len(xs)} and {len(ys)}")
    signs = [((a1 > a2) - (a1 < a2), (b1 > b2) - (b1 < b2))
             for i, (a1, b1) in enumerate(zip(xs, ys)) for a2, b2 in zip(xs[i + 1:], ys[i + 1:])]
    untied = sum(abs(sx) for sx, _ in signs) * sum(abs(sy) for _, sy in signs)
    return sum(sx * sy for sx, sy in signs) / untied ** 0.5 if untied else float("nan")

def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C[i, j] = number of examples of true class i predicted as class j; shape (K, K).

    Labels must be integers in [0, num_classes): any other label is refused (it would land in
    another class's cell).
    """
    num_classes = validate.integer("num_classes", num_classes, low=1, high=100_000)
    y_true, y_pred = _tensor("y_true", y_true), _tensor("y_pred", y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ in shape")
    y_true, y_pred = _labels("y_true", y_true, num_classes), _labels("y_pred", y_pred, num_classes)
    idx = y_true * num_classes + y_pred
    return torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_report(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> dict:
    """Per-class precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R) (0 where undefined)."""
    cm = confusion_matrix(y_true, y_pred, num_classes).double()
    tp = cm.diag()
    precision = torch.nan_to_num(tp / cm.sum(0))
    recall = torch.nan_to_num(tp / cm.sum(1))
    f1 = torch.nan_to_num(2 * precision * recall / (precision + recall))
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": cm.sum(1).long().tolist(), "macro_f1": f1.mean().item()}


# ---------------------------------------------------------------------------------------------
# Size
# ---------------------------------------------------------------------------------------------

def _model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _in_shape(in_shape) -> tuple[int, ...]:
    """One example's shape: a non-empty sequence of positive integers (at most 2^28 elements)."""
    return check_in_shape(in_shape, image=False, max_elements=2 ** 28)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements."""
    _model(model)
    return sum(p.numel() for p in model.parameters())


def count_nonzeros(model: nn.Module) -> int:
    """Number of non-zero elements over the model's weights (masked zeros do not count)."""
    return sum(int((t != 0).sum()) for t in _weights(model))


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """The effective weights: parameters, or `weight`/`bias` buffers for pruned or quantized layers."""
    state = model.state_dict()
    return [t for k, t in state.items() if torch.is_tensor(t) and t.is_floating_point()
            and not k.endswith(("running_mean", "running_var", "_mask", "_orig"))]


def model_size(model: nn.Module) -> dict:
    """Bytes of the saved state dict, raw and zipped (deflate) - what a download or disk would hold."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    raw = buf.getvalue()
    return {"bytes": len(raw), "zipped_bytes": len(zip_bytes(raw))}


def zip_bytes(payload: bytes) -> bytes:
    """payload deflated inside a zip archive, as `zip` on the command line would store it."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("model.pt", payload)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Compute and speed
# ---------------------------------------------------------------------------------------------

def count_macs(model: nn.Module, in_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one example (FLOPs / 2, torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    _model(model)
    in_shape = _in_shape(in_shape)
    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            _forward(model, torch.zeros(1, *in_shape, device=device), in_shape)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def _forward(model: nn.Module, x: torch.Tensor, in_shape) -> torch.Tensor:
    """model(x); a model that cannot take examples of in_shape is a ValueError naming the shape."""
    try:
        return model(x)
    except RuntimeError as e:
        raise ValueError(f"the model does not run on in_shape {tuple(in_shape)} (input {tuple(x.shape)}): "
                         f"{e}") from None


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _one_pass(model: nn.Module, x: torch.Tensor) -> float:
    """Seconds for one forward pass (waiting for the GPU when the model is on one)."""
    t0 = time.perf_counter()
    model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _timing_args(in_shape, batch_size, threads) -> tuple[tuple[int, ...], int, int | None]:
    """The checked (in_shape, batch_size, threads) that both timers take."""
    in_shape = _in_shape(in_shape)
    batch_size = validate.integer("batch_size", batch_size, low=1, high=2 ** 20)
    if threads is not None:
        threads = validate.integer("threads", threads, low=1, high=4096)
    if batch_size * math.prod(in_shape) > 2 ** 30:
        raise ValueError(f"batch_size {batch_size} x in_shape {in_shape} is over 2^30 input elements")
    return in_shape, batch_size, threads


@torch.no_grad()
def measure_latency(model: nn.Module, in_shape: Sequence[int], *, batch_size: int = 1,
                    repeats: int = 30, warmup: int = 5, threads: int | None = None,
                    min_seconds: float = 0.0) -> dict:
    """Time forward passes on random input of shape (batch_size, *in_shape).

    Returns median, p90 and p99 milliseconds per batch, throughput (examples/s) and the thread count.
    Runs at least `repeats` timed passes (and at least `min_seconds`) after `warmup` untimed ones.
    Bounds (checked before anything runs): batch_size in [1, 2^20], repeats in [1, 10^6],
    warmup in [0, 10^6], threads None or >= 1, min_seconds in [0, 3600] (inf would never return).
    """
    _model(model)
    in_shape, batch_size, threads = _timing_args(in_shape, batch_size, threads)
    repeats = validate.integer("repeats", repeats, low=1, high=10 ** 6)
    warmup = validate.integer("warmup", warmup, low=0, high=10 ** 6)
    min_seconds = validate.number("min_seconds", min_seconds, low=0, high=3600)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        device, was_training = _device(model), model.training
        x = torch.randn(batch_size, *in_shape, device=device)
        model.eval()
        try:
            _forward(model, x, in_shape)                           # a shape the model cannot take fails here
        except ValueError:
            model.train(was_training)
            raise
        for _ in range(warmup):
            _one_pass(model, x)                                    # waits for the GPU, like a timed pass
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            times.append(_one_pass(model, x))
        ms = sorted(t * 1e3 for t in times)
        median = statistics.median(ms)
        return {"batch_size": batch_size, "ms": median, "p90_ms": percentile(ms, 0.9), "p99_ms": percentile(ms, 0.99),
                "throughput": batch_size / (median / 1e3), "threads": torch.get_num_threads(),
                "device": str(device)}
    finally:
        torch.set_num_threads(old_threads)


@torch.no_grad()
@torch.no_grad()
def interleaved_times(models: Sequence[nn.Module], in_shape: Sequence[int], *, batch_size: int = 1,
                      passes: int = 10, warmup: int = 3, threads: int | None = None) -> list[list[float]]:
    """Seconds of `passes` single forward passes of each model, the models taking turns pass by pass.

    Timing one model for a while and then the next lets a busy CPU's load (another process, a frequency
    change) land on one of them; taking turns, in an order that rotates every round, spreads it over all.
    Returns one list of `passes` times per model, round by round (times[j][i]: model j in round i).
    Bounds (checked before anything runs): batch_size in [1, 2^20], passes in [1, 10^5],
    warmup in [0, 10^5], threads None or >= 1.
    """
    models = [_model(m) for m in models]
    if not models:
        raise ValueError("models is empty: give at least one model to time")
    in_shape, batch_size, threads = _timing_args(in_shape, batch_size, threads)
    passes = validate.integer("passes", passes, low=1, high=10 ** 5)
    warmup = validate.integer("warmup", warmup, low=0, high=10 ** 5)
    old_threads, modes = torch.get_num_threads(), [m.training for m in models]
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        x = torch.randn(batch_size, *in_shape)
        xs = [x.to(_device(m)) for m in models]
        for m, xm in zip(models, xs):
            m.eval()
            _forward(m, xm, in_shape)                          # a shape a model cannot take fails here
            for _ in range(warmup):
                _one_pass(m, xm)
        times: list[list[float]] = [[] for _ in models]
        n = len(models)
        for i in range(passes):
            for j in [(i + 1 + k) % n for k in range(n)]:      # the order rotates: each model leads in turn
                times[j].append(_one_pass(models[j], xs[j]))
        return times
    finally:
        torch.set_num_threads(old_threads)
        for m, mode in zip(models, modes):
            m.train(mode)


def speedup(model: nn.Module, reference: nn.Module, in_shape: Sequence[int], *, batch_size: int = 1,
            pairs: int = 10, warmup: int = 3, threads: int | None = None) -> dict:
    """How many times faster `model` runs than `reference`: single passes interleaved pair by pair
    (interleaved_times), so a busy CPU's noise hits both alike. Returns the median over pairs of
    reference / model time ("speedup"), each one's median ms per batch ("ms", "reference_ms") and the
    thread count. Bounds as interleaved_times (pairs is its passes).
    """
    pairs = validate.integer("pairs", pairs, low=1, high=10 ** 5)
    mine, ref = interleaved_times([model, reference], in_shape, batch_size=batch_size, passes=pairs,
                                  warmup=warmup, threads=threads)
    ratios = [r / t for t, r in zip(mine, ref)]
    return {"speedup": statistics.median(ratios), "ms": 1e3 * statistics.median(mine),
            "reference_ms": 1e3 * statistics.median(ref),
            "threads": threads if threads is not None else torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------
# The comparison table every notebook ends with
# ---------------------------------------------------------------------------------------------

class Table(list):
    """A list of row dicts that prints as text and renders as HTML in Jupyter."""

    def columns(self) -> list[str]:
        cols: list[str] = []
        for row in self:
            cols += [k for k in row if k not in cols]
        return cols

    @staticmethod
    def _fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    def __str__(self) -> str:
        cols = self.columns()
        cells = [[self._fmt(r.get(c, "")) for c in cols] for r in self]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
        return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])

    def _repr_html_(self) -> str:
        cols = self.columns()
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{self._fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                       for r in self)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        return str(self)


def summarize(models: dict[str, nn.Module], data: TensorData | None = None, *, in_shape: Sequence[int] | None = None,
              batch_sizes: Sequence[int] = (1, 256), repeats: int = 20) -> Table:
    """One row per model: accuracy (if data), params, nonzeros, size raw/zipped, MACs, latency.

    Latency is measured on the device each model is on, at each batch size in `batch_sizes`
    (ms per batch, median).
    """
    from .train import evaluate

    if not isinstance(models, dict):
        raise TypeError(f"models must be a dict {{name: model}}, got {type(models).__name__}")
    if not models:
        raise ValueError("summarize needs at least one model")
    for m in models.values():
        _model(m)
    if in_shape is None:
        if data is None:
            raise ValueError("give data or in_shape")
        in_shape = data.shape
    in_shape = _in_shape(in_shape)
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or not batch_sizes:
        raise ValueError(f"batch_sizes must be a non-empty sequence of integers >= 1, got {batch_sizes!r}")
    batch_sizes = [validate.integer("batch_sizes", b, low=1, high=2 ** 20) for b in batch_sizes]
    repeats = validate.integer("repeats", repeats, low=1, high=10 ** 6)
    rows = Table()
    for name, model in models.items():
        row: dict = {"model": name}
        if data is not None:
            row["accuracy %"] = evaluate(model, data)["accuracy"]
        size = model_size(model)
        row.update(params=count_params(model), nonzeros=count_nonzeros(model),
                   **{"size KB": size["bytes"] / 1024, "zipped KB": size["zipped_bytes"] / 1024},
                   MACs=count_macs(model, in_shape))
        for b in batch_sizes:
            row[f"ms @ batch {b}"] = measure_latency(model, in_shape, batch_size=b, repeats=repeats)["ms"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Pareto fronts: what no other point beats on every objective at once
# ---------------------------------------------------------------------------------------------

def dominates(a: dict, b: dict, objectives: dict[str, bool]) -> bool:
    """a dominates b: no worse on every objective and better on one (objectives: name -> maximize)."""
    sign = {k: 1 if mx else -1 for k, mx in objectives.items()}
    no_worse = all(sign[k] * a[k] >= sign[k] * b[k] for k in objectives)
    return no_worse and any(sign[k] * a[k] > sign[k] * b[k] for k in objectives)


def check_objectives(objectives) -> dict[str, bool]:
    if not isinstance(objectives, dict) or not objectives:
        raise ValueError(f"objectives must be a non-empty dict {{name: maximize (True/False)}}, got "
                         f"{objectives!r}")
    for k, mx in objectives.items():
        if type(mx).__name__ not in ("bool", "bool_"):
            raise ValueError(f"objectives[{k!r}] must be True (maximize) or False (minimize), got {mx!r}")
    return objectives


def pareto_front(points: Sequence[dict], objectives: dict[str, bool]) -> list[int]:
    """Indices of the non-dominated points, sorted by the first objective (best first).

    Every point must give every objective a real number (else ValueError naming the point). The rule
    for NaN: a point with NaN in any objective (a diverged trial, a failed measurement) cannot be
    compared, so it is left off the front and dominates nothing; its index is never returned.
    +-inf compare as numbers."""
    objectives = check_objectives(objectives)
    if isinstance(points, (str, bytes, dict)) or not isinstance(points, Sequence):
        raise TypeError(f"points must be a sequence of dicts, got {type(points).__name__}")
    for i, p in enumerate(points):
        if not isinstance(p, dict):
            raise TypeError(f"points[{i}] must be a dict of objective values, got {type(p).__name__}")
        for k in objectives:
            if k not in p:
                raise ValueError(f"points[{i}] has no value for objective {k!r}; it has {sorted(p)}")
            v = p[k]
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"points[{i}][{k!r}] must be a real number, got {v!r}")
    comparable = [i for i, p in enumerate(points) if not any(math.isnan(p[k]) for k in objectives)]
    front = [i for i in comparable
             if not any(dominates(points[j], points[i], objectives) for j in comparable)]
    first, mx = next(iter(objectives.items()))
    return sorted(front, key=lambda i: points[i][first], reverse=mx)
