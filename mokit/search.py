"""Search spaces and search loops shared by hyperparameter search and NAS.

    space = {"lr": float_range(1e-4, 1.0, log=True),
             "optimizer": choice("sgd", "momentum", "adam"),
             "momentum": float_range(0.5, 0.99, when={"optimizer": ["momentum"]})}
    result = random_search(objective, space, budget=3, n_trials=9, seed=0, name="demo")
    result.best.config, result.best.value, result.compute

The one contract: `objective(config, budget) -> float or dict of metrics`, where budget counts
training epochs, so strategies are compared at equal compute (the sum of the budgets they spent).
Every trial (config, budget, metrics, seconds, status) is appended to
<runs>/searches/<name>/trials.jsonl (fsync'd) the moment it finishes. A trial is keyed by a hash
of (config, budget): a restarted search replays its seeded proposals, reads the finished trials
back instead of running them again, and continues where it stopped. An objective that raises or
returns NaN gives a "failed" trial (worst value); the search goes on.

Strategies: grid_search, random_search, successive_halving, hyperband, evolution (regularized /
aging), hill_climb (greedy), tree_search (MCTS over the sequence of decisions), and optuna_search
(TPE, NSGA-II, random; Optuna's pruners; Optuna storages so several processes or machines share
one study).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import numbers
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import validate

try:
    import fcntl
except ImportError:          # Windows: no advisory locks; each line is still one O_APPEND write
    fcntl = None

# ---------------------------------------------------------------------------------------------
# 1. Spaces: categorical choices, int / float ranges (optionally log), conditions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    """One decision. kind: 'choice' (options) | 'int' | 'float' (low..high, inclusive, log?).

    when={"other": [values]} makes it active only when an earlier decision took one of those values.
    """
    kind: str
    options: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    when: tuple = ()          # ((name, (values, ...)), ...)


def _when(when: dict | None) -> tuple:
    if when is None:
        return ()
    if not isinstance(when, dict) or not when or not all(isinstance(k, str) and k for k in when):
        raise ValueError(f"when must be a non-empty dict {{name: [values]}}, got {when!r}")
    out = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else (v,)) for k, v in when.items())
    for k, values_ in out:
        if not values_:
            raise ValueError(f"when[{k!r}] must list at least one value, got {when[k]!r}")
    return out


def _plain_option(o):
    """An option as the trial log stores it: None, a bool, a string, a finite number, or a tuple of them."""
    if isinstance(o, (list, tuple)):
        return tuple(_plain_option(x) for x in o)
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):      # numpy / torch scalars
        o = o.item()
    if o is None or isinstance(o, (bool, str)) or (isinstance(o, numbers.Real) and math.isfinite(o)):
        return o
    raise ValueError(f"a choice option must be None, a bool, a string, a finite number or a tuple of them "
                     f"(the trial log holds it as JSON), got {o!r}")


def choice(*options, when: dict | None = None) -> Param:
    """A categorical decision among `options` (None, bools, strings, finite numbers, tuples of them)."""
    if not options:
        raise ValueError("choice() needs at least one option")
    options = tuple(_plain_option(o) for o in options)
    if len(set(map(repr, options))) != len(options):
        raise ValueError(f"choice options must be distinct, got {options}")
    return Param("choice", options=options, when=_when(when))


def _range(kind: str, low, high, log: bool, when) -> Param:
    check = validate.integer if kind == "int" else validate.number
    low, high = check(f"{kind}_range low", low), check(f"{kind}_range high", high)
    _check_bool(f"{kind}_range log", log)
    if low >= high:
        raise ValueError(f"{kind}_range needs low < high, got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"a log-scale {kind}_range must lie above 0, got low={low} (use a choice for 0)")
    return Param(kind, low=low, high=high, log=log, when=_when(when))


def int_range(low: int, high: int, *, log: bool = False, when: dict | None = None) -> Param:
    """Integers low..high inclusive (log=True: uniform in log space, e.g. widths)."""
    return _range("int", low, high, log, when)


def float_range(low: float, high: float, *, log: bool = False, when: dict | None = None) -> Param:
    """Reals in [low, high] (log=True: log-uniform, e.g. learning rates)."""
    return _range("float", low, high, log, when)


def validate_space(space: dict) -> dict:
    """Check a space up front: non-empty, Params only, conditions on earlier decisions' values."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"a search space must be a non-empty dict of name -> Param, got {space!r}")
    seen: dict[str, Param] = {}
    for name, p in space.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"a search space's decision names must be non-empty strings, got name {name!r}")
        if not isinstance(p, Param):
            raise ValueError(f"space[{name!r}] must be a Param from choice/int_range/float_range, got {p!r}")
        for other, values in p.when:
            if other not in seen:
                raise ValueError(f"space[{name!r}] depends on {other!r}, which must be defined before it")
            if seen[other].kind == "choice" and not set(map(repr, values)) <= set(map(repr, seen[other].options)):
                raise ValueError(f"space[{name!r}]: when {other!r} in {list(values)}, but {other!r} "
                                 f"only takes {list(seen[other].options)}")
        seen[name] = p
    return space


def is_active(p: Param, config: dict) -> bool:
    """Whether decision p is taken, given the decisions already in config."""
    return all(k in config and config[k] in values for k, values in p.when)


def _draw(p: Param, rng: random.Random):
    if p.kind == "choice":
        return p.options[rng.randrange(len(p.options))]
    if p.kind == "float":
        return math.exp(rng.uniform(math.log(p.low), math.log(p.high))) if p.log else rng.uniform(p.low, p.high)
    if p.log:   # log-uniform over the integers: floor of a log-uniform real in [low, high + 1)
        return min(int(p.high), int(math.exp(rng.uniform(math.log(p.low), math.log(p.high + 1)))))
    return rng.randint(int(p.low), int(p.high))


