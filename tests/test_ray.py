"""mokit.search.ray_search on a real local Ray: ASHA stops poor trials early, failures are trials, Ray is shut
down when the bridge started it and left running when the user did; bad arguments fail before Ray starts."""

import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray Tune is the `scale` extra: pip install 'mokit[scale]'")
psutil = pytest.importorskip("psutil", reason="Ray depends on psutil")
from mokit import search as S  # noqa: E402

SPACE = {"x": S.float_range(0.0, 1.0), "opt": S.choice("sgd", "momentum", "broken"),
         "momentum": S.float_range(0.5, 0.9, when={"opt": ["momentum"]}), "shape": S.choice((8, 8), (16,))}
RUNGS = [1, 2, 4]                                     # min_budget 1, eta 2, max_budget 4


def make_objective():
    """A quadratic that grows with the budget (nested, so Ray pickles it by value to its workers)."""
    def objective(config, budget):
        assert ("momentum" in config) == (config["opt"] == "momentum"), config   # inactive decisions dropped
        assert isinstance(config["shape"], tuple), config
        if config["opt"] == "broken":
            raise RuntimeError("broken optimizer")
        return {"score": 1 - (config["x"] - 0.3) ** 2 + 0.01 * budget, "width": config["shape"][0]}
    return objective


