"""Scaling out: data-parallel training (DDP), a model split into pipeline stages, and one search
run by several worker processes sharing one Optuna storage. Every helper starts real processes.

    out = ddp_train(create_model("lenet300"), data, world_size=2, steps=20, batch_size=128)
    out["state"], out["examples_per_s"]                       # rank 0's parameters, throughput
    out = pipeline_run(model, x, split=[4], micro_batches=8)  # stage s in process s, send/recv
    out["output"], bubble_fraction(out["timeline"]), bubble_formula(2, 8)
    plot_timeline(pipeline_schedule(4, 8), unit="forward steps")  # the ideal GPipe schedule, computed
    y = pipelining_run(model, x, split=[4], micro_batches=8)  # the same via torch.distributed.pipelining
    result = distributed_search("runs/demo.log", workers=2, n_trials=6)

Data parallel: each of W ranks holds a full copy of the model; a global batch of B examples is cut
into W slices of B/W; each rank takes the gradient g_r of its slice's mean loss, and DDP averages
them in an all-reduce: g = (1/W) sum_r g_r = gradient of the mean loss over all B examples. So W
workers with B/W each take the very step one worker takes with B (up to float rounding).

Pipeline: stage s runs in process s; micro-batch m enters stage s once stage s-1 has finished it.
With S stages of equal time t and M micro-batches the run takes (M + S - 1) t while each stage is
busy M t, so the idle share (the bubble) is (S - 1) / (M + S - 1).

Workers are module-level functions (spawn pickles them by name); each sets torch threads to
`threads` (default 1), and every process group is destroyed and every process joined or
terminated in `finally` blocks. Every helper sends workers a CPU copy of the caller's model: the
caller's model is never moved or switched to eval mode. Where CUDA is available workers are
spawned, never forked (a forked child cannot use CUDA once the parent has touched the driver).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import validate
from .data import Batch, TensorData, atomic_torch_save, safe_torch_load
from .procs import free_port

# ---------------------------------------------------------------------------------------------
# 1. Launching worker processes
# ---------------------------------------------------------------------------------------------

def _check_world_size(world_size) -> None:
    validate.integer("world_size", world_size, low=1, what="number of worker processes")


def pick_backend(world_size: int = 1) -> str:
    """'nccl' when there is one CUDA device per rank, else 'gloo' (CPU)."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= world_size and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def rank_device(rank: int, backend: str | None) -> torch.device:
    """cuda:rank under nccl, the CPU otherwise."""
    return torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")


def _entry(rank: int, worker: Callable, world_size: int, backend: str | None, init: str, outdir: str,
           threads: int, args: tuple) -> None:
    """What each spawned process runs: set threads, join the group, run worker, save its result."""
    torch.set_num_threads(threads)
    if backend:
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=120))
    try:
        result = worker(rank, world_size, backend, *args)
        atomic_torch_save(result, Path(outdir) / f"rank{rank}.pt")
    finally:
        if backend and dist.is_initialized():
            dist.destroy_process_group()


def pick_start_method(threads: int = 1) -> str:
    """'fork' where the OS has it, there is no CUDA and workers use 1 thread (a fork starts in a
    fraction of a second), else 'spawn' (a fresh interpreter per worker: seconds, it imports torch
    again). A forked worker with several threads can hang in the OpenMP pool inherited from its parent.

    Wherever CUDA is available it is 'spawn', not only once CUDA is initialised: asking whether CUDA
    is there (pick_backend, pick_device) already starts the driver in this process, and a forked
    child that then touches CUDA fails ("Cannot re-initialize CUDA in forked subprocess")."""
    if torch.cuda.is_available() or torch.cuda.is_initialized():
        return "spawn"
    if "fork" in torch.multiprocessing.get_all_start_methods() and threads == 1:
        return "fork"
    return "spawn"


