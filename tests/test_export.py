"""mokit.export: ONNX files equal PyTorch within 1e-4, ORT int8, torch.export, clear errors."""

from typing import ClassVar

import numpy as np
import pytest
import torch

from mokit import export as E
from mokit.models import create_model
from mokit.train import evaluate, seed_everything

SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28), "cifar_cnn": (3, 32, 32)}


@pytest.fixture(scope="module")
def lenet5_onnx(tmp_path_factory):
    seed_everything(0)
    model = create_model("lenet5").eval()
    path = E.export_onnx(model, tmp_path_factory.mktemp("onnx") / "lenet5.onnx", (1, 28, 28))
    return model, path


@pytest.mark.parametrize("name", list(SHAPES))
def test_onnx_runtime_matches_pytorch(name, tmp_path):
    seed_everything(0)
    model = create_model(name).eval()
    if name == "cifar_cnn":              # non-trivial BatchNorm statistics, folded by the exporter
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    path = E.export_onnx(model, tmp_path / f"{name}.onnx", SHAPES[name])
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]        # atomic: no temp file left
    ort_model = E.OnnxModel(path)
    assert ort_model.in_shape == SHAPES[name]
    for batch in (1, 5):                                                    # the batch axis is dynamic
        x = torch.randn(batch, *SHAPES[name])
        assert E.max_abs_diff(model, ort_model, x) <= 1e-4


def test_onnx_model_works_with_evaluate_and_latency(lenet5_onnx, standin_mnist):
    model, path = lenet5_onnx
    _, test = standin_mnist
    ort_model = E.OnnxModel(path)
    assert evaluate(ort_model, test)["errors"] == evaluate(model, test)["errors"]
    table = E.compare_latency({"torch": model, "ort": ort_model}, (1, 28, 28), batch_sizes=(1, 8),
                              repeats=5, rounds=1)
    assert [(r["model"], r["batch"]) for r in table] == [("torch", 1), ("ort", 1), ("torch", 8), ("ort", 8)]
    assert all(0 < r["p50 ms"] <= r["p99 ms"] and r["examples/s"] > 0 for r in table)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_ort_int8_is_smaller_and_close(mode, lenet5_onnx, standin_mnist, tmp_path):
    model, path = lenet5_onnx
    train, test = standin_mnist
    dst = E.quantize_onnx(path, tmp_path / "q.onnx", mode=mode, data=train, num_batches=2)
    assert [p.name for p in tmp_path.iterdir()] == ["q.onnx"]
    assert dst.stat().st_mode & 0o777 != 0o600                  # written by the shared atomic write
    assert dst.stat().st_size < 0.35 * path.stat().st_size                 # int8 weights: ~1/4 of fp32
    q = E.OnnxModel(dst)
    with torch.no_grad():
        ref, out = model(test.x[:200]), q(test.x[:200])
    agree = (ref.argmax(1) == out.argmax(1)).float().mean().item()
    assert agree >= 0.9, f"{mode} int8 agrees with fp32 on {agree:.0%} of predictions"
    assert (ref - out).abs().max() < 0.1 * ref.abs().max()


