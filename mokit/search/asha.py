"""Successive halving over worker processes: synchronous (each rung waits for its slowest trial) and
asynchronous (ASHA, Li et al. 2020: a worker that finishes is given the next promotion or a new config).

    sync = parallel_halving(objective, space, n_configs=9, min_budget=1, max_budget=9, workers=2)
    asha = async_halving(objective, space, n_configs=18, min_budget=1, max_budget=9, workers=2,
                         compute=sync.compute)                  # the same compute as the synchronous run
    idle_fraction(sync, 2), idle_fraction(asha, 2)              # share of worker time spent waiting
    time_to(asha, sync.best_value)                              # seconds until a full-budget trial got there

Each trial's info holds its `start` and `end` (seconds since the search began) and its `worker`.
Workers are forked where the OS allows it (the objective may then be any callable, a closure too) and
spawned elsewhere (the objective must then pickle); each runs torch on `threads` threads. workers=1 runs
the trials in this process, one after another (the same decisions, easy to debug).
Trials are logged and resumed like every other search (a finished (config, budget) is not run again).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

from .. import validate
from .checks import MAX_EPOCHS, check_count
from .runner import Runner, SearchResult, evaluate_trial
from .strategies import check_draws, distinct_draws, halve, rungs, strategy
from .trials import Trial

MAX_WORKERS = 256

_WORKER: dict = {}           # the objective and metric of this worker process (set by _init)


def _init(objective: Callable, metric: str, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _WORKER.update(objective=objective, metric=metric)


def _work(config: dict, budget: int) -> tuple[Trial, int, float, float]:
    start = time.monotonic()               # CLOCK_MONOTONIC: one clock for every process of the machine
    trial = evaluate_trial(_WORKER["objective"], _WORKER["metric"], config, budget)
    return trial, os.getpid(), start, time.monotonic()


class _Pool:
    """`workers` processes running trials (workers=1: this process, one trial at a time); finished ones
    go into the runner with their times."""

    def __init__(self, run: Runner, workers: int, threads: int):
        import torch
        can_fork = "fork" in multiprocessing.get_all_start_methods() and threads == 1
        method = "fork" if can_fork and not torch.cuda.is_initialized() else "spawn"
        self.run, self.workers = run, workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                        initializer=_init, initargs=(run.objective, run.metric, threads)) \
            if workers > 1 else None
        self.futures: set[Future] = set()
        self.ready: list[tuple[Trial, int, float, float]] = []     # workers=1: run at submit, not yet taken
        self.pids: dict[int, int] = {}
        self.t0 = time.monotonic()

    @property
    def busy(self) -> int:
        """Trials started and not yet taken by next_done()."""
        return len(self.futures) + len(self.ready)

    def submit(self, config: dict, budget: int) -> Trial | None:
        """Start (config, budget); a trial the log already has is returned at once instead."""
        known = self.run.lookup(config, budget)
        if known is not None:
            now = time.monotonic() - self.t0
            known.info.update(start=now, end=now, worker=-1)
            return known
        self.run.check_time()                             # no new trial once the wall-clock budget is spent
        if self.pool is None:
            start = time.monotonic()
            trial = evaluate_trial(self.run.objective, self.run.metric, config, budget)
            self.ready.append((trial, os.getpid(), start, time.monotonic()))
        else:
            self.futures.add(self.pool.submit(_work, dict(config), budget))
        return None

    def next_done(self) -> Trial:
        """The first started trial to finish (waiting for it), recorded."""
        if self.ready:
            trial, pid, start, end = self.ready.pop(0)
        else:
            done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
            future = next(iter(done))
            self.futures.remove(future)
            trial, pid, start, end = future.result()
        trial.info.update(start=start - self.t0, end=end - self.t0,
                          worker=self.pids.setdefault(pid, len(self.pids)))
        return self.run.record(trial)

    def close(self) -> None:
        """Shut the workers down; trials that finished but were not taken yet (the search stopped early,
        e.g. its wall-clock budget was spent) are recorded, so a resumed search finds them in the log."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for future in self.futures:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.ready.append(future.result())
        self.futures.clear()
        while self.ready:
            self.next_done()


def _check(workers, threads, n_configs, min_budget, max_budget, eta, seed, feasible) -> list[int]:
    validate.integer("workers", workers, low=1, high=MAX_WORKERS)
    validate.integer("threads", threads, low=1, high=MAX_WORKERS)
    check_count("n_configs", n_configs)
    check_draws(seed, feasible)
    return rungs(min_budget, max_budget, eta)


