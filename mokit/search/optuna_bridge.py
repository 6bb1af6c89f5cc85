"""Optuna drives the search: its samplers, pruners and storages (several workers share one study).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Literal

from .. import validate
from ..files import plain
from .checks import MAX_ETA, check_budget, check_count
from .runner import OutOfTime, Runner, SearchResult
from .space import is_active, validate_space
from .storage import (
    RECONNECT,
    check_directions,
    fail_lost_trials,
    grace_of,
    heartbeat_of,
    is_transient,
    open_storage,
    retried_numbers,
)
from .strategies import rungs as _rungs
from .trials import Trial, jsonable, tuples_back


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


def suggest(trial, space: dict) -> dict:
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


def _primitive(p) -> bool:
    """Options Optuna can take as they are (the rest go to Optuna as their repr, as in suggest)."""
    return all(o is None or isinstance(o, (bool, int, float, str)) for o in p.options)


def _distribution(p):
    """The Optuna distribution suggest asks for decision `p`."""
    import optuna
    if p.kind == "float":
        return optuna.distributions.FloatDistribution(p.low, p.high, log=p.log)
    if p.kind == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)
    return optuna.distributions.CategoricalDistribution(list(p.options) if _primitive(p) else
                                                        [repr(o) for o in p.options])


def _importance_evaluators() -> dict[str, Callable]:
    import optuna.importance as oi
    return {"ped_anova": oi.PedAnovaImportanceEvaluator,          # numpy only
            "fanova": oi.FanovaImportanceEvaluator,               # needs scikit-learn
            "mean_decrease_impurity": oi.MeanDecreaseImpurityImportanceEvaluator}   # needs scikit-learn


def param_importances(result: SearchResult, space: dict, *, evaluator: str = "ped_anova",
                      seed: int = 0) -> dict[str, float]:
    """How much each decision mattered for `result`'s metric, by one of Optuna's importance evaluators,
    over the successful trials at the result's largest budget: {name: share}, shares sum to 1,
    largest first.

    'ped_anova' (PED-ANOVA, Watanabe et al. 2023): for each decision, the Pearson divergence between
    its density among the top-10% trials and among all trials (a decision whose good values spread
    like all its values did not matter). 'fanova' / 'mean_decrease_impurity' fit a random forest
    (scikit-learn). Random-search trials, drawn without bias, suit every one of them best.
    """
    import optuna

    evaluators = _importance_evaluators()
    make = validate.choice("evaluator", evaluator, evaluators)
    validate.integer("seed", seed)
    validate_space(space)
    ok = [t for t in result.trials if t.status == "ok" and t.budget == result.max_budget
          and result.metric in t.metrics and all(k in space for k in t.config)]
    if len(ok) < 2:
        raise ValueError(f"param_importances needs at least 2 successful trials at budget {result.max_budget} "
                         f"with metric {result.metric!r} and decisions of this space, got {len(ok)}")
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)     # not a line per in-memory study
    try:
        study = optuna.create_study(direction="maximize" if result.maximize else "minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in ok:
        params = {k: v if space[k].kind != "choice" or _primitive(space[k]) else repr(v) for k, v in t.config.items()}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: _distribution(space[k]) for k in params},
            value=float(t.metrics[result.metric])))
    kw = {} if evaluator == "ped_anova" else {"seed": seed}
    return dict(optuna.importance.get_param_importances(study, evaluator=make(**kw)))


_COUNTED = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")    # WAITING: a retry, queued
_MAX_TAKEN = 1000       # trials of one worker that others may fail (heartbeat) before it gives up
_PRUNERS = ("median", "successive_halving", "hyperband", "none")
QUOTAS = ("study", "mine")   # what optuna_search's n_trials counts: the study's trials, or this worker's tags
_MISSING = object()
_OWN_ATTRS = ("config", "compute", "budget", "metrics", "seconds", "over_quota", "number", "retry_of")


def _check_user_attrs(user_attrs) -> dict:
    """user_attrs as JSON-plain values: a dict of non-empty string keys other than the ones mokit records."""
    if user_attrs is None:
        return {}
    if not isinstance(user_attrs, dict) or not all(isinstance(k, str) and k for k in user_attrs):
        raise ValueError(f"user_attrs must be None or a dict of non-empty string keys -> JSON values "
                         f"(str, number, bool, None, lists / dicts of them), got {user_attrs!r}")
    if clash := sorted(set(user_attrs) & set(_OWN_ATTRS)):
        raise ValueError(f"user_attrs may not use the names mokit records on each trial itself: {clash}")
    try:
        return {k: plain(v, f"user_attrs[{k!r}]") for k, v in user_attrs.items()}
    except TypeError as e:
        raise ValueError(str(e)) from e


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
                  storage=None, study_name: str | None = None, user_attrs: dict | None = None,
                  quota: str = "study", name: str | None = None, path=None, verbose: bool = False,
                  seconds: float | None = None) -> SearchResult:
    """Optuna drives the search; mokit supplies the space, the objective and the trial log.

    sampler: 'tpe' | 'nsga2' (several objectives) | 'random'. objectives=[(metric, maximize), ...]
    makes it multi-objective. pruner: 'none' | 'median' | 'successive_halving' | 'hyperband':
    the config is then trained at budgets min_budget, *eta, ... up to budget (each from scratch,
    all counted as compute) and Optuna may stop it after any rung.
    storage: see open_storage. Workers started with the same storage and study_name share one
    study; together they finish n_trials trials (counted in the study, over all workers). On a
    database a trial whose worker died is failed by the heartbeat and run again (it does not count,
    its retry does); a worker whose quota is full waits while trials of others run, to retry theirs
    if they die. A study_name that exists with other directions is a ValueError before any trial.
    user_attrs (JSON values) are set on each trial of this worker, e.g. {"student": "Ada"} in a class's
    shared study (mokit.classroom); study_result keeps them in each Trial's info. quota 'study': n_trials
    counts every trial of the study; 'mine': only those carrying these user_attrs (each student adds
    n_trials of their own, and a rerun adds none once they are done).
    seconds: this worker's wall-clock budget (see Runner): once spent it starts no new trial and returns.
    """
    import optuna

    check_budget(budget)
    check_count("n_trials", n_trials)
    samplers = _samplers()
    validate.choice("sampler", sampler, samplers)
    validate.choice("pruner", pruner, _PRUNERS)
    check_budget(min_budget, "min_budget")
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
    if seed is not None:
        validate.integer("seed", seed, what="or None")
    tags = _check_user_attrs(user_attrs)
    validate.choice("quota", quota, QUOTAS)
    if quota == "mine" and not tags:
        raise ValueError("quota='mine' counts the trials carrying this worker's user_attrs: give user_attrs, "
                         "e.g. {'student': 'Ada'}")
    mine = tags if quota == "mine" else {}
    metric, maximize = objectives[0]
    run = Runner(objective, metric=metric, maximize=maximize, name=name, path=path, verbose=verbose,
                 seconds=seconds)
    validate_space(space)
    optuna.logging.set_verbosity(optuna.logging.ERROR)      # mokit prints failed trials itself
    directions: list[Literal["maximize", "minimize"]] = ["maximize" if mx else "minimize" for _, mx in objectives]
    store = open_storage(storage)
    study = optuna.create_study(storage=store, study_name=study_name, load_if_exists=study_name is not None,
                                sampler=samplers[sampler](seed), pruner=pruners[pruner](), directions=directions)
    check_directions(study, study_name, storage, directions)
    counted = tuple(getattr(optuna.trial.TrialState, s) for s in _COUNTED)
    waiting = (optuna.trial.TrialState.WAITING,)

    def ahead(number: int | None = None) -> int:
        """Trials of the study that count towards n_trials (before `number`, if given): a trial that
        lost its worker and was queued again does not count, its retry does."""
        trials = study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        return sum(1 for t in trials if t.state in counted and t.number not in retried
                   and not t.user_attrs.get("over_quota") and (number is None or t.number < number)
                   and all(t.user_attrs.get(k, _MISSING) == v for k, v in mine.items()))

    current: list[int] = []                        # the number of this worker's latest trial

    def over(trial):
        """Leave this trial out (it does not count, study_result skips it) and stop this worker."""
        trial.set_user_attr("over_quota", True)
        study.stop()
        raise optuna.TrialPruned()

    def fn(trial):
        current[:] = [trial.number]
        if ahead(trial.number) >= n_trials:        # another worker took the last slot
            over(trial)
        for key, value in tags.items():
            trial.set_user_attr(key, value)
        config = suggest(trial, space)
        trial.set_user_attr("config", jsonable(config))
        spent = 0
        for b in rungs:
            try:
                t = run(config, b)
            except OutOfTime:                      # the wall-clock budget is spent
                over(trial)
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

    def taken() -> bool:
        """Whether this worker's last trial was failed by another one (its heartbeat went quiet)."""
        return any(t.number in current and t.state == optuna.trial.TrialState.FAIL
                   for t in study.get_trials(deepcopy=False))

    _drive(study, store, lambda: not run.timed_out and (ahead() < n_trials
                                                        or bool(study.get_trials(deepcopy=False, states=waiting))),
           lambda: study.optimize(fn, callbacks=[stop_when_done], catch=(Exception,)), taken)
    result = study_result(study, f"optuna_{sampler}", metric, maximize)
    result.timed_out = run.timed_out
    return result


