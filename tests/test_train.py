import math

import pytest
import torch

from mokit import models
from mokit.train import (
    OPTIMIZERS,
    SCHEDULES,
    History,
    evaluate,
    seed_everything,
    train,
)
from mokit.zoo import baseline, load_or_train


@pytest.fixture(scope="module")
def small(standin_mnist):
    return standin_mnist


def _fresh(seed=0):
    seed_everything(seed)
    return models.create_model("mlp", hidden=(64,))


def test_loss_falls_and_model_learns(small):
    tr, te = small
    model = _fresh()
    before = evaluate(model, te)["accuracy"]
    h = train(model, tr, epochs=3, progress=False)
    assert h.epochs[-1]["train_loss"] < h.epochs[0]["train_loss"]
    assert len(h.steps) == 3 * math.ceil(len(tr) / 128)
    assert evaluate(model, te)["accuracy"] > max(before + 20, 50)


def test_same_seed_same_history(small):
    tr, _ = small
    h1 = train(_fresh(1), tr, epochs=2, seed=5, progress=False)
    h2 = train(_fresh(1), tr, epochs=2, seed=5, progress=False)
    h3 = train(_fresh(1), tr, epochs=2, seed=6, progress=False)
    assert h1.steps == h2.steps
    assert h1.steps != h3.steps


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_optimizer_runs(small, optimizer):
    h = train(_fresh(), small[0], epochs=1, optimizer=optimizer, progress=False)
    assert math.isfinite(h.final["train_loss"])
    if optimizer == "gd":
        assert len(h.steps) == 1


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedules_start_near_peak_and_decay(small, schedule):
    f = SCHEDULES[schedule]
    assert 0 <= f(0.0) <= 1 and 0 <= f(0.99) <= 1
    assert max(f(t / 100) for t in range(100)) == pytest.approx(1.0, abs=0.05)
    lrs = []
    train(_fresh(), small[0], epochs=2, lr=0.01, schedule=schedule, progress=False,
          on_step=lambda m, info: lrs.append(info.optimizer.param_groups[0]["lr"]))
    assert lrs and max(lrs) <= 0.01 * 1.0001


def test_loss_fn_and_on_step_hooks(small):
    calls = []
    def loss_fn(out, y, x):
        calls.append(x.shape[0])
        return torch.nn.functional.cross_entropy(out, y)
    steps = []
    train(_fresh(), small[0], epochs=1, batch_size=250, loss_fn=loss_fn, progress=False,
          on_step=lambda m, info: steps.append((info.step, info.total_steps)))
    assert calls == [250] * 4 and steps[-1] == (4, 4)


NAN, INF = float("nan"), float("inf")
ONE_BATCH = [(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))]


def _cifar_like(n):
    from mokit.data import TensorData
    return TensorData(torch.zeros(n, 3, 32, 32), torch.zeros(n, dtype=torch.long), "cifar10", "test",
                      tuple(str(i) for i in range(10)), False)


