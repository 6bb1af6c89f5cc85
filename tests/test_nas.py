"""mokit.nas: spaces -> registry models, mutations, constraints, Pareto fronts against brute force."""

import itertools
import random

import pytest
import torch

from mokit import nas, plot, search
from mokit.metrics import count_macs, count_params
from mokit.models import create_model


def test_every_sampled_config_builds_and_runs():
    space, rng = nas.conv_space(max_conv=3, max_dense=2), random.Random(0)
    for _ in range(25):
        config = search.sample(space, rng)
        model = nas.build(config)
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        name, kw = nas.model_kwargs(config)
        assert name == "convnet" and len(kw["channels"]) == config["n_conv"]
        assert len(kw["dense"]) == config["n_dense"]
        assert isinstance(nas.describe(config), str)


def test_build_goes_through_the_registry():
    config = {"n_conv": 2, "c0": 8, "k0": 5, "pool0": True, "c1": 16, "k1": 3, "pool1": True,
              "n_dense": 1, "d0": 32, "activation": "gelu", "batchnorm": True, "global_pool": False}
    ref = create_model("convnet", channels=[8, 16], kernel_sizes=[5, 3], pool=[True, True], dense=[32],
                       activation="gelu", batchnorm=True, global_pool=False)
    assert count_params(nas.build(config)) == count_params(ref)
    assert str(nas.build(config)) == str(ref)
    mlp = nas.build({"n_hidden": 2, "h0": 64, "h1": 32, "activation": "tanh"}, in_shape=(3, 32, 32))
    assert count_params(mlp) == count_params(create_model("mlp", hidden=[64, 32], activation="tanh",
                                                          in_shape=(3, 32, 32)))
    with pytest.raises(ValueError, match="n_conv or n_hidden"):
        nas.build({"lr": 0.1})


def test_mutations_stay_in_the_space_and_change_something():
    space, rng = nas.conv_space(max_conv=3, max_dense=1), random.Random(1)
    seen = set()
    for _ in range(100):
        config = search.sample(space, rng)
        child = nas.mutate_arch(space, config, rng)
        assert child != config
        assert search.repair(space, child, random.Random(0)) == child        # valid, complete
        nas.build(child)
        if child["n_conv"] != config["n_conv"]:
            seen.add("depth")
    assert "depth" in seen
    for name, op in nas.MUTATIONS.items():                                    # each op works alone
        config = search.sample(space, random.Random(3))
        out = op(space, config, random.Random(4))
        assert out is None or isinstance(out, dict), name


def test_arch_cost_matches_metrics_and_constraint_filters():
    config = {"n_conv": 1, "c0": 4, "k0": 3, "pool0": True, "n_dense": 0, "activation": "relu",
              "batchnorm": False, "global_pool": False}
    model = nas.build(config)
    cost = nas.arch_cost(config, latency=True, repeats=3)
    assert cost["params"] == count_params(model) == 4 * 9 + 4 + 4 * 14 * 14 * 10 + 10
    assert cost["macs"] == count_macs(model, (1, 28, 28)) and cost["latency_ms"] > 0
    small = nas.constraint(max_params=20_000)
    space, rng = nas.conv_space(), random.Random(0)
    configs = [search.sample(space, rng) for _ in range(20)]
    assert [small(c) for c in configs] == [nas.arch_cost(c)["params"] <= 20_000 for c in configs]
    assert any(small(c) for c in configs) and not all(small(c) for c in configs)


@pytest.mark.parametrize("kw, match", [({}, "at least one"), ({"max_params": 0}, "max_params"),
                                       ({"max_macs": -5}, "max_macs"), ({"max_latency_ms": "1"}, "max_latency")])
def test_bad_constraints(kw, match):
    with pytest.raises(ValueError, match=match):
        nas.constraint(**kw)


def test_bad_spaces():
    with pytest.raises(ValueError):
        nas.conv_space(max_conv=0)
    with pytest.raises(ValueError):
        nas.conv_space(channels=())
    with pytest.raises(ValueError):
        nas.mlp_space(max_layers=0)


def test_pareto_front_matches_brute_force():
    rng = random.Random(0)
    pts = [{"acc": rng.choice(range(90, 100)), "params": rng.choice(range(1, 30)),
            "ms": rng.random()} for _ in range(60)]
    for objectives in ({"acc": True, "params": False}, {"acc": True, "params": False, "ms": False}):
        front = set(nas.pareto_front(pts, objectives))
        brute = set()
        for i, p in enumerate(pts):
            beaten = False
            for q in pts:
                ge = all((q[k] >= p[k]) if mx else (q[k] <= p[k]) for k, mx in objectives.items())
                gt = any((q[k] > p[k]) if mx else (q[k] < p[k]) for k, mx in objectives.items())
                beaten |= ge and gt
            if not beaten:
                brute.add(i)
        assert front == brute
    two = nas.pareto_front(pts, {"acc": True, "params": False})
    accs = [pts[i]["acc"] for i in two]
    sizes = [pts[i]["params"] for i in two]
    assert accs == sorted(accs, reverse=True) and sizes == sorted(sizes, reverse=True)