def _ranked(run: Runner, trials: list[Trial]) -> list[Trial]:
    """Best first; ties keep their order of arrival."""
    return sorted(trials, key=lambda t: t.value(run.metric, run.maximize), reverse=run.maximize)


@strategy("parallel_halving")
def parallel_halving(run: Runner, space: dict, *, n_configs: int, min_budget: int, max_budget: int,
                     eta: int = 3, seed: int = 0, workers: int = 2, threads: int = 1,
                     feasible: Callable | None = None) -> None:
    """Synchronous successive halving on `workers` processes: every trial of a rung runs, in parallel,
    before the best 1/eta move on; the same trials as successive_halving(seed), faster in wall-clock."""
    budgets = _check(workers, threads, n_configs, min_budget, max_budget, eta, seed, feasible)
    pool = _Pool(run, workers, threads)

    def rung(configs: list[dict], budget: int) -> list[Trial]:
        for c in configs:
            pool.submit(c, budget)
        while pool.busy:
            pool.next_done()
        return [run(c, budget) for c in configs]          # each is this search's trial by now

    try:
        halve(run, list(distinct_draws(space, random.Random(seed), n_configs, feasible)), budgets, eta, rung)
    finally:
        pool.close()


@strategy("async_halving")
def async_halving(run: Runner, space: dict, *, n_configs: int, min_budget: int, max_budget: int,
                  eta: int = 3, seed: int = 0, workers: int = 2, threads: int = 1, compute: int | None = None,
                  feasible: Callable | None = None) -> None:
    """ASHA: whenever a worker is free it takes the best config of the highest rung that is in that rung's
    top 1/eta and not yet promoted; if there is none, a new config at the lowest rung (at most n_configs).
    compute caps the epochs started (a promotion that would not fit gives way to a new config that does).
    The configs are those successive_halving(seed) draws, in the same order."""
    budgets = _check(workers, threads, n_configs, min_budget, max_budget, eta, seed, feasible)
    if compute is not None:
        validate.integer("compute", compute, low=1, high=MAX_EPOCHS * n_configs, what="epochs in all")
    cap = math.inf if compute is None else compute
    draws = distinct_draws(space, random.Random(seed), n_configs, feasible)
    results: list[list[Trial]] = [[] for _ in budgets]     # finished trials per rung
    promoted: list[set[str]] = [set() for _ in budgets]    # trial keys already moved up, per rung
    committed = 0
    pool = _Pool(run, workers, threads)

    def next_job() -> tuple[dict, int] | None:
        nonlocal committed
        for k in range(len(budgets) - 2, -1, -1):
            top = _ranked(run, [t for t in results[k] if t.status == "ok"])[:len(results[k]) // eta]
            fresh = [t for t in top if t.key not in promoted[k]]
            if fresh and committed + budgets[k + 1] <= cap:
                promoted[k].add(fresh[0].key)
                committed += budgets[k + 1]
                return fresh[0].config, budgets[k + 1]
        if committed + budgets[0] <= cap:
            config = next(draws, None)
            if config is not None:
                committed += budgets[0]
                return config, budgets[0]
        return None

    def file(trial: Trial) -> None:
        results[budgets.index(trial.budget)].append(trial)

    try:
        while True:
            while pool.busy < workers and (job := next_job()) is not None:
                known = pool.submit(*job)
                if known is not None:
                    file(known)
            if not pool.busy:
                break
            file(pool.next_done())
    finally:
        pool.close()


def idle_fraction(result: SearchResult, workers: int) -> float:
    """1 - (seconds the workers spent in trials) / (workers x the search's wall-clock span)."""
    validate.integer("workers", workers, low=1, high=MAX_WORKERS)
    spans = [(t.info["start"], t.info["end"]) for t in result.trials if "start" in t.info]
    if not spans:
        raise ValueError(f"{result.strategy}: no trial has start/end times (run it with parallel_halving "
                         f"or async_halving)")
    wall = max(e for _, e in spans)
    return 1.0 - sum(e - s for s, e in spans) / (workers * wall) if wall > 0 else 0.0


def time_to(result: SearchResult, target: float) -> float:
    """Seconds from the start until a full-budget trial reached `target` (inf if none did)."""
    validate.number("target", target)
    top = result.max_budget
    hits = [t.info["end"] for t in result.trials if t.status == "ok" and t.budget == top and "end" in t.info
            and (t.value(result.metric, result.maximize) >= target if result.maximize
                 else t.value(result.metric, result.maximize) <= target)]
    return min(hits, default=math.inf)
