"""mokit.search: spaces, strategies against brute force, persistence, SIGKILL resume, two workers."""

import functools
import inspect
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from mokit import search as S

REPO = Path(__file__).resolve().parent.parent

SPACE = {
    "lr": S.float_range(1e-4, 1.0, log=True),
    "opt": S.choice("sgd", "momentum", "adam"),
    "momentum": S.float_range(0.5, 0.99, when={"opt": ["momentum"]}),
    "width": S.int_range(8, 256, log=True),
}

# A discrete toy problem with one best config, (x, y, z) = (3, 1, "b") -> 0 is the optimum.
TOY = {"x": S.int_range(0, 5), "y": S.int_range(0, 5), "z": S.choice("a", "b", "c")}


def toy(config, budget):
    """-distance to the optimum, plus a budget-dependent offset that keeps the ranking."""
    d = (config["x"] - 3) ** 2 + (config["y"] - 1) ** 2 + (0 if config["z"] == "b" else 2)
    return -d - 1.0 / budget


def brute_best(space, fn, budget):
    return max(fn(c, budget) for c in S.grid(space, points=6))


# ---------------------------------------------------------------------------------------------
# Spaces
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: S.validate_space({}), "non-empty"),
    (lambda: S.int_range(5, 5), "low < high"),
    (lambda: S.float_range(1.0, 0.1), "low < high"),
    (lambda: S.float_range(0.0, 1.0, log=True), "above 0"),
    (lambda: S.int_range(0, 8, log=True), "above 0"),
    (lambda: S.choice(), "at least one option"),
    (lambda: S.choice("a", "a"), "distinct"),
    (lambda: S.float_range(0.0, math.inf), "finite"),
    (lambda: S.validate_space({"a": S.float_range(0, 1, when={"b": [1]}), "b": S.choice(1, 2)}),
     "defined before"),
    (lambda: S.validate_space({"b": S.choice(1, 2), "a": S.float_range(0, 1, when={"b": [3]})}),
     "only takes"),
    (lambda: S.validate_space({"a": (1, 2)}), "must be a Param"),
])
def test_bad_spaces_fail_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("budget", [0, -1, 1.5, True])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match=r"budget must be an integer in \[1, 10000\]"):
        S.random_search(toy, TOY, budget=budget, n_trials=2)


def test_bad_counts_and_rungs():
    with pytest.raises(ValueError, match="n_trials"):
        S.random_search(toy, TOY, budget=1, n_trials=0)
    with pytest.raises(ValueError, match="max_budget"):
        S.successive_halving(toy, TOY, n_configs=4, min_budget=9, max_budget=3)
    with pytest.raises(ValueError, match="eta"):
        S.hyperband(toy, TOY, min_budget=1, max_budget=9, eta=1)
    with pytest.raises(ValueError, match="unknown sampler"):
        S.optuna_search(toy, TOY, budget=1, n_trials=2, sampler="cma")


def test_sample_respects_ranges_and_conditions():
    rng = random.Random(0)
    for _ in range(500):
        c = S.sample(SPACE, rng)
        assert 1e-4 <= c["lr"] <= 1.0 and 8 <= c["width"] <= 256 and isinstance(c["width"], int)
        assert ("momentum" in c) == (c["opt"] == "momentum")
    widths = [S.sample(SPACE, rng)["width"] for _ in range(2000)]
    assert sum(w < 45 for w in widths) > 0.4 * len(widths)     # log-uniform: half below sqrt(8*256)


def test_grid_matches_brute_force_with_conditions():
    g = S.grid(SPACE, points=3)
    # opt in {sgd, adam}: 3 lr x 3 width; momentum: x 3 momentum values
    assert len(g) == 3 * 3 * 2 + 3 * 3 * 3
    assert len({json.dumps(c, sort_keys=True) for c in g}) == len(g)
    assert S.values(S.float_range(1e-3, 1e-1, log=True), 3) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert S.values(S.int_range(1, 9), 3) == [1, 5, 9]


def test_mutate_changes_one_decision_and_repairs_conditions():
    rng = random.Random(1)
    for _ in range(300):
        c = S.sample(SPACE, rng)
        m = S.mutate(SPACE, c, rng)
        changed = [k for k in SPACE if c.get(k) != m.get(k)]
        assert 1 <= len(changed) <= 2                      # opt change may add/drop momentum
        if len(changed) == 2:
            assert set(changed) == {"opt", "momentum"}
        assert ("momentum" in m) == (m["opt"] == "momentum")
        assert 1e-4 <= m["lr"] <= 1.0 and 8 <= m["width"] <= 256