def ray_leftovers(wait: float = 30.0) -> list:
    """Ray processes of this test process still alive after `wait` s: its descendants that are Ray's
    (gcs_server, raylet, ray:: workers) and any process of a Ray session it started (session_..._<our pid>)."""
    mine = re.compile(rf"session_[\d_-]+_{os.getpid()}\b")
    deadline = time.monotonic() + wait
    while True:
        kids = {p.pid for p in psutil.Process().children(recursive=True)}
        left = []
        for p in psutil.process_iter(["cmdline", "status"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] != psutil.STATUS_ZOMBIE and (
                    mine.search(cmd) or (p.pid in kids and ("ray" in cmd or "gcs_server" in cmd))):
                left.append(f"{p.pid} {cmd[:100]}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def check_result(result, n_trials):
    assert len(result.trials) == n_trials
    assert len({repr(sorted(t.config.items())) for t in result.trials}) == n_trials      # distinct configs
    assert {t.status for t in result.trials} <= {"ok", "pruned", "failed"}
    for t in result.trials:
        assert t.budget in RUNGS
        assert t.info["compute"] == sum(b for b in RUNGS if b <= t.budget), t
        assert [b for b, _ in t.info["history"]] == [b for b in RUNGS if b <= t.budget]
        assert (t.status == "failed") == (t.config["opt"] == "broken"), t
        if t.status == "failed":
            assert "broken optimizer" in t.error and t.metrics == {}
        if t.status == "ok":
            assert t.budget == 4 and t.metrics["width"] == t.config["shape"][0]
            assert t.metrics["score"] == pytest.approx(1 - (t.config["x"] - 0.3) ** 2 + 0.04)
    best = result.best
    assert best is not None and best.budget == 4
    assert best.value("score") == max(t.value("score") for t in result.trials if t.status == "ok")
    assert result.best_value > 0.5


@pytest.mark.xdist_group("ray")         # one Ray start at a time (see STARTS_RAY in test_notebooks.py)
def test_asha_search_on_a_ray_of_its_own_then_shut_down(capsys):
    assert not ray.is_initialized()
    result = S.ray_search(make_objective(), SPACE, n_trials=8, max_budget=4, min_budget=1, eta=2, seed=0,
                          concurrent=2, name="ray_asha")
    assert result.strategy == "ray_random_asha"
    check_result(result, 8)
    spent = sum(t.info["compute"] for t in result.trials)
    ok = [t for t in result.trials if t.status != "failed"]
    assert any(t.status == "pruned" for t in ok), [(t.status, t.budget) for t in result.trials]
    assert spent < len(ok) * sum(RUNGS)                # ASHA stopped some trials before max_budget
    assert "trial failed (RuntimeError: broken optimizer)" in capsys.readouterr().out
    log = S.search_path("ray_asha") / "trials.jsonl"
    assert len(log.read_text().splitlines()) == 8
    assert not ray.is_initialized()                    # the bridge started Ray, so it shut it down
    assert ray_leftovers() == []


@pytest.mark.xdist_group("ray")
def test_tpe_on_a_ray_the_user_started_is_left_running():
    temp = tempfile.mkdtemp(prefix="mokit_ray_test_", dir="/tmp")       # short: Ray's socket paths are limited
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", _temp_dir=temp)
    try:
        result = S.ray_search(make_objective(), SPACE, n_trials=6, max_budget=4, eta=2, searcher="tpe",
                              concurrent=2, seed=1)
        assert result.strategy == "ray_tpe_asha"
        check_result(result, 6)
        assert ray.is_initialized()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    assert ray_leftovers() == []


def make_sleeper(seconds: float):
    """An objective that sleeps (nested, so Ray pickles it by value): its trials can run side by side."""
    def sleeper(config, budget):
        time.sleep(seconds)
        return {"score": config["x"]}
    return sleeper


def overlaps(result) -> int:
    """Pairs of trials whose spans inside the trainable overlapped."""
    spans = sorted((t.info["started"], t.info["ended"]) for t in result.trials)
    return sum(b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])


@pytest.mark.xdist_group("ray")
def test_concurrent_limits_the_trials_running_at_once_on_one_ray():
    """Tune ignores max_concurrent_trials for a search generator passed in: concurrent=1 must still mean one
    (ray_throughput's 1-at-a-time rate was measured with 2 running)."""
    # 2 s per trial: under make test's load a second Ray worker took over 6 s to start (6 trials of 1 s ran
    # one after the other), so the concurrent=2 search gets a 12 s window for its second worker
    space, sleeper = {"x": S.float_range(0.0, 1.0)}, make_sleeper(2.0)
    with S.LocalRay(2):
        one = S.ray_search(sleeper, space, n_trials=4, max_budget=1, scheduler="fifo", concurrent=1)
        two = S.ray_search(sleeper, space, n_trials=6, max_budget=1, scheduler="fifo", concurrent=2)
        rates = S.ray_throughput(sleeper, space, n_trials=2, budget=1, concurrents=(1, 2))
    assert overlaps(one) == 0
    assert overlaps(two) >= 1                    # a second worker started within the first one's 12 s
    assert set(rates) == {1, 2}
    for r in rates.values():
        assert r["window"] > 0 and r["wall"] > 0 and r["trial_seconds"] >= 4.0 and 0 < r["busy"] <= 1, rates
    assert ray_leftovers() == []


def make_counter(path):
    """An objective that notes each call in a file (Ray runs it in other processes)."""
    def objective(config, budget):
        with open(path, "a") as f:
            f.write(f"{budget}\n")
        return {"score": config["x"] + 0.01 * budget}
    return objective


@pytest.mark.xdist_group("ray")
def test_a_named_search_resumes_without_running_again_and_other_arguments_are_refused(tmp_path):
    calls, space = tmp_path / "calls", {"x": S.float_range(0.0, 1.0)}
    args = dict(n_trials=4, max_budget=2, eta=2, concurrent=2, name="ray_resume")
    with S.LocalRay(2):
        first = S.ray_search(make_counter(calls), space, **args)
        ran = len(calls.read_text().splitlines())
        again = S.ray_search(make_counter(calls), space, **args)
    assert len(calls.read_text().splitlines()) == ran >= 4                 # nothing ran a second time
    assert not any(t.resumed for t in first.trials) and all(t.resumed for t in again.trials)
    assert sorted(t.key for t in again.trials) == sorted(t.key for t in first.trials)
    assert again.best_value == first.best_value
    assert len((S.search_path("ray_resume") / "trials.jsonl").read_text().splitlines()) == 4
    with pytest.raises(ValueError, match=r"'ray_resume' was started with other arguments .*n_trials: 4 then, 5 now"):
        S.ray_search(make_counter(calls), space, **args | {"n_trials": 5})
    assert ray_leftovers() == []


GOOD = {"n_trials": 4, "max_budget": 4}
BAD = [
    ({"searcher": "bayes"}, "searcher"), ({"scheduler": "hyperband"}, "scheduler"), ({"n_trials": 0}, "n_trials"),
    ({"eta": math.nan}, "eta"), ({"eta": 1}, "eta"), ({"max_budget": 0}, "max_budget"),
    ({"min_budget": 8}, "max_budget"), ({"concurrent": 0}, "concurrent"), ({"cpus_per_trial": 1.5}, "cpus_per_trial"),
    ({"seed": None}, "seed"), ({"metric": "budget"}, "budget"), ({"metric": ""}, "metric"),
    ({"maximize": 1}, "maximize"), ({"name": "../x"}, "name"), ({"address": "nowhere"}, "nowhere"),
    ({"address": "host:0"}, "host:0"), ({"address": 6379}, "6379"), ({"storage_path": 3}, "storage_path"),
]


@pytest.mark.parametrize(("kw", "named"), BAD, ids=[next(iter(kw)) for kw, _ in BAD])
def test_bad_arguments_fail_before_ray_starts(kw, named):
    with pytest.raises(ValueError, match=named):
        S.ray_search(make_objective(), SPACE, **{**GOOD, **kw})
    assert not ray.is_initialized()


def test_bad_space_and_objective_fail_before_ray_starts():
    with pytest.raises(ValueError, match="search space"):
        S.ray_search(make_objective(), {}, **GOOD)
    with pytest.raises(ValueError, match="objective"):
        S.ray_search(None, SPACE, **GOOD)
    assert not ray.is_initialized()


def test_unreachable_address_is_refused_by_name_at_once():
    with socket.socket() as s:                          # a local port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=f"address '{address}'.*ray start --head --port={port}"):
        S.ray_search(make_objective(), SPACE, address=address, **GOOD)
    assert time.monotonic() - t0 < 10
    assert not ray.is_initialized()


def test_importing_mokit_search_does_not_import_ray():
    code = "import sys, mokit.search; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
