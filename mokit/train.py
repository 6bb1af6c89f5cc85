"""The one training loop and the one evaluation, used by every technique and notebook.

    history = train(model, data, epochs=5, optimizer="adam", schedule="cosine")
    metrics = evaluate(model, test_data)          # {"accuracy": 98.4, "loss": ..., "errors": ...}

Accuracies are percentages (0-100) everywhere in mokit, so "points" mean percentage points.
Behaviour is passed in as callables: `loss_fn(output, y, x) -> loss` and
`on_step(model, StepInfo)` (pruning masks, schedules, logging).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import Batches, TensorData, atomic_torch_save, checkpoint_path, safe_torch_load
from .models import create_model

# ---------------------------------------------------------------------------------------------
# Device and seeds
# ---------------------------------------------------------------------------------------------

def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else $MOKIT_DEVICE, else CUDA when present, else Apple MPS, else CPU."""
    device = device or os.environ.get("MOKIT_DEVICE")
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Call it explicitly; nothing seeds on import."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Optimizers and schedules: dispatch tables, not if-chains
# ---------------------------------------------------------------------------------------------

def _sgd(momentum: float = 0.0, nesterov: bool = False):
    def make(params, lr, weight_decay, **kw):
        return torch.optim.SGD(params, lr=lr, momentum=kw.get("momentum", momentum),
                               nesterov=nesterov, weight_decay=weight_decay)
    return make


# name -> (factory(params, lr, weight_decay, **kw), default learning rate)
OPTIMIZERS: dict[str, tuple[Callable, float]] = {
    "gd": (_sgd(), 0.5),                       # full-batch gradient descent: one step per epoch
    "sgd": (_sgd(), 0.1),
    "momentum": (_sgd(0.9), 0.05),
    "nesterov": (_sgd(0.9, nesterov=True), 0.05),
    "adagrad": (lambda p, lr, weight_decay, **kw: torch.optim.Adagrad(p, lr=lr, weight_decay=weight_decay), 0.05),
    "rmsprop": (lambda p, lr, weight_decay, **kw: torch.optim.RMSprop(p, lr=lr, weight_decay=weight_decay), 1e-3),
    "adam": (lambda p, lr, weight_decay, **kw: torch.optim.Adam(p, lr=lr, weight_decay=weight_decay), 1e-3),
    "adamw": (lambda p, lr, weight_decay, **kw: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay or 0.01), 1e-3),
}


def _warmup_cosine(t: float, warmup: float = 0.1) -> float:
    return t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (1 - warmup)))


# name -> lr multiplier as a function of training progress t in [0, 1)
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "step": lambda t: 0.1 ** int(t * 3),                       # x0.1 at 1/3 and 2/3 of training
    "exponential": lambda t: 0.01 ** t,                        # decays to 1% by the end
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
    "warmup_cosine": _warmup_cosine,                           # linear warm-up for 10%, then cosine
    "onecycle": lambda t: (0.04 + 0.96 * t / 0.3) if t < 0.3   # up to the peak, then cosine down
    else 0.5 * (1 + math.cos(math.pi * (t - 0.3) / 0.7)),
}


def _lookup(table: dict, name, what: str):
    if callable(name) and what == "schedule":
        return name
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid names: {', '.join(table)}")
    return table[name]


# ---------------------------------------------------------------------------------------------
# train / evaluate
# ---------------------------------------------------------------------------------------------

@dataclass
class StepInfo:
    """What on_step hooks see after each optimizer step."""
    step: int               # 1-based global step
    total_steps: int
    epoch: int              # 0-based
    loss: torch.Tensor      # this step's loss (detached)
    optimizer: torch.optim.Optimizer


@dataclass
class History:
    """Per-epoch records and per-step losses of one training run."""
    epochs: list[dict] = field(default_factory=list)   # epoch, train_loss, train_acc, lr, seconds (, val_acc)
    steps: list[float] = field(default_factory=list)   # loss of every step

    @property
    def final(self) -> dict:
        return self.epochs[-1] if self.epochs else {}

    def column(self, key: str) -> list:
        return [e[key] for e in self.epochs]

    def to_dict(self) -> dict:
        return asdict(self)


