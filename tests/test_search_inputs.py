"""mokit.search's argument checks: NaN, inf, bools, wrong types and unknown names are refused with a
ValueError naming the argument, before any work (no objective call, no trial-log folder)."""

import functools
import math
import random

import numpy as np
import pytest

from mokit import search as S

TOY = {"x": S.int_range(0, 5), "y": S.int_range(0, 5), "z": S.choice("a", "b", "c")}
NAN, INF = float("nan"), float("inf")


def toy(config, budget):
    return -(config["x"] - 3) ** 2 - (config["y"] - 1) ** 2


SPACE_CASES = [
    (lambda: S.int_range(0, True), "high"),
    (lambda: S.int_range(False, 5), "low"),
    (lambda: S.int_range(0.5, 3), "low"),
    (lambda: S.int_range(0, NAN), "high"),
    (lambda: S.float_range(True, 2.0), "low"),
    (lambda: S.float_range(0.0, True), "high"),
    (lambda: S.float_range("0", 1.0), "low"),
    (lambda: S.float_range(NAN, 1.0), "low"),
    (lambda: S.float_range(0.0, INF), "high"),
    (lambda: S.float_range(-INF, 0.0), "low"),
    (lambda: S.float_range(0.1, 1.0, log="yes"), "log"),
    (lambda: S.int_range(1, 8, log=1), "log"),
    (lambda: S.choice(NAN), "option"),
    (lambda: S.choice(1.0, INF), "option"),
    (lambda: S.choice((1, NAN)), "option"),
    (lambda: S.choice(object()), "option"),
    (lambda: S.choice({1, 2}), "option"),
    (lambda: S.choice(1, 2, when={"a": []}), "when"),
    (lambda: S.choice(1, 2, when=["a"]), "when"),
    (lambda: S.validate_space({1: S.choice(1, 2)}), "name"),
    (lambda: S.values(S.int_range(0, 9), True), "points"),
    (lambda: S.values(S.int_range(0, 9), NAN), "points"),
    (lambda: S.values(S.int_range(0, 9), 2.5), "points"),
    (lambda: S.grid(TOY, points=True), "points"),
    (lambda: S.grid(TOY, points=0), "points"),
    (lambda: S.grid(TOY, points={"x": NAN}), "points"),
    (lambda: S.grid(TOY, points={"nope": 3}), "points"),
    (lambda: S.grid(TOY, points="3"), "points"),
]


