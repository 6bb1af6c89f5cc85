"""Bounds and argument checks shared by the spaces, the runner and every strategy."""

from __future__ import annotations

from .. import validate

# Upper bounds on a search's sizes: far above any run this kit makes, low enough that a typo
# (n_trials=10**18) is an error at once instead of a search that never ends.
MAX_COUNT = 100_000          # trials, configs, samples, points per range
MAX_EPOCHS = 10_000          # a trial's budget in epochs
MAX_ETA = 1_000              # successive halving's reduction factor


def check_budget(budget, name: str = "budget") -> None:
    validate.integer(name, budget, low=1, high=MAX_EPOCHS, what="training epochs")


def check_count(name: str, n) -> None:
    validate.integer(name, n, low=1, high=MAX_COUNT)


check_bool = validate.flag          # the name mokit.search has always exported


def check_callable(name: str, fn, signature: str, *, optional: bool = True) -> None:
    if not (callable(fn) or (optional and fn is None)):
        raise ValueError(f"{name} must be callable, {signature}{' (or None)' if optional else ''}, got {fn!r}")


def check_metric(name: str, metric) -> str:
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"{name} must be a metric's name (a non-empty string), got {metric!r}")
    return metric

# How hard a strategy tries before it gives up on finding something new.
DRAWS_PER_TRIAL = 50         # proposals per wanted trial (a small space runs out of unseen configs)
MAX_STALE = 50               # hill_climb: neighbours already seen, in all, before it stops
FEASIBLE_DRAWS = 1000        # draws for one config that passes `feasible` before it is an error