def sample(space: dict, rng: random.Random) -> dict:
    """One random config: each active decision drawn in order (inactive ones left out)."""
    config: dict = {}
    for name, p in space.items():
        if is_active(p, config):
            config[name] = _draw(p, rng)
    return config


def values(p: Param, points: int = 3) -> list:
    """`points` evenly spaced values of a range (log-spaced if log), or a choice's options."""
    points = validate.integer("points", points, low=1, high=MAX_COUNT, what="values per range")
    if p.kind == "choice":
        return list(p.options)
    ts = [0.5] if points == 1 else [i / (points - 1) for i in range(points)]
    lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
    out = [math.exp(lo + t * (hi - lo)) if p.log else lo + t * (hi - lo) for t in ts]
    return sorted({round(v) for v in out}) if p.kind == "int" else out


def grid(space: dict, points: int | dict = 3) -> list[dict]:
    """Every combination of `values(p, points)` over the active decisions (points may be per name)."""
    validate_space(space)
    points = _check_points(space, points)
    configs: list[dict] = [{}]
    for name, p in space.items():
        k = points.get(name, 3) if isinstance(points, dict) else points
        configs = [{**c, name: v} if is_active(p, c) else c
                   for c in configs for v in (values(p, k) if is_active(p, c) else [None])]
    return configs


def _check_points(space: dict, points) -> int | dict:
    """points: values per range, one integer >= 1 for every range or a dict of them by decision name."""
    if isinstance(points, dict):
        unknown = [k for k in points if k not in space]
        if unknown:
            raise ValueError(f"points names {unknown} that are not decisions of the space ({', '.join(space)})")
        return {k: validate.integer(f"points[{k!r}]", v, low=1, what="values per range") for k, v in points.items()}
    return validate.integer("points", points, low=1, high=MAX_COUNT, what="values per range, or a dict of them by name")


def repair(space: dict, config: dict, rng: random.Random) -> dict:
    """Keep config's valid active decisions in order; drop inactive ones, draw newly active ones."""
    out: dict = {}
    for name, p in space.items():
        if is_active(p, out):
            out[name] = config[name] if name in config else _draw(p, rng)
    return out


def mutate(space: dict, config: dict, rng: random.Random) -> dict:
    """Change one active decision: another option, or a range value moved by a Gaussian step.

    Range step: x' = x + N(0, (0.2 * (high - low))^2), in log space for log ranges, clipped.
    """
    names = [n for n in config if n in space]
    movable = [n for n in names if space[n].kind != "choice" or len(space[n].options) > 1]
    if not movable:
        return dict(config)
    name = movable[rng.randrange(len(movable))]
    p, new = space[name], dict(config)
    if p.kind == "choice":
        new[name] = rng.choice([o for o in p.options if o != config[name]])
    else:
        f, inv = (math.log, math.exp) if p.log else (float, float)
        step = rng.gauss(0, 0.2 * (f(p.high) - f(p.low)))
        x = min(max(inv(f(config[name]) + step), p.low), p.high)
        if x == config[name]:                         # clipped at a bound: step the other way
            x = min(max(inv(f(config[name]) - step), p.low), p.high)
        if p.kind == "int":
            x = int(round(x))
            if x == config[name]:
                x = min(max(x + rng.choice((-1, 1)), int(p.low)), int(p.high))
        new[name] = x
    return repair(space, new, rng)


# ---------------------------------------------------------------------------------------------
# 2. Trials, persisted as they finish
# ---------------------------------------------------------------------------------------------

def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):                       # numpy / torch scalars
        return obj.item()
    return obj


def _tuples(config: dict) -> dict:
    """JSON turns tuples into lists; choices hold tuples, so turn them back."""
    return {k: tuple(_tuples({"v": x})["v"] for x in v) if isinstance(v, list) else v for k, v in config.items()}


