"""Ray Tune drives the search: ASHA stops poor trials early, trials run side by side on a local Ray or a cluster.

    from mokit.search import choice, float_range, ray_search
    space = {"lr": float_range(1e-3, 1.0, log=True), "width": choice(16, 32, 64)}
    result = ray_search(objective, space, n_trials=12, max_budget=9, eta=3, searcher="tpe", concurrent=2)
    result.best.config, result.best.value, result.table()

By default Ray runs embedded in this process (`ray.init(num_cpus=concurrent * cpus_per_trial)`) and is shut
down when the search ends; a Ray you started yourself (`ray.init(...)`) is used and left running. On a cluster:

    ray start --head --port=6379                   # on the head machine
    ray start --address=HEAD:6379                  # on every other machine (same Python, mokit, data)
    result = ray_search(objective, space, n_trials=64, max_budget=27, concurrent=8, address="HEAD:6379")

Each trial trains its config at the rungs min_budget, min_budget*eta, ... max_budget (each rung from scratch,
as optuna_search's pruners do) and reports after each; ASHA (time_attr "budget", grace period min_budget,
reduction factor eta) may stop it after any rung. A trial's info holds the compute it spent (the sum of its
rungs), its per-rung values (history), Ray's trial id and its start / end (time.time()); its budget is the
last rung it reached, its status "ok" (reached max_budget), "pruned" (stopped by ASHA) or "failed" (the
objective raised or gave NaN: it reports the worst value, the search goes on). Conditional decisions
(`when=`): the random searcher draws every decision and the trial drops the inactive ones before calling
the objective; TPE asks Optuna only for the active ones (define-by-run). The objective is pickled to Ray's
workers: define it in the notebook or script, or in a module the workers can import; each trial uses
`cpus_per_trial` torch threads.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import validate
from .checks import MAX_COUNT, check_budget, check_count
from .optuna_bridge import suggest
from .runner import Runner, SearchResult, check_runner, format_config
from .space import is_active, validate_space
from .strategies import rungs as make_rungs
from .trials import Trial, TrialLog, check_same_search, search_path, trial_key

SEARCHERS = ("random", "tpe")
SCHEDULERS = ("asha", "fifo")
RESERVED = ("budget", "mokit", "done", "trial_id", "training_iteration", "time_total_s", "time_this_iter_s")
# Ray's raylet must register within a fixed 30 s, and gives its Python agents a fixed 15 s to start: on a
# busy 2-core machine one start in a few misses that, so a local start is tried this many times
LOCAL_START_ATTEMPTS = 4
WORST = 1e300                 # what a failed rung reports (finite: ASHA's percentiles and TPE take it)
# Set in os.environ (unless already set) before Ray starts: no GPU-variable FutureWarning, no Tune banner
# (the old output engine is silent at verbose=0), trials run in the caller's working directory.
QUIET = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_AIR_NEW_OUTPUT": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0"}


def _labels(space: dict) -> dict[str, dict]:
    """{choice name: {label: option}}: options Ray and Optuna can hold as they are, others (tuples) by their repr."""
    plain = {n: all(o is None or isinstance(o, (bool, int, float, str)) for o in p.options) for n, p in space.items()}
    return {n: {o if plain[n] else repr(o): o for o in p.options} for n, p in space.items() if p.kind == "choice"}


def _ray_space(space: dict, labels: dict) -> dict:
    """The random searcher's param_space: every decision, active or not (the trial drops inactive ones)."""
    from ray import tune
    out = {}
    for name, p in space.items():
        if p.kind == "choice":
            out[name] = tune.choice(list(labels[name]))
        elif p.kind == "float":
            out[name] = tune.loguniform(p.low, p.high) if p.log else tune.uniform(p.low, p.high)
        else:                                       # randint's upper bound is exclusive
            out[name] = (tune.lograndint if p.log else tune.randint)(int(p.low), int(p.high) + 1)
    return out


class _DefineByRun:
    """TPE's space for OptunaSearch: Optuna is asked only for the active decisions (a class: Ray pickles it)."""

    def __init__(self, space: dict):
        self.space = space

    def __call__(self, trial) -> None:
        suggest(trial, self.space)              # the Optuna bridge's own mapping of a mokit space


