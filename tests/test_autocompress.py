"""mokit.autocompress on tiny synthetic data: the pipeline really shrinks and quantizes, the objective feeds
every search (under a wall-clock budget, resumed from its log), and bad input fails before any work."""

import copy
import math
import random

import pytest
import torch

from mokit import autocompress as A
from mokit import nas, search
from mokit.data import TensorData
from mokit.metrics import count_params
from mokit.models import create_model
from mokit.quantize import ChannelsLastInput, file_bytes
from mokit.search import runner as runner_module
from mokit.train import train


def toy(n: int, shape=(1, 28, 28), classes: int = 4, seed: int = 0) -> TensorData:
    """Each class a fixed random image plus noise: learnable in one epoch."""
    g = torch.Generator().manual_seed(seed)
    protos = 2 * torch.randn(classes, *shape, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, classes, (n,), generator=g)
    x = protos[y] + 0.5 * torch.randn(n, *shape, generator=g)
    return TensorData(x, y, "toy", "train", tuple(str(c) for c in range(classes)), False)


@pytest.fixture(scope="module")
def lenet():
    """(teacher, train, val): LeNet-5 trained one epoch on toy 28x28 images of 4 classes."""
    data, val = toy(384), toy(128, seed=1)
    torch.manual_seed(0)
    teacher = create_model("lenet5", in_shape=data.shape, num_classes=4)
    train(teacher, data, epochs=1, lr=1e-3, progress=False)
    return teacher.eval(), data, val


def config(**kw) -> dict:
    return {**A.BASELINE, **kw}


def test_the_pipeline_shrinks_every_layer_and_runs_int8_kernels(lenet):
    teacher, data, val = lenet
    out = A.compress(config(width=0.5, distill=True, sparsity=0.5, num_bits=8), teacher, data, model="lenet5")
    # width 0.5: conv (10, 25), hidden 250; then half of each layer's units removed: (5, 12), 125
    expected = create_model("lenet5", channels=(5, 12), hidden=125, in_shape=data.shape, num_classes=4)
    assert A.count_weights(out) == count_params(expected) < count_params(teacher) / 15
    assert A.int8_layers(out) == 4                         # two convs and two linears, all int8
    assert A.count_weights(teacher) == count_params(teacher)
    assert file_bytes(teacher) / file_bytes(out) > 10
    m = A.measure(out, val, latency_batch=8, repeats=2)
    assert m["int8_layers"] == 4 and m["bytes"] == file_bytes(out) and m["latency_ms"] > 0
    assert m["val_acc"] > 50                               # 4 classes: chance is 25


def test_the_baseline_config_is_the_teacher_in_float32(lenet):
    teacher, data, val = lenet
    out = A.compress(A.BASELINE, teacher, data, model="lenet5")
    assert isinstance(out, ChannelsLastInput) and A.int8_layers(out) == 0 and not out.training
    with torch.no_grad():
        assert torch.allclose(out(val.x), teacher(val.x), atol=1e-5)
    assert A.count_weights(out) == count_params(teacher)


def test_int8_alone_keeps_the_shapes_and_the_predictions(lenet):
    teacher, data, val = lenet
    out = A.compress(config(num_bits=8), teacher, data, model="lenet5")
    assert A.count_weights(out) == count_params(teacher) and A.int8_layers(out) == 4
    with torch.no_grad():
        agree = (out(val.x).argmax(1) == teacher(val.x).argmax(1)).float().mean()
    assert agree > 0.9


def test_distillation_changes_the_student_and_the_logits_shortcut_changes_nothing(lenet):
    teacher, data, _ = lenet
    c = config(width=0.25, distill=True)
    with torch.no_grad():
        logits = teacher(data.x)
    plain = A.compress({**c, "distill": False}, teacher, data, model="lenet5")
    kd = A.compress(c, teacher, data, model="lenet5")
    kd_cached = A.compress(c, teacher, data, model="lenet5", logits=logits)
    sd = lambda m: m.state_dict()                                   # noqa: E731
    assert not torch.equal(sd(plain)["inner.0.weight"], sd(kd)["inner.0.weight"])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(sd(kd).values(), sd(kd_cached).values()))