def device_clock(device: torch.device) -> float:
    """time.perf_counter() once `device` has finished its queued work: CUDA kernels run
    asynchronously, so without the synchronise a clock read measures only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _cpu_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` for the workers; the caller's model stays where and as it is."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).cpu()


def launch(worker: Callable, world_size: int, args: tuple = (), *, backend: str | None = "auto",
           threads: int = 1, timeout: float = 300.0, start_method: str | None = None) -> list:
    """Run worker(rank, world_size, backend, *args) in `world_size` new processes.

    backend: 'auto' (pick_backend), 'gloo', 'nccl', or None (no process group, e.g. a search that
    shares a storage instead). start_method: 'fork' | 'spawn' | None (pick_start_method).
    Returns each rank's return value (tensors, numbers, lists, dicts).
    """
    _check_world_size(world_size)
    start_method = start_method or pick_start_method(threads)
    if start_method not in torch.multiprocessing.get_all_start_methods():
        raise ValueError(f"start_method {start_method!r} is not available here; valid: "
                         f"{', '.join(torch.multiprocessing.get_all_start_methods())}")
    if backend == "auto":
        backend = pick_backend(world_size)
    if backend not in ("gloo", "nccl", None):
        raise ValueError(f"backend must be 'auto', 'gloo', 'nccl' or None, got {backend!r}")
    init = f"tcp://127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="mokit_parallel_") as outdir:
        ctx = torch.multiprocessing.start_processes(
            _entry, args=(worker, world_size, backend, init, outdir, threads, tuple(args)),
            nprocs=world_size, join=False, start_method=start_method)
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1.0):      # raises if a worker failed
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers still running after {timeout:.0f} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
                p.join()
        return [safe_torch_load(Path(outdir) / f"rank{r}.pt") for r in range(world_size)]


# ---------------------------------------------------------------------------------------------
# 2. Data parallel: DistributedDataParallel, each rank a slice of every global batch
# ---------------------------------------------------------------------------------------------

def global_batches(n: int, batch_size: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """Indices of the global batch of each step: a seeded permutation, cycled (full batches only)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    per_epoch = n // batch_size
    return [order[(s % per_epoch) * batch_size:(s % per_epoch + 1) * batch_size] for s in range(steps)]


def _check_ddp(world_size, n: int, steps: int, batch_size: int) -> None:
    _check_world_size(world_size)
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (the first one is a timing warm-up), got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < world_size or batch_size % world_size:
        raise ValueError(f"batch_size {batch_size!r} must be a multiple of world_size {world_size} "
                         f"(each rank takes batch_size / world_size examples)")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({n} examples)")


