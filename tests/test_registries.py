"""Every registry entry tested the moment it exists: optimizers and schedules (mokit.train) and
search strategies (mokit.search.STRATEGIES), pruning criteria, calibrators and ONNX int8 modes,
parametrized over the registries themselves."""

import inspect
import math
import time

import pytest
import torch
from torch import nn

from mokit import prune as P
from mokit import quantize as Q
from mokit import search as S
from mokit import train as T
from mokit.data import TensorData

# --- optimizers -----------------------------------------------------------------------------------


def _bowl(w: torch.Tensor) -> torch.Tensor:
    """A tiny quadratic: 0.5 * sum(scale * w**2), minimum 0 at w = 0, curvatures 0.25 to 1."""
    return 0.5 * (torch.tensor([[1.0, 0.5], [0.25, 0.75]]) * w ** 2).sum()


@pytest.mark.parametrize("name", list(T.OPTIMIZERS))
def test_every_optimizer_lowers_a_quadratic_at_its_default_lr(name):
    make, lr = T.OPTIMIZERS[name]
    w = torch.ones(2, 2, requires_grad=True)          # 2-D: a weight, not a bias (nesterov_split scales those)
    opt = make([w], lr=lr)
    loss = _bowl(w)
    loss.backward()
    opt.step()                                        # one step
    before, after = loss.item(), _bowl(w.detach()).item()
    assert math.isfinite(after) and after < before, f"{name} at lr {lr}: loss {before} -> {after}"


@pytest.mark.parametrize("name", list(T.OPTIMIZERS))
def test_every_optimizer_takes_what_its_entry_says(name):
    make, lr = T.OPTIMIZERS[name]
    assert isinstance(make, T.OptimizerFactory) and lr > 0 and make.weight_decay >= 0
    opt = make([torch.zeros(2, 2, requires_grad=True)], lr=lr)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["weight_decay"] == make.weight_decay          # its own default, explicit
    assert set(make.takes) <= set(opt.defaults), f"{name} lists keywords its optimizer lacks"
    with pytest.raises(ValueError, match="takes no not_a_keyword="):
        make([torch.zeros(2, 2, requires_grad=True)], lr=lr, not_a_keyword=1)


@pytest.mark.parametrize("name", list(T.OPTIMIZERS))
def test_every_optimizer_trains_a_tiny_model(name):
    """Through train(), at one lr for all: the defaults suit their own settings (nesterov_split's 0.75,
    64x on biases, is the fast CIFAR recipe's, for a BatchNorm net; it diverges on a bare linear layer)."""
    torch.manual_seed(0)
    x = torch.randn(32, 4)
    y = (x[:, 0] > 0).long()
    model = nn.Linear(4, 2)
    h = T.train(model, [(x, y)], epochs=4, optimizer=name, lr=0.01, schedule="constant", progress=False)
    assert len(h.steps) == 4 and all(math.isfinite(s) for s in h.steps)
    assert h.steps[-1] < h.steps[0], f"{name}: {h.steps}"


# --- schedules ------------------------------------------------------------------------------------

# the multiplier each schedule starts at, as its comment in mokit/train.py says
STARTS = {"constant": 1.0, "step": 1.0, "exponential": 1.0, "cosine": 1.0, "warmup_cosine": 0.0,
          "onecycle": 0.04, "triangle": 0.2}


@pytest.mark.parametrize("name", list(T.SCHEDULES))
def test_every_schedule_gives_a_finite_lr_sequence_from_its_start(name):
    if name not in STARTS:
        pytest.fail(f"schedule {name!r} is new: add the multiplier it starts at to STARTS")
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    epochs, lr = 12, 0.1
    h = T.train(nn.Linear(4, 2), [(x, y)], epochs=epochs, optimizer="sgd", lr=lr, schedule=name, progress=False)
    lrs = h.column("lr")                                # the lr of each of the 12 steps (one per epoch)
    assert len(lrs) == epochs and all(math.isfinite(v) and 0 <= v <= lr * (1 + 1e-9) for v in lrs)
    assert lrs[0] == pytest.approx(lr * STARTS[name])
    assert lrs == pytest.approx([lr * T.SCHEDULES[name](i / epochs) for i in range(epochs)])


def test_every_documented_start_is_a_schedule():
    assert set(STARTS) == set(T.SCHEDULES)


# --- search strategies ----------------------------------------------------------------------------