def test_trial_key_is_stable_and_order_free():
    assert S.trial_key({"a": 1, "b": (2, 3)}, 3) == S.trial_key({"b": [2, 3], "a": 1}, 3)
    assert S.trial_key({"a": 1}, 3) != S.trial_key({"a": 1}, 4)


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

def test_grid_search_finds_the_brute_force_best():
    r = S.grid_search(toy, TOY, budget=2, points=6)
    assert len(r.trials) == 6 * 6 * 3 and r.compute == 2 * 108
    assert r.best_value == pytest.approx(brute_best(TOY, toy, 2))
    assert r.best.config == {"x": 3, "y": 1, "z": "b"}


def test_random_search_is_seeded_distinct_and_reproducible():
    a = S.random_search(toy, TOY, budget=1, n_trials=20, seed=3)
    b = S.random_search(toy, TOY, budget=1, n_trials=20, seed=3)
    c = S.random_search(toy, TOY, budget=1, n_trials=20, seed=4)
    assert [t.config for t in a.trials] == [t.config for t in b.trials]
    assert [t.config for t in a.trials] != [t.config for t in c.trials]
    assert len({t.key for t in a.trials}) == 20 and a.compute == 20


def test_successive_halving_keeps_the_best_at_a_third_of_the_compute():
    rs = S.random_search(toy, TOY, budget=9, n_trials=9, seed=0)
    sh = S.successive_halving(toy, TOY, n_configs=9, min_budget=1, max_budget=9, eta=3, seed=0)
    assert sorted(json.dumps(t.config, sort_keys=True) for t in sh.trials if t.budget == 1) == \
        sorted(json.dumps(t.config, sort_keys=True) for t in rs.trials)      # the same candidates
    assert [sum(t.budget == b for t in sh.trials) for b in (1, 3, 9)] == [9, 3, 1]
    assert sh.compute == 27 and rs.compute == 81
    assert sh.best_value == rs.best_value                  # ranking is budget-independent here


def test_hyperband_brackets():
    hb = S.hyperband(toy, TOY, min_budget=1, max_budget=9, eta=3, seed=0)
    # s=2: 9@1, 3@3, 1@9; s=1: 5@3, 1@9; s=0: 3@9 (configs repeated across brackets are run again
    # only if they are new keys) -> compute at most 9 + 9 + 9 + 15 + 9 + 27 = 78
    assert hb.compute <= 78 and hb.max_budget == 9
    assert sum(t.budget == 1 for t in hb.trials) == 9


@pytest.mark.parametrize("strategy", ["evolution", "hill_climb", "tree"])
def test_model_free_strategies_beat_their_start(strategy):
    fn = S.STRATEGIES[strategy]
    scores = []
    for seed in range(5):
        r = fn(toy, TOY, budget=1, n_trials=30, seed=seed)
        assert len(r.trials) == 30 and len({t.key for t in r.trials}) == 30
        scores.append(r.best_value)
    rand = [S.random_search(toy, TOY, budget=1, n_trials=30, seed=s).best_value for s in range(5)]
    assert sum(scores) / 5 >= sum(rand) / 5 - 0.5            # at least as good as random, roughly
    assert max(scores) == pytest.approx(brute_best(TOY, toy, 1))


def test_feasible_constraint_is_never_violated():
    ok = lambda c: c["x"] <= 2                                      # noqa: E731
    for fn in (S.random_search, S.evolution, S.hill_climb, S.tree_search):
        r = fn(toy, TOY, budget=1, n_trials=10, seed=0, feasible=ok)
        assert all(t.config["x"] <= 2 for t in r.trials), fn.__name__


