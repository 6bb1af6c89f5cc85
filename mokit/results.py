"""What a notebook claims, written down: `record("02_pruning", pruned_acc=98.1, ...)` for its
numbers, `claim("04_quantization", "int8_wins", speedup > 1, "int8 is faster", "int8 is slower")`
for a sentence the measurement chooses.

Both go to <runs>/results/<notebook>.json (merged with what that notebook recorded before),
where the tests and the course report read them.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write_bytes, plain, runs_root

try:
    import fcntl
except ImportError:        # Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]


def results_path(notebook: str) -> Path:
    """The JSON file that holds `notebook`'s recorded numbers."""
    if not isinstance(notebook, str) or not notebook or notebook.startswith(".") \
            or any(c in notebook for c in "/\\\0"):
        raise ValueError(f"notebook name must be a plain file stem like '00_setup_and_baselines', got {notebook!r}")
    return runs_root() / "results" / f"{notebook}.json"


@contextmanager
def _locked(path: Path):
    """An exclusive flock on <path's folder>/.<name>.lock while the block runs (no-op without fcntl)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                                        # releases the lock


def record(notebook: str, **numbers) -> dict:
    """Merge `numbers` into the notebook's results file and return everything recorded.

    Every value is checked and converted first (nothing is written if one is refused); then the
    file is read, merged and atomically replaced under an exclusive lock, so concurrent writers
    (several processes or threads) lose no update.
    """
    results_path(notebook)
    if not numbers:
        raise ValueError("record() needs at least one name=value")
    if "claims" in numbers:
        raise ValueError("'claims' is written by claim(), one sentence at a time; record() cannot replace it")
    values = {k: plain(v, k) for k, v in numbers.items()}
    return _update(notebook, lambda current: current.update(values))


def claim(notebook: str, name: str, held, if_held: str, otherwise: str, **evidence) -> str:
    """Say the sentence the measurement picked, and write it down with the numbers it rests on.

    `held` is the measured condition (a bool, or anything `bool()` takes that is not NaN);
    `if_held` / `otherwise` are the two sentences, each formatted with `evidence` (so
    "{speedup:.2f}x" prints the measured value). The chosen sentence is printed, returned, and
    recorded under `claims.<name>` of the notebook's results as {"held", "text", "evidence"}, where
    the course report lists it. Nothing is written if an argument is refused.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"claim name must be an identifier like 'int8_wins_at_256', got {name!r}")
    if torch.is_tensor(held) or isinstance(held, np.ndarray):
        if (held.numel() if torch.is_tensor(held) else held.size) != 1:
            raise ValueError(f"claim {name!r}: held must be one condition, got a {tuple(held.shape)} array")
        held = held.item()
    if held is None or (isinstance(held, (float, np.floating)) and math.isnan(held)):
        raise ValueError(f"claim {name!r}: held must be a measured condition (True / False), got {held!r}")
    for label, text in (("if_held", if_held), ("otherwise", otherwise)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"claim {name!r}: {label} must be a sentence (a non-empty str), got {text!r}")
    held = bool(held)
    recorded = plain(evidence, "evidence")
    try:
        text = (if_held if held else otherwise).format(**evidence)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"claim {name!r}: its sentence names {e} that the evidence ({sorted(evidence)}) "
                         f"does not give, or formats it wrongly") from e
    _update(notebook, lambda current: current.setdefault("claims", {}).__setitem__(
        name, {"held": held, "text": text, "evidence": recorded}))
    print(text)
    return text


def _update(notebook: str, change) -> dict:
    """Read the notebook's results, apply `change(current)`, atomically write them back, under the lock."""
    path = results_path(notebook)
    with _locked(path):
        current = load_results(notebook)
        change(current)
        atomic_write_bytes(path, json.dumps(current, indent=2, sort_keys=True, allow_nan=False).encode())
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
        numbers = {k: v for k, v in load_results(path.stem).items() if k != "claims"}   # sentences: the report
        for metric, value in sorted(flatten(numbers).items()):
            if isinstance(value, list) or (contains is not None and contains not in metric):
                continue
            rows.append({"notebook": path.stem, "metric": metric, "value": value})
    return rows
