"""Bad inputs to mokit.train (issue 13): each one gets a ValueError / TypeError naming the argument,
before any work - no parameter changed, no training step run, no file written."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from mokit import models, zoo
from mokit import train as T

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def tr(standin_mnist):
    return standin_mnist[0].subset(256)


@pytest.fixture(scope="module")
def te(standin_mnist):
    return standin_mnist[1].subset(64)


def _fresh():
    T.seed_everything(0)
    return models.create_model("mlp", hidden=(16,))


def refused_before_work(call, model: nn.Module | None, match: str, kinds=(ValueError, TypeError)):
    """call() raises one of `kinds` matching `match`; model's parameters and buffers are unchanged
    and it ran no forward pass in training mode (no training step)."""
    before = {k: v.clone() for k, v in model.state_dict().items()} if model is not None else {}
    steps = []
    hook = model.register_forward_pre_hook(lambda m, i: steps.append(1) if m.training else None) \
        if model is not None else None
    try:
        with pytest.raises(kinds, match=match) as info:
            call()
    finally:
        if hook is not None:
            hook.remove()
    assert steps == [], f"{len(steps)} training forward passes before {info.value!r}"
    if model is not None:
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items()), "the model changed"
    return info.value


# --- train(): its arguments' table is test_train.py's test_bad_input_fails_before_work --------------

def test_check_train_args_validates_without_training(tr):
    model = _fresh()
    refused_before_work(lambda: T.check_train_args(model, tr, lr=NAN), model, "lr must be")
    refused_before_work(lambda: T.check_train_args(model, tr, momentum=0.9), model, "takes no momentum")
    refused_before_work(lambda: T.check_train_args(model, tr, lrr=0.1), model, "no argument 'lrr'.*did you mean 'lr'")
    ok = T.check_train_args(model, tr, epochs=2, optimizer="momentum", momentum=0.8)
    assert ok["epochs"] == 2 and ok["momentum"] == 0.8


def test_adam_momentum_error_lists_what_it_takes(tr):
    err = refused_before_work(lambda: T.train(_fresh(), tr, optimizer="adam", momentum=0.9, progress=False),
                              None, "momentum")
    text = str(err)
    assert "adam" in text and "lr" in text and "weight_decay" in text
    assert "sgd" in text and "nesterov" in text                          # where momentum does apply


def _first_group(tr, key, **kw):
    """param_groups[0][key] of the optimizer train() built, seen from on_step."""
    seen = []
    T.train(_fresh(), tr.subset(32), epochs=1, progress=False,
            on_step=lambda m, info: seen.append(info.optimizer.param_groups[0][key]), **kw)
    return seen[0]


def test_momentum_reaches_the_sgd_optimizers(tr):
    for name in ("sgd", "momentum", "nesterov", "nesterov_split"):
        assert _first_group(tr, "momentum", optimizer=name, momentum=0.5) == 0.5, name


def test_adamw_respects_weight_decay_zero(tr):
    decays = [_first_group(tr, "weight_decay", optimizer="adamw", weight_decay=wd) for wd in (None, 0, 0.0, 0.05)]
    assert decays == [0.01, 0.0, 0.0, 0.05]                              # None: AdamW's usual 0.01
    assert _first_group(tr, "weight_decay", optimizer="adam") == 0.0
    opt = T.OPTIMIZERS["adamw"][0](_fresh().parameters(), lr=1e-3, weight_decay=0.0)
    assert opt.param_groups[0]["weight_decay"] == 0.0


def test_numpy_numbers_are_accepted(tr):
    h = T.train(_fresh(), tr, epochs=np.int64(1), lr=np.float32(1e-3), batch_size=np.int64(128),
                weight_decay=np.float64(0), seed=np.int64(3), progress=False)
    assert len(h.epochs) == 1


def test_a_lying_iterable_fails_clearly():
    class Empty:
        def __len__(self):
            return 3

        def __iter__(self):
            return iter([])
    with pytest.raises(ValueError, match="gave no batches in epoch 1"):
        T.train(_fresh(), Empty(), epochs=1, progress=False)


# --- evaluate / predict -------------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    ({"batch_size": -1}, "batch_size must be"), ({"batch_size": 0}, "batch_size must be"),
    ({"batch_size": True}, "batch_size must be"), ({"batch_size": 1.5}, "batch_size must be"),
    ({"batch_size": NAN}, "batch_size must be"), ({"tta": "crops"}, "unknown tta"), ({"tta": None}, "unknown tta"),
    ({"device": "nope"}, "unknown device"),
], ids=str)
@pytest.mark.parametrize("fn", [T.evaluate, T.predict], ids=["evaluate", "predict"])
def test_evaluate_and_predict_refuse(te, fn, kw, match):
    model = _fresh()
    refused_before_work(lambda: fn(model, te, **kw), model, match)


@pytest.mark.parametrize("fn", [T.evaluate, T.predict], ids=["evaluate", "predict"])
def test_evaluate_and_predict_refuse_empty_or_foreign_data(te, fn):
    model = _fresh()
    refused_before_work(lambda: fn(model, te.take(slice(0, 0))), model, "data is empty")
    refused_before_work(lambda: fn(model, [(te.x, te.y)]), model, "data must be a TensorData")
    refused_before_work(lambda: fn(model, None), model, "data must be a TensorData")


# --- checkpoints --------------------------------------------------------------------------------

@pytest.mark.parametrize("blob, match", [
    ({"state_dict": 5}, "state_dict must be a dict of name -> tensor"),
    ({"state_dict": {"w": 5}}, "state_dict must be a dict of name -> tensor"),
    ({"state_dict": {1: torch.zeros(1)}}, "state_dict must be a dict of name -> tensor"),
    ({"state_dict": [torch.zeros(1)]}, "state_dict must be a dict"),
    ({"state_dict": {}, "meta": 5}, "meta must be"),
    ({"state_dict": {}, "meta": "[1, 2]"}, "meta must be"),
    ({"state_dict": {}, "meta": "{not json"}, "meta must be"),
    ([1, 2], "no state_dict"), ({"weights": {}}, "no state_dict"),
], ids=str)
def test_load_state_validates_the_loaded_structure(tmp_path, blob, match):
    path = tmp_path / "x.pt"
    torch.save(blob, path)
    with pytest.raises(ValueError, match=match):
        T.load_state(path)


def test_load_state_round_trip(tmp_path):
    model = _fresh()
    T.save_model(model, tmp_path / "m.pt", {"a": 1})
    state, meta = T.load_state(tmp_path / "m.pt")
    assert meta == {"a": 1} and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("model, meta, match", [
    (None, None, "model must be an nn.Module"), ("m", None, "model must be an nn.Module"),
    (nn.Linear(2, 2), 5, "meta must be a dict"), (nn.Linear(2, 2), {"a": {1, 2}}, "meta must be JSON"),
], ids=str)
def test_save_model_refuses_before_writing(tmp_path, model, meta, match):
    path = tmp_path / "m.pt"
    with pytest.raises((ValueError, TypeError), match=match):
        T.save_model(model, path, meta)
    assert list(tmp_path.iterdir()) == []


# --- the other public functions -----------------------------------------------------------------

@pytest.mark.parametrize("seed", [True, -1, 1.5, NAN, "1", 2 ** 40, None])
def test_seed_everything_refuses(seed):
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match="seed must be"):
        T.seed_everything(seed)
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize("device, match", [("nope", "unknown device"), (5.5, "device must be"),
                                           (True, "device must be"), ("cuda:99", "CUDA")])
def test_pick_device_refuses(device, match):
    with pytest.raises(ValueError, match=match):
        T.pick_device(device)


def test_pick_device_names_a_bad_environment_variable(monkeypatch):
    monkeypatch.setenv("MOKIT_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="MOKIT_DEVICE"):
        T.pick_device()


@pytest.mark.parametrize("kw, match", [({"every": 0}, "every must be"), ({"every": True}, "every must be"),
                                       ({"decay": 1.5}, "decay must be"), ({"decay": NAN}, "decay must be")])
def test_lookahead_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        T.Lookahead(_fresh(), **kw)


@pytest.mark.parametrize("precision", [5, None, ["fp32"], "FP32"])
def test_resolve_precision_refuses(precision):
    with pytest.raises(ValueError, match="unknown precision"):
        T.resolve_precision(precision, "cpu")


def test_json_meta_of_a_checkpoint_is_kept(tmp_path):
    model = _fresh()
    T.save_model(model, tmp_path / "m.pt", {"history": {"epochs": [{"a": 1.5}]}})
    assert json.dumps(T.load_state(tmp_path / "m.pt")[1]) == '{"history": {"epochs": [{"a": 1.5}]}}'


def test_callable_schedules_are_probed_before_work(tr):
    model = _fresh()
    refused_before_work(lambda: T.train(model, tr, schedule=lambda t: math.nan, progress=False), model,
                        r"schedule\(0.0\) must be a finite number >= 0")
    refused_before_work(lambda: T.train(model, tr, schedule=lambda t: -1.0, progress=False), model, "schedule")
    h = T.train(_fresh(), tr, epochs=1, schedule=lambda t: 1 - t, progress=False)
    assert h.column("epoch") == [1]


def test_history_column_names_the_columns(tr):
    h = T.train(_fresh(), tr, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"no column 'val_acc'.*columns: epoch, train_loss"):
        h.column("val_acc")


def test_predict_refuses_a_non_model_and_recipes_a_non_name(te):
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        T.predict(lambda x: x, te)
    with pytest.raises(ValueError, match="no baseline recipe"):
        zoo.recipe_train_kw(["lenet5"])


@pytest.mark.parametrize("kw", [{"lr": 3.5e38}, {"lr": 1e7}, {"weight_decay": 1e300},
                                {"lr": 1e300, "optimizer": "sgd"}], ids=str)
def test_huge_step_sizes_are_refused_before_work(tr, kw):
    """float32 weights cannot take an lr beyond ~3.4e38 (a RuntimeError mid-step before); 1e6 is the cap."""
    model = _fresh()
    refused_before_work(lambda: T.train(model, tr, progress=False, **kw), model, r"must be a finite number in \(?\[?0")


# --- optimizer factories and optimizer keywords -------------------------------------------------

def test_an_optimizer_factory_trains_with_its_own_settings(tr):
    import functools

    seen = []
    h = T.train(_fresh(), tr.subset(64), epochs=1, schedule="constant", progress=False,
                optimizer=functools.partial(torch.optim.SGD, lr=0.03, momentum=0.7),
                on_step=lambda m, info: seen.append(info.optimizer))
    assert isinstance(seen[0], torch.optim.SGD) and seen[0].param_groups[0]["momentum"] == 0.7
    assert h.epochs[0]["lr"] == 0.03 and math.isfinite(h.final["train_loss"])
    h = T.train(_fresh(), tr.subset(64), epochs=1, optimizer=torch.optim.Adam, progress=False)   # a class is a factory
    assert h.epochs[0]["lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("kw", [{"lr": 0.1}, {"weight_decay": 0.0}, {"momentum": 0.9}, {"optimizer_kw": {"eps": 1e-8}}],
                         ids=str)
def test_a_factory_sets_lr_and_keywords_itself(tr, kw):
    model = _fresh()
    refused_before_work(lambda: T.train(model, tr, optimizer=torch.optim.Adam, progress=False, **kw), model,
                        f"{next(iter(kw))}= goes into your optimizer factory")


def test_a_factory_that_returns_no_optimizer_is_refused_before_a_step(tr):
    model = _fresh()
    refused_before_work(lambda: T.train(model, tr, optimizer=lambda p: "sgd", progress=False), model,
                        "must return a torch.optim.Optimizer")
    refused_before_work(lambda: T.train(model, tr, optimizer=T.OPTIMIZERS["sgd"][0], progress=False), model,
                        "pass its name \\(optimizer='sgd'\\)")


@pytest.mark.parametrize("optimizer, kw, name", [
    ("adam", {"momentum": 0.9}, "momentum"), ("sgd", {"optimizer_kw": {"betas": (0.9, 0.99)}}, "betas"),
    ("rmsprop", {"optimizer_kw": {"amsgrad": True}}, "amsgrad"), ("adagrad", {"optimizer_kw": {"nope": 1}}, "nope"),
    ("nesterov", {"optimizer_kw": {"dampening": 0.1}}, "dampening"),
], ids=str)
def test_a_keyword_the_optimizer_does_not_take_is_named(tr, optimizer, kw, name):
    model = _fresh()
    err = str(refused_before_work(lambda: T.train(model, tr, optimizer=optimizer, progress=False, **kw), model,
                                  f"optimizer '{optimizer}' takes no {name}=", kinds=ValueError))
    takes = T.OPTIMIZERS[optimizer][0].takes
    assert "lr=" in err and "weight_decay=" in err and all(f"{k}=" in err for k in takes)


def test_optimizer_keywords_reach_the_optimizer_and_bad_values_are_refused(tr):
    assert _first_group(tr, "betas", optimizer="adamw", optimizer_kw={"betas": (0.8, 0.9)}) == (0.8, 0.9)
    assert _first_group(tr, "alpha", optimizer="rmsprop", optimizer_kw={"alpha": 0.9}) == 0.9
    assert _first_group(tr, "momentum", optimizer="sgd", optimizer_kw={"momentum": 0.4}) == 0.4
    model = _fresh()
    refused_before_work(lambda: T.train(model, tr, optimizer="adam", optimizer_kw={"betas": (2.0, 0.9)}), model,
                        "optimizer 'adam' refuses optimizer_kw", kinds=ValueError)
    refused_before_work(lambda: T.train(model, tr, optimizer="sgd", optimizer_kw={"momentum": -1}), model,
                        "momentum must be", kinds=ValueError)
    refused_before_work(lambda: T.train(model, tr, optimizer="sgd", momentum=0.5, optimizer_kw={"momentum": 0.4}),
                        model, "momentum is given twice", kinds=ValueError)
    refused_before_work(lambda: T.train(model, tr, optimizer_kw=["betas"]), model, "optimizer_kw must be")


def test_adamw_weight_decay_is_its_registry_entrys_default():
    make = T.OPTIMIZERS["adamw"][0]
    assert make.weight_decay == 0.01 and T.DEFAULT_WEIGHT_DECAY == {"adamw": 0.01}
    assert all(m.weight_decay == 0 for n, (m, _) in T.OPTIMIZERS.items() if n != "adamw")
    assert make(_fresh().parameters(), lr=1e-3).param_groups[0]["weight_decay"] == 0.01
    assert make(_fresh().parameters(), lr=1e-3, weight_decay=0).param_groups[0]["weight_decay"] == 0


def test_compile_without_a_cpp_compiler_is_refused_before_work(tr, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    model = _fresh()
    err = refused_before_work(lambda: T.train(model, tr, epochs=1, compile=True, device="cpu", progress=False),
                              model, "needs a C[+][+] compiler")
    assert "compile=False" in str(err)


def test_compile_on_a_device_inductor_cannot_build_for_is_refused():
    with pytest.raises(ValueError, match="not on device 'meta'"):
        T.check_compile(torch.device("meta"))


def test_compiled_training_takes_the_same_steps(tr):
    """torch.compile changes how the forward runs, not what it computes: the same seed, the same weights."""
    plain, compiled = _fresh(), _fresh()
    h1 = T.train(plain, tr, epochs=1, batch_size=64, device="cpu", progress=False)
    h2 = T.train(compiled, tr, epochs=1, batch_size=64, device="cpu", progress=False, compile=True)
    assert h2.steps == pytest.approx(h1.steps, rel=1e-4, abs=1e-5)
    for a, b in zip(plain.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