@pytest.mark.parametrize("make, name", SPACE_CASES)
def test_bad_space_arguments_are_refused_by_name(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_numpy_numbers_are_fine_in_spaces():
    assert S.int_range(np.int64(0), np.int64(4)).high == 4
    assert S.float_range(np.float32(0.5), np.float64(1.5)).low == 0.5
    assert S.values(S.int_range(0, 9), np.int64(2)) == [0, 9]


# (strategy, keyword arguments that are wrong, the argument the error must name)
STRATEGY_CASES = [
    ("random_search", {"budget": NAN}, "budget"),
    ("random_search", {"budget": INF}, "budget"),
    ("random_search", {"n_trials": True}, "n_trials"),
    ("random_search", {"n_trials": NAN}, "n_trials"),
    ("random_search", {"seed": NAN}, "seed"),
    ("random_search", {"seed": True}, "seed"),
    ("random_search", {"seed": 1.5}, "seed"),
    ("random_search", {"seed": "0"}, "seed"),
    ("random_search", {"metric": 5}, "metric"),
    ("random_search", {"metric": ""}, "metric"),
    ("random_search", {"maximize": "yes"}, "maximize"),
    ("random_search", {"maximize": NAN}, "maximize"),
    ("random_search", {"verbose": 2}, "verbose"),
    ("random_search", {"feasible": 5}, "feasible"),
    ("random_search", {"name": 5}, "name"),
    ("random_search", {"name": "../x"}, "name"),
    ("random_search", {"name": "a\\b"}, "name"),
    ("random_search", {"path": 5}, "path"),
    ("random_search", {"objective": "toy"}, "objective"),
    ("random_search", {"space": {"x": (1, 2)}}, "space"),
    ("grid_search", {"points": NAN}, "points"),
    ("grid_search", {"points": True}, "points"),
    ("successive_halving", {"n_configs": True}, "n_configs"),
    ("successive_halving", {"eta": True}, "eta"),
    ("successive_halving", {"eta": 3.0}, "eta"),
    ("successive_halving", {"eta": NAN}, "eta"),
    ("successive_halving", {"min_budget": True}, "budget"),
    ("successive_halving", {"max_budget": INF}, "budget"),
    ("successive_halving", {"seed": NAN}, "seed"),
    ("hyperband", {"eta": INF}, "eta"),
    ("hyperband", {"min_budget": NAN}, "budget"),
    ("hyperband", {"seed": True}, "seed"),
    ("evolution", {"population": True}, "population"),
    ("evolution", {"sample_size": NAN}, "sample_size"),
    ("evolution", {"mutate_fn": "mutate"}, "mutate_fn"),
    ("evolution", {"seed": INF}, "seed"),
    ("hill_climb", {"neighbors": True}, "neighbors"),
    ("hill_climb", {"mutate_fn": 1}, "mutate_fn"),
    ("hill_climb", {"seed": NAN}, "seed"),
    ("tree_search", {"points": True}, "points"),
    ("tree_search", {"points": NAN}, "points"),
    ("tree_search", {"points": 0}, "points"),
    ("tree_search", {"exploration": NAN}, "exploration"),
    ("tree_search", {"exploration": INF}, "exploration"),
    ("tree_search", {"exploration": -1.0}, "exploration"),
    ("tree_search", {"exploration": True}, "exploration"),
    ("optuna_search", {"sampler": ["tpe"]}, "sampler"),
    ("optuna_search", {"pruner": "nope"}, "pruner"),
    ("optuna_search", {"eta": NAN}, "eta"),
    ("optuna_search", {"min_budget": True}, "budget"),
    ("optuna_search", {"seed": NAN}, "seed"),
    ("optuna_search", {"seed": True}, "seed"),
    ("optuna_search", {"objectives": "score"}, "objectives"),
    ("optuna_search", {"objectives": [("score", "yes")]}, "objectives"),
    ("optuna_search", {"objectives": [(5, True)]}, "objectives"),
    ("optuna_search", {"objectives": []}, "objectives"),
    ("optuna_search", {"storage": 5}, "storage"),
    ("optuna_search", {"study_name": 5}, "study_name"),
    ("optuna_search", {"n_trials": INF}, "n_trials"),
]

BASE = {
    "grid_search": {"budget": 1},
    "random_search": {"budget": 1, "n_trials": 2},
    "successive_halving": {"n_configs": 3, "min_budget": 1, "max_budget": 3},
    "hyperband": {"min_budget": 1, "max_budget": 3},
    "evolution": {"budget": 1, "n_trials": 3},
    "hill_climb": {"budget": 1, "n_trials": 3},
    "tree_search": {"budget": 1, "n_trials": 3},
    "optuna_search": {"budget": 3, "n_trials": 2, "pruner": "median"},
}


@pytest.mark.parametrize("strategy, bad, name", STRATEGY_CASES,
                         ids=[f"{s}-{next(iter(b))}={next(iter(b.values()))!r}" for s, b, _ in STRATEGY_CASES])
def test_bad_strategy_arguments_fail_before_any_work(tmp_path, strategy, bad, name):
    calls = []
    kw = {"objective": lambda c, b: calls.append(1) or toy(c, b), "space": TOY,
          **BASE[strategy], "path": tmp_path / "search", **bad}
    if strategy == "optuna_search" and "storage" not in bad:
        kw["storage"] = str(tmp_path / "study" / "journal.log")
    with pytest.raises(ValueError, match=name):
        getattr(S, strategy)(**kw)
    assert calls == []                                            # no trial ran
    assert not (tmp_path / "search").exists() and not (tmp_path / "study").exists()   # nothing written


@pytest.mark.parametrize("strategy", sorted(BASE))
def test_the_same_calls_with_good_arguments_work(tmp_path, strategy):
    kw = {**BASE[strategy], "path": tmp_path / "search"}
    r = getattr(S, strategy)(toy, TOY, **kw)
    assert r.trials and all(t.status == "ok" for t in r.trials)


@pytest.mark.parametrize("kw, name", [
    ({"metric": None}, "metric"),
    ({"maximize": 1}, "maximize"),
    ({"verbose": "no"}, "verbose"),
    ({"name": ""}, "name"),
    ({"name": ".hidden"}, "name"),
    ({"path": 3.5}, "path"),
])
def test_bad_runner_arguments_are_refused(tmp_path, monkeypatch, kw, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=name):
        S.Runner(toy, **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config, budget, name", [
    ({"x": 1}, NAN, "budget"), ({"x": 1}, True, "budget"), ([("x", 1)], 1, "config"), (None, 1, "config"),
])
def test_bad_runner_calls_are_refused(config, budget, name):
    calls = []
    run = S.Runner(lambda c, b: calls.append(1) or 0.0)
    with pytest.raises(ValueError, match=name):
        run(config, budget)
    assert calls == []


