"""A tabular benchmark of notebook 07's space: every config of a grid over its knobs trained once per seed,
with the validation accuracy and the measured seconds after every epoch, so that search strategies can be
compared many times over in seconds instead of hours.

    python -m mokit.bench build [--out PATH] [--workers 2] [--seeds 3] [--train-size 5000]
    python -m mokit.bench info [PATH]

    table = load_bench()                         # checked (file, schema, values) before any trial runs
    space = bench_space(table)                   # choices over the table's grid: strategies draw table configs
    objective = bench_objective(table, seed=0)   # objective(config, budget) -> {"val_acc", "seconds"}
    out = compare(table, repetitions=20)         # seven strategies on a simulated clock

Like LCBench and NAS-Bench-201, a budget-b lookup is epoch b of ONE run whose learning-rate schedule spans all
the table's epochs, not a separate b-epoch run. Its cost is that run's CPU seconds (one torch thread) to the end
of epoch b plus one evaluation of the validation split; a search's simulated clock sums its trials' costs. A run
that diverged is scored as its weights then predict (about chance), at the cost of the epochs it ran. The build
appends every finished (config, seed) to a fsync'd <table>.partial.jsonl, so a killed build resumes where it
stopped; the table (an npz, read without pickle) is written atomically once every run has finished.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import search, validate
from .files import atomic_write_bytes

SCHEMA = "mokit.bench/1"
DEFAULT_PATH = Path(__file__).resolve().parent / "data_files" / "bench07_mnist_mlp.npz"
# 07's space as a grid: lr at values(float_range(1e-4, 1, log=True), 6) to 3 digits; weight decay at the
# log-midpoint of 07's range; the momentum optimizer at its default momentum
GRID = {"lr": [1e-4, 6.31e-4, 3.98e-3, 0.0251, 0.158, 1.0], "batch_size": [32, 64, 128, 256],
        "weight_decay": [1e-4], "optimizer": ["sgd", "momentum", "adam"],
        "schedule": ["constant", "cosine", "onecycle"]}
KNOBS = ("lr", "batch_size", "weight_decay", "optimizer", "schedule", "momentum")
STRATEGIES = ("grid", "random", "successive halving", "hyperband", "ASHA", "TPE", "evolution")
ARRAYS = ("meta", "val_acc", "seconds", "diverged")
_WORKER: dict = {}


@dataclass
class Bench:
    """A loaded table: val_acc and seconds are (configs, seeds, epochs), diverged (configs, seeds) holds the
    epoch a run diverged at (0: never); configs[i] is row i."""
    path: Path
    meta: dict
    val_acc: np.ndarray
    seconds: np.ndarray
    diverged: np.ndarray
    configs: list[dict] = field(init=False, repr=False)
    seeds: list[int] = field(init=False, repr=False)
    epochs: int = field(init=False, repr=False)
    grid: dict[str, list] = field(init=False, repr=False)

    def __post_init__(self):
        self.configs, self.seeds, self.epochs, self.grid = (self.meta[k] for k in ("configs", "seeds", "epochs",
                                                                                   "grid"))
        self._rows = {tuple(c.values()): i for i, c in enumerate(self.configs)}

    def row(self, config: dict) -> int:
        """The row of `config` (exactly one of the table's configs), else a ValueError."""
        ok = isinstance(config, dict) and set(config) == set(self.grid)
        i = self._rows.get(tuple(config[k] for k in self.grid)) if ok else None
        if i is None:
            raise ValueError(f"config {config!r} is not in the benchmark table {self.path}; draw configs from "
                             f"bench_space(table) (knobs {', '.join(self.grid)})")
        return i


# ------------------------------------------------------------------------------------------- build

def _settings(grid, seeds, epochs, train_size, val_size, dataset, hidden) -> dict:
    for name, v, high in (("seeds", seeds, 100), ("epochs", epochs, 100), ("train_size", train_size, None),
                          ("val_size", val_size, None), ("hidden", hidden, 100_000)):
        validate.integer(name, v, low=1, high=high)
    from .data import list_datasets
    validate.choice("dataset", dataset, list_datasets())
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty dict of knob -> list of values, got {grid!r}")
    for k, v in grid.items():
        validate.choice("grid knob", k, KNOBS)
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {v!r}")
        search.choice(*v)                                 # plain, distinct options
    return json.loads(json.dumps({"schema": SCHEMA, "dataset": dataset, "model": "mlp", "hidden": hidden,
                                  "train_size": train_size, "val_size": val_size, "split_seed": 0,
                                  "epochs": epochs, "seeds": list(range(seeds)), "grid": dict(grid)}))


def bench_data(settings: dict):
    """(train, val, real): 07's split (split_off, then subset; seed 0) at the table's sizes, on the CPU."""
    from .data import load_dataset
    full = load_dataset(settings["dataset"], "train")
    rest, val = full.split_off(settings["val_size"], seed=settings["split_seed"])
    return rest.subset(settings["train_size"], seed=settings["split_seed"]), val, full.real


def train_run(config: dict, seed: int, train_data, val_data, epochs: int, hidden: int = 128) -> dict:
    """One run: val_acc and cumulative seconds (training, plus one evaluation) after each epoch. Seconds are
    this process's CPU time (one torch thread), which other processes on the machine inflate far less than
    wall-clock time."""
    from .models import create_model
    from .train import evaluate, seed_everything, train
    seed_everything(seed)
    model = create_model("mlp", hidden=(hidden,), in_shape=train_data.shape, num_classes=train_data.num_classes)
    accs: list[float] = []
    ends: list[float] = []
    evals = [0.0]

    def hook(m, info) -> None:
        if info.step % (info.total_steps // epochs) == 0:          # the last step of an epoch
            t = time.process_time()
            ends.append(t - t0 - evals[0])
            accs.append(evaluate(m, val_data)["accuracy"])
            m.train()
            evals[0] += time.process_time() - t

    t0, diverged = time.process_time(), 0
    try:
        train(model, train_data, epochs=epochs, seed=seed, device="cpu", progress=False, on_step=hook, **config)
    except FloatingPointError:
        diverged = len(accs)
    pad, one_eval = epochs - len(accs), evals[0] / max(1, len(accs))
    return {"config": config, "seed": seed, "val_acc": accs + accs[-1:] * pad,
            "seconds": [e + one_eval for e in ends + ends[-1:] * pad], "diverged": diverged}


def _init_worker(settings: dict) -> None:
    """A worker: one torch thread, the data, and a tiny run per optimizer and schedule (a process's first use of
    each costs set-up time that no timed run should pay)."""
    import torch
    torch.set_num_threads(1)
    _WORKER.update(settings=settings, data=bench_data(settings)[:2])
    small, val_data = _WORKER["data"][0].subset(min(len(_WORKER["data"][0]), 256)), _WORKER["data"][1]
    for opt, sched in itertools.product(*(settings["grid"].get(k, [d]) for k, d in (("optimizer", "adam"),
                                                                                     ("schedule", "cosine")))):
        train_run({"optimizer": opt, "schedule": sched}, 0, small, val_data, 1, settings["hidden"])


def _work(config: dict, seed: int) -> dict:
    train_data, val_data = _WORKER["data"]
    return train_run(config, seed, train_data, val_data, _WORKER["settings"]["epochs"], _WORKER["settings"]["hidden"])


def _key(config: dict, seed: int) -> str:
    return json.dumps([config, seed], sort_keys=True)


def _read_partial(partial: Path, settings: dict) -> dict[str, dict]:
    """The finished runs of a partial build; a torn last line (a kill mid-append) is cut off."""
    if not partial.exists():
        return {}
    blob = partial.read_bytes()
    if not blob.endswith(b"\n"):
        with open(partial, "r+b") as f:
            f.truncate(len(blob := blob[:blob.rfind(b"\n") + 1]))
    lines = blob.decode("utf-8", errors="replace").splitlines()
    try:
        header = json.loads(lines[0])["settings"] if lines else settings
        rows = {_key(r["config"], r["seed"]): r for r in map(json.loads, lines[1:])}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"partial benchmark {partial} is corrupt ({e}); remove it to build afresh") from e
    if header != settings:
        raise ValueError(f"partial benchmark {partial} was started with other settings ({header}); finish it "
                         f"with those, or remove it to build with {settings}")
    return rows


def _append(partial: Path, obj: dict) -> None:
    fd = os.open(partial, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def build(out=None, *, grid: dict | None = None, seeds: int = 3, epochs: int = 9, train_size: int = 5000,
          val_size: int = 5000, dataset: str = "mnist", hidden: int = 128, workers: int = 2,
          max_runs: int | None = None, progress: bool = True) -> Path | None:
    """Train every (config of `grid`, seed) not yet in <out>.partial.jsonl on `workers` processes (one torch
    thread each), then write the table to `out` (default DEFAULT_PATH). Returns its path, or None when
    `max_runs` (runs to do now) left some undone: call it again to go on."""
    out = Path(out) if out is not None else DEFAULT_PATH
    settings = _settings(GRID if grid is None else grid, seeds, epochs, train_size, val_size, dataset, hidden)
    validate.integer("workers", workers, low=1, high=256)
    if max_runs is not None:
        validate.integer("max_runs", max_runs, low=0, what="or None")
    validate.flag("progress", progress)
    if out.exists():
        have = {k: v for k, v in load_bench(out).meta.items() if k in settings}
        if have != settings:
            raise ValueError(f"{out} holds a table with other settings ({have}); remove it or give another --out")
        return out
    configs = [dict(zip(settings["grid"], v)) for v in itertools.product(*settings["grid"].values())]
    partial = out.with_name(out.name + ".partial.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _read_partial(partial, settings)
    if not partial.exists() or partial.stat().st_size == 0:
        _append(partial, {"settings": settings})
    jobs = [(c, s) for s in settings["seeds"] for c in configs if _key(c, s) not in done][:max_runs]
    from tqdm.auto import tqdm
    with tqdm(total=len(configs) * len(settings["seeds"]), initial=len(done), unit="run", desc="bench",
              disable=not progress or os.environ.get("MOKIT_PROGRESS") == "0", mininterval=1.0) as bar:
        for row in _runs(jobs, settings, workers):
            _append(partial, row)
            done[_key(row["config"], row["seed"])] = row
            bar.update(1)
    if len(done) < len(configs) * len(settings["seeds"]):
        return None
    runs = [[done[_key(c, s)] for s in settings["seeds"]] for c in configs]
    import torch
    meta = {**settings, "configs": configs, "real_data": bool(bench_data(settings)[2]),
            "lookup": "a budget-b lookup is epoch b of one run whose schedule spans all epochs",
            "seconds": "cumulative CPU seconds (time.process_time, one torch thread) to the end of each epoch, "
                       "plus one evaluation of the validation split",
            "build": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "run_seconds": sum(r["seconds"][-1] for rs in runs for r in rs)}}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.array(json.dumps(meta)),
                        val_acc=np.array([[r["val_acc"] for r in rs] for rs in runs], dtype=np.float32),
                        seconds=np.array([[r["seconds"] for r in rs] for rs in runs], dtype=np.float32),
                        diverged=np.array([[r["diverged"] for r in rs] for rs in runs], dtype=np.int16))
    atomic_write_bytes(out, buf.getvalue())
    load_bench(out)                                       # what was written reads back
    partial.unlink()
    return out


def _runs(jobs: list, settings: dict, workers: int):
    """The finished runs of `jobs` as they finish, from `workers` processes (each loads the data once)."""
    if not jobs:
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                             initializer=_init_worker, initargs=(settings,)) as pool:
        futures = [pool.submit(_work, c, s) for c, s in jobs]
        try:
            for f in as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()


