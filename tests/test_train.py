import math

import pytest
import torch

from mokit import models
from mokit.train import (
    OPTIMIZERS,
    SCHEDULES,
    History,
    baseline,
    evaluate,
    load_or_train,
    seed_everything,
    train,
)


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


@pytest.mark.parametrize("kw, match", [
    ({"optimizer": "adamax"}, "valid names: gd, sgd"),
    ({"schedule": "linear"}, "valid names: constant"),
    ({"lr": 0}, "lr must be"), ({"lr": -1e-3}, "lr must be"),
    ({"epochs": 0}, "epochs must be"), ({"batch_size": 0}, "batch_size must be"),
])
def test_bad_input_fails_before_work(small, kw, match):
    model = _fresh()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        train(model, small[0], progress=False, **kw)
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