def test_the_teacher_is_left_untouched(lenet):
    teacher, data, _ = lenet
    before = copy.deepcopy(teacher.state_dict())
    A.compress(config(sparsity=0.5, num_bits=8, distill=True), teacher, data, model="lenet5")
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_the_cifar_net_is_shrunk_and_quantized_through_fx():
    data = toy(96, shape=(3, 32, 32), classes=3, seed=2)
    torch.manual_seed(0)
    teacher = create_model("cifar_net", widths=(32, 64, 128), in_shape=data.shape, num_classes=3).eval()
    out = A.compress(config(width=0.25, sparsity=0.5, num_bits=8), teacher, data, model="cifar_net",
                     calib_batches=1)
    assert A.int8_layers(out) >= 7                            # the whitening conv, six 3x3 convs, the linear
    small = create_model("cifar_net", widths=(4, 8, 16), in_shape=data.shape, num_classes=3)
    assert A.count_weights(out) < count_params(small)          # BatchNorm folded into the convs by FX
    assert file_bytes(teacher) / file_bytes(out) > 10
    with torch.no_grad():
        assert out(data.x[:5]).shape == (5, 3)


def test_the_space_holds_the_four_decisions_and_every_config_compresses(lenet):
    teacher, data, _ = lenet
    space = A.compression_space(widths=(1.0, 0.25), sparsities=(0.0, 0.5), bits=(8, 32))
    assert list(space) == list(A.DECISIONS)
    configs = search.grid(space)
    assert len(configs) == 16
    sizes = {}
    for c in configs[::3]:
        sizes[tuple(c.values())] = file_bytes(A.compress(c, teacher, data, model="lenet5"))
    assert len(set(sizes.values())) > 2


def _ticking(objective, clock):
    def run(config, budget):
        clock[0] += 1.0                                      # each trial: one second of a fake clock
        return objective(config, budget)
    return run


def test_a_search_over_the_space_stops_at_its_budget_and_resumes_from_its_log(lenet, monkeypatch, tmp_path):
    teacher, data, val = lenet
    clock = [0.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: clock[0])
    space = A.compression_space(widths=(1.0, 0.5, 0.25), sparsities=(0.0, 0.5), bits=(8, 32))
    objective = A.CompressionObjective(teacher, data, val, model="lenet5", space=space, latency_batch=8, repeats=2)
    kw = dict(budget=1, n_trials=40, seed=0, seconds=2.5, path=tmp_path / "ac", metric="val_acc")
    first = search.random_search(_ticking(objective, clock), space, **kw)
    assert len(first.trials) == 3 and first.timed_out and len(objective.models) == 3
    assert all(set(A.OBJECTIVES) <= set(t.metrics) for t in first.trials)
    fresh = A.CompressionObjective(teacher, data, val, model="lenet5", space=space, latency_batch=8, repeats=2)
    again = search.random_search(_ticking(fresh, clock), space, **kw)
    assert [t.key for t in again.trials[:3]] == [t.key for t in first.trials] and len(again.trials) == 6
    assert all(t.resumed for t in again.trials[:3]) and len(fresh.models) == 3      # only the new ones ran
    t = again.trials[0]                                      # read from the log: compressed again on request
    assert A.measure(fresh.model(t.config, t.budget), val, latency_batch=8, repeats=2)["val_acc"] == \
        pytest.approx(t.metrics["val_acc"])
    front = nas.trial_front(again.trials, A.OBJECTIVES)
    assert front and all(t.status == "ok" for t in front)


def test_nsga2_searches_the_three_objectives(lenet, monkeypatch):
    teacher, data, val = lenet
    clock = [0.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: clock[0])
    space = A.compression_space(widths=(1.0, 0.25), sparsities=(0.0, 0.5))
    objective = A.CompressionObjective(teacher, data, val, model="lenet5", space=space, latency_batch=8, repeats=2)
    result = search.optuna_search(_ticking(objective, clock), space, budget=1, n_trials=40, sampler="nsga2",
                                  objectives=list(A.OBJECTIVES.items()), seconds=3.5)
    assert len(objective.models) == 4 and result.timed_out        # NSGA-II may propose a config twice: run once
    assert {search.trial_key(t.config, t.budget) for t in result.trials} == set(objective.models)