# (train() keywords, or a function of the (train, test) fixture giving them; what the message must say)
BAD_TRAIN_INPUTS = [
    ({"optimizer": "adamax"}, "valid names: gd, sgd"), ({"optimizer": None}, "unknown optimizer"),
    ({"optimizer": ["sgd"]}, "unknown optimizer"),
    ({"schedule": "linear"}, "valid names: constant"), ({"schedule": 5}, "unknown schedule"),
    ({"lr": 0}, "lr must be"), ({"lr": -1e-3}, "lr must be"),
    ({"lr": True}, "lr must be"), ({"lr": "0.1"}, "lr must be"),
    ({"lr": NAN}, "lr must be"), ({"lr": INF}, "lr must be"), ({"lr": -INF}, "lr must be"),
    ({"lr": NAN, "optimizer": "sgd"}, "lr must be"), ({"lr": INF, "optimizer": "sgd"}, "lr must be"),
    ({"weight_decay": NAN}, "weight_decay"), ({"weight_decay": NAN, "optimizer": "sgd"}, "weight_decay must be"),
    ({"weight_decay": INF, "optimizer": "sgd"}, "weight_decay must be"), ({"weight_decay": -1}, "weight_decay must be"),
    ({"weight_decay": True}, "weight_decay must be"), ({"weight_decay": "0"}, "weight_decay must be"),
    ({"momentum": NAN, "optimizer": "sgd"}, "momentum must be"),
    ({"momentum": INF, "optimizer": "sgd"}, "momentum must be"),
    ({"momentum": -0.5, "optimizer": "sgd"}, "momentum must be"),
    ({"momentum": True, "optimizer": "sgd"}, "momentum must be"),
    ({"momentum": 1.0, "optimizer": "momentum"}, "momentum must be"),
    ({"momentum": "0.9", "optimizer": "momentum"}, "momentum must be"),
    ({"momentum": 0.0, "optimizer": "nesterov"}, r"momentum must be a finite number in \(0, 1\)"),
    ({"momentum": NAN, "optimizer": "nesterov_split"}, "momentum must be"),
    ({"momentum": 0.9, "optimizer": "adam"}, "optimizer 'adam' takes no momentum"),
    ({"momentum": 0.9, "optimizer": "rmsprop"}, "optimizer 'rmsprop' takes no momentum"),
    ({"epochs": 0}, "epochs must be"), ({"epochs": -1}, "epochs must be"), ({"epochs": 2.5}, "epochs must be"),
    ({"epochs": True}, "epochs must be"), ({"epochs": NAN}, "epochs must be"),
    ({"batch_size": 0}, "batch_size must be"), ({"batch_size": True}, "batch_size must be"),
    ({"batch_size": -1}, "batch_size must be"), ({"batch_size": 1.5}, "batch_size must be"),
    ({"batch_size": NAN}, "batch_size must be"), ({"batch_size": "128"}, "batch_size must be"),
    ({"label_smoothing": 1.0}, "label_smoothing must be"), ({"label_smoothing": NAN}, "label_smoothing"),
    ({"label_smoothing": -0.1}, "label_smoothing must be"), ({"label_smoothing": True}, "label_smoothing must be"),
    ({"label_smoothing": 0.1, "loss_fn": lambda o, y, x: o.sum()}, "default loss"),
    ({"augment": "mixup"}, "valid: none, crop_flip"), ({"augment": 3}, "unknown augment"),
    ({"precision": "fp8"}, "valid: auto, fp32"), ({"precision": None}, "unknown precision"),
    ({"precision": "fp16", "device": "cpu"}, "needs a CUDA GPU"),
    ({"channels_last": "yes"}, "channels_last must be"), ({"compile": "yes"}, "compile must be"),
    ({"lookahead": "yes"}, "lookahead must be"),
    ({"progress": "no"}, "progress must be"),
    ({"seed": -1}, "seed must be"), ({"seed": 1.5}, "seed must be"), ({"seed": True}, "seed must be"),
    ({"seed": NAN}, "seed must be"), ({"seed": "0"}, "seed must be"), ({"seed": 2 ** 70}, "seed must be"),
    ({"on_step": 5}, "on_step must be"), ({"loss_fn": None}, "loss_fn must be"),
    ({"device": "nope"}, "unknown device 'nope'"), ({"device": 3.5}, "device must be"),
    ({"data": []}, "data has no batches"), ({"data": 5}, "data must be a TensorData"),
    ({"data": "abc"}, "data must be a TensorData"), ({"data": iter(ONE_BATCH)}, "one-shot iterator"),
    ({"val_data": ONE_BATCH}, "val_data must be a TensorData"), ({"val_data": 5}, "val_data must be a TensorData"),
    (lambda tr, te: {"data": tr.take(slice(0, 0))}, "data is empty"),
    (lambda tr, te: {"val_data": te.take(slice(0, 0))}, "val_data is empty"),
    (lambda tr, te: {"val_data": _cifar_like(4)}, "cannot take cifar10 examples"),
    ({"lrr": 0.1}, "unexpected keyword argument 'lrr'"),
]


def _bad_id(case):
    kw = case[0]
    return "fixture:" + case[1] if callable(kw) else ",".join(f"{k}={v!r}"[:30] for k, v in kw.items())


@pytest.mark.parametrize("case", BAD_TRAIN_INPUTS, ids=_bad_id)
def test_bad_input_fails_before_work(small, case):
    """A ValueError / TypeError naming the argument; no parameter changed, no training step run."""
    kw, match = case
    kw = {"progress": False, "epochs": 1, **(kw(*small) if callable(kw) else kw)}
    data = kw.pop("data", small[0])
    model = _fresh()
    before = [p.clone() for p in model.parameters()]
    steps = []
    hook = model.register_forward_pre_hook(lambda m, i: steps.append(1) if m.training else None)
    with pytest.raises((ValueError, TypeError), match=match):
        train(model, data, **kw)
    hook.remove()
    assert steps == [], "a training step ran before the error"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_divergence_is_reported(small):
    with pytest.raises(FloatingPointError, match="diverged"):
        train(_fresh(), small[0], epochs=2, progress=False,
              loss_fn=lambda out, y, x: torch.nn.functional.cross_entropy(out, y) * float("inf"))


