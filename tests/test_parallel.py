"""mokit.parallel: DDP in real processes equals one process with the full batch; the pipeline split
equals the unsplit model; the bubble formula; distributed search; bad input."""

import pytest
import torch

from mokit import parallel as P
from mokit.models import create_model


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_ddp_two_workers_match_one_process_full_batch(momentum):
    torch.manual_seed(0)
    model = create_model("lenet300")
    x, y = _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = P.ddp_train(model, (x, y), world_size=2, steps=3, batch_size=64, lr=0.1, momentum=momentum)
    assert P.max_param_diff(model.state_dict(), before) == 0.0          # the caller's model untouched
    ref = P.sgd_reference(model, x, y, steps=3, batch_size=64, lr=0.1, momentum=momentum)
    assert P.max_param_diff(out["state"], before) > 1e-3                 # it really trained
    assert P.max_param_diff(out["state"], ref.state_dict()) < 1e-5
    assert out["examples_per_s"] > 0 and len(out["losses"]) == 2


def test_split_sequential_and_pipeline_equal_unsplit():
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    stages = P.split_sequential(model, [3, 6])
    assert [len(s) for s in stages] == [3, 3, len(model) - 6]
    x, _ = _data(64)
    with torch.no_grad():
        ref = model(x)
        chained = stages[2](stages[1](stages[0](x)))
    assert torch.equal(chained, ref)
    out = P.pipeline_run(model, x, split=[4], micro_batches=4)
    assert (out["output"] - ref).abs().max().item() < 1e-5
    tl = out["timeline"]
    assert sorted((t["stage"], t["micro"]) for t in tl) == [(s, m) for s in range(2) for m in range(4)]
    for m in range(4):                                 # stage 1 starts micro m after stage 0 ends it
        end0 = next(t["end"] for t in tl if t["stage"] == 0 and t["micro"] == m)
        start1 = next(t["start"] for t in tl if t["stage"] == 1 and t["micro"] == m)
        assert start1 >= end0
    assert 0.0 <= P.bubble_fraction(tl) < 1.0


def test_bubble_formula_and_fraction_on_a_hand_made_timeline():
    assert P.bubble_formula(2, 8) == pytest.approx(1 / 9)
    assert P.bubble_formula(4, 4) == pytest.approx(3 / 7)
    # ideal 2-stage, 3-micro-batch schedule with unit stage time: span 4, busy 3 per stage
    tl = [{"stage": s, "micro": m, "start": float(s + m), "end": float(s + m + 1)} for s in range(2) for m in range(3)]
    assert P.bubble_fraction(tl) == pytest.approx(P.bubble_formula(2, 3))


def test_distributed_search_two_workers_share_one_study(tmp_path, standin):
    result, real = P.distributed_search(tmp_path / "study.log", workers=2, n_trials=4, n_train=200, n_val=100,
                                        space_kw={"max_layers": 1, "widths": (8, 16)})
    assert not real
    assert len(result.trials) == 4
    numbers = [t.info["number"] for t in result.trials]
    assert len(set(numbers)) == 4                      # each trial recorded once
    assert {t.metrics["worker"] for t in result.trials if t.status == "ok"} <= {0, 1}


def test_bad_input_names_the_value():
    model = create_model("lenet300")
    x, y = _data(64)
    with pytest.raises(ValueError, match="world_size must be an integer >= 1.*got 0"):
        P.ddp_train(model, (x, y), world_size=0)
    with pytest.raises(ValueError, match="world_size must be an integer >= 1.*got -2"):
        P.launch(P._ddp_worker, -2)
    with pytest.raises(ValueError, match="batch_size 63 must be a multiple of world_size 2"):
        P.ddp_train(model, (x, y), world_size=2, batch_size=63)
    with pytest.raises(ValueError, match=r"split point 9 is outside the model: an nn.Sequential of 6 layers can be split at 1\.\.5"):
        P.split_sequential(model, 9)
    with pytest.raises(ValueError, match="split point 0 is outside"):
        P.pipeline_run(model, x, split=[0])
    with pytest.raises(TypeError, match="needs an nn.Sequential, got ResNet"):
        P.split_sequential(create_model("cifar_resnet"), 1)
    with pytest.raises(ValueError, match="micro_batches must be an integer in 1..64.*got 0"):
        P.pipeline_run(model, x, split=[2], micro_batches=0)
    with pytest.raises(ValueError, match="workers|world_size.*got 0"):
        P.distributed_search("x.log", workers=0)


def test_a_failing_worker_raises_and_leaves_no_process():
    with pytest.raises(Exception, match="failed on purpose"):   # the worker's error reaches the caller
        P.launch(_boom, 2, backend=None)


def _boom(rank, world_size, backend):
    raise RuntimeError(f"worker {rank} failed on purpose")


def test_torch_pipelining_equals_unsplit_model():
    torch.manual_seed(0)
    model = create_model("mlp", hidden=(64, 64)).eval()
    x, _ = _data(32)
    out = P.pipelining_run(model, x, split=3, micro_batches=4)
    with torch.no_grad():
        assert (out - model(x)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="dividing the batch size 32, got 5"):
        P.pipelining_run(model, x, split=3, micro_batches=5)