def cross_entropy(output: torch.Tensor, y: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """The default loss_fn: mean cross-entropy of logits against integer labels."""
    return F.cross_entropy(output, y)


def _check_positive(name: str, value, kind=int) -> None:
    if not isinstance(value, (int, float) if kind is float else int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be {'a number > 0' if kind is float else 'an integer >= 1'}, got {value!r}")


def train(model: nn.Module, data: TensorData | Iterable, *, epochs: int = 5, optimizer: str = "adam",
          lr: float | None = None, schedule: str | Callable[[float], float] = "cosine",
          batch_size: int = 128, weight_decay: float = 0.0, momentum: float | None = None,
          loss_fn: Callable = cross_entropy, on_step: Callable | None = None,
          val_data: TensorData | None = None, augment: bool = False, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = True) -> History:
    """Train `model` in place on `data` and return its History.

    data: a TensorData (batched here with `batch_size`, shuffled with `seed`) or any iterable of
    (x, y) batches. The lr at progress t is lr * schedule(t); "gd" uses the whole set as one batch.
    """
    # 1. validate everything before any work
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    make_opt, default_lr = _lookup(OPTIMIZERS, optimizer, "optimizer")
    sched = _lookup(SCHEDULES, schedule, "schedule")
    lr = default_lr if lr is None else lr
    _check_positive("lr", lr, float)
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if isinstance(data, TensorData) and len(data) == 0:
        raise ValueError("data is empty")

    # 2. device, batches, optimizer, per-step lr schedule
    device = pick_device(device)
    model.to(device)
    torch.manual_seed(seed)                                  # dropout and other randomness
    if isinstance(data, TensorData):
        if optimizer == "gd":
            batch_size = len(data)
        batches = Batches(data.to(device), batch_size, seed=seed, augment=augment)
    else:
        batches = data
    kw = {} if momentum is None else {"momentum": momentum}
    opt = make_opt(model.parameters(), lr=lr, weight_decay=weight_decay, **kw)
    steps_per_epoch = len(batches)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sched(min(s / total, 1.0)))

    # 3. the loop
    history, step = History(), 0
    bar = _progress_bar(total, progress)
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, lr_now = 0, opt.param_groups[0]["lr"]
        step_losses = []
        for xb, yb in batches:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            out = model(xb)
            loss = loss_fn(out, yb, xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            step += 1
            loss = loss.detach()
            step_losses.append(loss)
            loss_sum += loss * len(yb)
            if yb.dtype == torch.long and yb.dim() == 1:
                correct += (out.argmax(1) == yb).sum()
            seen += len(yb)
            if on_step is not None:
                on_step(model, StepInfo(step, total, epoch, loss, opt))
            if bar is not None:
                bar.update(1)
        record = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(seen, 1),
                  "train_acc": 100.0 * correct.item() / max(seen, 1), "lr": lr_now,
                  "seconds": time.perf_counter() - t0}
        if val_data is not None:
            record["val_acc"] = evaluate(model, val_data, device=device)["accuracy"]
        if not math.isfinite(record["train_loss"]):
            if bar is not None:
                bar.close()
            raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {record['train_loss']}); "
                                     f"try a smaller lr than {lr}")
        history.steps.extend(torch.stack(step_losses).tolist())
        history.epochs.append(record)
        if bar is not None:
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", acc=f"{record['train_acc']:.2f}")
    if bar is not None:
        bar.close()
    return history