def test_failed_and_nan_trials_are_recorded_and_the_search_goes_on(tmp_path):
    def flaky(config, budget):
        if config["z"] == "a":
            raise RuntimeError("boom")
        if config["z"] == "c":
            return float("nan")
        return toy(config, budget)
    r = S.random_search(flaky, TOY, budget=1, n_trials=15, seed=0, path=tmp_path)
    failed = [t for t in r.trials if t.status == "failed"]
    assert len(r.trials) == 15 and failed and r.n_failed == len(failed)
    assert all(t.config["z"] in ("a", "c") for t in failed)
    assert any("boom" in t.error for t in failed) and any("nan" in t.error for t in failed)
    assert r.best.config["z"] == "b"
    lines = (tmp_path / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 15 and sum('"failed"' in line for line in lines) == len(failed)


def test_missing_metric_fails_the_trial():
    r = S.random_search(lambda c, b: {"acc": 1.0}, TOY, budget=1, n_trials=2, metric="val_acc")
    assert r.n_failed == 2 and "val_acc" in r.trials[0].error


def test_finished_search_is_never_rerun(tmp_path):
    calls = []
    counted = lambda c, b: calls.append(1) or toy(c, b)             # noqa: E731
    first = S.evolution(counted, TOY, budget=1, n_trials=12, seed=0, path=tmp_path)
    assert len(calls) == 12
    again = S.evolution(counted, TOY, budget=1, n_trials=12, seed=0, path=tmp_path)
    assert len(calls) == 12 and all(t.resumed for t in again.trials)
    assert [t.config for t in again.trials] == [t.config for t in first.trials]


def test_torn_last_line_is_ignored(tmp_path):
    S.random_search(toy, TOY, budget=1, n_trials=3, seed=0, path=tmp_path)
    with open(tmp_path / "trials.jsonl", "a") as f:
        f.write('{"config": {"x": 1')                      # a write killed half-way
    assert len(S.TrialLog(tmp_path / "trials.jsonl").load()) == 3


def test_curve_and_best_within():
    r = S.random_search(toy, TOY, budget=2, n_trials=5, seed=0)
    xs, ys = r.curve()
    assert xs == [2, 4, 6, 8, 10]
    assert all(b >= a for a, b in pairwise(ys)) and ys[-1] == r.best_value
    assert r.best_within(4) == ys[1] and math.isnan(r.best_within(1))


# ---------------------------------------------------------------------------------------------
# SIGKILL mid-trial, then resume
# ---------------------------------------------------------------------------------------------

WORKER = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from mokit import search as S
TOY = {{"x": S.int_range(0, 5), "y": S.int_range(0, 5), "z": S.choice("a", "b", "c")}}
calls = {calls!r}
def objective(config, budget):
    with open(calls, "a") as f:
        f.write(json.dumps(config, sort_keys=True) + "\\n")
    time.sleep(0.3)                                   # a trial in progress, to be killed
    return -(config["x"] - 3) ** 2 - (config["y"] - 1) ** 2
r = S.{strategy}(objective, TOY, budget=1, n_trials=10, seed=5, path={path!r})
print(json.dumps([t.config for t in r.trials]))
"""


@pytest.mark.parametrize("strategy", ["random_search", "evolution"])
def test_sigkill_mid_trial_then_resume(tmp_path, strategy):
    calls, path = tmp_path / "calls.txt", tmp_path / "search"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), calls=str(calls), path=str(path), strategy=strategy))
    log = path / "trials.jsonl"
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:                       # wait for 4 finished trials + 1 started
        n_done = len(log.read_text().splitlines()) if log.exists() else 0
        n_started = len(calls.read_text().splitlines()) if calls.exists() else 0
        if n_done >= 4 and n_started == n_done + 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = log.read_text().splitlines()
    assert 4 <= len(done_before) < 10
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    keys = [r["key"] for r in records]
    assert len(records) == 10 and len(set(keys)) == 10          # every trial once, none repeated
    assert records[:len(done_before)] == [json.loads(line) for line in done_before]   # kept as they were
    started = calls.read_text().splitlines()
    assert len(started) == 10 + 1                              # only the killed trial ran twice
    fresh = getattr(S, strategy)(lambda c, b: -(c["x"] - 3) ** 2 - (c["y"] - 1) ** 2, TOY, budget=1,
                                 n_trials=10, seed=5)
    assert resumed == [t.config for t in fresh.trials]         # same sequence as an unbroken run


# ---------------------------------------------------------------------------------------------
# Optuna bridge
# ---------------------------------------------------------------------------------------------

def test_optuna_tpe_in_memory_with_conditions_and_failures():
    def objective(config, budget):
        if config["opt"] == "sgd" and config["lr"] > 0.5:
            raise FloatingPointError("diverged")
        return -abs(math.log10(config["lr"]) + 2) + (0.5 if config["opt"] == "momentum" else 0)
    r = S.optuna_search(objective, SPACE, budget=1, n_trials=25, sampler="tpe", seed=0)
    assert len(r.trials) == 25
    assert all(("momentum" in t.config) == (t.config["opt"] == "momentum") for t in r.trials)
    assert all(t.status in ("ok", "failed") for t in r.trials)
    assert r.best_value > -1.0


def test_optuna_nsga2_two_objectives():
    space = {"w": S.int_range(1, 64, log=True), "d": S.choice((1,), (1, 1), (1, 1, 1))}
    obj = lambda c, b: {"acc": math.log(c["w"]) * len(c["d"]), "size": c["w"] * len(c["d"])}  # noqa: E731
    r = S.optuna_search(obj, space, budget=1, n_trials=16, sampler="nsga2",
                        objectives=[("acc", True), ("size", False)])
    assert len(r.trials) == 16 and all(isinstance(t.config["d"], tuple) for t in r.trials)


def test_optuna_pruner_stops_bad_trials_early():
    obj = lambda c, b: -abs(c["x"] - 3) * 10 + b              # noqa: E731
    r = S.optuna_search(obj, TOY, budget=9, n_trials=20, pruner="successive_halving", seed=0)
    assert any(t.status == "pruned" for t in r.trials)
    assert sum(t.info["compute"] for t in r.trials) < 20 * (1 + 3 + 9)


def test_optuna_journal_resumes_and_counts_the_study(tmp_path):
    journal = tmp_path / "study.log"
    S.optuna_search(toy, TOY, budget=1, n_trials=5, storage=journal, study_name="s", seed=0)
    r = S.optuna_search(toy, TOY, budget=1, n_trials=8, storage=journal, study_name="s", seed=1)
    assert len(r.trials) == 8                                 # 5 kept, 3 more
    with pytest.raises(ValueError, match="journal file"):
        S.open_storage(tmp_path / "study.txt")


OPTUNA_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from mokit import search as S
space = {{"a": S.float_range(0.0, 1.0), "b": S.float_range(1e-3, 1.0, log=True)}}
open({ready!r} + sys.argv[1], "w").close()
while len([f for f in os.listdir({tmp!r}) if f.startswith("ready")]) < 2:
    time.sleep(0.01)
def objective(config, budget):
    time.sleep(0.15)
    return {{"score": -(config["a"] - 0.3) ** 2, "pid": os.getpid()}}
S.optuna_search(objective, space, budget=1, n_trials={n}, seed=int(sys.argv[1]),
                storage={journal!r}, study_name="shared")
"""


def test_two_worker_processes_share_one_optuna_study(tmp_path):
    import optuna

    n, journal = 14, str(tmp_path / "journal.log")
    script = tmp_path / "optuna_worker.py"
    script.write_text(OPTUNA_WORKER.format(repo=str(REPO), ready=str(tmp_path / "ready"), tmp=str(tmp_path),
                                           n=n, journal=journal))
    procs = [subprocess.Popen([sys.executable, str(script), str(i)]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    study = optuna.load_study(study_name="shared", storage=S.open_storage(journal))
    r = S.study_result(study)
    assert len(r.trials) == n and all(t.status == "ok" for t in r.trials)
    assert len({t.info["number"] for t in r.trials}) == n
    assert len({json.dumps(t.config, sort_keys=True) for t in r.trials}) == n       # n distinct trials
    assert len({t.metrics["pid"] for t in r.trials}) == 2                          # both did work


# ---------------------------------------------------------------------------------------------
# A real training objective, tiny
# ---------------------------------------------------------------------------------------------

def test_train_objective_on_tiny_data():
    import torch

    from mokit.data import TensorData
    from mokit.models import create_model

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (300,), generator=g)
    x = torch.randn(300, 1, 28, 28, generator=g) + y.view(-1, 1, 1, 1) / 5       # learnable
    data = TensorData(x, y, "mnist", "train", tuple(map(str, range(10))), real=False)
    train_data, val_data = data.split_off(100)
    obj = S.train_objective(lambda c: create_model("mlp", hidden=(c["width"],)), train_data, val_data)
    space = {"width": S.choice(16, 32), "lr": S.float_range(1e-3, 1e-2, log=True)}
    r = S.random_search(obj, space, budget=1, n_trials=2, metric="val_acc")
    assert r.n_failed == 0 and 0 <= r.best_value <= 100
    assert {"val_acc", "val_loss", "params", "train_seconds"} <= set(r.best.metrics)


def test_train_objective_moves_the_data_to_the_device_once(monkeypatch):
    """Every trial trains on the tensors moved at construction: no host->device copy per trial."""
    import torch

    import mokit.train
    from mokit.data import TensorData
    from mokit.models import create_model

    moves = []

    class Counted(TensorData):
        def to(self, device):                     # a stand-in for a host -> GPU copy
            moves.append(torch.device(device))
            return TensorData(self.x.clone(), self.y.clone(), self.name, self.split, self.classes, self.real)

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (120,), generator=g)
    x = torch.randn(120, 1, 28, 28, generator=g)
    train_data = Counted(x[:80], y[:80], "mnist", "train", tuple(map(str, range(10))), real=False)
    val_data = Counted(x[80:], y[80:], "mnist", "train", tuple(map(str, range(10))), real=False)
    seen, real_train = [], mokit.train.train

    @functools.wraps(real_train)      # train() checks its keywords against its module's `train` signature
    def spy(model, data, **kw):
        seen.append((data.x, data.y, kw["device"]))
        return real_train(model, data, **kw)

    monkeypatch.setattr(mokit.train, "train", spy)
    obj = S.train_objective(lambda c: create_model("mlp", hidden=(c["width"],)), train_data, val_data,
                            device="cpu", batch_size=40)
    assert moves == [torch.device("cpu")] * 2                      # train and validation, once each
    for width in (8, 16, 8):
        assert 0 <= obj({"width": width, "lr": 1e-2}, 1)["val_acc"] <= 100
    assert len(moves) == 2, f"the data moved again during the trials: {moves}"
    assert len(seen) == 3 and all(s[0] is seen[0][0] and s[1] is seen[0][1] for s in seen)
    assert seen[0][0] is not train_data.x and all(s[2] == torch.device("cpu") for s in seen)


def test_train_objective_keeps_data_already_on_the_device():
    import torch

    import mokit.train
    from mokit.data import TensorData
    from mokit.models import create_model

    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(60, 1, 28, 28, generator=g), torch.randint(0, 10, (60,), generator=g),
                      "mnist", "train", tuple(map(str, range(10))), real=False)
    tr, val = data.split_off(20)
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        real_train = mokit.train.train
        mp.setattr(mokit.train, "train", functools.wraps(real_train)(
            lambda model, d, **kw: (seen.append(d.x), real_train(model, d, **kw))))
        obj = S.train_objective(lambda c: create_model("mlp", hidden=(8,)), tr, val, device="cpu")
        obj({}, 1)
    assert seen and seen[0] is tr.x                                  # the very tensor it was given