def test_fastest_within_picks_the_fastest_close_enough():
    pts = [{"val_acc": 99.0, "latency_ms": 3.0}, {"val_acc": 97.0, "latency_ms": 1.0},
           {"val_acc": 98.4, "latency_ms": 2.0}, {"val_acc": 98.6, "latency_ms": 2.0}]
    assert A.fastest_within(pts, 99.2, 1.0) == 3           # 98.4 is 0.8 below 99.2, but 98.6 is as fast
    assert A.fastest_within(pts, 99.2, 0.5) == 0
    assert A.fastest_within(pts, 99.2, 5.0) == 1
    assert A.fastest_within(pts, 100.5, 1.0) is None
    assert A.fastest_within([{"val_acc": math.nan, "latency_ms": 0.1}], 0.0, 1.0) is None
    for bad in (math.nan, math.inf, "99", None):
        with pytest.raises(ValueError, match="baseline_acc"):
            A.fastest_within(pts, bad, 1.0)
    with pytest.raises(ValueError, match="max_drop"):
        A.fastest_within(pts, 99.0, -1.0)


# --- bad input: a clear error naming the value, before any work ---------------------------------------

@pytest.fixture
def no_work(monkeypatch):
    """Any training, teacher pass, pruning or quantization fails the test: errors must come first."""
    def boom(*a, **k):
        raise AssertionError("work was done before the bad input was refused")
    for name in ("train", "predict", "deploy"):
        monkeypatch.setattr(A, name, boom)
    monkeypatch.setattr(A.prune, "prune_channels", boom)


GOOD = {"width": [1.0, 0.5, 0.25, 1], "distill": [True, False], "sparsity": [0.0, 0.25, 0.9, 0],
        "num_bits": [8, 32]}
BAD = {"width": [0, 0.0, -0.5, 1.5, math.nan, math.inf, "0.5", None, True],
       "distill": ["yes", 1, 0, None],
       "sparsity": [1.0, 0.99, -0.1, math.nan, -math.inf, "0.5", None],
       "num_bits": [4, 16, 0, -8, 8.0, "8", True, None, math.nan]}


def test_any_config_either_compresses_or_is_refused_naming_the_setting(lenet, no_work):
    teacher, data, _ = lenet
    rng = random.Random(0)
    for _ in range(200):                                     # generated configs, each setting good or bad
        c, bad = {}, []
        for k in A.DECISIONS:
            if rng.random() < 0.3:
                c[k] = rng.choice(BAD[k])
                bad.append(k)
            else:
                c[k] = rng.choice(GOOD[k])
        if not bad:
            assert A.check_config(c) == {k: type(A.BASELINE[k])(v) for k, v in c.items()}
            continue
        with pytest.raises(ValueError) as err:
            A.compress(c, teacher, data, model="lenet5")
        assert bad[0] in str(err.value) and repr(c[bad[0]]) in str(err.value)


@pytest.mark.parametrize("cfg, words", [
    ({**A.BASELINE, "sparsty": 0.5}, ["'sparsty'", "width"]),
    ({"width": 0.5, "sparsity": 0.5, "num_bits": 8}, ["'distill'"]),
    ([0.5, True, 0.5, 8], ["config must be a dict"]),
])
def test_a_config_with_a_wrong_name_or_a_missing_setting_is_refused(lenet, no_work, cfg, words):
    teacher, data, _ = lenet
    with pytest.raises((ValueError, TypeError)) as err:
        A.compress(cfg, teacher, data, model="lenet5")
    assert all(w in str(err.value) for w in words)


def test_a_setting_outside_the_search_space_is_refused_by_the_objective(lenet):
    teacher, data, val = lenet
    space = A.compression_space(widths=(1.0, 0.5), sparsities=(0.0, 0.5))
    objective = A.CompressionObjective(teacher, data, val, model="lenet5", space=space)
    with pytest.raises(ValueError, match=r"width=0\.25 is outside the search space \(width: 1\.0, 0\.5\)"):
        objective(config(width=0.25), 1)
    assert objective.models == {}


