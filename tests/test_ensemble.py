import copy

import pytest
import torch
import torch.nn.functional as F

from mokit.data import load_dataset
from mokit.distill import distill_loss
from mokit.ensemble import (
    Ensemble,
    average_logits,
    average_probs,
    average_weights,
    fit_weights,
    freeze_features,
    greedy_soup,
    member_logits,
    new_head,
    num_outputs,
    prepare_transfer,
    reinitialize,
    trainable_params,
    uniform_soup,
    vote,
    vote_accuracy,
)
from mokit.models import create_model
from mokit.train import evaluate, predict, seed_everything, train


@pytest.fixture(scope="module")
def members():
    import os
    os.environ["MOKIT_STANDIN"] = "1"
    try:
        tr = load_dataset("mnist", "train", subset=1000)
        te = load_dataset("mnist", "test", subset=300)
    finally:
        os.environ.pop("MOKIT_STANDIN")
    models = []
    for seed in range(3):
        seed_everything(seed)
        m = create_model("mlp", hidden=(32,))
        train(m, tr, epochs=5, lr=3e-3, seed=seed, progress=False)
        models.append(m)
    return tr, te, models


def test_combinations_hand_made():
    z = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])               # (M=2, N=1, K=2)
    w = torch.tensor([0.5, 0.5])
    p = (F.softmax(z[0], 1) + F.softmax(z[1], 1)) / 2
    assert torch.allclose(average_probs(z, w).exp(), p)
    assert torch.allclose(average_logits(z, w), torch.tensor([[1.0, 0.5]]))
    w = torch.tensor([0.0, 1.0])
    assert torch.allclose(average_probs(z, w).exp(), F.softmax(z[1], 1))


def test_vote_brute_force():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 200, 4, generator=g)
    pred = vote(logits)
    probs = F.softmax(logits, 2).mean(0)
    for n in range(200):
        counts = torch.bincount(logits[:, n].argmax(1), minlength=4)
        top = [c for c in range(4) if counts[c] == counts.max()]
        assert pred[n].item() == max(top, key=lambda c: probs[n, c].item())


def test_ensemble_module_matches_members(members):
    _, te, models = members
    team = Ensemble(models, combine="probs")
    ref = torch.stack([F.softmax(predict(m, te), 1) for m in models]).mean(0)
    assert torch.allclose(predict(team, te).exp(), ref, atol=1e-5)
    team = Ensemble(models, combine="logits", weights=[1, 1, 2])
    ref = (predict(models[0], te) + predict(models[1], te) + 2 * predict(models[2], te)) / 4
    assert torch.allclose(predict(team, te), ref, atol=1e-5)
    assert 0 <= vote_accuracy(models, te) <= 100


def test_fit_weights_prefers_the_good_member(members):
    _tr, te, models = members
    seed_everything(9)
    bad = create_model("mlp", hidden=(32,))                      # untrained
    w = fit_weights([*models[:1], bad], te)
    assert w.shape == (2,) and abs(w.sum().item() - 1) < 1e-6 and w[0] > 0.8


def test_soups(members):
    _, te, models = members
    soup = uniform_soup(models)
    for k, v in soup.state_dict().items():
        assert torch.allclose(v, sum(m.state_dict()[k] for m in models) / 3, atol=1e-6)
    same = average_weights([models[0], copy.deepcopy(models[0])], weights=[0.3, 0.7])
    assert torch.allclose(predict(same, te), predict(models[0], te), atol=1e-5)
    greedy, chosen = greedy_soup(models, te)
    best = max(evaluate(m, te)["accuracy"] for m in models)
    assert chosen and evaluate(greedy, te)["accuracy"] >= best
    with pytest.raises(ValueError, match="same architecture"):
        average_weights([models[0], create_model("mlp", hidden=(16,))])


def test_ensemble_distills_into_student(members):
    tr, te, models = members
    seed_everything(0)
    student = create_model("mlp", hidden=(16,))
    train(student, tr, epochs=5, lr=3e-3, loss_fn=distill_loss(Ensemble(models), temperature=2, alpha=0.9),
          progress=False)
    assert evaluate(student, te)["accuracy"] > 50


