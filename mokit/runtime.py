"""The ONNX Runtime model wrapper that export and serve both use: ONNX Runtime and numpy only (no torch,
so a server process that imports it starts fast).

    model = OrtModel("runs/models/lenet5.onnx", threads=1)
    logits = model.run(images)          # (B, *in_shape) float32 -> (B, K)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

INPUT, OUTPUT = "input", "logits"   # tensor names inside every ONNX file mokit exports


def load_session(path: str | os.PathLike, *, threads: int | None = 1):
    """An ONNX Runtime CPU session for the file at `path` (threads=None: ORT's default, all cores).

    Spinning worker threads are switched off: on a shared 2-core machine they steal the CPU.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model file at {path}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an integer >= 1 or None, got {threads!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:   # ORT raises its own Fail / InvalidProtobuf / ... types
        raise ValueError(f"{path} is not a loadable ONNX model: {e}") from e


def check_batch(x, in_shape: Sequence[int]) -> np.ndarray:
    """x as a C-contiguous float32 array of shape (B, *in_shape), else ValueError naming what is wrong."""
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise ValueError(f"input must be numbers (float or int), got dtype {x.dtype}")
    if x.ndim != len(in_shape) + 1 or tuple(x.shape[1:]) != tuple(in_shape) or x.shape[0] < 1:
        raise ValueError(f"input has shape {tuple(x.shape)}; allowed: (batch >= 1, {', '.join(map(str, in_shape))})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("input contains NaN or infinity; allowed: finite numbers")
    return x


class OrtModel:
    """An ONNX file in an ONNX Runtime session: run(x (B, *in_shape)) -> logits (B, K), numpy."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = 1):
        self.path = Path(path)
        self.session = load_session(self.path, threads=threads)
        dims = self.session.get_inputs()[0].shape[1:]
        if not all(isinstance(d, int) for d in dims):
            raise ValueError(f"{self.path.name}: input has symbolic per-example dimensions {dims}; need fixed ones")
        self.in_shape = tuple(dims)

    def run(self, x) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUT: check_batch(x, self.in_shape)})[0]