def _config(space: dict, labels: dict, raw: dict) -> dict:
    """The mokit config of Ray's config: active decisions only, in order, options back from their labels."""
    config: dict = {}
    for name, p in space.items():
        if is_active(p, config) and name in raw:
            v = raw[name]
            config[name] = labels[name][v] if p.kind == "choice" else int(v) if p.kind == "int" else float(v)
    return config


def _temp() -> str:
    """A temp folder with a short path (Ray's unix sockets live under it; their paths are limited to 107 bytes)."""
    return tempfile.mkdtemp(prefix="mokit_ray_", dir="/tmp" if os.path.isdir("/tmp") else None)


def _check_address(address) -> None:
    """None, 'auto', or 'host:port' of a Ray head (port 1..65535)."""
    if address is None or address == "auto":
        return
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address must be None (a Ray of this process's own), 'auto' (the cluster this machine "
                         f"belongs to) or 'host:port' of a Ray head (e.g. '10.0.0.5:6379'), got {address!r}")


def _connect(address, num_cpus: int, verbose: bool, temp_dir: str) -> bool:
    """Start a local Ray (address None) or join the cluster at address; True if this call did either.

    A Ray already initialised in this process is used as it is. 'host:port' is first probed with a plain
    TCP connect (3 s), so an unreachable head is a ValueError at once, not a long wait inside ray.init.
    """
    import logging

    for k, v in QUIET.items():
        os.environ.setdefault(k, v)
    import ray
    if address not in (None, "auto"):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=3).close()
        except OSError as e:
            raise ValueError(f"address {address!r}: no Ray head answers there ({e}); start one there with "
                             f"`ray start --head --port={port}`") from None
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose, "configure_logging": True,
             "logging_level": logging.INFO if verbose else logging.ERROR}
    attempts = LOCAL_START_ATTEMPTS if address is None else 1
    for attempt in range(1, attempts + 1):
        try:
            if address is None:
                ray.init(address="local", num_cpus=num_cpus, _temp_dir=temp_dir, **quiet)
            else:
                ray.init(address=address, **quiet)
            return True
        except Exception as e:                                # ConnectionError, TimeoutError, RuntimeError, ...
            ray.shutdown()                                    # no half-started processes left behind
            if address is not None:
                raise ValueError(f"address {address!r}: could not join a Ray cluster there "
                                 f"({type(e).__name__}: {e})") from e
            if attempt == attempts:
                raise
            if verbose:
                print(f"Ray did not start ({e}); trying again ({attempt + 1} of {attempts})")
            time.sleep(2.0 * attempt)                         # let the machine's other work move on
    return True


class LocalRay:
    """A Ray of this process's own for several searches, started once (ray_search and ray_throughput use
    a running Ray as it is):

        ray = LocalRay(2)          # or: with LocalRay(2): ...
        ray_search(...); ray_throughput(...)
        ray.close()
    """

    def __init__(self, num_cpus: int = 2, *, verbose: bool = False):
        num_cpus = validate.integer("num_cpus", num_cpus, low=1, high=MAX_COUNT)
        self.temp = _temp()
        try:
            self.started = _connect(None, num_cpus, validate.flag("verbose", verbose), self.temp)
        except BaseException:
            shutil.rmtree(self.temp, ignore_errors=True)
            raise

    def close(self) -> None:
        import ray
        if self.started:
            ray.shutdown()
            self.started = False
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> LocalRay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _trainable(space, labels, rungs, metric, maximize, threads) -> Callable:
    """The Ray trainable; the objective comes through tune.with_parameters (Ray's object store, once)."""
    def trainable(raw: dict, objective: Callable) -> None:
        from ray import tune
        os.environ["OMP_NUM_THREADS"] = str(threads)          # for a torch the objective imports later
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        config, run = _config(space, labels, raw), Runner(objective, metric=metric, maximize=maximize)
        spent, seconds, history, started = 0, 0.0, [], time.time()
        for b in rungs:
            t = run(config, b)
            spent, seconds = spent + b, seconds + t.seconds
            ok = t.status == "ok"
            value = t.value(metric, maximize) if ok else -WORST if maximize else WORST
            history.append([b, value if ok else None])
            tune.report({metric: value, "budget": b, "mokit": {
                "status": t.status, "error": t.error, "metrics": t.metrics, "compute": spent,
                "seconds": seconds, "history": history, "started": started, "ended": time.time()}})
            if not ok:
                return
    return trainable


