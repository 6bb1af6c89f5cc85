"""Successive halving on worker processes: synchronous (parallel_halving) and asynchronous (ASHA)."""

import math
import os

import pytest

from mokit import search as S
from mokit.search.trials import Trial

SPACE = {"x": S.float_range(0.0, 1.0), "kind": S.choice("a", "b")}
SH = {"n_configs": 9, "min_budget": 1, "max_budget": 9, "eta": 3}


def _toy(config: dict, budget: int) -> dict:
    return {"score": -(config["x"] - 0.3) ** 2 + (0.05 if config["kind"] == "b" else 0.0) + 0.01 * budget,
            "pid": os.getpid()}


def _pairs(result):
    return [(S.trial_key(t.config, t.budget)) for t in result.trials]


def test_parallel_halving_runs_the_trials_of_successive_halving_on_two_processes():
    ref = S.successive_halving(_toy, SPACE, **SH, seed=3)
    par = S.parallel_halving(_toy, SPACE, **SH, seed=3, workers=2)
    assert sorted(_pairs(par)) == sorted(_pairs(ref))
    assert par.best.config == ref.best.config and par.compute == ref.compute == 9 + 3 * 3 + 9
    assert len({t.metrics["pid"] for t in par.trials}) == 2 != os.getpid()      # both workers, not this process
    assert all(0 <= t.info["start"] <= t.info["end"] for t in par.trials)
    # a rung starts only once the one before it has finished (synchronous)
    for low, high in ((1, 3), (3, 9)):
        assert max(t.info["end"] for t in par.trials if t.budget == low) \
            <= min(t.info["start"] for t in par.trials if t.budget == high)


def test_asha_promotes_only_from_the_top_of_a_rung_and_keeps_to_the_compute_cap():
    result = S.async_halving(_toy, SPACE, n_configs=27, min_budget=1, max_budget=9, eta=3, seed=1,
                             workers=1, compute=60)
    assert result.compute <= 60
    budgets = [1, 3, 9]
    for i, t in enumerate(result.trials):             # one worker: the trials in the order they ran
        if t.budget == 1:
            continue
        below = [u for u in result.trials[:i] if u.budget == budgets[budgets.index(t.budget) - 1]]
        top = sorted(below, key=lambda u: u.value("score"), reverse=True)[:len(below) // 3]
        assert t.config in [u.config for u in top], f"trial {i} at {t.budget} was not in the top third below"
    assert sum(t.budget == 9 for t in result.trials) >= 1 and result.best is not None
    # every config the promotions used came from the same draws as successive halving's
    drawn = list(S.distinct_draws(SPACE, __import__("random").Random(1), 27, None))
    assert all(t.config in drawn for t in result.trials)


def test_asha_on_two_workers_finds_the_best_of_its_draws_with_the_same_compute_as_sync():
    sync = S.parallel_halving(_toy, SPACE, **SH, workers=2)
    asha = S.async_halving(_toy, SPACE, **SH, workers=2, compute=sync.compute)
    assert asha.compute <= sync.compute
    assert len({S.trial_key(t.config, t.budget) for t in asha.trials}) == len(asha.trials)
    assert asha.best is not None and math.isfinite(asha.best_value)
    for r in (sync, asha):
        assert 0.0 <= S.idle_fraction(r, 2) < 1.0
        assert S.time_to(r, r.best_value) <= max(t.info["end"] for t in r.trials)


def test_a_restarted_asha_reads_its_trials_back_instead_of_running_them(tmp_path):
    first = S.async_halving(_toy, SPACE, **SH, workers=2, path=tmp_path)

    def must_not_run(config, budget):
        raise AssertionError("a logged trial ran again")

    again = S.async_halving(must_not_run, SPACE, **SH, workers=2, path=tmp_path)
    assert again.n_failed == 0 and all(t.resumed for t in again.trials)
    assert sorted(_pairs(again)) == sorted(_pairs(first))


def test_a_failing_trial_is_recorded_and_the_search_goes_on():
    def sometimes(config, budget):
        if config["kind"] == "a":
            raise RuntimeError("boom")
        return _toy(config, budget)

    result = S.async_halving(sometimes, SPACE, **SH, workers=2)
    assert 0 < result.n_failed < len(result.trials)
    assert all("boom" in t.error for t in result.trials if t.status == "failed")
    assert result.best.config["kind"] == "b"


def test_idle_fraction_and_time_to_from_trial_times():
    def trial(budget, score, start, end):
        return Trial({"x": score}, budget, {"score": score}, end - start, info={"start": start, "end": end})

    r = S.SearchResult("t", [trial(1, 0.1, 0, 1), trial(1, 0.2, 0, 2), trial(3, 0.5, 2, 4), trial(3, 0.7, 2, 3)])
    assert S.idle_fraction(r, 2) == pytest.approx(1 - (1 + 2 + 2 + 1) / (2 * 4))
    assert S.time_to(r, 0.6) == 3 and S.time_to(r, 0.5) == 3 and S.time_to(r, 0.8) == math.inf
    with pytest.raises(ValueError, match="no trial has start/end times"):
        S.idle_fraction(S.successive_halving(_toy, SPACE, **SH), 2)
    with pytest.raises(ValueError, match="target must be a finite number"):
        S.time_to(r, float("nan"))


@pytest.mark.parametrize("search", [S.parallel_halving, S.async_halving])
@pytest.mark.parametrize(("option", "value", "message"), [
    ("workers", 0, r"workers must be an integer in \[1, 256\], got 0"),
    ("workers", True, "workers must be an integer"),
    ("threads", 1.5, "threads must be an integer"),
    ("n_configs", 0, "n_configs must be an integer"),
    ("eta", float("nan"), "eta must be an integer"),
])
def test_bad_options_are_refused_before_any_trial(search, option, value, message):
    def never(config, budget):
        raise AssertionError("ran")

    with pytest.raises(ValueError, match=message):
        search(never, SPACE, **{**SH, "workers": 2, option: value})


def test_asha_compute_must_be_a_positive_integer():
    for bad in (0, float("inf"), "9"):
        with pytest.raises(ValueError, match="compute must be an integer"):
            S.async_halving(_toy, SPACE, **SH, compute=bad)