# Every registered strategy, so a new one is tested the moment it is registered
REGISTRY_ARGS = {"grid": {"budget": 1, "points": 2},
                 "successive_halving": {"n_configs": 4, "min_budget": 1, "max_budget": 3},
                 "hyperband": {"min_budget": 1, "max_budget": 3},
                 # workers=1: in this process, so the calls are counted here (tests/test_asha.py runs 2)
                 "parallel_halving": {"n_configs": 4, "min_budget": 1, "max_budget": 3, "workers": 1},
                 "async_halving": {"n_configs": 4, "min_budget": 1, "max_budget": 3, "workers": 1}}


@pytest.mark.parametrize("key", sorted(S.STRATEGIES))
def test_every_registered_strategy_shares_the_runner_options_and_resumes(key, tmp_path):
    fn = S.STRATEGIES[key]
    params = inspect.signature(fn).parameters
    assert list(params)[:2] == ["objective", "space"]
    assert {"metric", "maximize", "name", "path", "verbose"} <= set(params)
    assert "run" not in params                                    # the loop's runner is built for it
    with pytest.raises(TypeError, match="momentum"):
        fn(toy, TOY, momentum=0.9, **REGISTRY_ARGS.get(key, {"budget": 1, "n_trials": 4}))
    calls = []
    counted = lambda c, b: calls.append(b) or toy(c, b)            # noqa: E731
    kw = REGISTRY_ARGS.get(key, {"budget": 1, "n_trials": 4, "seed": 0})
    first = fn(counted, TOY, path=tmp_path / key, **kw)
    assert isinstance(first, S.SearchResult) and first.trials and first.compute == sum(calls)
    assert all(t.status == "ok" for t in first.trials)
    ran = len(calls)
    again = fn(counted, TOY, path=tmp_path / key, **kw)             # the log answers every trial
    assert len(calls) == ran and [t.key for t in again.trials] == [t.key for t in first.trials]
    assert all(t.resumed for t in again.trials)
    low = fn(lambda c, b: -toy(c, b), TOY, maximize=False, metric="score", **kw)
    assert low.best_value == pytest.approx(-first.best_value)      # minimising the negated score
