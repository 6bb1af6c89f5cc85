"""A search's wall-clock budget, `seconds=`: no new trial once it is spent, on every strategy and on Optuna;
resumed trials cost nothing; a bad budget is refused before any trial.

The clock is a fake one that each trial moves on by one second, so the tests count trials, not time.
"""

import math

import pytest

from mokit import search as S
from mokit.search import runner as runner_module

SPACE = {"x": S.float_range(0.0, 1.0), "kind": S.choice("a", "b")}

# options that plan far more than the trials the budget allows, per strategy
PLENTY = {"grid": {"budget": 1, "points": 10},
          "successive_halving": {"n_configs": 30, "min_budget": 1, "max_budget": 3},
          "hyperband": {"min_budget": 1, "max_budget": 9},
          "parallel_halving": {"n_configs": 30, "min_budget": 1, "max_budget": 3, "workers": 1},
          "async_halving": {"n_configs": 30, "min_budget": 1, "max_budget": 3, "workers": 1}}


@pytest.fixture
def clock(monkeypatch):
    """A fake time.monotonic for the runner: now[0] seconds, moved on by the objective."""
    now = [1000.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: now[0])
    return now


def ticking(clock, calls=None):
    """An objective whose every trial takes one (fake) second."""
    def objective(config, budget):
        if calls is not None:
            calls.append((dict(config), budget))
        clock[0] += 1.0
        score = -(config["x"] - 0.3) ** 2 + (0.1 if config["kind"] == "b" else 0.0) + 0.01 * budget
        return {"score": score, "x": config["x"]}
    return objective


@pytest.mark.parametrize("key", sorted(S.STRATEGIES))
def test_every_strategy_stops_starting_trials_once_its_seconds_are_spent(key, clock):
    options = PLENTY.get(key, {"budget": 1, "n_trials": 50})
    result = S.STRATEGIES[key](ticking(clock), SPACE, seconds=3.5, **options)
    # trials start at 0, 1, 2 and 3 s; the fifth would start at 4 s > 3.5 s
    assert len(result.trials) == 4 and result.timed_out
    assert all(t.status == "ok" for t in result.trials)
    untimed = S.STRATEGIES[key](ticking(clock), SPACE, **options)
    assert not untimed.timed_out and len(untimed.trials) > 4


def test_a_budget_the_search_does_not_reach_is_not_a_time_out(clock):
    result = S.random_search(ticking(clock), SPACE, budget=1, n_trials=3, seconds=100)
    assert len(result.trials) == 3 and not result.timed_out


def test_a_resumed_search_replays_its_logged_trials_for_free_and_goes_on(clock, tmp_path):
    calls: list = []
    first = S.random_search(ticking(clock, calls), SPACE, budget=1, n_trials=50, seed=3, seconds=3.5,
                            path=tmp_path / "s")
    assert len(first.trials) == 4 and len(calls) == 4
    again = S.random_search(ticking(clock, calls), SPACE, budget=1, n_trials=50, seed=3, seconds=3.5,
                            path=tmp_path / "s")
    assert [t.key for t in again.trials[:4]] == [t.key for t in first.trials]
    assert all(t.resumed for t in again.trials[:4]) and not any(t.resumed for t in again.trials[4:])
    assert len(again.trials) == 8 and len(calls) == 8 and again.timed_out     # 4 read back, 4 new
    assert len({t.key for t in again.trials}) == 8


def test_evolution_under_a_budget_resumes_the_same_way(clock, tmp_path):
    kw = dict(budget=1, n_trials=40, population=3, seed=1, seconds=5.5, path=tmp_path / "evo")
    first = S.evolution(ticking(clock), SPACE, **kw)
    again = S.evolution(ticking(clock), SPACE, **kw)
    assert len(first.trials) == 6 and len(again.trials) == 12
    assert [t.key for t in again.trials[:6]] == [t.key for t in first.trials]


def test_optuna_search_stops_once_its_seconds_are_spent(clock):
    calls: list = []
    result = S.optuna_search(ticking(clock, calls), SPACE, budget=1, n_trials=50, sampler="nsga2", seed=0,
                             objectives=[("score", True), ("x", False)], seconds=3.5)
    assert len(calls) == 4 and len(result.trials) == 4 and result.timed_out
    assert all(t.status == "ok" for t in result.trials)            # the refused trial is left out
    plain = S.optuna_search(ticking(clock), SPACE, budget=1, n_trials=6, sampler="random", seed=0)
    assert len(plain.trials) == 6 and not plain.timed_out


def test_optuna_search_with_a_pruner_stops_between_rungs_too(clock):
    result = S.optuna_search(ticking(clock), SPACE, budget=3, n_trials=50, pruner="successive_halving",
                             min_budget=1, eta=3, seed=0, seconds=4.5)
    assert result.timed_out and 1 <= len(result.trials) <= 3


@pytest.mark.parametrize("bad", [0, -1, 0.0, math.nan, math.inf, -math.inf, "60", True, [60]])
def test_a_bad_budget_is_refused_naming_it_before_any_trial(bad):
    calls: list = []
    counted = lambda c, b: calls.append(b) or 1.0                # noqa: E731
    for run in (lambda: S.random_search(counted, SPACE, budget=1, n_trials=3, seconds=bad),
                lambda: S.grid_search(counted, SPACE, budget=1, points=2, seconds=bad),
                lambda: S.optuna_search(counted, SPACE, budget=1, n_trials=3, seconds=bad),
                lambda: S.Runner(counted, seconds=bad)):
        with pytest.raises(ValueError, match="seconds") as err:
            run()
        assert repr(bad) in str(err.value)
    assert calls == []
    assert S.check_seconds(None) is None and S.check_seconds(2) == 2.0