def _trial(r, number: int, space: dict, labels: dict, max_budget: int) -> Trial:
    """mokit's Trial of one Ray Result."""
    got = (r.metrics or {}).get("mokit", {})
    status = got.get("status", "failed")
    error = got.get("error", "") or (f"{type(r.error).__name__}: {r.error}" if r.error else "")
    budget = int((r.metrics or {}).get("budget", 0))
    if r.error:                                    # the trial's process died, or Ray could not run it
        status = "failed"
    elif status == "ok" and budget < max_budget:
        status = "pruned"
    info = {"number": number, "compute": got.get("compute", 0), "history": got.get("history", []),
            "trial_id": (r.metrics or {}).get("trial_id", ""), **{k: got[k] for k in ("started", "ended") if k in got}}
    config = _config(space, labels, r.config or {})
    # a pruned trial keeps the metrics of the last rung it reached (SearchResult.best counts only "ok" ones)
    return Trial(config, budget, got.get("metrics", {}) if status != "failed" else {}, got.get("seconds", 0.0), status,
                 error, key=trial_key(config, budget), info=info)


def ray_search(objective: Callable, space: dict, *, n_trials: int, max_budget: int, min_budget: int = 1,
               eta: int = 3, searcher: str = "random", scheduler: str = "asha", metric: str = "score",
               maximize: bool = True, seed: int = 0, concurrent: int = 1, cpus_per_trial: int = 1,
               address: str | None = None, name: str | None = None, storage_path: str | os.PathLike | None = None,
               verbose: bool = False) -> SearchResult:
    """Search `space` with Ray Tune: n_trials configs from `searcher` ('random': Ray's BasicVariantGenerator,
    'tpe': Optuna's TPE through OptunaSearch), `concurrent` at a time with `cpus_per_trial` CPUs each;
    `scheduler` 'asha' trains each at the rungs min_budget, *eta, ... max_budget and stops poor ones early,
    'fifo' trains each at max_budget. address: None (a Ray of this process's own), 'auto' or 'host:port'.
    name: the trials also go to <runs>/searches/<name>/trials.jsonl and Ray's files under it (else a temp dir,
    removed after; storage_path overrides); a rerun with the same name and arguments resumes Ray's saved
    experiment (finished trials come back as they were, resumed=True; trials cut off are run again), with
    other arguments it is a ValueError. Returns a SearchResult (info['compute']: epochs a trial spent).
    """
    check_runner(objective, metric, maximize, name, None, verbose)
    if metric in RESERVED:
        raise ValueError(f"metric {metric!r} is a name the Ray bridge reports itself; valid: any but {RESERVED}")
    validate_space(space)
    check_count("n_trials", n_trials)
    check_budget(max_budget, "max_budget")
    validate.choice("searcher", searcher, SEARCHERS)
    validate.choice("scheduler", scheduler, SCHEDULERS)
    rungs = make_rungs(min_budget, max_budget, eta) if scheduler == "asha" else [max_budget]
    make_rungs(min_budget, max(min_budget, max_budget), eta)     # checks min_budget and eta for fifo too
    validate.integer("seed", seed)
    validate.integer("concurrent", concurrent, low=1, high=MAX_COUNT, what="trials at a time")
    validate.integer("cpus_per_trial", cpus_per_trial, low=1, high=1024, what="CPUs and torch threads per trial")
    _check_address(address)
    if storage_path is not None and not isinstance(storage_path, (str, os.PathLike)):
        raise ValueError(f"storage_path must be a folder (str or os.PathLike) or None, got {storage_path!r}")

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    labels, mode = _labels(space), "max" if maximize else "min"
    folder = search_path(name) if name else None
    if folder is not None:
        check_same_search(folder, {"engine": "ray", "space": repr(space), "n_trials": n_trials, "seed": seed,
                                   "rungs": rungs, "searcher": searcher, "scheduler": scheduler, "metric": metric,
                                   "maximize": maximize, "eta": eta})
    temp = _temp()      # a local Ray's session files, and results unless named
    store = Path(storage_path or (folder / "ray" if folder else Path(temp, "results"))).expanduser().resolve()
    experiment = store / (name or "mokit_ray")
    resume = folder is not None and tune.Tuner.can_restore(str(experiment))
    started = False
    try:
        started = _connect(address, concurrent * cpus_per_trial, verbose, temp)
        search_alg: Any
        if searcher == "tpe":
            import optuna
            from ray.tune.search.optuna import OptunaSearch
            level = optuna.logging.get_verbosity()
            optuna.logging.set_verbosity(optuna.logging.WARNING)      # not "A new study created in memory"
            try:
                search_alg = OptunaSearch(_DefineByRun(space), metric=metric, mode=mode, seed=seed)
            finally:
                optuna.logging.set_verbosity(level)
            param_space = {}
        else:
            from ray.tune.search.basic_variant import BasicVariantGenerator
            # Tune ignores max_concurrent_trials for a generator passed in (it only warns): the generator limits itself
            search_alg = BasicVariantGenerator(random_state=seed, max_concurrent=concurrent)
            param_space = _ray_space(space, labels)
        sched = (ASHAScheduler(time_attr="budget", grace_period=min_budget, reduction_factor=eta, max_t=max_budget)
                 if scheduler == "asha" else FIFOScheduler())
        trainable = tune.with_resources(
            tune.with_parameters(_trainable(space, labels, rungs, metric, maximize, cpus_per_trial),
                                 objective=objective), {"cpu": cpus_per_trial})
        if resume:               # Ray's saved searcher and trials; a trial whose process died is run again
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, restart_errored=True)
        else:
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(
                metric=metric, mode=mode, search_alg=search_alg, scheduler=sched, num_samples=n_trials,
                max_concurrent_trials=concurrent, reuse_actors=True), run_config=tune.RunConfig(
                name=experiment.name, storage_path=str(store), verbose=2 if verbose else 0))
        results = tuner.fit()
        trials = [_trial(results[i], i, space, labels, max_budget) for i in range(len(results))]
    finally:
        if started:
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    for t in trials:
        if t.status == "failed":
            print(f"  trial failed ({t.error}); config {format_config(t.config)}")
    if folder is not None:                         # each trial once, however often the search was resumed
        log = TrialLog(folder / "trials.jsonl")
        logged = log.load()
        for t in trials:
            t.resumed = t.key in logged
            if not t.resumed:
                log.append(t)
    return SearchResult(f"ray_{searcher}_{scheduler}", trials, metric, maximize)