@pytest.mark.parametrize("kw, name", [
    ({"seed": NAN}, "seed"), ({"seed": True}, "seed"), ({"build": "convnet"}, "build"),
])
def test_train_objective_checks_before_moving_data(kw, name):
    class Data:                                   # moving it to a device would be work: it must not happen
        def to(self, device):
            raise AssertionError("data moved before the arguments were checked")
    args = {"build": lambda c: None, "train_data": Data(), "val_data": Data(), **kw}
    with pytest.raises(ValueError, match=name):
        S.train_objective(**args)


def test_mutate_and_sample_still_take_any_random_generator():
    rng = random.Random(0)
    c = S.sample(TOY, rng)
    assert S.mutate(TOY, c, rng) != c and math.isfinite(c["x"])


def _tiny_split():
    import torch

    from mokit.data import TensorData
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(48, 1, 28, 28, generator=g), torch.randint(0, 10, (48,), generator=g),
                      "mnist", "train", tuple(map(str, range(10))), real=False)
    return data.split_off(16)


def test_train_objective_refuses_config_keys_nobody_takes(monkeypatch):
    import mokit.train
    from mokit.models import create_model

    trained = []
    real_train = mokit.train.train
    monkeypatch.setattr(mokit.train, "train", functools.wraps(real_train)(
        lambda *a, **kw: trained.append(1) or real_train(*a, **kw)))
    tr, val = _tiny_split()
    obj = S.train_objective(lambda c: create_model("mlp", hidden=(c["width"],)), tr, val, device="cpu")
    with pytest.raises(ValueError, match=r"config key 'lrr' .*neither train\(\) nor build.*did you mean 'lr'"):
        obj({"width": 8, "lrr": 1e-2}, 1)
    with pytest.raises(ValueError, match="config key 'depth'"):
        obj({"width": 8, "depth": 3}, 1)                            # a decision with no effect
    with pytest.raises(ValueError, match="config key 'seed'"):      # the objective sets the seed itself
        obj({"width": 8, "seed": 1}, 1)
    assert trained == []
    assert 0 <= obj({"width": 8, "lr": 1e-2, "optimizer": "sgd", "momentum": 0.5}, 1)["val_acc"] <= 100
    everything = S.train_objective(lambda c: create_model("mlp", hidden=(dict(c)["width"],)), tr, val, device="cpu")
    assert "val_acc" in everything({"width": 8, "extra": 1}, 1)   # a builder that reads all of config takes all
    assert len(trained) == 2


def test_train_objective_refuses_fixed_train_kw_train_does_not_take():
    tr, val = _tiny_split()
    for bad in ({"lrr": 0.1}, {"epochs": 3}, {"progress": True}):
        with pytest.raises(ValueError, match=f"cannot pass {next(iter(bad))!r} to train"):
            S.train_objective(lambda c: None, tr, val, **bad)