def trial_key(config: dict, budget: int) -> str:
    """Stable key of (config, budget): sha1 of their canonical JSON (sorted keys)."""
    blob = json.dumps({"config": _jsonable(config), "budget": budget}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass
class Trial:
    """One evaluation: config at budget -> metrics, with its cost and outcome."""
    config: dict
    budget: int
    metrics: dict
    seconds: float
    status: str = "ok"               # "ok" | "failed" | "pruned"
    error: str = ""
    key: str = ""
    resumed: bool = False            # read back from the trial log instead of run
    info: dict = field(default_factory=dict)

    def value(self, metric: str, maximize: bool = True) -> float:
        """The metric, or the worst possible value for a failed trial."""
        v = self.metrics.get(metric) if self.status == "ok" else None
        return float(v) if v is not None else (-math.inf if maximize else math.inf)


class TrialLog:
    """Append-only JSON-lines file of finished trials, one fsync'd line each (safe to SIGKILL).

    Several processes may append: each append holds an exclusive lock on the file (flock) while it
    repairs a torn tail and writes its line. A kill that tears the last line mid-write leaves a
    fragment; the next append first ends a tail that is a whole record with its missing newline, or
    cuts a fragment that is no record, so it never glues its own line onto it. Reading skips torn
    lines and still finds a whole record glued onto a torn one (as an older mokit wrote them).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, Trial]:
        trials: dict[str, Trial] = {}
        if not self.path.exists():
            return trials
        fd = os.open(self.path, os.O_RDONLY)
        try:
            _lock(fd, exclusive=False)                # no half-written line of a live appender
            blob = _read_from(fd, 0)
        finally:
            os.close(fd)
        for line in blob.decode("utf-8", errors="replace").splitlines():
            t = _parse_record(line)
            if t is not None:
                trials.setdefault(t.key, t)           # the first record of a key wins
        return trials

    def append(self, trial: Trial) -> None:
        line = (json.dumps(_jsonable({**asdict(trial), "resumed": False})) + "\n").encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _lock(fd, exclusive=True)
            _repair_tail(fd)
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)                              # releases the lock


def _lock(fd: int, *, exclusive: bool) -> None:
    """flock the open file (released when it is closed); a no-op where there is no fcntl (Windows)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


def _read_from(fd: int, start: int) -> bytes:
    os.lseek(fd, start, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, payload: bytes) -> None:
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def _parse_record(line: str) -> Trial | None:
    """The Trial on one line of the log, or None for a torn line.

    A line that does not parse may be a torn record with a whole one glued after it (an older
    mokit appended without repairing the tail): the whole record is the part from a later
    '{"config"' that parses to the end of the line.
    """
    starts = [0] + [i for i in range(1, len(line)) if line.startswith('{"config"', i)]
    for i in starts:
        try:
            obj, end = json.JSONDecoder().raw_decode(line, i)
            if line[end:].strip() or not isinstance(obj, dict):
                continue
            t = Trial(**obj)
        except (json.JSONDecodeError, TypeError):
            continue
        if not isinstance(t.key, str) or not t.key or not isinstance(t.config, dict):
            continue
        t.config = _tuples(t.config)
        return t
    return None


def _repair_tail(fd: int) -> None:
    """Under the appenders' lock: end the file with a newline, so the next line starts on its own.

    A tail after the last newline that is a whole record (killed before its newline) gets the
    newline; a fragment that is no record (killed mid-write) is cut off. No whole record is lost.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return
    os.lseek(fd, size - 1, os.SEEK_SET)
    if os.read(fd, 1) == b"\n":
        return
    start, step = size, 1 << 16                   # find the last newline, reading backwards
    while start > 0:
        lo = max(0, start - step)
        os.lseek(fd, lo, os.SEEK_SET)
        block = os.read(fd, start - lo)
        nl = block.rfind(b"\n")
        if nl >= 0:
            start = lo + nl + 1
            break
        start = lo
    tail = _read_from(fd, start)
    if _parse_record(tail.decode("utf-8", errors="replace")) is not None:
        _write_all(fd, b"\n")
    else:
        os.ftruncate(fd, start)
    os.fsync(fd)


def _check_search_name(name) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise ValueError(f"search name must be a plain folder name, got {name!r}")
    return name


def search_path(name: str) -> Path:
    """Folder of the search called `name`: <runs>/searches/<name>."""
    _check_search_name(name)
    from .data import runs_root  # lazily: a search worker need not import torch
    return runs_root() / "searches" / name


class Runner:
    """Runs objective(config, budget) once per key, records every trial, persists it at once.

    The trials of this search, in order, are `self.trials`; a key already finished (in this run,
    or in the log of an earlier, killed run) is returned without running again.
    """

    def __init__(self, objective: Callable, *, metric: str = "score", maximize: bool = True,
                 name: str | None = None, path: str | os.PathLike | None = None, verbose: bool = False):
        _check_runner(objective, metric, maximize, name, path, verbose)
        self.objective, self.metric, self.maximize, self.verbose = objective, metric, maximize, verbose
        folder = Path(path) if path is not None else (search_path(name) if name else None)
        self.log = TrialLog(folder / "trials.jsonl") if folder is not None else None
        self.done = self.log.load() if self.log else {}
        self.trials: list[Trial] = []
        self._keys: dict[str, Trial] = {}

    def __call__(self, config: dict, budget: int) -> Trial:
        """The trial of (config, budget): from this search, from the log, or run now."""
        _check_budget(budget)
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict of decision name -> value, got {config!r}")
        key = trial_key(config, budget)
        if key in self._keys:
            return self._keys[key]
        if key in self.done:
            trial = self.done[key]
            trial.resumed = True
        else:
            trial = self._run(config, budget, key)
            if self.log:
                self.log.append(trial)
            self.done[key] = trial
        self.trials.append(trial)
        self._keys[key] = trial
        if self.verbose:
            print(f"  trial {len(self.trials):3d}  budget {budget:3d}  {self.metric} "
                  f"{trial.value(self.metric, self.maximize):8.3f}  {trial.status}  {format_config(config)}")
        return trial

    def seen(self, config: dict, budget: int) -> bool:
        return trial_key(config, budget) in self._keys

    def _run(self, config: dict, budget: int, key: str) -> Trial:
        t0 = time.perf_counter()
        try:
            out = self.objective(dict(config), budget)
            metrics = {self.metric: out} if isinstance(out, (int, float)) else dict(out)
            v = metrics.get(self.metric)
            if v is None:
                raise KeyError(f"objective returned no {self.metric!r} (got {sorted(metrics)})")
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise FloatingPointError(f"objective returned {self.metric}={v!r}")
            return Trial(_jsonable(config), budget, _jsonable(metrics), time.perf_counter() - t0, key=key)
        except Exception as e:  # noqa: BLE001 - a failed trial is recorded, the search goes on
            print(f"  trial failed ({type(e).__name__}: {e}); config {format_config(config)}")
            return Trial(_jsonable(config), budget, {}, time.perf_counter() - t0, "failed",
                         f"{type(e).__name__}: {e}", key=key)


def format_config(config: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


# Upper bounds on a search's sizes: far above any run this kit makes, low enough that a typo
# (n_trials=10**18) is an error at once instead of a search that never ends.
MAX_COUNT = 100_000          # trials, configs, samples, points per range
MAX_EPOCHS = 10_000          # a trial's budget in epochs
MAX_ETA = 1_000              # successive halving's reduction factor


def _check_budget(budget, name: str = "budget") -> None:
    validate.integer(name, budget, low=1, high=MAX_EPOCHS, what="training epochs")


def _check_count(name: str, n) -> None:
    validate.integer(name, n, low=1, high=MAX_COUNT)


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_callable(name: str, fn, signature: str, *, optional: bool = True) -> None:
    if not (callable(fn) or (optional and fn is None)):
        raise ValueError(f"{name} must be callable, {signature}{' (or None)' if optional else ''}, got {fn!r}")


def _check_metric(name: str, metric) -> str:
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"{name} must be a metric's name (a non-empty string), got {metric!r}")
    return metric


def _check_runner(objective, metric, maximize, name, path, verbose) -> None:
    """A Runner's arguments (also checked by every strategy before it starts)."""
    _check_callable("objective", objective, "objective(config, budget) -> float or dict", optional=False)
    _check_metric("metric", metric)
    _check_bool("maximize", maximize)
    _check_bool("verbose", verbose)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a folder (str or os.PathLike) or None, got {path!r}")
    if name is not None:
        _check_search_name(name)


def _check_run(objective, space, metric, maximize, name, path, verbose, *, seed=0, feasible=None,
               mutate_fn=None, seed_optional: bool = False) -> None:
    """Every argument a strategy shares, checked before it does anything."""
    _check_runner(objective, metric, maximize, name, path, verbose)
    validate_space(space)
    if not (seed_optional and seed is None):
        validate.integer("seed", seed, what="or None" if seed_optional else "")
    _check_callable("feasible", feasible, "feasible(config) -> bool")
    _check_callable("mutate_fn", mutate_fn, "mutate_fn(space, config, rng) -> config")


# ---------------------------------------------------------------------------------------------
# 3. Results: best, compute, best-so-far curves, tables
# ---------------------------------------------------------------------------------------------

@dataclass
class SearchResult:
    """The trials of one search, in the order they were proposed."""
    strategy: str
    trials: list[Trial]
    metric: str = "score"
    maximize: bool = True

    @property
    def compute(self) -> int:
        """Compute spent: the sum of the trials' budgets (epochs)."""
        return sum(t.budget for t in self.trials)

    @property
    def max_budget(self) -> int:
        return max((t.budget for t in self.trials), default=0)

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    @property
    def best(self) -> Trial | None:
        """The best successful trial at the largest budget used (values at lower budgets differ)."""
        top = [t for t in self.trials if t.status == "ok" and t.budget == self.max_budget]
        if not top:
            return None
        return (max if self.maximize else min)(top, key=lambda t: t.value(self.metric, self.maximize))

    @property
    def best_value(self) -> float:
        return self.best.value(self.metric, self.maximize) if self.best else float("nan")

    def curve(self) -> tuple[list[int], list[float]]:
        """(cumulative compute, best-so-far value among full-budget trials) after each trial."""
        xs, ys, used, best = [], [], 0, -math.inf if self.maximize else math.inf
        for t in self.trials:
            used += t.budget
            v = t.value(self.metric, self.maximize)
            if t.budget == self.max_budget and self._better(v, best):
                best = v
            xs.append(used)
            ys.append(best if math.isfinite(best) else float("nan"))
        return xs, ys

    def best_within(self, compute: float) -> float:
        """Best-so-far value once `compute` epochs were spent (nan if none finished by then)."""
        xs, ys = self.curve()
        got = [y for x, y in zip(xs, ys) if x <= compute]
        return got[-1] if got else float("nan")

    @property
    def n_failed(self) -> int:
        return sum(t.status == "failed" for t in self.trials)

    def table(self, top: int | None = None):
        """Trials as a Table sorted best first."""
        from .metrics import Table

        sign = 1 if self.maximize else -1              # best first: largest budget, then best value
        ranked = sorted(self.trials, key=lambda t: (t.budget, sign * t.value(self.metric, self.maximize)),
                        reverse=True)
        rows = Table()
        for t in ranked[:top]:
            rows.append({**{k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in t.config.items()},
                         "budget": t.budget, self.metric: t.value(self.metric, self.maximize),
                         "status": t.status, "seconds": t.seconds})
        return rows

    def summary(self) -> dict:
        return {"strategy": self.strategy, "trials": len(self.trials), "failed": self.n_failed,
                "compute": self.compute, f"best {self.metric}": self.best_value,
                "seconds": sum(t.seconds for t in self.trials)}


# ---------------------------------------------------------------------------------------------
# 4. Strategies
# ---------------------------------------------------------------------------------------------

def _setup(objective, space, metric, maximize, name, path, verbose) -> Runner:
    validate_space(space)
    return Runner(objective, metric=metric, maximize=maximize, name=name, path=path, verbose=verbose)


def _propose(space: dict, rng: random.Random, feasible: Callable | None, make=None) -> dict:
    """A config from make() (default: sample), redrawn until feasible(config) (at most 1000 draws)."""
    make = make or (lambda: sample(space, rng))
    for _ in range(1000):
        config = make()
        if feasible is None or feasible(config):
            return config
    raise RuntimeError("no feasible config found in 1000 draws; loosen the constraint")


def grid_search(objective: Callable, space: dict, *, budget: int, points: int | dict = 3,
                metric: str = "score", maximize: bool = True, name: str | None = None,
                path=None, verbose: bool = False) -> SearchResult:
    """Every config of grid(space, points), each trained for `budget` epochs."""
    _check_budget(budget)
    _check_run(objective, space, metric, maximize, name, path, verbose)
    configs = grid(space, points)
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    for config in configs:
        run(config, budget)
    return SearchResult("grid", run.trials, metric, maximize)


def random_search(objective: Callable, space: dict, *, budget: int, n_trials: int, seed: int = 0,
                  metric: str = "score", maximize: bool = True, feasible: Callable | None = None,
                  name: str | None = None, path=None, verbose: bool = False) -> SearchResult:
    """n_trials distinct configs drawn with Random(seed), each trained for `budget` epochs."""
    _check_budget(budget)
    _check_count("n_trials", n_trials)
    _check_run(objective, space, metric, maximize, name, path, verbose, seed=seed, feasible=feasible)
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    rng = random.Random(seed)
    for _ in range(50 * n_trials):
        if len(run.trials) >= n_trials:
            break
        config = _propose(space, rng, feasible)
        if not run.seen(config, budget):
            run(config, budget)
    return SearchResult("random", run.trials, metric, maximize)


def _rungs(min_budget: int, max_budget: int, eta: int) -> list[int]:
    """Budgets min, min*eta, ... up to max (max always the last rung)."""
    _check_budget(min_budget, "min_budget")
    _check_budget(max_budget, "max_budget")
    if max_budget < min_budget:
        raise ValueError(f"max_budget {max_budget} must be >= min_budget {min_budget}")
    validate.integer("eta", eta, low=2, high=MAX_ETA, what="the reduction factor")
    rungs = [min_budget]
    while rungs[-1] * eta <= max_budget:
        rungs.append(rungs[-1] * eta)
    if rungs[-1] != max_budget:
        rungs.append(max_budget)
    return rungs


def _distinct(space: dict, rng: random.Random, n: int, feasible: Callable | None) -> list[dict]:
    """Up to n distinct configs, drawn in the order random_search draws them."""
    configs: list[dict] = []
    for _ in range(50 * n):
        if len(configs) >= n:
            break
        c = _propose(space, rng, feasible)
        if c not in configs:
            configs.append(c)
    return configs


def _halve(run: Runner, configs: list[dict], rungs: list[int], eta: int) -> None:
    """Successive halving: train all at rungs[0], keep the best 1/eta, move them to the next rung."""
    for i, b in enumerate(rungs):
        scored = [(run(c, b).value(run.metric, run.maximize), j, c) for j, c in enumerate(configs)]
        if i == len(rungs) - 1:
            break
        scored.sort(key=lambda s: (s[0] if run.maximize else -s[0], -s[1]), reverse=True)
        configs = [c for _, _, c in scored[:max(1, len(configs) // eta)]]


def successive_halving(objective: Callable, space: dict, *, n_configs: int, min_budget: int,
                       max_budget: int, eta: int = 3, seed: int = 0, metric: str = "score",
                       maximize: bool = True, feasible: Callable | None = None,
                       name: str | None = None, path=None, verbose: bool = False) -> SearchResult:
    """Successive halving (Jamieson & Talwalkar 2016).

    n configs at budget r, the best n/eta at r*eta, ... until max_budget: compute = sum_i n_i * r_i.
    Configs are drawn exactly as random_search(seed) draws them, so both see the same candidates.
    """
    _check_count("n_configs", n_configs)
    rungs = _rungs(min_budget, max_budget, eta)
    _check_run(objective, space, metric, maximize, name, path, verbose, seed=seed, feasible=feasible)
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    _halve(run, _distinct(space, random.Random(seed), n_configs, feasible), rungs, eta)
    return SearchResult("successive_halving", run.trials, metric, maximize)


def hyperband(objective: Callable, space: dict, *, min_budget: int, max_budget: int, eta: int = 3,
              seed: int = 0, metric: str = "score", maximize: bool = True,
              feasible: Callable | None = None, name: str | None = None, path=None,
              verbose: bool = False) -> SearchResult:
    """Hyperband (Li et al. 2017): successive halving brackets from aggressive to none.

    s_max = len(rungs) - 1; bracket s starts n = ceil((s_max+1)/(s+1) * eta^s) configs at rung s_max - s.
    """
    rungs = _rungs(min_budget, max_budget, eta)
    _check_run(objective, space, metric, maximize, name, path, verbose, seed=seed, feasible=feasible)
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    rng, s_max = random.Random(seed), len(rungs) - 1
    for s in range(s_max, -1, -1):
        n = math.ceil((s_max + 1) / (s + 1) * eta ** s)
        _halve(run, _distinct(space, rng, n, feasible), rungs[s_max - s:], eta)
    return SearchResult("hyperband", run.trials, metric, maximize)


def evolution(objective: Callable, space: dict, *, budget: int, n_trials: int, population: int = 8,
              sample_size: int = 3, seed: int = 0, mutate_fn: Callable | None = None,
              metric: str = "score", maximize: bool = True, feasible: Callable | None = None,
              name: str | None = None, path=None, verbose: bool = False) -> SearchResult:
    """Regularized (aging) evolution (Real et al. 2019).

    1. population random configs (drawn as random_search(seed) draws them);
    2. repeat: pick `sample_size` members at random, mutate the best of them, evaluate the child,
       add it and remove the OLDEST member (aging, not the worst).
    mutate_fn(space, config, rng) -> config defaults to `mutate` (one decision changed).
    """
    _check_budget(budget)
    _check_count("n_trials", n_trials)
    _check_count("population", population)
    _check_count("sample_size", sample_size)
    _check_run(objective, space, metric, maximize, name, path, verbose, seed=seed, feasible=feasible,
               mutate_fn=mutate_fn)
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    rng, mutate_fn = random.Random(seed), mutate_fn or mutate
    alive: list[Trial] = []
    for _ in range(50 * n_trials):
        if len(run.trials) >= n_trials:
            break
        if len(alive) < population:
            config = _propose(space, rng, feasible)
        else:
            contenders = [alive[rng.randrange(len(alive))] for _ in range(sample_size)]
            parent = (max if maximize else min)(contenders, key=lambda t: t.value(metric, maximize))
            config = _propose(space, rng, feasible, lambda p=parent: mutate_fn(space, p.config, rng))
        if run.seen(config, budget):
            continue
        alive.append(run(config, budget))
        if len(alive) > population:
            alive.pop(0)                                  # the oldest dies
    return SearchResult("evolution", run.trials, metric, maximize)


def hill_climb(objective: Callable, space: dict, *, budget: int, n_trials: int, neighbors: int = 4,
               seed: int = 0, mutate_fn: Callable | None = None, metric: str = "score",
               maximize: bool = True, feasible: Callable | None = None, name: str | None = None,
               path=None, verbose: bool = False) -> SearchResult:
    """Greedy hill-climbing: from a random start, evaluate `neighbors` mutations of the current
    best and move to the best of them if it improves; restart from a random config when none does.
    """
    _check_budget(budget)
    _check_count("n_trials", n_trials)
    _check_count("neighbors", neighbors)
    _check_run(objective, space, metric, maximize, name, path, verbose, seed=seed, feasible=feasible,
               mutate_fn=mutate_fn)
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    rng, mutate_fn = random.Random(seed), mutate_fn or mutate
    better = (lambda a, b: a > b) if maximize else (lambda a, b: a < b)
    current = run(_propose(space, rng, feasible), budget)
    stale = 0
    while len(run.trials) < n_trials and stale < 50:
        step = None
        for _ in range(neighbors):
            if len(run.trials) >= n_trials:
                break
            config = _propose(space, rng, feasible, lambda: mutate_fn(space, current.config, rng))  # noqa: B023 - called at once
            if run.seen(config, budget):
                stale += 1
                continue
            t = run(config, budget)
            if step is None or better(t.value(metric, maximize), step.value(metric, maximize)):
                step = t
        if step is not None and better(step.value(metric, maximize), current.value(metric, maximize)):
            current = step
        elif len(run.trials) < n_trials:                  # a local optimum: restart at random
            config = _propose(space, rng, feasible)
            if not run.seen(config, budget):
                current = run(config, budget)
    return SearchResult("hill_climb", run.trials, metric, maximize)


def tree_search(objective: Callable, space: dict, *, budget: int, n_trials: int, points: int = 4,
                exploration: float = 1.0, seed: int = 0, metric: str = "score", maximize: bool = True,
                feasible: Callable | None = None, name: str | None = None, path=None,
                verbose: bool = False) -> SearchResult:
    """Monte-Carlo tree search over the sequence of decisions (ranges cut into `points` values;
    int ranges of at most 8 values keep them all).

    A node is a prefix of decisions. Each iteration: 1. select children by UCT,
    argmax  mean_norm(child) + c * sqrt(ln N(parent) / N(child)), while all children were tried;
    2. expand one untried child; 3. complete the config at random; 4. evaluate it and add its
    value to every node on the path. Values are min-max normalised over the trials so far.
    """
    _check_budget(budget)
    _check_count("n_trials", n_trials)
    validate.integer("points", points, low=1, high=MAX_COUNT, what="values per range")
    validate.number("exploration", exploration, low=0, what="the UCT constant c")
    _check_run(objective, space, metric, maximize, name, path, verbose, seed=seed, feasible=feasible)
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    rng, names = random.Random(seed), list(space)
    stats: dict[tuple, list[float]] = {}                  # prefix -> [visits, sum of values]
    seen_values: list[float] = []

    def options(prefix: tuple) -> tuple[str | None, list]:
        config = dict(prefix)
        for n in names:
            if n not in config and is_active(space[n], config):
                p = space[n]
                small = p.kind == "int" and p.high - p.low < 8          # few integers: keep them all
                return n, list(range(int(p.low), int(p.high) + 1)) if small else values(p, points)
        return None, []

    def norm(v: float) -> float:
        finite = [x for x in seen_values if math.isfinite(x)]
        if not math.isfinite(v) or not finite or max(finite) == min(finite):
            return 0.0 if not math.isfinite(v) else 0.5
        r = (v - min(finite)) / (max(finite) - min(finite))
        return r if maximize else 1 - r

    for _ in range(50 * n_trials):
        if len(run.trials) >= n_trials:
            break
        prefix: tuple = ()
        while True:                                        # 1-2. select / expand
            n, opts = options(prefix)
            if n is None:
                break
            children = [prefix + ((n, v),) for v in opts]
            untried = [c for c in children if c not in stats]
            if untried:
                prefix = untried[rng.randrange(len(untried))]
                break
            total = sum(stats[c][0] for c in children)
            prefix = max(children, key=lambda c: stats[c][1] / stats[c][0]
                         + exploration * math.sqrt(math.log(total) / stats[c][0]))
        config = dict(prefix)                              # 3. random completion on the cut values
        while True:
            n, opts = options(tuple(config.items()))
            if n is None:
                break
            config[n] = opts[rng.randrange(len(opts))]
        config = {k: config[k] for k in names if k in config}
        if feasible is not None and not feasible(config):
            v = -math.inf if maximize else math.inf        # infeasible: a bad leaf, nothing trained
        else:
            v = run(config, budget).value(metric, maximize)
            seen_values.append(v)
        path_nodes = [prefix[:i] for i in range(1, len(prefix) + 1)]
        for node in path_nodes:                            # 4. back-propagate
            s = stats.setdefault(node, [0, 0.0])
            s[0] += 1
            s[1] += norm(v)
    return SearchResult("tree_search", run.trials, metric, maximize)


STRATEGIES: dict[str, Callable] = {
    "grid": grid_search, "random": random_search, "successive_halving": successive_halving,
    "hyperband": hyperband, "evolution": evolution, "hill_climb": hill_climb, "tree": tree_search,
}


# ---------------------------------------------------------------------------------------------
# 5. A training objective: config -> model, trained `budget` epochs, scored on validation data
# ---------------------------------------------------------------------------------------------

def train_objective(build: Callable[[dict], object], train_data, val_data, *, seed: int = 0,
                    device=None, **train_kw) -> Callable[[dict, int], dict]:
    """objective(config, budget): build(config) -> model, train(epochs=budget), evaluate on val_data.

    Keys of config that train() accepts (lr, optimizer, batch_size, weight_decay, momentum,
    schedule) go to train(); the rest are for build. Returns val_acc (%), val_loss, params, seconds.
    The data moves to `device` (default: pick_device()) once, here, not once per trial; data
    already there is kept as it is (no copy).
    """
    _check_callable("build", build, "build(config) -> model", optional=False)
    validate.integer("seed", seed)
    from .metrics import count_params
    from .train import evaluate, pick_device, seed_everything, train

    accepted = set(inspect.signature(train).parameters) - {"model", "data", "epochs", "device"}
    device = pick_device(device)
    train_data, val_data = train_data.to(device), val_data.to(device)     # once for every trial

    def objective(config: dict, budget: int) -> dict:
        seed_everything(seed)
        model = build(config)
        kw = {**train_kw, **{k: v for k, v in config.items() if k in accepted}}
        t0 = time.perf_counter()
        train(model, train_data, epochs=budget, seed=seed, progress=False, device=device, **kw)
        m = evaluate(model, val_data, device=device)
        return {"val_acc": m["accuracy"], "val_loss": m["loss"], "params": count_params(model),
                "train_seconds": time.perf_counter() - t0}
    return objective


# ---------------------------------------------------------------------------------------------
# 6. Optuna bridge: its samplers, pruners and storages (several workers share one study)
# ---------------------------------------------------------------------------------------------

def _samplers():
    import optuna
    return {"tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True),
            "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
            "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=8)}


def _pruners(rungs: list[int], eta: int):
    import optuna
    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
            "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
                min_resource=rungs[0], reduction_factor=eta),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(
                min_resource=rungs[0], max_resource=rungs[-1], reduction_factor=eta),
            "none": lambda: optuna.pruners.NopPruner()}


def open_storage(storage):
    """None (in memory), a journal file path (*.log / *.journal: processes on one machine), or an
    RDB URL ('sqlite:///x.db', 'postgresql://user:pw@host/db', 'mysql+pymysql://...': machines)."""
    if storage is None or not isinstance(storage, (str, os.PathLike)):
        return storage
    s = str(storage)
    if "://" in s:
        return s
    if not s.endswith((".log", ".journal", ".jsonl")):
        raise ValueError(f"storage {s!r}: give a journal file (*.log, *.journal) or an RDB URL "
                         f"(sqlite:///..., postgresql://..., mysql+pymysql://...)")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    Path(s).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(s))


def _suggest(trial, space: dict) -> dict:
    """Ask Optuna for each active decision (define-by-run handles the conditions)."""
    config: dict = {}
    for name, p in space.items():
        if not is_active(p, config):
            continue
        if p.kind == "float":
            config[name] = trial.suggest_float(name, p.low, p.high, log=p.log)
        elif p.kind == "int":
            config[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log)
        elif all(o is None or isinstance(o, (bool, int, float, str)) for o in p.options):
            config[name] = trial.suggest_categorical(name, list(p.options))
        else:                                      # tuples etc.: Optuna sees their repr
            labels = {repr(o): o for o in p.options}
            config[name] = labels[trial.suggest_categorical(name, list(labels))]
    return config


_COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
_PRUNERS = ("median", "successive_halving", "hyperband", "none")


def _check_objectives(objectives) -> list[tuple[str, bool]]:
    """[(metric, maximize), ...]: at least one pair of a metric's name and True / False."""
    ok = isinstance(objectives, (list, tuple)) and len(objectives) > 0 and all(
        isinstance(o, (list, tuple)) and len(o) == 2 and isinstance(o[0], str) and o[0]
        and isinstance(o[1], bool) for o in objectives)
    if not ok:
        raise ValueError(f"objectives must be a non-empty list of (metric name, maximize True/False) pairs, "
                         f"got {objectives!r}")
    return [tuple(o) for o in objectives]


def optuna_search(objective: Callable, space: dict, *, budget: int, n_trials: int,
                  sampler: str = "tpe", seed: int | None = 0, metric: str = "score",
                  maximize: bool = True, objectives: Sequence[tuple[str, bool]] | None = None,
                  pruner: str = "none", eta: int = 3, min_budget: int = 1,
                  storage=None, study_name: str | None = None, name: str | None = None, path=None,
                  verbose: bool = False) -> SearchResult:
    """Optuna drives the search; mokit supplies the space, the objective and the trial log.

    sampler: 'tpe' | 'nsga2' (several objectives) | 'random'. objectives=[(metric, maximize), ...]
    makes it multi-objective. pruner: 'none' | 'median' | 'successive_halving' | 'hyperband':
    the config is then trained at budgets min_budget, *eta, ... up to budget (each from scratch,
    all counted as compute) and Optuna may stop it after any rung.
    storage: see open_storage. Workers started with the same storage and study_name share one
    study; together they finish n_trials trials (counted in the study, over all workers).
    """
    import optuna

    _check_budget(budget)
    _check_count("n_trials", n_trials)
    samplers = _samplers()
    validate.choice("sampler", sampler, samplers)
    validate.choice("pruner", pruner, _PRUNERS)
    _check_budget(min_budget, "min_budget")
    validate.integer("eta", eta, low=2, high=MAX_ETA, what="the reduction factor")
    rungs = _rungs(min_budget, budget, eta) if pruner != "none" else [budget]
    pruners = _pruners(rungs, eta)
    if objectives is not None:
        objectives = _check_objectives(objectives)
    objectives = objectives or [(metric, maximize)]
    if len(objectives) > 1 and pruner != "none":
        raise ValueError("Optuna pruners work with one objective; use pruner='none' with several")
    if storage is not None and not isinstance(storage, (str, os.PathLike, optuna.storages.BaseStorage)):
        raise ValueError(f"storage must be None, a journal file path, an RDB URL or an Optuna storage, "
                         f"got {storage!r}")
    if study_name is not None and (not isinstance(study_name, str) or not study_name):
        raise ValueError(f"study_name must be a non-empty string or None, got {study_name!r}")
    _check_run(objective, space, metric, maximize, name, path, verbose, seed=seed, seed_optional=True)
    metric, maximize = objectives[0]
    run = _setup(objective, space, metric, maximize, name, path, verbose)
    optuna.logging.set_verbosity(optuna.logging.ERROR)      # mokit prints failed trials itself
    study = optuna.create_study(
        storage=open_storage(storage), study_name=study_name, load_if_exists=study_name is not None,
        sampler=samplers[sampler](seed), pruner=pruners[pruner](),
        directions=["maximize" if mx else "minimize" for _, mx in objectives])
    counted = tuple(getattr(optuna.trial.TrialState, s) for s in _COUNTED)

    def ahead(number: int | None = None) -> int:
        """Trials of the study that count towards n_trials (before `number`, if given)."""
        return sum(1 for t in study.get_trials(deepcopy=False, states=counted)
                   if not t.user_attrs.get("over_quota") and (number is None or t.number < number))

    def fn(trial):
        if ahead(trial.number) >= n_trials:        # another worker took the last slot
            trial.set_user_attr("over_quota", True)
            study.stop()
            raise optuna.TrialPruned()
        config = _suggest(trial, space)
        trial.set_user_attr("config", _jsonable(config))
        spent = 0
        for b in rungs:
            t = run(config, b)
            spent += b
            trial.set_user_attr("compute", spent)
            trial.set_user_attr("budget", b)
            trial.set_user_attr("metrics", t.metrics)
            trial.set_user_attr("seconds", t.seconds)
            if t.status != "ok":
                return float("nan") if len(objectives) == 1 else tuple(float("nan") for _ in objectives)
            if b != rungs[-1]:
                trial.report(t.value(metric, maximize), b)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        vals = tuple(float(t.metrics[m]) for m, _ in objectives)
        return vals[0] if len(vals) == 1 else vals

    def stop_when_done(study_, _trial):
        if ahead() >= n_trials:
            study_.stop()

    if ahead() < n_trials:
        study.optimize(fn, callbacks=[stop_when_done], catch=(Exception,))
    return study_result(study, f"optuna_{sampler}", metric, maximize)


def study_result(study, strategy: str = "optuna", metric: str = "score",
                 maximize: bool = True) -> SearchResult:
    """A SearchResult of every trial in an Optuna study made by optuna_search (all workers)."""
    import optuna

    status = {optuna.trial.TrialState.COMPLETE: "ok", optuna.trial.TrialState.PRUNED: "pruned",
              optuna.trial.TrialState.FAIL: "failed"}
    trials = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state not in status or t.user_attrs.get("over_quota") or "config" not in t.user_attrs:
            continue
        ua = t.user_attrs
        metrics = ua.get("metrics", {}) if t.state == optuna.trial.TrialState.COMPLETE else {}
        trials.append(Trial(_tuples(ua["config"]), ua.get("budget", 0), metrics, ua.get("seconds", 0.0),
                            status[t.state], info={"number": t.number, "compute": ua.get("compute", 0)}))
    result = SearchResult(strategy, trials, metric, maximize)
    return result


# ---------------------------------------------------------------------------------------------
# 7. Plots
# ---------------------------------------------------------------------------------------------

def plot_best_so_far(results: dict[str, SearchResult], *, title: str = "best so far against compute"):
    """One step line per strategy: best full-budget value against cumulative epochs spent."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, r in results.items():
        xs, ys = r.curve()
        ax.step(xs, ys, where="post", label=f"{label} ({r.compute} epochs)", marker=".")
    metric = next(iter(results.values())).metric if results else ""
    ax.set(xlabel="compute spent (training epochs)", ylabel=f"best {metric}", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_trials(result: SearchResult, names: Sequence[str] | None = None, *, title: str = ""):
    """One scatter per decision: metric against that decision's value (colour = budget)."""
    import matplotlib.pyplot as plt

    names = list(names or dict.fromkeys(k for t in result.trials for k in t.config))
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    ok = [t for t in result.trials if t.status == "ok"]
    for ax, n in zip(axes[0], names):
        pts = [(t.config[n], t.value(result.metric, result.maximize), t.budget) for t in ok if n in t.config]
        xs = [p[0] if isinstance(p[0], (int, float)) else str(p[0]) for p in pts]
        ax.scatter(xs, [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis", s=18)
        if pts and all(isinstance(x, float) for x in xs) and min(xs) > 0 and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(n)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    axes[0][0].set_ylabel(result.metric)
    fig.suptitle(title or f"{result.strategy}: trials (colour = budget)")
    fig.tight_layout()
    return fig
