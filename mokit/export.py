"""Export a model and run it outside PyTorch: ONNX files, ONNX Runtime, ORT's own int8, torch.export.

    export_onnx(model, "m.onnx", in_shape)   # atomic write, dynamic batch axis, checked by onnx
    ort_model = OnnxModel("m.onnx")          # an nn.Module whose forward runs ONNX Runtime
    max_abs_diff(model, ort_model, x)        # max |PyTorch(x) - ORT(x)|
    quantize_onnx("m.onnx", "m.int8.onnx", data=train)   # ORT static int8, calibrated on real data

Because OnnxModel is an nn.Module, mokit's `evaluate`, `predict` and `metrics.measure_latency`
work on an exported file exactly as on the PyTorch model (no second timer, no second eval loop).

ONNX Runtime runs here on the CPU, so every comparison with it (outputs, latency) runs the PyTorch
side on the CPU too, on a copy: a model trained on a GPU is never moved, and its output is never
compared across devices (CUDA's TF32 matmuls differ from the CPU's fp32 by far more than 1e-4).
"""

from __future__ import annotations

import copy
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import atomic_write_bytes
from .serve import INPUT, OUTPUT, OrtModel, check_batch, load_session  # noqa: F401 (re-exported)


def _check_in_shape(in_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(in_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(f"in_shape must be positive integers per example, like (1, 28, 28); got {in_shape!r}")
    return shape


def _plain_cpu_copy(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).cpu().eval()


def on_cpu(model: nn.Module) -> nn.Module:
    """The model as the CPU comparisons run it: an OnnxModel as it is (ONNX Runtime is on the CPU
    already; its session cannot be copied), any other module as an eval-mode CPU copy."""
    return model if isinstance(model, OnnxModel) else _plain_cpu_copy(model)


# ---------------------------------------------------------------------------------------------
# 1. ONNX export (the legacy TorchScript exporter: the torch.export-based one needs onnxscript)
# ---------------------------------------------------------------------------------------------

def onnx_bytes(model: nn.Module, in_shape: Sequence[int], *, opset: int = 17) -> bytes:
    """The ONNX file of `model` for inputs (batch, *in_shape), batch left dynamic, as bytes."""
    import onnx

    shape = _check_in_shape(in_shape)
    model = _plain_cpu_copy(model)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")     # the exporter's deprecation and tracer warnings
        torch.onnx.export(model, (torch.zeros(2, *shape),), buf, input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    payload = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(payload))
    return payload


def export_onnx(model: nn.Module, path: str | os.PathLike, in_shape: Sequence[int], *, opset: int = 17) -> Path:
    """Write `model` as ONNX to `path` atomically (temp file + rename); returns the path."""
    return atomic_write_bytes(path, onnx_bytes(model, in_shape, opset=opset))


# ---------------------------------------------------------------------------------------------
# 2. ONNX Runtime (mokit.serve.OrtModel), wrapped as an nn.Module
# ---------------------------------------------------------------------------------------------

class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime that behaves like a float PyTorch model on the CPU:
    forward(x: (B, *in_shape) tensor) -> logits tensor. Works with evaluate() and measure_latency().

    The runtime itself (mokit.serve.OrtModel) needs no torch, so the server process starts fast."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = 1):
        super().__init__()
        self.runtime = OrtModel(path, threads=threads)
        self.path, self.in_shape = self.runtime.path, self.runtime.in_shape

    @property
    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (B, K) as numpy for a numpy batch (checked first)."""
        return self.runtime.run(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs on the CPU; the logits come back on x's device (so evaluate() works on any device)."""
        return torch.from_numpy(self.run(x.detach().cpu().numpy())).to(x.device)

    def extra_repr(self) -> str:
        return f"path={self.path.name}, in_shape={self.in_shape}, bytes={self.file_bytes:,}"


@torch.no_grad()
def max_abs_diff(model: nn.Module, other: nn.Module, x: torch.Tensor) -> float:
    """max |model(x) - other(x)| over all outputs (both run in eval mode on the CPU, on copies:
    neither caller's model is moved or switched to eval)."""
    x = x.detach().cpu()
    a, b = on_cpu(model)(x), on_cpu(other)(x)
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.float() - b.float()).abs().max())


# ---------------------------------------------------------------------------------------------
# 3. ONNX Runtime's own int8 (onnxruntime.quantization): static (calibrated) or dynamic
# ---------------------------------------------------------------------------------------------