def _progress_bar(total: int, enabled: bool):
    if not enabled or os.environ.get("MOKIT_PROGRESS") == "0":
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="train", unit="step", mininterval=0.5, leave=False)


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, *, batch_size: int = 1024,
            device: str | torch.device | None = None) -> torch.Tensor:
    """Model outputs (N, num_classes) for every example of `data`, in order, on the CPU."""
    device = pick_device(device) if device is not None else _model_device(model)
    model.eval()
    x = data.x
    outs = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def evaluate(model: nn.Module, data: TensorData, *, batch_size: int = 1024,
             device: str | torch.device | None = None) -> dict:
    """{"accuracy": % correct, "loss": mean cross-entropy, "errors": count wrong, "n": examples}."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    logits = predict(model, data, batch_size=batch_size, device=device)
    y = data.y.cpu()
    wrong = int((logits.argmax(1) != y).sum())
    return {"accuracy": 100.0 * (1 - wrong / len(y)), "loss": float(F.cross_entropy(logits, y)),
            "errors": wrong, "n": len(y)}


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Checkpoints: train once, load afterwards
# ---------------------------------------------------------------------------------------------

def save_model(model: nn.Module, path, meta: dict | None = None) -> None:
    """Save the state dict (+ JSON-able meta) atomically."""
    atomic_torch_save({"state_dict": model.state_dict(), "meta": json.dumps(meta or {})}, path)


def load_state(path) -> tuple[dict, dict]:
    """(state_dict, meta) from a file written by save_model, loaded with weights_only=True."""
    blob = safe_torch_load(path)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(f"{path} is not a mokit checkpoint (no state_dict)")
    return blob["state_dict"], json.loads(blob.get("meta", "{}"))


def load_or_train(model_name: str, data: TensorData, *, model_kw: dict | None = None,
                  seed: int = 0, device=None, progress: bool = True, **train_kw) -> tuple[nn.Module, dict]:
    """The model `model_name` trained on `data` with `train_kw`, from its checkpoint when one exists.

    The checkpoint's name hashes everything that shapes the result (model, knobs, data, seed,
    training settings), so SMOKE runs and full runs never share a file.
    """
    model_kw = dict(model_kw or {})
    model_kw.setdefault("in_shape", data.shape)
    model_kw.setdefault("num_classes", data.num_classes)
    key = {"model": model_name, "model_kw": model_kw, "data": [data.name, data.split, len(data), data.real],
           "seed": seed, "train": {k: v for k, v in train_kw.items() if k not in ("val_data",)}}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = checkpoint_path(f"{model_name}-{data.name}-{digest}")
    seed_everything(seed)
    model = create_model(model_name, **model_kw)
    if path.exists():
        try:
            state, meta = load_state(path)
            model.load_state_dict(state)
            return model.to(pick_device(device)), {**meta, "loaded": True, "path": str(path)}
        except (ValueError, RuntimeError) as e:
            print(f"checkpoint {path} unusable ({e}); training again")
    history = train(model, data, seed=seed, device=device, progress=progress, **train_kw)
    meta = {"key": json.loads(json.dumps(key, default=str)), "history": history.to_dict(),
            "train_seconds": sum(history.column("seconds"))}
    save_model(model, path, meta)
    return model, {**meta, "loaded": False, "path": str(path)}


# The recipes notebook 00 trains and every later notebook reuses (same settings -> same checkpoint).
RECIPES: dict[str, dict] = {
    "lenet300": {"dataset": "mnist", "epochs": 5, "optimizer": "adam", "lr": 2e-3, "schedule": "cosine",
                 "batch_size": 128},
    "lenet5": {"dataset": "mnist", "epochs": 5, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
               "batch_size": 128},
    "cifar_cnn": {"dataset": "cifar10", "epochs": 2, "optimizer": "adam", "lr": 3e-3, "schedule": "onecycle",
                  "batch_size": 256},
}
SMOKE_TRAIN = 2000     # training examples used by smoke runs (SMOKE=True in the notebooks)


def baseline(model_name: str, *, smoke: bool = False, dataset: str | None = None, seed: int = 0,
             device=None, progress: bool = True) -> tuple[nn.Module, dict]:
    """The baseline `model_name` trained by its RECIPES entry, loaded from its checkpoint if present.

    smoke=True trains 1 epoch on SMOKE_TRAIN examples (tests); it never shares a checkpoint with
    the full recipe. Returns (model, info) where info has "train", "test" (TensorData on the
    device), "test_acc" and "seconds" (training time, 0 if it was loaded).
    """
    from .data import load_dataset

    if model_name not in RECIPES:
        raise ValueError(f"no baseline recipe for {model_name!r}; recipes exist for: {', '.join(RECIPES)}")
    recipe = dict(RECIPES[model_name])
    dataset = dataset or recipe.pop("dataset")
    recipe.pop("dataset", None)
    device = pick_device(device)
    train_data = load_dataset(dataset, "train", subset=SMOKE_TRAIN if smoke else None, device=device)
    test_data = load_dataset(dataset, "test", subset=1000 if smoke else None, device=device)
    if smoke:
        recipe["epochs"] = 1
    model, meta = load_or_train(model_name, train_data, seed=seed, device=device, progress=progress, **recipe)
    return model, {**meta, "train": train_data, "test": test_data,
                   "test_acc": evaluate(model, test_data)["accuracy"],
                   "seconds": 0.0 if meta["loaded"] else meta["train_seconds"]}
