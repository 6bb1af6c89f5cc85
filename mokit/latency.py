"""A latency predictor measured on this machine: a lookup table of each layer's time at its input shape,
summed over a model's layers, plus a fitted overhead (the per-layer tables of FBNet, ProxylessNAS and nn-Meter).

    table = LatencyTable(threads=1)
    table.fit([build(c) for c in some_configs], in_shape)      # measures their layers and the whole nets
    table.predict(model, in_shape)                             # ms per batch, from the table alone

A layer is keyed by its repr (type and every shape-setting knob) and its input shape, so two nets that share
a layer configuration share its measurement. `save` / `load` keep the table as JSON: numbers only, nothing
that runs on load.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from . import validate
from .files import atomic_write_bytes
from .metrics import measure_latency

__all__ = ["LatencyTable", "layer_calls", "layer_key"]


def layer_calls(model: nn.Module, in_shape: Sequence[int]) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """The leaf modules one forward pass calls, in order, each with its input's shape (batch left out)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    shape = tuple(validate.integer("in_shape entry", d, low=1) for d in in_shape)
    calls: list[tuple[nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, tuple(args[0].shape[1:]))))
             for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape, device=next(model.parameters(), torch.zeros(0)).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return calls


def layer_key(module: nn.Module, shape: Sequence[int]) -> str:
    """The table's key of one layer call: its repr and its input shape, e.g. 'ReLU() @ (8, 24, 24)'."""
    return f"{module!r} @ {tuple(shape)}"


class LatencyTable:
    """Measured ms of each layer configuration (at batch_size, on `threads` CPU threads), and the fit
    latency(model) ~ overhead_ms + scale * sum(layer ms) over whole models measured the same way."""

    def __init__(self, *, batch_size: int = 1, repeats: int = 30, threads: int | None = 1):
        self.batch_size = validate.integer("batch_size", batch_size, low=1, high=2 ** 20)
        self.repeats = validate.integer("repeats", repeats, low=1, high=10 ** 6)
        self.threads = None if threads is None else validate.integer("threads", threads, low=1, high=1024)
        self.entries: dict[str, float] = {}
        self.overhead_ms, self.scale, self.fitted_on = 0.0, 1.0, 0

    def _ms(self, model: nn.Module, in_shape: Sequence[int]) -> float:
        return measure_latency(model, in_shape, batch_size=self.batch_size, repeats=self.repeats,
                               threads=self.threads)["ms"]

    def table_ms(self, model: nn.Module, in_shape: Sequence[int]) -> float:
        """The sum of the model's layers' table entries, measuring the ones the table lacks."""
        total = 0.0
        for module, shape in layer_calls(model, in_shape):
            key = layer_key(module, shape)
            if key not in self.entries:
                self.entries[key] = self._ms(module, shape)
            total += self.entries[key]
        return total

    def fit(self, models: Sequence[nn.Module], in_shape: Sequence[int]) -> dict:
        """Measure each model whole and fit overhead_ms and scale by least squares; returns the fit."""
        if not isinstance(models, Sequence) or len(models) < 2:
            raise ValueError(f"fit needs a list of at least 2 models to fit a line through, got {models!r}")
        x = [self.table_ms(m, in_shape) for m in models]
        y = [self._ms(m, in_shape) for m in models]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        var = sum((a - mx) ** 2 for a in x)
        self.scale = sum((a - mx) * (b - my) for a, b in zip(x, y)) / var if var > 0 else 1.0
        self.overhead_ms, self.fitted_on = my - self.scale * mx, len(models)
        return {"overhead_ms": self.overhead_ms, "scale": self.scale, "models": len(models),
                "layers": len(self.entries)}

    def predict(self, model: nn.Module, in_shape: Sequence[int]) -> float:
        """Predicted ms per batch: overhead_ms + scale * table_ms (the plain sum before any fit)."""
        return self.overhead_ms + self.scale * self.table_ms(model, in_shape)

    def save(self, path: str | os.PathLike) -> Path:
        """The table as JSON, written atomically."""
        blob = {"batch_size": self.batch_size, "repeats": self.repeats, "threads": self.threads,
                "overhead_ms": self.overhead_ms, "scale": self.scale, "fitted_on": self.fitted_on,
                "entries": self.entries}
        return atomic_write_bytes(path, json.dumps(blob, indent=1, sort_keys=True).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """A table saved by save(); anything else is a ValueError naming the file."""
        try:
            blob = json.loads(Path(path).read_text())
            table = cls(batch_size=blob["batch_size"], repeats=blob["repeats"], threads=blob["threads"])
            table.overhead_ms = validate.number("overhead_ms", blob["overhead_ms"])
            table.scale = validate.number("scale", blob["scale"])
            table.fitted_on = validate.integer("fitted_on", blob["fitted_on"], low=0)
            entries = blob["entries"]
            if not isinstance(entries, dict) or not all(
                    isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float))
                    and math.isfinite(v) and v >= 0 for k, v in entries.items()):
                raise ValueError("entries must map layer keys to finite non-negative ms")
            table.entries = {k: float(v) for k, v in entries.items()}
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{path}: not a latency table saved by LatencyTable.save ({type(e).__name__}: {e})") \
                from e
        return table