def test_constrained_evolution_on_a_cost_proxy():
    """Evolution with arch mutations under a params limit: never infeasible, beats its start."""
    space = nas.conv_space(max_conv=2, max_dense=1)
    ok = nas.constraint(max_params=20_000)
    proxy = lambda c, b: {"score": nas.arch_cost(c)["macs"] / 1e5, **nas.arch_cost(c)}   # noqa: E731
    r = search.evolution(proxy, space, budget=1, n_trials=24, population=6, seed=0,
                         mutate_fn=nas.mutate_arch, feasible=ok)
    assert len(r.trials) == 24 and all(t.metrics["params"] <= 20_000 for t in r.trials)
    assert r.best_value >= max(t.value("score") for t in r.trials[:6])
    fig = plot.pareto({"evolution": r}, x="params", y="score")
    assert fig.axes


def test_arch_objective_trains_tiny():
    from mokit.data import TensorData

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (200,), generator=g)
    x = torch.randn(200, 1, 28, 28, generator=g) + y.view(-1, 1, 1, 1) / 5
    data = TensorData(x, y, "mnist", "train", tuple(map(str, range(10))), real=False)
    tr, val = data.split_off(50)
    obj = nas.arch_objective(tr, val, batch_size=64)
    config = {"n_conv": 1, "c0": 4, "k0": 3, "pool0": True, "n_dense": 0, "activation": "relu",
              "batchnorm": True, "global_pool": True}
    m = obj(config, 1)
    assert {"val_acc", "params", "macs"} <= set(m) and m["params"] == count_params(nas.build(config))


def test_tree_search_and_grid_over_an_arch_space():
    space = nas.conv_space(max_conv=2, channels=(4, 8), kernels=(3,), max_dense=0,
                           activations=("relu",), batchnorm=(True,), global_pool=(False,))
    configs = search.grid(space)
    # n_conv=1: c0 x pool0 = 4; n_conv=2: 4 x (c1 x pool1) = 16
    assert len(configs) == 4 + 16
    expected = len(list(itertools.product((4, 8), (True, False)))) * (1 + 4)
    assert len(configs) == expected
    score = lambda c, b: -abs(nas.arch_cost(c)["params"] - 5000)          # noqa: E731
    best = max(score(c, 1) for c in configs)
    r = search.tree_search(score, space, budget=1, n_trials=len(configs), seed=0)
    assert r.best_value == best                                          # it covers the whole tree


# ---------------------------------------------------------------------------------------------
# Bad input (issue 13)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    ({"max_params": float("nan")}, "max_params must be a finite number > 0 \\(or None\\), got nan"),
    ({"max_macs": float("inf")}, "max_macs must be a finite number > 0"),
    ({"max_latency_ms": True}, "max_latency_ms must be a finite number"),
    ({"max_params": 10, "in_shape": (0, 28, 28)}, "in_shape"),
    ({"max_params": 10, "num_classes": 0}, "num_classes"),
])
def test_constraint_refuses_non_finite_and_bad_limits(kw, match):
    with pytest.raises(ValueError, match=match):
        nas.constraint(**kw)


def test_pareto_front_leaves_nan_points_off_the_front():
    nan = float("nan")
    pts = [{"acc": 90, "params": 10}, {"acc": nan, "params": 1}, {"acc": 95, "params": nan},
           {"acc": 80, "params": 5}, {"acc": 70, "params": 50}]
    assert nas.pareto_front(pts, {"acc": True, "params": False}) == [0, 3]
    assert nas.pareto_front([{"acc": nan}], {"acc": True}) == []
    # a NaN point dominates nothing either: without it, the same front
    assert nas.pareto_front([pts[0], pts[3], pts[4]], {"acc": True, "params": False}) == [0, 1]


