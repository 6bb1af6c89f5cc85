"""mokit.parallel: DDP in real processes equals one process with the full batch; the pipeline split
equals the unsplit model; the bubble formula; distributed search; bad input."""

from itertools import pairwise
from typing import ClassVar

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
    steps = out["step_seconds"]                                          # steps 2..3, timed one by one
    assert len(steps) == 2 and (steps > 0).all() and float(steps.sum()) <= out["seconds"] + 1e-6


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


def test_pipeline_schedule_on_a_hand_made_case():
    """2 stages, 3 micro-batches, forward 1 and backward 2: written out by hand."""
    got = {(r["phase"], r["stage"], r["micro"]): (r["start"], r["end"]) for r in P.pipeline_schedule(2, 3)}
    assert got == {("F", 0, 0): (0, 1), ("F", 0, 1): (1, 2), ("F", 0, 2): (2, 3),
                   ("F", 1, 0): (1, 2), ("F", 1, 1): (2, 3), ("F", 1, 2): (3, 4),
                   ("B", 1, 0): (4, 6), ("B", 1, 1): (6, 8), ("B", 1, 2): (8, 10),
                   ("B", 0, 0): (6, 8), ("B", 0, 1): (8, 10), ("B", 0, 2): (10, 12)}


@pytest.mark.parametrize("stages", [1, 2, 3, 5])
@pytest.mark.parametrize("micro_batches", [1, 2, 7])
@pytest.mark.parametrize("backward", [2.0, None])
def test_pipeline_schedule_bubble_is_the_formula_and_dependencies_hold(stages, micro_batches, backward):
    tl = P.pipeline_schedule(stages, micro_batches, forward=1.0, backward=backward)
    assert P.bubble_fraction(tl) == pytest.approx(P.bubble_formula(stages, micro_batches))
    at = {(r["phase"], r["stage"], r["micro"]): r for r in tl}
    assert len(at) == len(tl) == stages * micro_batches * (1 if backward is None else 2)
    for (phase, s, m), r in at.items():
        before = ("F", s - 1, m) if phase == "F" else ("B", s + 1, m)   # the data it needs
        if before in at:
            assert r["start"] >= at[before]["end"]
        if phase == "B":                                              # GPipe: all forwards first
            assert r["start"] >= max(t["end"] for t in tl if t["phase"] == "F")
    for s in range(stages):                                           # a stage does one thing at a time
        mine = sorted((r["start"], r["end"]) for r in tl if r["stage"] == s)
        assert all(a[1] <= b[0] for a, b in pairwise(mine))


def test_pipeline_schedule_bad_input_names_the_value():
    with pytest.raises(ValueError, match=r"stages must be an integer in \[1, 64\].*got 0"):
        P.pipeline_schedule(0, 4)
    with pytest.raises(ValueError, match=r"micro_batches must be an integer .*got 2\.5"):
        P.pipeline_schedule(2, 2.5)
    with pytest.raises(ValueError, match=r"backward must be a finite number > 0.*got -1"):
        P.pipeline_schedule(2, 4, backward=-1)


def test_plot_timeline_draws_the_schedule():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = P.plot_timeline(P.pipeline_schedule(3, 4), unit="forward steps")
    ax = fig.axes[0]
    assert len(ax.collections) == 3 * 2 and ax.get_xlabel() == "time (forward steps)"   # one per stage and phase
    assert sum(len(c.get_paths()) for c in ax.collections) == 3 * 4 * 2                # one bar per pass
    assert {t.get_text() for t in ax.texts} == {f"{p}{m}" for p in "FB" for m in range(4)}
    plt.close(fig)


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
    with pytest.raises(ValueError, match=r"world_size must be an integer >= 1.*got 0"):
        P.ddp_train(model, (x, y), world_size=0)
    with pytest.raises(ValueError, match=r"world_size must be an integer >= 1.*got -2"):
        P.launch(P._ddp_worker, -2)
    with pytest.raises(ValueError, match="batch_size 63 must be a multiple of world_size 2"):
        P.ddp_train(model, (x, y), world_size=2, batch_size=63)
    with pytest.raises(ValueError, match=r"split point must be an integer in \[1, 5\] "
                                         r"\(an nn\.Sequential of 6 layers\), got 9"):
        P.split_sequential(model, 9)
    with pytest.raises(ValueError, match=r"split point must be an integer in .*got 0"):
        P.pipeline_run(model, x, split=[0])
    with pytest.raises(TypeError, match=r"needs an nn\.Sequential, got ResNet"):
        P.split_sequential(create_model("cifar_resnet"), 1)
    with pytest.raises(ValueError, match=r"micro_batches must be an integer in \[1, 64\].*got 0"):
        P.pipeline_run(model, x, split=[2], micro_batches=0)
    with pytest.raises(ValueError, match=r"workers|world_size.*got 0"):
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


# ---------------------------------------------------------------------------------------------
# CUDA without a GPU: the choices are pinned with torch.cuda mocked
# ---------------------------------------------------------------------------------------------

def _cuda(monkeypatch, available: bool, initialized: bool = False, count: int = 1):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if available else 0)


def test_workers_are_spawned_wherever_cuda_is_available(monkeypatch):
    _cuda(monkeypatch, available=True, initialized=False)      # is_available() has started the driver
    assert P.pick_start_method(1) == "spawn"
    _cuda(monkeypatch, available=True, initialized=True)
    assert P.pick_start_method(1) == "spawn"
    _cuda(monkeypatch, available=False)
    can_fork = "fork" in torch.multiprocessing.get_all_start_methods()
    assert P.pick_start_method(1) == ("fork" if can_fork else "spawn")
    assert P.pick_start_method(2) == "spawn"                    # OpenMP pools do not survive a fork