def sgd_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int,
                  lr: float = 0.05, momentum: float = 0.0, seed: int = 0) -> nn.Module:
    """One process, full batches: the steps DDP must reproduce (trains `model` in place, on its device)."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)                  # the data joins the model (a GPU model, CPU data)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    for idx in global_batches(len(y), batch_size, steps, seed):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _ddp_worker(rank: int, world_size: int, backend: str, model: nn.Module, x: torch.Tensor,
                y: torch.Tensor, steps: int, batch_size: int, lr: float, momentum: float, seed: int) -> dict:
    device = rank_device(rank, backend)
    model = copy.deepcopy(model).to(device)      # own copy: tensors passed in may be shared memory
    x, y = x.to(device), y.to(device)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=momentum)
    per = batch_size // world_size
    losses, t0, ends = [], 0.0, []
    for step, idx in enumerate(global_batches(len(y), batch_size, steps, seed)):
        if step == 1:                                  # step 0 is the warm-up: time the rest
            device_clock(device)                       # finish step 0's kernels first
            dist.barrier()
            t0 = time.perf_counter()
        elif step > 1:
            ends.append(device_clock(device))          # the end of the step before
        mine = idx[rank * per:(rank + 1) * per].to(device)   # this rank's slice of the global batch
        loss = F.cross_entropy(ddp(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()                                # DDP all-reduces (averages) gradients here
        opt.step()
        losses.append(loss.detach())
    ends.append(device_clock(device))
    dist.barrier()
    seconds = time.perf_counter() - t0
    step_seconds = torch.diff(torch.tensor([t0, *ends], dtype=torch.float64))
    out = {"seconds": seconds, "examples_per_s": (steps - 1) * batch_size / seconds, "step_seconds": step_seconds,
           "losses": torch.stack(losses).cpu(), "device": str(device)}
    if rank == 0:
        out["state"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return out


def ddp_train(model: nn.Module, data: TensorData | Batch, *, world_size: int, steps: int = 20, batch_size: int = 128,
              lr: float = 0.05, momentum: float = 0.0, seed: int = 0, threads: int = 1,
              backend: str = "auto", start_method: str | None = None) -> dict:
    """Train a copy of `model` with DDP in `world_size` processes, batch_size / world_size each.

    data: a TensorData (or an (x, y) pair). Returns rank 0's final `state`, `seconds` of steps 2..k,
    `examples_per_s` = (steps - 1) * batch_size / seconds, rank 0's `step_seconds` (one per timed
    step, its end to the last one's: the spread is the run's timing noise), every rank's `losses`, and the `backend`
    and rank 0's `device` it ran with (compare runs of different sizes only with the same ones:
    pass one backend to all of them, e.g. backend=pick_backend(largest world_size)).
    """
    x, y = (data.x, data.y) if isinstance(data, TensorData) else data
    _check_ddp(world_size, len(y), steps, batch_size)
    if backend == "auto":
        backend = pick_backend(world_size)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl' for DDP, got {backend!r}")
    outs = launch(_ddp_worker, world_size, (_cpu_copy(model), x.cpu(), y.cpu(), steps, batch_size, lr, momentum,
                                            seed), backend=backend, threads=threads, start_method=start_method)
    return {"state": outs[0]["state"], "seconds": outs[0]["seconds"],
            "examples_per_s": outs[0]["examples_per_s"], "step_seconds": outs[0]["step_seconds"],
            "losses": [o["losses"] for o in outs],
            "world_size": world_size, "threads": threads, "backend": backend, "device": outs[0]["device"]}


def max_param_diff(a: dict, b: dict) -> float:
    """max |a - b| over every entry of two state dicts with the same keys (on the CPU: either may
    come from a GPU model, the other from a worker)."""
    if a.keys() != b.keys():
        raise ValueError(f"state dicts differ in keys: {sorted(set(a) ^ set(b))}")
    return max((a[k].detach().float().cpu() - b[k].detach().float().cpu()).abs().max().item() for k in a)


# ---------------------------------------------------------------------------------------------
# 3. Pipeline: an nn.Sequential cut into stages, one process each, micro-batches sent between them
# ---------------------------------------------------------------------------------------------

def split_sequential(model: nn.Module, split: int | Sequence[int]) -> list[nn.Sequential]:
    """Cut an nn.Sequential before each index in `split`: split=[2] gives model[:2], model[2:]."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"the plain stage split needs an nn.Sequential, got {type(model).__name__}")
    points = [split] if isinstance(split, int) else list(split)
    n = len(model)
    if not points:
        raise ValueError("split needs at least one split point")
    for p in points:
        validate.integer("split point", p, low=1, high=n - 1, what=f"an nn.Sequential of {n} layers")
    if points != sorted(set(points)):
        raise ValueError(f"split points must be strictly increasing, got {points}")
    bounds = [0, *points, n]
    return [model[a:b] for a, b in pairwise(bounds)]