def test_bad_ensembles():
    with pytest.raises(ValueError, match="at least one model"):
        Ensemble([])
    with pytest.raises(ValueError, match="same number of outputs"):
        Ensemble([create_model("mlp", hidden=(4,)), create_model("mlp", hidden=(4,), num_classes=3)])
    with pytest.raises(ValueError, match="same number of outputs"):
        member_logits([create_model("mlp", hidden=(4,)), create_model("mlp", hidden=(4,), num_classes=3)], None)
    with pytest.raises(ValueError, match="unknown combine"):
        Ensemble([create_model("mlp", hidden=(4,))], combine="median")
    with pytest.raises(ValueError, match="weights must be 2"):
        Ensemble([create_model("mlp", hidden=(4,))] * 2, weights=[1, -1])


def test_transfer_modes():
    seed_everything(0)
    base = create_model("lenet5", channels=(4, 8), hidden=32)
    frozen = prepare_transfer(base, "frozen", 5)
    assert frozen[-1].out_features == 5 and trainable_params(frozen) == 32 * 5 + 5
    assert torch.equal(frozen[0].weight, base[0].weight)           # features kept
    full = prepare_transfer(base, "full", 10)
    assert trainable_params(full) == sum(p.numel() for p in base.parameters())
    assert torch.equal(full[3].weight, base[3].weight)
    scratch = prepare_transfer(base, "scratch", 10)
    assert not torch.equal(scratch[0].weight, base[0].weight)
    assert all(p.requires_grad for p in base.parameters())          # the original is untouched
    frozen_before = copy.deepcopy(frozen)
    data = [(torch.randn(16, 1, 28, 28), torch.randint(0, 5, (16,)))]
    train(frozen, data, epochs=2, progress=False)
    assert torch.equal(frozen[0].weight, frozen_before[0].weight)
    assert not torch.equal(frozen[-1].weight, frozen_before[-1].weight)
    with pytest.raises(ValueError, match="unknown transfer mode"):
        prepare_transfer(base, "partial", 10)
    with pytest.raises(ValueError, match="num_classes"):
        new_head(base, 0)
    head_only = freeze_features(copy.deepcopy(base))
    assert trainable_params(head_only) == 32 * 10 + 10


# --- bad input, refused before any work (issue 13) ----------------------------------------------

NAN = float("nan")


def _m(classes=10):
    seed_everything(2)
    return create_model("mlp", hidden=(4,), num_classes=classes)


def _conv_only():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())


