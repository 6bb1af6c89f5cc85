"""The one runner every strategy shares (each (config, budget) run once, logged, resumed) and
SearchResult, what every strategy returns.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import validate
from .checks import check_budget, check_callable, check_metric
from .trials import Trial, TrialLog, check_search_name, jsonable, search_path, trial_key


class OutOfTime(Exception):
    """Raised by a Runner asked for a new trial once its wall-clock budget (`seconds`) is spent."""


class Runner:
    """Runs objective(config, budget) once per key, records every trial, persists it at once.

    The trials of this search, in order, are `self.trials`; a key already finished (in this run,
    or in the log of an earlier, killed run) is returned without running again.
    seconds: a wall-clock budget counted from the Runner's creation; once it is spent a new trial is
    refused (OutOfTime; `timed_out` becomes True), while trials this search or its log already has are
    still returned. A trial that started in time runs to its end, so a search in this process overruns by
    one trial at most (the halving strategies on worker processes stop submitting and record the trials in
    flight as they finish).
    """

    def __init__(self, objective: Callable, *, metric: str = "score", maximize: bool = True,
                 name: str | None = None, path: str | os.PathLike | None = None, verbose: bool = False,
                 seconds: float | None = None):
        seconds = check_runner(objective, metric, maximize, name, path, verbose, seconds)
        self.objective, self.metric, self.maximize, self.verbose = objective, metric, maximize, verbose
        self.seconds, self.started, self.timed_out = seconds, time.monotonic(), False
        self.folder = Path(path) if path is not None else (search_path(name) if name else None)
        self.log: TrialLog | None = None
        self._done: dict[str, Trial] | None = None      # the log is read at the first trial, not before
        self.trials: list[Trial] = []
        self._keys: dict[str, Trial] = {}

    @property
    def done(self) -> dict[str, Trial]:
        """Every finished trial of this search's log (and of this run), by key; opens the log once."""
        if self._done is None:
            self.log = TrialLog(self.folder / "trials.jsonl") if self.folder is not None else None
            self._done = self.log.load() if self.log else {}
        return self._done

    def __call__(self, config: dict, budget: int) -> Trial:
        """The trial of (config, budget): from this search, from the log, or run now."""
        check_budget(budget)
        if not isinstance(config, dict):
            raise ValueError(f"config must be a dict of decision name -> value, got {config!r}")
        known = self.lookup(config, budget)
        if known is not None:
            return known
        self.check_time()
        return self.record(evaluate_trial(self.objective, self.metric, config, budget))

    @property
    def out_of_time(self) -> bool:
        """Whether the wall-clock budget `seconds` (if any) is spent."""
        return self.seconds is not None and time.monotonic() - self.started >= self.seconds

    def check_time(self) -> None:
        """Raise OutOfTime (and mark the search timed out) when the wall-clock budget is spent."""
        if self.out_of_time:
            self.timed_out = True
            raise OutOfTime(f"the search's wall-clock budget of {self.seconds:g} s is spent "
                            f"after {len(self.trials)} trial(s)")

    def lookup(self, config: dict, budget: int) -> Trial | None:
        """The trial of (config, budget) if this search or its log already has it (then it joins
        this search's trials, marked resumed when read from the log), else None."""
        key = trial_key(config, budget)
        if key in self._keys:
            return self._keys[key]
        if key in self.done:
            trial = self.done[key]
            trial.resumed = True
            return self._add(trial)
        return None

    def record(self, trial: Trial) -> Trial:
        """Add a trial run here or elsewhere (a worker process): logged at once, then part of the search."""
        done = self.done                                   # opens the log at the first trial
        if self.log is not None:
            self.log.append(trial)
        done[trial.key] = trial
        return self._add(trial)

    def _add(self, trial: Trial) -> Trial:
        self.trials.append(trial)
        self._keys[trial.key] = trial
        if self.verbose:
            print(f"  trial {len(self.trials):3d}  budget {trial.budget:3d}  {self.metric} "
                  f"{trial.value(self.metric, self.maximize):8.3f}  {trial.status}  {format_config(trial.config)}")
        return trial

    def seen(self, config: dict, budget: int) -> bool:
        return trial_key(config, budget) in self._keys


def evaluate_trial(objective: Callable, metric: str, config: dict, budget: int) -> Trial:
    """objective(config, budget) as a Trial: its metrics and seconds, or "failed" with the error
    (an exception, a missing metric or a non-finite one) printed; never raises."""
    key = trial_key(config, budget)
    t0 = time.perf_counter()
    try:
        out = objective(dict(config), budget)
        metrics = {metric: out} if isinstance(out, (int, float)) else dict(out)
        v = metrics.get(metric)
        if v is None:
            raise KeyError(f"objective returned no {metric!r} (got {sorted(metrics)})")
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise FloatingPointError(f"objective returned {metric}={v!r}")
        return Trial(jsonable(config), budget, jsonable(metrics), time.perf_counter() - t0, key=key)
    except Exception as e:  # a failed trial is recorded, the search goes on
        print(f"  trial failed ({type(e).__name__}: {e}); config {format_config(config)}")
        return Trial(jsonable(config), budget, {}, time.perf_counter() - t0, "failed",
                     f"{type(e).__name__}: {e}", key=key)


def format_config(config: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


def check_runner(objective, metric, maximize, name, path, verbose, seconds=None) -> float | None:
    """A Runner's arguments (also checked by every strategy before it starts); returns `seconds` as a float."""
    check_callable("objective", objective, "objective(config, budget) -> float or dict", optional=False)
    check_metric("metric", metric)
    validate.flag("maximize", maximize)
    validate.flag("verbose", verbose)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path must be a folder (str or os.PathLike) or None, got {path!r}")
    if name is not None:
        check_search_name(name)
    return check_seconds(seconds)


def check_seconds(seconds) -> float | None:
    """A search's wall-clock budget: None (no limit) or a finite number of seconds > 0."""
    if seconds is None:
        return None
    return validate.number("seconds", seconds, low=0, low_open=True, what="the search's wall-clock budget, or None")


# SearchResult: best, compute, best-so-far curves, tables

@dataclass
class SearchResult:
    """The trials of one search, in the order they were proposed."""
    strategy: str
    trials: list[Trial]
    metric: str = "score"
    maximize: bool = True
    timed_out: bool = False          # the wall-clock budget (seconds=) stopped it before its own end

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
        from ..metrics import Table

        sign = 1 if self.maximize else -1              # best first: largest budget, then best value
        ranked = sorted(self.trials, key=lambda t: (t.budget, sign * t.value(self.metric, self.maximize)),
                        reverse=True)
        rows = Table()
        for t in ranked[:top]:
            pruned = t.status == "pruned"              # its last rung's value, where the search kept it
            shown = t.metrics.get(self.metric, math.nan) if pruned else t.value(self.metric, self.maximize)
            rows.append({**{k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in t.config.items()},
                         "budget": t.budget, self.metric: shown,
                         "status": t.status, "seconds": t.seconds})
        return rows

    def summary(self) -> dict:
        return {"strategy": self.strategy, "trials": len(self.trials), "failed": self.n_failed,
                "compute": self.compute, f"best {self.metric}": self.best_value,
                "seconds": sum(t.seconds for t in self.trials)}


