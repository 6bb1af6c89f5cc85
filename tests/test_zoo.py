"""The trained baselines: checkpoints reused, their test accuracy measured once per checkpoint."""
import pytest

from mokit import zoo as Z


def test_baseline_accuracy_measured_once_then_read_from_the_checkpoint(standin, tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path))
    model, first = Z.baseline("lenet300", smoke=True, progress=False)
    assert not first["loaded"] and 0 <= first["test_acc"] <= 100
    assert first["test_acc"] == Z.evaluate(model, first["test"])["accuracy"]

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the checkpoint's accuracy was measured again")

    monkeypatch.setattr(Z, "evaluate", no_evaluation)
    loaded, again = Z.baseline("lenet300", smoke=True, progress=False)
    assert again["loaded"] and again["test_acc"] == first["test_acc"] and again["path"] == first["path"]
    assert not model.training and not loaded.training          # both come back in eval mode (BatchNorm, dropout)
    _state, meta = Z.load_state(again["path"])
    assert list(meta["evals"].values()) == [first["test_acc"]] and "loaded" not in meta


def test_baseline_accuracy_is_measured_again_for_other_test_data(standin, tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path))
    _, info = Z.baseline("lenet300", smoke=True, progress=False)
    calls = []
    real_evaluate = Z.evaluate
    monkeypatch.setattr(Z, "evaluate", lambda *a, **k: calls.append(1) or real_evaluate(*a, **k))
    _, saved = Z.load_state(info["path"])
    meta = {**saved, "evals": {}, "path": info["path"]}     # e.g. a checkpoint written before accuracies were kept
    Z._checkpoint_accuracy(Z.create_model("lenet300"), meta, info["test"], "none")
    assert calls and len(meta["evals"]) == 1


def test_freeze_stops_a_parameter_part_way_and_leaves_it_trainable():
    import torch

    from mokit.data import TensorData
    torch.manual_seed(0)
    data = TensorData(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)), "cifar10", "train",
                      tuple(map(str, range(10))), False)
    model = Z.create_model("cifar_net")
    seen = []
    Z.train(model, data, epochs=4, batch_size=16, optimizer="sgd", lr=0.1, freeze={"0.bias": 0.5}, progress=False,
            on_step=lambda m, info: seen.append((info.step, m[0].bias.detach().clone())))
    biases = [b for _, b in seen]
    assert not torch.equal(biases[0], biases[7])          # trained during the first half
    assert all(torch.equal(biases[8], b) for b in biases[8:])   # then frozen
    assert model[0].bias.requires_grad                     # trainable again afterwards
    for bad, err in [({"nope.bias": 0.5}, "unknown parameter to freeze 'nope.bias'"),
                     ({"0.bias": 0.0}, r"freeze\['0.bias'\] must be a finite number in \(0, 1\]"),
                     ({"0.bias": float("nan")}, "freeze"), (["0.bias"], "freeze must be None or a dict")]:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises((ValueError, TypeError), match=err):
            Z.train(model, data, epochs=1, freeze=bad, progress=False)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_or_train_checks_training_arguments_before_any_work(tmp_path, monkeypatch, standin_mnist):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path))
    inits = []
    monkeypatch.setitem(Z.INITS, "spy", lambda model, data: inits.append(model))   # a data-dependent init is work
    with pytest.raises(ValueError, match="lr must be a finite number in"):
        Z.load_or_train("lenet300", standin_mnist[0], init="spy", epochs=1, lr=float("nan"), progress=False)
    assert not inits and not list(tmp_path.rglob("*.pt"))
