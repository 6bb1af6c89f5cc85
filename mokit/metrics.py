"""What a model scores and what it costs: accuracy, per-class metrics, size, MACs, measured speed.

Speed is measured, never inferred from parameter counts: `measure_latency` times real forward
passes (warm-up, then the median of repeats) and says how many threads it used.
"""

from __future__ import annotations

import io
import statistics
import time
import zipfile
from collections.abc import Sequence

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------

def accuracy(output: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of examples whose arg-max (or given label, for 1-D input) equals y."""
    pred = output.argmax(1) if output.dim() == 2 else output
    if len(pred) != len(y):
        raise ValueError(f"{len(pred)} predictions but {len(y)} labels")
    return 100.0 * (pred.cpu() == y.cpu()).float().mean().item()


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C[i, j] = number of examples of true class i predicted as class j; shape (K, K)."""
    y_true, y_pred = y_true.cpu().long(), y_pred.cpu().long()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ in shape")
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

def count_params(model: nn.Module) -> int:
    """Number of parameter elements."""
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

    device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *in_shape, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.no_grad()
def measure_latency(model: nn.Module, in_shape: Sequence[int], *, batch_size: int = 1,
                    repeats: int = 30, warmup: int = 5, threads: int | None = None,
                    min_seconds: float = 0.0) -> dict:
    """Time forward passes on random input of shape (batch_size, *in_shape).

    Returns median, p90 and p99 milliseconds per batch, throughput (examples/s) and the thread count.
    Runs at least `repeats` timed passes (and at least `min_seconds`) after `warmup` untimed ones.
    """
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {batch_size}, {repeats}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        device = next(iter(model.parameters()), None)
        device = device.device if device is not None else torch.device("cpu")
        model.eval()
        x = torch.randn(batch_size, *in_shape, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for _ in range(warmup):
            model(x)
        sync()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
        ms = sorted(t * 1e3 for t in times)
        median = statistics.median(ms)
        return {"batch_size": batch_size, "ms": median, "p90_ms": ms[int(0.9 * (len(ms) - 1))],
                "p99_ms": ms[int(0.99 * (len(ms) - 1))],
                "throughput": batch_size / (median / 1e3), "threads": torch.get_num_threads(),
                "device": str(device)}
    finally:
        torch.set_num_threads(old_threads)


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


def summarize(models: dict[str, nn.Module], data=None, *, in_shape: Sequence[int] | None = None,
              batch_sizes: Sequence[int] = (1, 256), repeats: int = 20) -> Table:
    """One row per model: accuracy (if data), params, nonzeros, size raw/zipped, MACs, latency.

    Latency is measured on the device each model is on, at each batch size in `batch_sizes`
    (ms per batch, median).
    """
    from .train import evaluate

    if not models:
        raise ValueError("summarize needs at least one model")
    if in_shape is None:
        if data is None:
            raise ValueError("give data or in_shape")
        in_shape = data.shape
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