@pytest.mark.parametrize("points, objectives, error, match", [
    ([{"acc": 1}], {"acc": "yes"}, ValueError, "objectives\\['acc'\\] must be True"),
    ([{"acc": 1}], {}, ValueError, "non-empty dict"),
    ([{"acc": 1}, {"ac": 2}], {"acc": True}, ValueError, "points\\[1\\] has no value for objective 'acc'"),
    ([{"acc": "90"}], {"acc": True}, ValueError, "points\\[0\\]\\['acc'\\] must be a real number"),
    ([{"acc": True}], {"acc": True}, ValueError, "must be a real number"),
    ([5], {"acc": True}, TypeError, "points\\[0\\] must be a dict"),
])
def test_pareto_front_bad_input(points, objectives, error, match):
    with pytest.raises(error, match=match):
        nas.pareto_front(points, objectives)


@pytest.mark.parametrize("fn, kw, match", [
    (nas.conv_space, {"max_conv": True}, "max_conv must be an integer"),
    (nas.conv_space, {"max_conv": 10 ** 6}, "max_conv must be an integer in \\[1, 16\\]"),
    (nas.conv_space, {"max_dense": -1}, "max_dense"),
    (nas.conv_space, {"channels": (0, 8)}, "channels must be an integer"),
    (nas.conv_space, {"kernels": (4,)}, "unknown kernels 4"),
    (nas.conv_space, {"kernels": (3.0,)}, "kernels must be an integer, got 3.0"),
    (nas.conv_space, {"activations": ("relu", "swish")}, "unknown activations 'swish'"),
    (nas.conv_space, {"batchnorm": ("yes",)}, "batchnorm options must be True or False"),
    (nas.mlp_space, {"max_layers": 2.0}, "max_layers must be an integer"),
    (nas.mlp_space, {"widths": ()}, "widths must be a non-empty sequence"),
    (nas.arch_cost, {"config": {"n_hidden": 1, "h0": 8, "activation": "relu"}, "repeats": 0}, "repeats"),
])
def test_spaces_and_costs_refuse_bad_arguments(fn, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(**kw)


# ---------------------------------------------------------------------------------------------
# Which decisions mattered (issue 14): Optuna's importance over an architecture space
# ---------------------------------------------------------------------------------------------

def test_param_importances_find_the_decision_the_score_depends_on():
    """The score depends on c0 alone (plus a tiny tie-breaker): c0 must carry the largest share."""
    space = nas.conv_space(max_conv=2, max_dense=1)
    score = lambda c, b: {"score": c["c0"] + random.Random(str(sorted(c.items()))).random() / 100}  # noqa: E731
    r = search.random_search(score, space, budget=1, n_trials=40, seed=0)
    imp = search.param_importances(r, space)
    assert max(imp, key=imp.get) == "c0"
    assert set(imp) <= set(space) and abs(sum(imp.values()) - 1) < 1e-6
    assert list(imp.values()) == sorted(imp.values(), reverse=True)          # largest first
    low = search.random_search(lambda c, b: {"loss": -score(c, b)["score"]}, space, budget=1, n_trials=40,
                               seed=0, metric="loss", maximize=False)
    low_imp = search.param_importances(low, space)
    assert max(low_imp, key=low_imp.get) == "c0"                              # minimizing: the same answer


def test_param_importances_bad_input():
    space = nas.mlp_space(max_layers=1)
    r = search.random_search(lambda c, b: c["h0"], space, budget=1, n_trials=3, seed=0)
    with pytest.raises(ValueError, match="unknown evaluator 'anova'; valid names: ped_anova"):
        search.param_importances(r, space, evaluator="anova")
    failed = search.random_search(lambda c, b: float("nan"), space, budget=1, n_trials=3, seed=0)
    with pytest.raises(ValueError, match="at least 2 successful trials"):
        search.param_importances(failed, space)
    with pytest.raises(ValueError, match="at least 2 successful trials"):
        search.param_importances(r, nas.conv_space())                        # trials of another space


def test_cost_cache_is_bounded_and_keeps_the_recently_used(monkeypatch):
    monkeypatch.setattr(nas, "COST_CACHE_SIZE", 3)
    monkeypatch.setattr(nas, "_COSTS", type(nas._COSTS)())
    configs = [{"n_hidden": 1, "h0": w, "activation": "relu"} for w in (8, 16, 32, 64, 128)]
    first = nas.arch_cost(configs[0])
    for c in configs[1:3]:
        nas.arch_cost(c)
    assert nas.arch_cost(configs[0]) == first                       # a hit: now the most recently used
    for c in configs[3:]:
        nas.arch_cost(c)
        assert len(nas._COSTS) <= 3
    assert len(nas._COSTS) == 3
    kept = {k[0] for k in nas._COSTS}
    assert search.trial_key(configs[0], 1) in kept                  # used recently: kept
    assert search.trial_key(configs[1], 1) not in kept              # least recently used: dropped
    assert nas.arch_cost(configs[1])["params"] == count_params(nas.build(configs[1]))   # recomputed