def _pipeline_worker(rank: int, world_size: int, backend: str, stages: list, chunks: list,
                     shapes: list, rounds: int) -> dict:
    """Stage `rank`: receive micro-batch m from rank-1 (or take it), run it, send it to rank+1."""
    device = rank_device(rank, backend)
    stage = copy.deepcopy(stages[rank]).to(device).eval()
    last = rank == world_size - 1
    for _round in range(rounds):                         # round 0 warms up; the last one is timed
        dist.barrier()
        timeline, outputs, pending = [], [], []
        with torch.no_grad():
            for m, shape in enumerate(shapes[rank]):
                if rank == 0:
                    inp = chunks[m].to(device)
                else:
                    inp = torch.empty(shape, device=device)
                    dist.recv(inp, src=rank - 1)       # waits for stage rank-1 to finish m
                start = device_clock(device)           # CUDA: wait for the input to be there
                out = stage(inp).contiguous()
                end = device_clock(device)             # CUDA: wait for the stage to finish it
                timeline.append({"stage": rank, "micro": m, "start": start, "end": end})
                if last:
                    outputs.append(out.cpu())
                else:
                    pending.append((dist.isend(out, dst=rank + 1), out))   # keep `out` alive
        for work, _ in pending:
            if work is not None:                       # isend returns None only outside a process group
                work.wait()
    return {"timeline": timeline, "output": torch.cat(outputs) if last else None}


def pipeline_run(model: nn.Module, x: torch.Tensor, *, split: int | Sequence[int], micro_batches: int = 4,
                 rounds: int = 2, backend: str = "auto") -> dict:
    """Run `model` on x as a pipeline: len(split)+1 stages in as many processes, x in micro-batches.

    Returns the last stage's `output` (equal to model(x)), and the `timeline` of the last round:
    per stage and micro-batch its start and end (seconds from the first start).
    """
    split_sequential(model, split)                     # validates the model and the split points
    validate.integer("micro_batches", micro_batches, low=1, high=len(x), what="at most the batch size")
    stages = split_sequential(_cpu_copy(model).eval(), split)   # the caller's model is not moved nor set to eval
    chunks = list(x.cpu().chunk(micro_batches))
    shapes, probe = [], x[:1].cpu()                    # input shape of every stage and micro-batch
    with torch.no_grad():
        for stage in stages:
            shapes.append([(len(c), *probe.shape[1:]) for c in chunks])
            probe = stage(probe)
    outs = launch(_pipeline_worker, len(stages), (stages, chunks, shapes, rounds), backend=backend)
    timeline = sorted((t for o in outs for t in o["timeline"]), key=lambda t: (t["start"], t["stage"]))
    t0 = min(t["start"] for t in timeline)
    timeline = [{**t, "start": t["start"] - t0, "end": t["end"] - t0} for t in timeline]
    return {"output": outs[-1]["output"], "timeline": timeline, "stages": len(stages),
            "micro_batches": len(chunks)}


def _pipelining_worker(rank: int, world_size: int, backend: str, model: nn.Module, x: torch.Tensor,
                       split: list, micro_batches: int) -> dict:
    """Stage `rank` of torch.distributed.pipelining: trace, cut, run a GPipe schedule."""
    from torch.distributed.pipelining import ScheduleGPipe, SplitPoint, pipeline

    device = rank_device(rank, backend)
    model, x = copy.deepcopy(model).to(device).eval(), x.to(device)
    pipe = pipeline(model, mb_args=(x.chunk(micro_batches)[0],),
                    split_spec={str(p): SplitPoint.BEGINNING for p in split})
    schedule = ScheduleGPipe(pipe.build_stage(rank, device), n_microbatches=micro_batches)
    out = schedule.step(x) if rank == 0 else schedule.step()
    return {"output": out.detach().cpu() if rank == world_size - 1 else None}


def pipelining_run(model: nn.Module, x: torch.Tensor, *, split: int | Sequence[int], micro_batches: int = 4,
                   backend: str = "auto") -> torch.Tensor:
    """The same pipeline through torch.distributed.pipelining (traced split, GPipe schedule): model(x)."""
    stages = split_sequential(model, split)           # validates the model and the split points
    points = [split] if isinstance(split, int) else list(split)
    if validate.integer("micro_batches", micro_batches, low=1) and len(x) % micro_batches:
        raise ValueError(f"micro_batches must be a positive integer dividing the batch size {len(x)}, "
                         f"got {micro_batches!r}")
    outs = launch(_pipelining_worker, len(stages), (_cpu_copy(model), x.cpu(), points, micro_batches),
                  backend=backend)
    return outs[-1]["output"]