def test_torch_export_round_trip(tmp_path):
    seed_everything(0)
    model = create_model("lenet300").eval()
    loaded = E.load_program(E.export_program(model, tmp_path / "m.pt2", (1, 28, 28)))
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_bad_input_is_named(lenet5_onnx, tmp_path):
    model, path = lenet5_onnx
    with pytest.raises(ValueError, match=r"in_shape must be positive integers.*\(0, 28, 28\)"):
        E.export_onnx(model, tmp_path / "x.onnx", (0, 28, 28))
    with pytest.raises(TypeError, match=r"must be an nn\.Module"):
        E.export_onnx("lenet5", tmp_path / "x.onnx", (1, 28, 28))
    with pytest.raises(FileNotFoundError, match=r"no ONNX model file at .*missing\.onnx"):
        E.OnnxModel(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"corrupt\.onnx is not a loadable ONNX model"):
        E.OnnxModel(corrupt)
    ort_model = E.OnnxModel(path)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 28, 28\); allowed: \(batch >= 1, 1, 28, 28\)"):
        ort_model(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"must be numbers.*dtype <U1"):
        ort_model.run(np.array([["a"]]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        ort_model.run(np.full((1, 1, 28, 28), np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown int8 mode 'int4'; allowed: static, dynamic"):
        E.quantize_onnx(path, tmp_path / "q.onnx", mode="int4")
    import logging
    level = logging.getLogger().level
    with pytest.raises(ValueError, match="static int8 needs calibration data"):
        E.quantize_onnx(path, tmp_path / "q.onnx", mode="static")
    assert logging.getLogger().level == level                 # the silenced ORT logging is restored on failure
    with pytest.raises(FileNotFoundError, match=r"nope\.pt2"):
        E.load_program(tmp_path / "nope.pt2")
    assert not (tmp_path / "q.onnx").exists() and not list(tmp_path.glob(".*"))   # nothing half-written


def test_ledger_reads_every_notebook(tmp_path, monkeypatch):
    from mokit.results import ledger, record

    monkeypatch.setenv("MOKIT_RUNS", str(tmp_path))
    assert ledger() == []
    record("02_pruning", real_data=True, pruned_acc=98.1, per_layer={"fc1": 0.9}, curve=[1, 2])
    record("10_deployment_capstone", capstone_acc=98.9)
    rows = ledger()
    assert [(r["notebook"], r["metric"], r["value"]) for r in rows] == [
        ("02_pruning", "per_layer.fc1", 0.9), ("02_pruning", "pruned_acc", 98.1), ("02_pruning", "real_data", True),
        ("10_deployment_capstone", "capstone_acc", 98.9)]                 # lists left out, dicts dotted
    assert [r["metric"] for r in ledger(contains="acc")] == ["pruned_acc", "capstone_acc"]


# ---------------------------------------------------------------------------------------------
# CUDA without a GPU: PyTorch is compared with ONNX Runtime on the CPU, on copies
# ---------------------------------------------------------------------------------------------

class _Spy(torch.nn.Sequential):
    """An nn.Sequential that notes the id of every instance whose tensors are moved (.cpu(), .to())."""
    moved: ClassVar[list] = []

    def _apply(self, fn, *args, **kwargs):
        _Spy.moved.append(id(self))
        return super()._apply(fn, *args, **kwargs)


def test_latency_and_outputs_compare_cpu_copies_with_onnx_runtime(lenet5_onnx, monkeypatch):
    import mokit.metrics

    model, path = lenet5_onnx
    spy = _Spy(*[layer for layer in model]).train()
    ort_model = E.OnnxModel(path)
    timed = []
    real = mokit.metrics.interleaved_times

    def recording(models, *a, **kw):
        timed.extend((m, {p.device.type for p in m.parameters()}, m.training) for m in models)
        return real(models, *a, **kw)

    monkeypatch.setattr(mokit.metrics, "interleaved_times", recording)
    _Spy.moved.clear()
    table = E.compare_latency({"torch": spy, "ort": ort_model}, (1, 28, 28), batch_sizes=(2,), repeats=2, rounds=1)
    assert [r["device"] for r in table] == ["cpu", "cpu"]
    (copy_, devices, training), (ort_timed, _, _) = timed
    assert copy_ is not spy and devices == {"cpu"} and not training     # an eval-mode CPU copy is timed
    assert ort_timed is ort_model                                        # the ORT session is not copied
    assert E.max_abs_diff(spy, ort_model, torch.randn(3, 1, 28, 28)) <= 1e-4
    assert id(spy) not in _Spy.moved and spy.training                    # the caller's model is untouched


def test_onnx_model_answers_on_the_inputs_device(lenet5_onnx, monkeypatch):
    """ORT runs on the CPU; the logits go back to x's device (checked with a device-recording tensor.to)."""
    _, path = lenet5_onnx
    ort_model = E.OnnxModel(path)
    x = torch.randn(2, 1, 28, 28)
    sent = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **kw: sent.append(a) or real_to(self, *a, **kw))
    out = ort_model(x)
    assert sent == [(x.device,)] and out.device == x.device and out.shape == (2, 10)


def test_the_test_session_is_pinned_to_the_cpu(user_device, standin_mnist, monkeypatch):
    """conftest sets MOKIT_DEVICE=cpu unless the user set it: models land where the fixture data is."""
    import os

    from mokit.train import pick_device

    if user_device is not None:
        pytest.skip(f"MOKIT_DEVICE={user_device} was set by the user")
    assert os.environ["MOKIT_DEVICE"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)        # even where a GPU is present
    assert pick_device() == torch.device("cpu")
    train, test = standin_mnist
    assert train.x.device.type == test.x.device.type == "cpu"