SPACE = {"x": S.float_range(0.0, 1.0), "kind": S.choice("a", "b")}
# a value for every option a strategy requires (the others keep their defaults); add new ones here
OPTIONS = {"budget": 1, "n_trials": 5, "n_configs": 3, "min_budget": 1, "max_budget": 3}
# strategies without n_trials: the trials their options ask for
EXPECTED = {"grid": 3 * 2,                  # 3 values of x (points=3) times 2 kinds
            "successive_halving": 3 + 1,    # 3 configs at budget 1, the best third (1) at budget 3
            "hyperband": 3 + 1 + 2,         # bracket s=1: 3 at 1, 1 at 3; bracket s=0: 2 at 3
            "parallel_halving": 3 + 1,      # successive halving's trials, on worker processes
            "async_halving": 3 + 1}         # ASHA promotes once a third of its rung has finished: the best


def _toy(config: dict, budget: int) -> float:
    return -(config["x"] - 0.3) ** 2 + (0.1 if config["kind"] == "b" else 0.0) + 0.01 * budget


@pytest.mark.parametrize("key", list(S.STRATEGIES))
def test_every_strategy_runs_a_tiny_search(key):
    search = S.STRATEGIES[key]
    params = inspect.signature(search).parameters
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind is inspect.Parameter.KEYWORD_ONLY]
    missing = [n for n in required if n not in OPTIONS]
    assert not missing, f"strategy {key!r} requires {missing}: add values for them to OPTIONS"
    options = {n: OPTIONS[n] for n in required}
    t0 = time.perf_counter()
    result = search(_toy, SPACE, **options)
    seconds = time.perf_counter() - t0
    assert isinstance(result, S.SearchResult) and result.n_failed == 0
    if "n_trials" in options:
        expected = options["n_trials"]
    else:
        assert key in EXPECTED, f"strategy {key!r} has no n_trials: add its trial count to EXPECTED"
        expected = EXPECTED[key]
    assert len(result.trials) == expected
    assert len({S.trial_key(t.config, t.budget) for t in result.trials}) == expected     # all distinct
    assert result.best is not None and math.isfinite(result.best_value)
    assert result.compute == sum(t.budget for t in result.trials)
    assert seconds < 5, f"{key} took {seconds:.1f} s on a toy objective"


# --- pruning importance criteria (mokit.prune.IMPORTANCE) ---------------------------------------------

def _tensor_data(x, y):
    return TensorData(x, y, "mnist", "train", tuple(str(c) for c in range(10)), False)


def _tiny_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))


@pytest.mark.parametrize("name", list(P.IMPORTANCE))
def test_every_importance_criterion_scores_each_weight_and_drives_a_real_cut(name):
    model = _tiny_cnn()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    if name == "taylor":
        P.compute_gradients(model, _tensor_data(x, y), batches=1)
    scores = P.get_importance(name)(model[0])
    assert scores.shape == model[0].weight.shape and torch.isfinite(scores).all() and (scores >= 0).all()
    small = P.prune_channels(model, {0: 0.5}, importance=name)
    assert small[0].out_channels == 4 and small[2].in_channels == 4
    assert small(x).shape == (16, 10)


# --- calibrators (mokit.quantize.CALIBRATORS) ---------------------------------------------------------

@pytest.mark.parametrize("name", list(Q.CALIBRATORS))
@pytest.mark.parametrize("axis", [None, 0])
def test_every_calibrator_gives_a_range_that_quantizes_well_at_8_bits(name, axis):
    torch.manual_seed(0)
    x = torch.randn(8, 256) * torch.linspace(0.5, 2, 8)[:, None]
    lo, hi = Q.CALIBRATORS[name](x, axis)
    assert torch.isfinite(lo).all() and torch.isfinite(hi).all() and (lo < hi).all()
    assert (lo >= x.min() - 1e-6).all() and (hi <= x.max() + 1e-6).all()    # never wider than the data
    err = Q.quantization_error(x, Q.quantize_tensor(x, 8, axis=axis, calibrate=name).dequantize())
    assert err["sqnr_db"] > 30, f"{name}, axis {axis}: SQNR {err['sqnr_db']:.1f} dB at 8 bits"


# --- ONNX Runtime int8 modes (mokit.export.QUANT_MODES) -----------------------------------------------

@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_every_onnx_int8_mode_writes_a_file_that_runs_and_agrees(mode, tmp_path):
    pytest.importorskip("onnxruntime")
    from mokit import export

    assert mode in export.QUANT_MODES
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    x = torch.randn(64, 1, 8, 8)
    src = export.export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))
    data = _tensor_data(x, torch.zeros(64, dtype=torch.long))
    int8 = export.OnnxModel(export.quantize_onnx(src, tmp_path / f"m.{mode}.onnx", mode=mode, data=data))
    out, ref = int8(x), model(x)
    assert out.shape == ref.shape and (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