# -------------------------------------------------------------------------------------------- load

def load_bench(path=None) -> Bench:
    """The table at `path` (default DEFAULT_PATH), checked before any trial runs: a missing file is a
    FileNotFoundError, a corrupt or wrong one a ValueError, each naming the file and the command that builds it."""
    path = Path(path) if path is not None else DEFAULT_PATH
    again = f"build it with `python -m mokit.bench build --out {path}`"
    if not path.is_file():
        raise FileNotFoundError(f"benchmark table {path} does not exist; {again}")

    def bad(why: str) -> ValueError:
        return ValueError(f"benchmark table {path} is not a valid {SCHEMA} table: {why}; re{again}")

    try:
        with np.load(path, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
        meta = json.loads(str(a["meta"])) if "meta" in a else None
    except Exception as e:  # a truncated zip, a bad CRC, pickled arrays, not JSON: all name the file
        raise ValueError(f"cannot read benchmark table {path}: corrupt or not an npz ({type(e).__name__}: {e}); "
                         f"re{again}") from e
    if missing := [k for k in ARRAYS if k not in a]:
        raise bad(f"it lacks {', '.join(missing)}")
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise bad(f"its schema is {meta.get('schema') if isinstance(meta, dict) else meta!r}")
    try:
        grid, configs = meta["grid"], meta["configs"]
        expected = [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
        shape = (len(configs), len(meta["seeds"]), int(meta["epochs"]))
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise bad(f"its metadata is incomplete ({type(e).__name__}: {e})") from e
    if configs != expected or not configs:
        raise bad("its configs are not the product of its grid")
    for k in ("val_acc", "seconds"):
        if a[k].shape != shape or a[k].dtype.kind != "f" or not np.isfinite(a[k]).all():
            raise bad(f"{k} must be finite floats of shape {shape}, got {a[k].dtype} {a[k].shape}")
    if ((a["val_acc"] < 0) | (a["val_acc"] > 100)).any():
        raise bad("val_acc has values outside [0, 100]")
    if (a["seconds"] <= 0).any() or (np.diff(a["seconds"], axis=2) < 0).any():
        raise bad("seconds must be positive and never fall from one epoch to the next")
    d = a["diverged"]
    if d.shape != shape[:2] or d.dtype.kind not in "iu" or ((d < 0) | (d > shape[2])).any():
        raise bad(f"diverged must be epochs in [0, {shape[2]}] of shape {shape[:2]}")
    return Bench(path, meta, a["val_acc"], a["seconds"], d)


def check_bench(table) -> Bench:
    if not isinstance(table, Bench):
        raise ValueError(f"table must be a Bench from load_bench(), got {type(table).__name__}")
    return table


def bench_space(table: Bench) -> dict:
    """A mokit space of choices over the table's grid: every strategy draws table configs only."""
    return search.validate_space({k: search.choice(*v) for k, v in check_bench(table).grid.items()})


def bench_objective(table: Bench, seed: int = 0) -> Callable[[dict, int], dict]:
    """objective(config, budget) -> {"val_acc", "seconds"}: the run with training seed `seed` after epoch
    `budget` (a config outside the table, or a budget beyond its epochs, is a ValueError)."""
    s = check_bench(table).seeds.index(validate.choice("seed", seed, table.seeds))

    def objective(config: dict, budget: int) -> dict:
        validate.integer("budget", budget, low=1, high=table.epochs, what="epochs the table holds")
        i = table.row(config)
        return {"val_acc": float(table.val_acc[i, s, budget - 1]), "seconds": float(table.seconds[i, s, budget - 1])}
    return objective


# ----------------------------------------------------------------------------------------- compare

def clock(result: search.SearchResult, full_budget: int) -> tuple[np.ndarray, np.ndarray]:
    """(simulated seconds after each trial, best val_acc so far among full-budget trials; nan before one)."""
    xs = np.cumsum([t.metrics.get("seconds", 0.0) for t in result.trials])
    ys = np.maximum.accumulate([t.metrics["val_acc"] if t.budget == full_budget and t.status == "ok" else -np.inf
                                for t in result.trials])
    return xs, np.where(np.isfinite(ys), ys, np.nan)


def grid_points(grid: dict, n_trials: int) -> dict:
    """Each knob's centred subset of values: while the grid has more than n_trials configs, the knob with the
    most values loses one (of equals, the later knob: the space's first knobs stay widest)."""
    keep = {k: len(v) for k, v in grid.items()}
    while math.prod(keep.values()) > n_trials and max(keep.values()) > 1:
        keep[max(reversed(keep), key=keep.__getitem__)] -= 1
    return {k: [v[round((i + 0.5) * len(v) / keep[k] - 0.5)] for i in range(keep[k])] for k, v in grid.items()}


def _strategies(table: Bench, n_trials: int, eta: int) -> dict[str, Callable]:
    """name -> run(objective, space, seed) -> [SearchResult, ...], each at about n_trials * epochs epochs."""
    top, total, rungs = table.epochs, n_trials * table.epochs, search.rungs(1, table.epochs, eta)
    kw: dict[str, Any] = {"metric": "val_acc", "min_budget": 1, "max_budget": top, "eta": eta}
    one: dict[str, Any] = {"metric": "val_acc", "budget": top}

    def sh_compute(n: int) -> int:
        counts = [n]
        for _ in rungs[1:]:
            counts.append(max(1, counts[-1] // eta))
        return sum(c * r for c, r in zip(counts, rungs))
    sh_n = max([n for n in range(1, len(table.configs) + 1) if sh_compute(n) <= total] or [1])
    grid_space = {k: search.choice(*v) for k, v in grid_points(table.grid, n_trials).items()}

    def hyperband(obj, space, seed):                  # repeated with fresh configs while the compute lasts
        out = [search.hyperband(obj, space, seed=seed * 1000, **kw)]
        while sum(r.compute for r in out) + out[0].compute <= total:
            out.append(search.hyperband(obj, space, seed=seed * 1000 + len(out), **kw))
        return out

    return {"grid": lambda obj, space, seed: [search.grid_search(obj, grid_space, **one)],
            "random": lambda obj, space, seed: [search.random_search(obj, space, n_trials=n_trials, seed=seed, **one)],
            "successive halving": lambda obj, space, seed: [search.successive_halving(obj, space, n_configs=sh_n,
                                                                                      seed=seed, **kw)],
            "hyperband": hyperband,
            "ASHA": lambda obj, space, seed: [search.async_halving(obj, space, n_configs=total, seed=seed, workers=1,
                                                                   compute=total, **kw)],
            "TPE": lambda obj, space, seed: [search.optuna_search(obj, space, n_trials=n_trials, sampler="tpe",
                                                                  seed=seed, **one)],
            "evolution": lambda obj, space, seed: [search.evolution(obj, space, n_trials=n_trials, seed=seed, **one)]}


def t975(df: int) -> float:
    """Student's t 0.975 quantile (Cornish-Fisher about 1.96: within 0.15 at df = 2, 0.002 from df = 10)."""
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2) \
        + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)


@dataclass
class Comparison:
    """compare()'s result: per strategy, one (simulated seconds, best so far) curve and its compute per repetition."""
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    compute: dict[str, list[int]]
    wall_seconds: float

    @property
    def repetitions(self) -> int:
        return len(next(iter(self.curves.values())))

    def final(self, name: str) -> np.ndarray:
        """The best full-budget val_acc each repetition of `name` ended with."""
        return np.array([ys[-1] for _, ys in self.curves[name]])

    def stats(self, name: str) -> tuple[float, float]:
        """(mean, sample std) of the final best over the repetitions (std 0 for one repetition)."""
        f = self.final(name)
        return float(f.mean()), float(f.std(ddof=1)) if len(f) > 1 else 0.0

    @property
    def winner(self) -> str:
        return max(self.curves, key=lambda k: self.stats(k)[0])

    def summary(self):
        from .metrics import Table
        return Table({"strategy": k, "mean best val %": self.stats(k)[0], "std": self.stats(k)[1],
                      "worst": float(self.final(k).min()), "best": float(self.final(k).max()),
                      "mean epochs": float(np.mean(self.compute[k])),
                      "mean seconds": float(np.mean([xs[-1] for xs, _ in self.curves[k]]))} for k in self.curves)

    def bands(self, points: int = 200) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """name -> (seconds, mean, low, high): the best so far's mean over the repetitions and its 95% confidence
        interval (Student's t), from when every repetition had a full-budget trial to when the last one ended
        (at `points` even steps and each strategy's end)."""
        validate.integer("points", points, low=2, high=100_000)
        ends = {k: max(xs[-1] for xs, _ in runs) for k, runs in self.curves.items()}
        t = np.unique(np.r_[np.linspace(0.0, max(ends.values()), points), list(ends.values())])
        out = {}
        for k, runs in self.curves.items():                 # a repetition that ended holds its final best
            ys = np.array([[y[i - 1] if (i := np.searchsorted(xs, tt, side="right")) else np.nan for tt in t]
                           for xs, y in runs])
            ok = ~np.isnan(ys).any(0) & (t <= ends[k])
            mean = np.where(ok, np.where(ok, ys, 0.0).mean(0), np.nan)
            half = t975(len(runs) - 1) * ys.std(0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else 0 * mean
            out[k] = (t, mean, mean - half, mean + half)
        return out


def compare(table: Bench, *, strategies=STRATEGIES, repetitions: int = 20, n_trials: int = 27, eta: int = 3,
            progress: bool = False) -> Comparison:
    """Each strategy `repetitions` times on the table: repetition r with strategy seed r and the table's training
    seed r % len(seeds), each at about n_trials full-budget trials of compute (successive halving with as many
    configs as fit, Hyperband repeated, ASHA capped there, the grid cut to at most n_trials configs)."""
    space = bench_space(table)
    validate.integer("repetitions", repetitions, low=1, high=10_000)
    validate.integer("n_trials", n_trials, low=1, high=len(table.configs))
    validate.integer("eta", eta, low=2, high=100)
    validate.flag("progress", progress)
    runs = _strategies(table, n_trials, eta)
    if isinstance(strategies, str) or not strategies:
        raise ValueError(f"strategies must be a non-empty list of names out of {', '.join(STRATEGIES)}")
    names = [validate.choice("strategy", s, list(runs)) for s in strategies]
    curves: dict[str, list] = {k: [] for k in names}
    compute: dict[str, list[int]] = {k: [] for k in names}
    import optuna
    from tqdm.auto import tqdm
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for r in tqdm(range(repetitions), desc="compare", disable=not progress):
            objective = bench_objective(table, table.seeds[r % len(table.seeds)])
            for k in names:
                results = runs[k](objective, space, r)
                curves[k].append(clock(search.SearchResult(k, [t for res in results for t in res.trials],
                                                           "val_acc"), table.epochs))
                compute[k].append(sum(res.compute for res in results))
    return Comparison(curves, compute, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- CLI

def info(table: Bench) -> str:
    """What the table holds, in a few lines."""
    m, final = table.meta, table.val_acc[:, :, -1].mean(1)
    return "\n".join([
        f"{table.path} ({table.path.stat().st_size / 1e3:.1f} kB): {len(table.configs)} configs x {len(table.seeds)} "
        f"seeds x {table.epochs} epochs of {m['model']} (hidden {m['hidden']}) on {m['dataset']} "
        f"({'real' if m.get('real_data') else 'STAND-IN'} data), {m['train_size']} training / {m['val_size']} "
        f"validation examples", f"grid: {json.dumps(m['grid'])}",
        f"a full run takes {table.seconds[:, :, -1].min():.2f} .. {table.seconds[:, :, -1].max():.2f} CPU s "
        f"({table.seconds[:, :, -1].sum() / 3600:.2f} h in all); {int((table.diverged > 0).sum())} runs diverged",
        "best configs by mean final val_acc over the seeds:",
        *(f"  {final[i]:6.2f}%  {search.format_config(table.configs[i])}" for i in np.argsort(-final)[:5])])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mokit.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train every (config, seed); resumable")
    b.add_argument("--out", default=str(DEFAULT_PATH))
    for name, default in (("workers", 2), ("seeds", 3), ("epochs", 9), ("train-size", 5000), ("val-size", 5000)):
        b.add_argument(f"--{name}", type=int, default=default)
    b.add_argument("--max-runs", type=int, default=None, help="stop after this many runs (run again to go on)")
    sub.add_parser("info", help="what a table holds").add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    a = p.parse_args(argv)
    if a.command == "info":
        print(info(load_bench(a.path)))
        return
    path = build(a.out, seeds=a.seeds, epochs=a.epochs, train_size=a.train_size, val_size=a.val_size,
                 workers=a.workers, max_runs=a.max_runs)
    print(info(load_bench(path)) if path else f"stopped after --max-runs; run it again to go on ({a.out})")


if __name__ == "__main__":
    from mokit.bench import main as _main  # the module's own functions, for the worker processes
    _main()