def _drive(study, store, more: Callable[[], bool], optimize: Callable[[], None], taken: Callable[[], bool]) -> None:
    """optimize() while more() (the quota is open, or a retry waits); then, on a storage with a heartbeat,
    wait while other trials run, so that one whose worker died is failed and retried here.

    Neither a storage call that lost the server for longer than the storage waits (see open_storage),
    nor Optuna's error on finishing a trial another worker failed meanwhile (taken(): its heartbeat
    stopped, e.g. while the server was away; its retry runs instead) ends the search.
    """
    import optuna

    beat, grace = heartbeat_of(store), grace_of(store)
    seen, since, lost, strikes = None, time.monotonic(), None, 0
    while True:
        try:
            if more():
                optimize()
                lost = None
                continue
            running = {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
            if not beat or not running:
                return
            if running != seen:
                seen, since = running, time.monotonic()
            elif time.monotonic() - since > grace + 2 * beat:
                return                                     # they are alive: their workers finish them
            time.sleep(beat)
            fail_lost_trials(study)
            lost = None
        except Exception as e:
            if is_transient(e):
                lost = lost or time.monotonic()
                if time.monotonic() - lost > RECONNECT:
                    raise
                time.sleep(1.0)
            elif isinstance(e, (ValueError, AssertionError, optuna.exceptions.UpdateFinishedTrialError)) \
                    and strikes < _MAX_TAKEN and taken():
                strikes += 1
            else:
                raise


def study_result(study, strategy: str = "optuna", metric: str = "score",
                 maximize: bool = True) -> SearchResult:
    """A SearchResult of every trial in an Optuna study made by optuna_search (all workers)."""
    import optuna

    status = {optuna.trial.TrialState.COMPLETE: "ok", optuna.trial.TrialState.PRUNED: "pruned",
              optuna.trial.TrialState.FAIL: "failed"}
    trials, everything = [], sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    retried = retried_numbers(everything)                 # their retries stand for them
    for t in everything:
        if t.state not in status or t.user_attrs.get("over_quota") or "config" not in t.user_attrs \
                or t.number in retried:
            continue
        ua = t.user_attrs
        metrics = ua.get("metrics", {}) if t.state == optuna.trial.TrialState.COMPLETE else {}
        info = {"number": t.number, "compute": ua.get("compute", 0)}
        if t.system_attrs.get("retry_history"):
            info["retry_of"] = list(t.system_attrs["retry_history"])
        info.update({k: v for k, v in ua.items() if k not in _OWN_ATTRS})      # user_attrs: e.g. the student
        trials.append(Trial(tuples_back(ua["config"]), ua.get("budget", 0), metrics, ua.get("seconds", 0.0),
                            status[t.state], info=info))
    return SearchResult(strategy, trials, metric, maximize)