def test_checkpoint_trained_once_then_loaded(small, tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path))
    m1, info1 = load_or_train("mlp", small[0], model_kw={"hidden": [32]}, epochs=1, progress=False)
    m2, info2 = load_or_train("mlp", small[0], model_kw={"hidden": [32]}, epochs=1, progress=False)
    assert not info1["loaded"] and info2["loaded"] and info1["path"] == info2["path"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    _, info3 = load_or_train("mlp", small[0], model_kw={"hidden": [32]}, epochs=2, progress=False)
    assert info3["path"] != info1["path"]                       # other settings, other file
    assert History(**info2["history"]).final["epoch"] == 1


def test_baseline_unknown_name():
    with pytest.raises(ValueError, match="recipes exist for: lenet300"):
        baseline("vgg16")


# --- precision, layout, the fast-recipe pieces --------------------------------------------------

from mokit import train as T  # noqa: E402


def test_precision_names_and_fp16_on_cpu_refused():
    with pytest.raises(ValueError, match="valid: auto, fp32, bf16, fp16"):
        T.resolve_precision("half", "cpu")
    with pytest.raises(ValueError, match="'fp16' needs a CUDA GPU"):
        T.resolve_precision("fp16", "cpu")
    assert T.resolve_precision("fp32", "cpu") == "fp32" and T.resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu(monkeypatch, native):
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: native)
    assert T.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_bf16_training_learns_and_is_part_of_the_checkpoint_key(small, tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path))
    tr, te = small
    m, info = load_or_train("mlp", tr, model_kw={"hidden": [32]}, epochs=2, precision="bf16", progress=False)
    assert evaluate(m, te)["accuracy"] > 50
    _, info32 = load_or_train("mlp", tr, model_kw={"hidden": [32]}, epochs=2, precision="fp32", progress=False)
    assert info["path"] != info32["path"] and info["key"]["train"]["precision"] == "bf16"


def test_conv_nets_train_channels_last_with_the_same_result(small):
    tr, _ = small
    runs = {}
    for layout in (True, False):
        seed_everything(0)
        m = models.create_model("lenet5")
        train(m, tr.subset(256), epochs=1, channels_last=layout, device="cpu", progress=False)
        runs[layout] = m
    assert runs[True][3].weight.is_contiguous(memory_format=torch.channels_last)      # (50, 20, 5, 5)
    assert not runs[False][3].weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(runs[True].parameters(), runs[False].parameters()):
        assert torch.allclose(a, b, atol=1e-4)
    assert (T.use_channels_last(runs[True], torch.device("cpu"))
            and not T.use_channels_last(_fresh(), torch.device("cpu")))


def test_a_model_that_does_not_fit_the_data_is_refused(small):
    cifar_like = models.create_model("cifar_cnn")                    # 3 input channels, MNIST has 1
    with pytest.raises(ValueError, match=r"cannot take mnist examples of shape \(1, 28, 28\)"):
        train(cifar_like, small[0], progress=False)
    seven = models.create_model("mlp", num_classes=7)
    with pytest.raises(ValueError, match="mnist has 10 classes"):
        train(seven, small[0], progress=False)


def test_label_smoothing_matches_torch(small):
    """Smoothed training equals a hand loss_fn with torch's label_smoothing (same seed, same steps)."""
    tr = small[0].subset(256)
    a, b = _fresh(), _fresh()
    train(a, tr, epochs=1, label_smoothing=0.2, progress=False)
    train(b, tr, epochs=1, progress=False,
          loss_fn=lambda o, y, x: torch.nn.functional.cross_entropy(o, y, label_smoothing=0.2))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_triangle_schedule_and_split_optimizer():
    tri = SCHEDULES["triangle"]
    assert tri(0) == pytest.approx(0.2) and tri(0.23) == pytest.approx(1) and tri(1) == pytest.approx(0.07)
    model = models.create_model("cifar_net")
    opt = OPTIMIZERS["nesterov_split"][0](model.parameters(), lr=0.5, weight_decay=0.01)
    weights, flat = opt.param_groups
    assert weights["lr"] == 0.5 and flat["lr"] == 32 and flat["weight_decay"] == pytest.approx(0.01 / 64)
    assert all(p.ndim >= 2 for p in weights["params"]) and all(p.ndim == 1 for p in flat["params"])
    frozen = [model[0].weight] + [m.weight for m in model if isinstance(m, torch.nn.BatchNorm2d)]
    assert not any(p is f for g in opt.param_groups for p in g["params"] for f in frozen)


def test_lookahead_ends_on_the_averaged_weights(small):
    tr = small[0].subset(256)
    model = _fresh()
    seen = {}

    def spy(m, info):
        if info.step == info.total_steps:
            seen.update({k: v.clone() for k, v in m.state_dict().items()})
    hook = T.Lookahead(model)
    train(model, tr, epochs=2, batch_size=32, on_step=lambda m, i: (hook(m, i), spy(m, i)), progress=False)
    assert all(torch.equal(hook.state[k], v) for k, v in seen.items())
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in T.Lookahead(_fresh()).state.items())


def test_tta_views_average_and_unknown_tta_is_refused(small):
    te = small[1]
    flat = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 10))
    assert torch.allclose(T.predict(flat, te, tta="flip"), T.predict(flat, te), atol=1e-6)   # flip-invariant
    lenet = models.create_model("lenet5").eval()
    x = te.x[:8]
    manual = 0.5 * (lenet(x) + lenet(x.flip(3)))
    assert torch.allclose(T.predict(lenet, te.take(slice(0, 8)), tta="flip"), manual, atol=1e-5)
    with pytest.raises(ValueError, match="valid names: none, flip, flip_translate"):
        evaluate(lenet, te, tta="crops")