@pytest.mark.parametrize("kw, name", [
    ({"model": "resnet"}, "'resnet'"), ({"model": None}, "model"),
    ({"budget": 0}, "budget"), ({"budget": -1}, "budget"), ({"budget": math.nan}, "budget"),
    ({"budget": math.inf}, "budget"), ({"budget": 1.5}, "budget"), ({"budget": True}, "budget"),
    ({"finetune_epochs": -1}, "finetune_epochs"), ({"temperature": 0}, "temperature"),
    ({"alpha": 1.5}, "alpha"), ({"calib_batches": 0}, "calib_batches"), ({"seed": -1}, "seed"),
    ({"logits": torch.zeros(3, 4)}, "logits"), ({"device": "tpu"}, "tpu"),
])
def test_bad_arguments_of_compress_are_refused_naming_them(lenet, no_work, kw, name):
    teacher, data, _ = lenet
    args = {"model": "lenet5", **kw}
    with pytest.raises((ValueError, TypeError)) as err:
        A.compress(config(width=0.5, sparsity=0.5, num_bits=8), teacher, data, **args)
    assert name in str(err.value)
    if kw.get("model") == "resnet":
        assert all(m in str(err.value) for m in A.FAMILIES)       # and it lists the models it knows


def test_a_teacher_that_does_not_fit_the_data_is_refused(lenet, no_work):
    teacher, data, _ = lenet
    with pytest.raises(ValueError, match="classes"):
        A.compress(A.BASELINE, teacher, toy(8, classes=5), model="lenet5")
    with pytest.raises(ValueError, match="does not run"):
        A.compress(A.BASELINE, teacher, toy(8, shape=(3, 8, 8)), model="lenet5")
    with pytest.raises(TypeError, match="teacher"):
        A.compress(A.BASELINE, "lenet5", data, model="lenet5")


@pytest.mark.parametrize("kw, name", [
    ({"model": "vgg"}, "'vgg'"), ({"latency_batch": 0}, "latency_batch"), ({"threads": 0}, "threads"),
    ({"repeats": 0}, "repeats"), ({"finetune_epochs": 1.5}, "finetune_epochs"),
    ({"space": {"width": search.choice(1.0), "lr": search.choice(0.1)}}, "'lr'"),
    ({"space": {}}, "space"), ({"device": "tpu"}, "tpu"), ({"seed": 1.5}, "seed"),
])
def test_bad_arguments_of_the_objective_are_refused_before_the_teacher_runs(lenet, no_work, kw, name):
    teacher, data, val = lenet
    with pytest.raises((ValueError, TypeError)) as err:
        A.CompressionObjective(teacher, data, val, **{"model": "lenet5", **kw})
    assert name in str(err.value)


@pytest.mark.parametrize("seconds", [0, -5, math.nan, math.inf, "300"])
def test_a_bad_wall_clock_budget_is_refused_before_any_trial(lenet, seconds):
    teacher, data, val = lenet
    objective = A.CompressionObjective(teacher, data, val, model="lenet5", latency_batch=8, repeats=2)
    space = A.compression_space()
    for run in (lambda: search.random_search(objective, space, budget=1, n_trials=3, seconds=seconds),
                lambda: search.optuna_search(objective, space, budget=1, n_trials=3, sampler="nsga2",
                                             objectives=list(A.OBJECTIVES.items()), seconds=seconds)):
        with pytest.raises(ValueError, match="seconds") as err:
            run()
        assert repr(seconds) in str(err.value)
    assert objective.models == {}


@pytest.mark.parametrize("kw, name", [
    ({"widths": (1.5,)}, "width"), ({"widths": (0,)}, "width"), ({"widths": ()}, "width"),
    ({"sparsities": (1.0,)}, "sparsity"), ({"sparsities": (math.nan,)}, "sparsity"),
    ({"bits": (4,)}, "num_bits"), ({"bits": "8"}, "bits"), ({"distill": ("yes",)}, "distill"),
    ({"widths": (0.5, 0.5)}, "distinct"),
])
def test_a_bad_space_is_refused_naming_the_option(kw, name):
    with pytest.raises(ValueError) as err:
        A.compression_space(**kw)
    assert name in str(err.value)