class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over the first batches of real data."""

    def __init__(self, data, num_batches: int, batch_size: int):
        x = data.x.cpu() if hasattr(data, "x") else torch.as_tensor(data)
        self.batches = [x[i:i + batch_size].numpy().astype(np.float32)
                        for i in range(0, min(len(x), num_batches * batch_size), batch_size)]
        self.it = iter(self.batches)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {INPUT: x}

    def rewind(self):
        self.it = iter(self.batches)


def _quantize_static(src: Path, dst: Path, data, num_batches: int, batch_size: int, per_channel: bool) -> None:
    """Weights int8 per channel, activations uint8 with ranges fixed by calibration (QOperator format:
    QLinearConv / QLinearMatMul kernels, measured faster here than the QDQ format)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if data is None:
        raise ValueError("static int8 needs calibration data (data=train set); or use mode='dynamic'")
    reader = _Calibration(data, num_batches, batch_size)
    if not reader.batches:
        raise ValueError("calibration data is empty: static int8 needs at least one batch")
    CalibrationDataReader.register(_Calibration)
    quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QOperator, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _quantize_dynamic(src: Path, dst: Path, data, num_batches: int, batch_size: int, per_channel: bool) -> None:
    """Weights int8; activation ranges measured on the fly for every batch (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)


QUANT_MODES: dict[str, Callable] = {"static": _quantize_static, "dynamic": _quantize_dynamic}


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, mode: str = "static", data=None,
                  num_batches: int = 8, batch_size: int = 128, per_channel: bool = True) -> Path:
    """ONNX Runtime int8 of the fp32 file `src`, written atomically to `dst`.

    static: q = round(x / s) + z with activation scales s fixed from `num_batches` batches of `data`;
    dynamic: activation scales computed per batch at run time (Linear/MatMul-heavy models).
    """
    src, dst = Path(src), Path(dst)
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown int8 mode {mode!r}; allowed: {', '.join(QUANT_MODES)}")
    if not src.is_file():
        raise FileNotFoundError(f"no ONNX model file at {src}")
    if num_batches < 1 or batch_size < 1:
        raise ValueError(f"num_batches and batch_size must be >= 1, got {num_batches}, {batch_size}")
    root, level = logging.getLogger(), logging.getLogger().level
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)          # ORT logs "consider pre-processing" on every call
        try:
            out = Path(tmp) / dst.name        # ORT writes to a path: quantize there, then one atomic write
            QUANT_MODES[mode](src, out, data, num_batches, batch_size, per_channel)
        finally:
            root.setLevel(level)
        return atomic_write_bytes(dst, out.read_bytes())


# ---------------------------------------------------------------------------------------------
# 4. torch.export: the graph PyTorch itself captures (a .pt2 file), batch dimension dynamic
# ---------------------------------------------------------------------------------------------

def export_program(model: nn.Module, path: str | os.PathLike, in_shape: Sequence[int]) -> Path:
    """torch.export.export(model) with a dynamic batch, saved atomically as a .pt2 archive."""
    shape = _check_in_shape(in_shape)
    model = _plain_cpu_copy(model)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (torch.zeros(2, *shape),), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_program(path: str | os.PathLike) -> nn.Module:
    """The callable module of a .pt2 file written by export_program."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no torch.export file at {path}")
    try:
        with warnings.catch_warnings():      # torch's archive reader warns for every CPU-saved program
            warnings.filterwarnings("ignore", message="No complete tensor found in the group")
            return torch.export.load(str(path)).module()
    except Exception as e:
        raise ValueError(f"{path} is not a loadable torch.export archive: {e}") from e


# ---------------------------------------------------------------------------------------------
# 5. PyTorch vs ONNX Runtime: latency percentiles and throughput
# ---------------------------------------------------------------------------------------------

def compare_latency(models: dict[str, nn.Module], in_shape: Sequence[int], *, batch_sizes=(1, 64),
                    repeats: int = 100, threads: int = 1, rounds: int = 3):
    """A Table: p50/p99 ms per batch and examples/s for each model at each batch size, and the device.

    Every model runs on the CPU, where ONNX Runtime runs: PyTorch models as eval-mode CPU copies
    (a GPU-trained model is neither moved nor timed on the GPU against a 1-thread CPU runtime).
    Each (model, batch) is timed by metrics.measure_latency in `rounds` interleaved rounds (so a
    busy CPU hurts every model alike); p50 is the median over rounds of each round's median, p99
    the worst round's p99. ORT sessions use the thread count they were created with (mokit: 1).
    """
    from .metrics import Table, measure_latency

    shape = _check_in_shape(in_shape)
    models = {name: on_cpu(model) for name, model in models.items()}
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for b in batch_sizes:
            for name, model in models.items():
                runs.setdefault((name, b), []).append(
                    measure_latency(model, shape, batch_size=b, repeats=repeats, threads=threads))
    rows = Table()
    for (name, b), r in runs.items():
        p50 = float(np.median([m["ms"] for m in r]))
        rows.append({"model": name, "batch": b, "p50 ms": p50, "p99 ms": max(m["p99_ms"] for m in r),
                     "examples/s": b / (p50 / 1e3), "device": r[0]["device"]})
    return rows


def plot_tradeoffs(rows, *, x: str = "file KB", y: str = "accuracy %", color: str = "ms @ 256"):
    """Accuracy against file size (log) with latency as colour; the 3-objective Pareto front ringed
    (no other model is at least as accurate, as small and as fast, and better in one)."""
    import matplotlib.pyplot as plt

    from .nas import pareto_front

    front = set(pareto_front(list(rows), {y: True, x: False, color: False}))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    pts = ax.scatter([r[x] for r in rows], [r[y] for r in rows], c=[r[color] for r in rows], cmap="viridis_r",
                     s=60, zorder=3)
    for i, r in enumerate(rows):
        if i in front:
            ax.scatter(r[x], r[y], s=220, facecolors="none", edgecolors="crimson", lw=1.5, zorder=2)
        ax.annotate(r["model"], (r[x], r[y]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    fig.colorbar(pts, ax=ax, label=color)
    ax.set(xscale="log", xlabel=f"{x} (log)", ylabel=y, title="accuracy vs file size vs latency (ringed: Pareto front)")
    fig.tight_layout()
    return fig
