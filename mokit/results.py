"""What a notebook claims, written down: `record("02_pruning", pruned_acc=98.1, ...)`.

Numbers go to <runs>/results/<notebook>.json (merged with what that notebook recorded before),
where the tests and the course report read them.
"""

from __future__ import annotations

import json
import math
from numbers import Number
from pathlib import Path

import torch

from .data import atomic_write_bytes, runs_root


def results_path(notebook: str) -> Path:
    """The JSON file that holds `notebook`'s recorded numbers."""
    if not notebook or "/" in notebook or notebook.startswith("."):
        raise ValueError(f"notebook name must be a plain file stem like '00_setup_and_baselines', got {notebook!r}")
    return runs_root() / "results" / f"{notebook}.json"


def _plain(value):
    """Tensors, numpy scalars, tuples and dicts of them -> JSON-able Python values."""
    if torch.is_tensor(value):
        return _plain(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):   # numpy scalars
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Number) and not isinstance(value, bool) and not math.isfinite(value):
        raise ValueError(f"refusing to record a non-finite number: {value}")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a {type(value).__name__}: {value!r}")


def record(notebook: str, **numbers) -> dict:
    """Merge `numbers` into the notebook's results file (atomically) and return everything recorded."""
    if not numbers:
        raise ValueError("record() needs at least one name=value")
    path = results_path(notebook)
    current = load_results(notebook) if path.exists() else {}
    current.update({k: _plain(v) for k, v in numbers.items()})
    atomic_write_bytes(path, json.dumps(current, indent=2, sort_keys=True).encode())
    return current


def load_results(notebook: str) -> dict:
    """The numbers `notebook` recorded ({} if none)."""
    path = results_path(notebook)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from e


def _lookup(results: dict, dotted: str):
    value = results
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def check_bands(results: dict, bands: dict) -> list[str]:
    """Problems with `results` against `bands` ({"name" or "dict.key": [low, high] or exact value}).

    Returns one readable line per number that is missing or outside its band ([] when all hold).
    """
    problems = []
    for name, band in bands.items():
        try:
            value = _lookup(results, name)
        except KeyError:
            problems.append(f"{name}: not recorded")
            continue
        if isinstance(band, list) and len(band) == 2 and all(isinstance(b, (int, float)) for b in band):
            if not isinstance(value, (int, float)) or not band[0] <= value <= band[1]:
                problems.append(f"{name} = {value!r}, outside its band [{band[0]}, {band[1]}]")
        elif value != band:
            problems.append(f"{name} = {value!r}, expected {band!r}")
    return problems


BANDS_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "bands"


def load_bands(notebook: str, kind: str, folder: str | Path | None = None) -> dict:
    """Section `kind` ('smoke', 'smoke_real', 'smoke_<dataset>', 'smoke_real_<dataset>', 'full' or
    'references') of <folder>/<notebook>.json
    (folder: notebooks/bands/)."""
    path = Path(folder or BANDS_DIR) / f"{notebook}.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get(kind, {})


def bands_for(notebook: str, results: dict, *, smoke: bool, folder: str | Path | None = None) -> dict:
    """The bands a run is held to: "full"; or "smoke", plus "smoke_real" when it recorded real_data=True.

    A run that recorded dataset="cifar10" (say) is also held to "smoke_cifar10" and, on real data,
    "smoke_real_cifar10": bands (or parts) that hold for one dataset only. Later sections win.
    """
    if not smoke:
        return load_bands(notebook, "full", folder)
    kinds = ["smoke", "smoke_real"] if results.get("real_data") else ["smoke"]
    dataset = results.get("dataset")
    out: dict = {}
    for kind in kinds:
        out |= load_bands(notebook, kind, folder)
        if isinstance(dataset, str) and dataset:
            out |= load_bands(notebook, f"{kind}_{dataset}", folder)
    return out


def flatten(values: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted names the bands use (an empty dict stays a value)."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def ledger(contains: str | None = None):
    """Every notebook's recorded numbers in one Table: one row per (notebook, metric, value).

    Reads <runs>/results/*.json; nested dicts become dotted names, lists are left out;
    `contains` keeps only metrics whose name contains that text (e.g. "acc").
    """
    from .metrics import Table

    rows = Table()
    for path in sorted((runs_root() / "results").glob("*.json")):
        for metric, value in sorted(flatten(load_results(path.stem)).items()):
            if isinstance(value, list) or (contains is not None and contains not in metric):
                continue
            rows.append({"notebook": path.stem, "metric": metric, "value": value})
    return rows