def test_one_gpu_gives_nccl_to_one_worker_only_so_ddp_reports_what_it_ran_on(monkeypatch):
    _cuda(monkeypatch, available=True, count=1)
    monkeypatch.setattr(P.dist, "is_nccl_available", lambda: True)
    assert P.pick_backend(1) == "nccl" and P.pick_backend(2) == "gloo"   # why notebook 09 passes one backend
    monkeypatch.undo()
    x, y = _data(128)
    out = P.ddp_train(create_model("lenet300"), (x, y), world_size=1, steps=2, batch_size=32, backend="gloo")
    assert (out["backend"], out["device"]) == ("gloo", "cpu")
    with pytest.raises(ValueError, match="backend must be 'auto', 'gloo' or 'nccl' for DDP, got None"):
        P.ddp_train(create_model("lenet300"), (x, y), world_size=1, backend=None)


class _Spy(torch.nn.Sequential):
    """An nn.Sequential that notes the id of every instance whose tensors are moved (.cpu(), .to())."""
    moved: ClassVar[list] = []

    def _apply(self, fn, *args, **kwargs):
        _Spy.moved.append(id(self))
        return super()._apply(fn, *args, **kwargs)


def test_the_callers_model_is_neither_moved_nor_set_to_eval():
    torch.manual_seed(0)
    model = _Spy(*create_model("mlp", hidden=(64, 64))).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(64)
    _Spy.moved.clear()
    P.ddp_train(model, (x, y), world_size=1, steps=2, batch_size=32)
    out = P.pipeline_run(model, x, split=3, micro_batches=2)
    y_pipe = P.pipelining_run(model, x, split=3, micro_batches=2)
    assert id(model) not in _Spy.moved                   # the workers got copies; the caller's stays put
    assert model.training and all(m.training for m in model)
    assert P.max_param_diff(model.state_dict(), before) == 0.0
    with torch.no_grad():
        ref = model.eval()(x)
    assert (out["output"] - ref).abs().max().item() < 1e-5 and (y_pipe - ref).abs().max().item() < 1e-5


def test_the_clock_waits_for_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", device)))
    monkeypatch.setattr(P.time, "perf_counter", lambda: calls.append(("clock", None)) or 1.0)
    assert P.device_clock(torch.device("cuda", 1)) == 1.0
    assert calls == [("sync", torch.device("cuda", 1)), ("clock", None)]   # synchronise, then read
    calls.clear()
    P.device_clock(torch.device("cpu"))
    assert calls == [("clock", None)]


def test_every_pipeline_timestamp_is_read_through_the_synchronising_clock(monkeypatch):
    """Stage 0 of a 1-stage pipeline in this process: 2 clock reads per micro-batch and round."""
    import torch.distributed as dist

    from mokit.serve import free_port

    devices = []
    real_clock = P.device_clock
    monkeypatch.setattr(P, "device_clock", lambda device: devices.append(device) or real_clock(device))
    model = create_model("lenet300").eval()
    x, _ = _data(8)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        out = P._pipeline_worker(0, 1, "gloo", [model], list(x.chunk(4)), [[(2, 1, 28, 28)] * 4], 2)
    finally:
        dist.destroy_process_group()
    assert devices == [torch.device("cpu")] * (2 * 4 * 2)
    assert [(t["micro"], t["start"] <= t["end"]) for t in out["timeline"]] == [(m, True) for m in range(4)]


def test_failed_trials_of_a_distributed_search_raise(tmp_path, standin, monkeypatch):
    """A worker whose every trial fails (as a forked child touching CUDA would) is an error, not a log line."""
    from mokit import nas

    if "fork" not in torch.multiprocessing.get_all_start_methods():
        pytest.skip("the failing objective reaches the workers by fork")

    def failing_objective(train_data, val_data, **kw):
        def objective(config, budget):
            raise RuntimeError("Cannot re-initialize CUDA in forked subprocess (simulated)")
        return objective

    monkeypatch.setattr(nas, "arch_objective", failing_objective)
    monkeypatch.setattr(P, "pick_start_method", lambda threads=1: "fork")
    with pytest.raises(RuntimeError, match=r"(?s)2 of 2 trials failed.*worker \d.*Cannot re-initialize CUDA"):
        P.distributed_search(tmp_path / "study.log", workers=2, n_trials=2, n_train=100, n_val=50,
                             space_kw={"max_layers": 1, "widths": (8,)})


def test_reference_and_diff_follow_the_models_device(monkeypatch):
    """sgd_reference sends the data to the model's device; max_param_diff compares on the CPU."""
    model = create_model("lenet300")
    x, y = _data(64)
    sent, brought = [], []
    real_to, real_cpu = torch.Tensor.to, torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **kw: sent.append(a[:1]) or real_to(self, *a, **kw))
    monkeypatch.setattr(torch.Tensor, "cpu",
                        lambda self, *a, **kw: brought.append(self.shape) or real_cpu(self, *a, **kw))
    P.sgd_reference(model, x, y, steps=2, batch_size=32)
    assert sent[:2] == [(torch.device("cpu"),)] * 2               # x, y -> next(model.parameters()).device
    state = model.state_dict()
    assert P.max_param_diff(state, state) == 0.0
    assert len(brought) == 2 * len(state)                        # both sides of every entry on the CPU