def bubble_formula(stages: int, micro_batches: int) -> float:
    """Idle share of an ideal pipeline (equal stage times, free communication): (S-1)/(M+S-1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def bubble_fraction(timeline: Sequence[dict]) -> float:
    """Measured idle share: 1 - (busy time summed over stages) / (stages * wall span)."""
    if not timeline:
        raise ValueError("timeline is empty")
    stages = len({t["stage"] for t in timeline})
    span = max(t["end"] for t in timeline) - min(t["start"] for t in timeline)
    busy = sum(t["end"] - t["start"] for t in timeline)
    return 1.0 - busy / (stages * span)


def pipeline_schedule(stages: int, micro_batches: int, *, forward: float = 1.0,
                      backward: float | None = 2.0) -> list[dict]:
    """The ideal GPipe timeline, computed (no processes): every forward, then every backward.

    Stage s runs forward F(m) once it finished F(m-1) and stage s-1 finished F(m); after the last
    forward, backward B(m) runs from the last stage down: once stage s finished B(m-1) (and its
    forwards) and stage s+1 finished B(m). Micro-batches go in order 0..M-1, as in torch's
    ScheduleGPipe. Each stage takes `forward` per forward and `backward` per backward (None: an
    inference pipeline, forwards only). Rows: {stage, micro, phase "F" | "B", start, end}. With equal
    stages every stage is busy M (f + b) of (M + S - 1)(f + b): the bubble is (S - 1) / (M + S - 1).
    """
    S = validate.integer("stages", stages, low=1, high=64, what="pipeline stages")
    M = validate.integer("micro_batches", micro_batches, low=1, high=1024)
    f = validate.number("forward", forward, low=0, low_open=True, what="time of one forward per stage")
    b = None if backward is None else validate.number("backward", backward, low=0, low_open=True,
                                                      what="time of one backward per stage, or None")
    done = [0.0] * S                                   # when each stage is next free
    fwd = [[0.0] * M for _ in range(S)]                # end of F(m) on stage s
    rows = []
    for m in range(M):
        for s in range(S):
            start = max(done[s], fwd[s - 1][m] if s else 0.0)
            fwd[s][m] = done[s] = start + f
            rows.append({"stage": s, "micro": m, "phase": "F", "start": start, "end": start + f})
    if b is not None:
        last_forward = max(done)                       # GPipe: backward starts after every forward
        bwd = [[0.0] * M for _ in range(S)]
        for m in range(M):
            for s in reversed(range(S)):
                start = max(done[s], bwd[s + 1][m] if s < S - 1 else last_forward)
                bwd[s][m] = done[s] = start + b
                rows.append({"stage": s, "micro": m, "phase": "B", "start": start, "end": start + b})
    return sorted(rows, key=lambda r: (r["start"], r["stage"]))


def plot_timeline(timeline: Sequence[dict], *, title: str = "pipeline timeline", unit: str = "ms"):
    """One row per stage, one bar per micro-batch (start..end, seconds shown in ms); the gaps are the
    bubble. Rows with a "phase" ("F" / "B", from pipeline_schedule) are labelled F3 / B3, backward
    bars hatched. unit: "ms" (timelines in seconds) or a label for abstract times ("forward steps")."""
    import matplotlib.pyplot as plt

    stages = sorted({t["stage"] for t in timeline})
    micros = max(t["micro"] for t in timeline) + 1
    scale = 1e3 if unit == "ms" else 1.0
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 0.7 + 0.6 * len(stages)))
    groups: dict = {}                                  # one bar collection per (stage, phase): fast with many bars
    for t in timeline:
        groups.setdefault((t["stage"], t.get("phase", "")), []).append(t)
    for (stage, phase), rows in groups.items():
        ax.broken_barh([(scale * t["start"], scale * (t["end"] - t["start"])) for t in rows], (stage - 0.4, 0.8),
                       facecolors=[colors(t["micro"] % 10) for t in rows], edgecolor="white",
                       hatch="///" if phase == "B" else None, alpha=0.7 if phase == "B" else 1.0)
    if len(timeline) <= 128:                           # labels while they still fit
        for t in timeline:
            x, w = scale * t["start"], scale * (t["end"] - t["start"])
            ax.text(x + w / 2, t["stage"], f"{t.get('phase', '')}{t['micro']}", ha="center", va="center", fontsize=7)
    ax.set(yticks=stages, yticklabels=[f"stage {s}" for s in stages], xlabel=f"time ({unit})",
           title=f"{title} ({micros} micro-batches)")
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# 4. Distributed search: several processes, one Optuna study in one journal file
# ---------------------------------------------------------------------------------------------

def _search_worker(rank: int, world_size: int, backend, storage: str, study_name: str, n_trials: int,
                   dataset: str, n_train: int, n_val: int, seed: int, space_kw: dict) -> dict:
    """One search worker: its own data copy and objective; trials go to the shared study.

    The search records a trial whose objective raised as "failed" and goes on; the worker keeps each
    such error's text so that distributed_search can raise it in the caller."""
    from . import nas, search
    from .data import load_dataset

    train_data, val_data = load_dataset(dataset, "train", subset=n_train + n_val, seed=seed).split_off(n_val, seed)
    objective = nas.arch_objective(train_data, val_data, seed=seed)
    errors: list[str] = []

    def tagged(config: dict, budget: int) -> dict:
        try:
            metrics = objective(config, budget)
        except Exception as e:
            errors.append(f"worker {rank} (pid {os.getpid()}), config {config}: {type(e).__name__}: {e}")
            raise
        return {**metrics, "worker": rank, "pid": os.getpid()}

    result = search.optuna_search(tagged, nas.mlp_space(**space_kw), budget=1, n_trials=n_trials,
                                  sampler="tpe", seed=seed + rank, metric="val_acc",
                                  storage=storage, study_name=study_name)
    return {"worker": rank, "trials_seen": len(result.trials), "real": bool(train_data.real), "errors": errors}