BAD_ENSEMBLE = [
    ("Ensemble one model", lambda ms, d: Ensemble(ms[0]), "models must be a list"),
    ("Ensemble str", lambda ms, d: Ensemble("abc"), "models must be a list"),
    ("Ensemble member 5", lambda ms, d: Ensemble([ms[0], 5]), "must be nn.Modules"),
    ("Ensemble combine list", lambda ms, d: Ensemble(ms, combine=["probs"]), "unknown combine"),
    ("Ensemble combine None", lambda ms, d: Ensemble(ms, combine=None), "unknown combine"),
    ("Ensemble weights nan", lambda ms, d: Ensemble(ms, weights=[NAN, 1]), "weights must be 2"),
    ("Ensemble weights bools", lambda ms, d: Ensemble(ms, weights=[True, False]), "weights must be 2"),
    ("Ensemble weights str", lambda ms, d: Ensemble(ms, weights="ab"), "weights must be 2"),
    ("Ensemble weights number", lambda ms, d: Ensemble(ms, weights=3), "weights must be 2"),
    ("Ensemble weights zero", lambda ms, d: Ensemble(ms, weights=[0, 0]), "weights must be 2"),
    ("Ensemble weights bool tensor", lambda ms, d: Ensemble(ms, weights=torch.tensor([True, True])),
     "weights must be 2"),
    ("Ensemble in_shape 0", lambda ms, d: Ensemble(ms, in_shape=(0, 28, 28)), "in_shape"),
    ("Ensemble in_shape str", lambda ms, d: Ensemble(ms, in_shape="abc"), "in_shape"),
    ("Ensemble in_shape misfit", lambda ms, d: Ensemble(ms, in_shape=(3, 32, 32)), "cannot run"),
    ("fit_weights empty", lambda ms, d: fit_weights(ms, d.take(slice(0, 0))), "val_data is empty"),
    ("fit_weights no data", lambda ms, d: fit_weights(ms, None), "val_data must be a TensorData"),
    ("fit_weights steps 0", lambda ms, d: fit_weights(ms, d, steps=0), "steps must be"),
    ("fit_weights steps True", lambda ms, d: fit_weights(ms, d, steps=True), "steps must be"),
    ("fit_weights steps 2.5", lambda ms, d: fit_weights(ms, d, steps=2.5), "steps must be"),
    ("fit_weights lr nan", lambda ms, d: fit_weights(ms, d, lr=NAN), "lr must be"),
    ("fit_weights lr 0", lambda ms, d: fit_weights(ms, d, lr=0), "lr must be"),
    ("fit_weights combine", lambda ms, d: fit_weights(ms, d, combine="vote"), "unknown combine"),
    ("member_logits empty", lambda ms, d: member_logits(ms, d.take(slice(0, 0))), "data is empty"),
    ("vote_accuracy empty", lambda ms, d: vote_accuracy(ms, d.take(slice(0, 0))), "data is empty"),
    ("greedy_soup empty", lambda ms, d: greedy_soup(ms, d.take(slice(0, 0))), "val_data is empty"),
    ("average_weights nan", lambda ms, d: average_weights(ms, weights=[NAN, 1]), "weights must be 2"),
    ("average_weights one model", lambda ms, d: average_weights(ms[0]), "models must be a list"),
    ("uniform_soup none", lambda ms, d: uniform_soup([]), "at least one model"),
    ("new_head no Linear", lambda ms, d: new_head(_conv_only(), 5), "no nn.Linear"),
    ("new_head True", lambda ms, d: new_head(ms[0], True), "num_classes must be"),
    ("new_head 2.5", lambda ms, d: new_head(ms[0], 2.5), "num_classes must be"),
    ("new_head 0", lambda ms, d: new_head(ms[0], 0), "num_classes must be"),
    ("new_head model", lambda ms, d: new_head("model", 3), "model must be an nn.Module"),
    ("freeze no Linear", lambda ms, d: freeze_features(_conv_only()), "no nn.Linear"),
    ("transfer mode list", lambda ms, d: prepare_transfer(ms[0], ["full"], 3), "unknown transfer mode"),
    ("transfer classes True", lambda ms, d: prepare_transfer(ms[0], "frozen", True), "num_classes must be"),
    ("transfer no Linear", lambda ms, d: prepare_transfer(_conv_only(), "frozen", 3), "no nn.Linear"),
    ("reinitialize 5", lambda ms, d: reinitialize(5), "model must be an nn.Module"),
    ("trainable_params 5", lambda ms, d: trainable_params(5), "model must be an nn.Module"),
    ("num_outputs in_shape", lambda ms, d: num_outputs(ms[0], in_shape=(-1,)), "in_shape"),
]


@pytest.mark.parametrize("label, call, match", BAD_ENSEMBLE, ids=[c[0] for c in BAD_ENSEMBLE])
def test_ensemble_bad_input_refused_before_work(standin_mnist, label, call, match):
    models = [_m(), _m()]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    grads = [[p.requires_grad for p in m.parameters()] for m in models]
    with pytest.raises((ValueError, TypeError), match=match):
        call(models, standin_mnist[1])
    for m, b, g in zip(models, before, grads):
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in b.items())
        assert g == [p.requires_grad for p in m.parameters()]


def test_weights_as_numpy_tensor_or_tensors_are_accepted():
    import numpy as np
    models = [_m(), _m()]
    for w in (np.array([1.0, 3.0]), torch.tensor([1.0, 3.0]), [torch.tensor(1.0), np.float32(3.0)], (1, 3)):
        assert torch.allclose(Ensemble(models, weights=w).weights, torch.tensor([0.25, 0.75]))
    assert len(Ensemble(torch.nn.ModuleList(models)).members) == 2       # a ModuleList is a list of models