def ray_throughput(objective: Callable, space: dict, *, n_trials: int = 8, budget: int = 1,
                   concurrents: tuple = (1, 2), seed: int = 0, metric: str = "score") -> dict[int, dict[str, float]]:
    """Trials per minute of ray_search (random searcher, FIFO, one CPU and torch thread per trial) at each
    level of concurrency, all in one Ray started once: {concurrent: {"window": n_trials per minute from the
    first trial's start to the last one's end, "wall": per minute of the whole ray_search call, "trial_seconds":
    the seconds the trials took, summed, "busy": trial_seconds / (concurrent x window)}}. "wall" counts Ray
    Tune's start of each search and of its workers (seconds each): give trials of seconds or more. A speedup
    short of `concurrent` is the product of trials slowed by running side by side (trial_seconds grows) and
    workers left waiting (busy < 1: the last long trial, Ray's own turns between trials)."""
    check_runner(objective, metric, True, None, None, False)
    validate_space(space)
    check_count("n_trials", n_trials)
    check_budget(budget)
    if not isinstance(concurrents, (list, tuple)) or not concurrents:
        raise ValueError(f"concurrents must be a non-empty tuple of trials at a time, got {concurrents!r}")
    levels = [validate.integer("concurrents entry", c, low=1, high=MAX_COUNT) for c in concurrents]
    out = {}
    with LocalRay(max(levels)):                    # one Ray for every level (a running one is used as it is)
        for c in levels:
            t0 = time.perf_counter()
            result = ray_search(objective, space, n_trials=n_trials, max_budget=budget, scheduler="fifo", seed=seed,
                                concurrent=c, metric=metric)
            wall = time.perf_counter() - t0
            if result.n_failed:                    # a failed trial takes no time: its rate would mean nothing
                raise RuntimeError(f"ray_throughput: {result.n_failed} of {n_trials} trials failed; first error: "
                                   f"{next(t.error for t in result.trials if t.status == 'failed')}")
            ts = [t.info for t in result.trials if "started" in t.info]
            window = max(i["ended"] for i in ts) - min(i["started"] for i in ts) if ts else math.nan
            work = sum(t.seconds for t in result.trials)
            out[c] = {"window": 60 * n_trials / window, "wall": 60 * n_trials / wall, "trial_seconds": work,
                      "busy": work / (c * window)}
    return out