def distributed_search(storage: str | os.PathLike, *, workers: int = 2, n_trials: int = 6,
                       study_name: str = "mokit_distributed", dataset: str = "mnist", n_train: int = 2000,
                       n_val: int = 500, seed: int = 0, space_kw: dict | None = None):
    """`workers` processes run one TPE search over nas.mlp_space on one journal-file study.

    Together they finish n_trials trials (each trial claimed by exactly one worker); returns the
    study's SearchResult (every trial's metrics name its `worker`) and whether the data was real.
    A failed trial is an error here, not a logged line: RuntimeError with the workers' messages
    (in a worker process a failure is usually the setup, e.g. CUDA in a forked child, and hits
    every trial alike).
    """
    from . import search

    _check_world_size(workers)
    search.check_count("n_trials", n_trials)
    if not str(storage).endswith((".log", ".journal")):
        raise ValueError(f"storage {str(storage)!r}: give a journal file (*.log, *.journal) all workers can open")
    outs = launch(_search_worker, workers, (str(storage), study_name, n_trials, dataset, n_train, n_val, seed,
                                            dict(space_kw or {})), backend=None)
    import optuna
    study = optuna.load_study(study_name=study_name, storage=search.open_storage(str(storage)))
    result = search.study_result(study, "optuna_tpe", "val_acc", True)
    failed = [t for t in result.trials if t.status == "failed"]
    errors = [e for o in outs for e in o["errors"]]
    if failed or errors:
        shown = "\n  ".join(errors[:3]) or "(the objective returned no finite val_acc)"
        raise RuntimeError(f"distributed search: {len(failed)} of {len(result.trials)} trials failed in "
                           f"{storage}; first errors:\n  {shown}")
    return result, all(o["real"] for o in outs)
