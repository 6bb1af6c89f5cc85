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

from . import validate
from .data import (
    Batches,
    TensorData,
    atomic_torch_save,
    check_augment,
    checkpoint_path,
    safe_torch_load,
)
from .models import create_model, whiten_init

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


def _split_sgd(momentum: float = 0.85, bias_scale: float = 64.0):
    """Nesterov SGD where biases and BatchNorm shifts (1-D tensors) get `bias_scale` x the lr and
    1/bias_scale x the weight decay, so their step lr * weight_decay is the same as the weights' (airbench)."""
    def make(params, lr, weight_decay, **kw):
        params = [p for p in params if p.requires_grad]
        flat, rest = [p for p in params if p.ndim < 2], [p for p in params if p.ndim >= 2]
        groups = [dict(params=rest, lr=lr, weight_decay=weight_decay),
                  dict(params=flat, lr=lr * bias_scale, weight_decay=weight_decay / bias_scale)]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=lr,
                               momentum=kw.get("momentum", momentum), nesterov=True)
    return make


def _adam(params, lr, weight_decay, **kw):
    """Adam, fused into one kernel where the device supports it (CUDA)."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


# name -> (factory(params, lr, weight_decay, **kw), default learning rate)
OPTIMIZERS: dict[str, tuple[Callable, float]] = {
    "gd": (_sgd(), 0.5),                       # full-batch gradient descent: one step per epoch
    "sgd": (_sgd(), 0.1),
    "momentum": (_sgd(0.9), 0.05),
    "nesterov": (_sgd(0.9, nesterov=True), 0.05),
    "adagrad": (lambda p, lr, weight_decay, **kw: torch.optim.Adagrad(p, lr=lr, weight_decay=weight_decay), 0.05),
    "rmsprop": (lambda p, lr, weight_decay, **kw: torch.optim.RMSprop(p, lr=lr, weight_decay=weight_decay), 1e-3),
    "adam": (_adam, 1e-3),
    "adamw": (lambda p, lr, weight_decay, **kw: torch.optim.AdamW(p, lr=lr, weight_decay=weight_decay or 0.01), 1e-3),
    "nesterov_split": (_split_sgd(), 0.75),   # biases / BN shifts at 64x the lr (the fast CIFAR recipe)
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
    "triangle": lambda t: (0.2 + 0.8 * t / 0.23) if t < 0.23   # 0.2 -> 1 by 23%, then linearly to 0.07
    else 1 - 0.93 * (t - 0.23) / 0.77,
}


def _lookup(table: dict, name, what: str):
    if callable(name) and what == "schedule":
        return name
    return validate.choice(what, name, table)


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
    if kind is float:
        validate.number(name, value, low=0, low_open=True)
    else:
        validate.integer(name, value, low=1)


def _check_fraction(name: str, value) -> None:
    validate.number(name, value, low=0, high=1, high_open=True)


# ---------------------------------------------------------------------------------------------
# Precision and memory layout: what the hardware runs fastest
# ---------------------------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX): autocast then pays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:                                            # macOS, Windows: stay with fp32
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """The concrete precision ('fp32', 'bf16', 'fp16') to train in on `device`.

    'auto': bf16 on a GPU that has it (else fp16), bf16 on a CPU with native bf16, else fp32.
    fp16 needs a GPU: on a CPU it is refused (slow emulation, and no loss scaling there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    device = pick_device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA GPU, but the device is {device.type!r}; "
                         f"use 'bf16' or 'fp32' there")
    if precision == "bf16" and device.type == "mps":
        raise ValueError("precision 'bf16' is not supported on Apple MPS; use 'fp32'")
    return precision


def autocast(precision: str, device: torch.device):
    """A torch.autocast context for a resolved precision ('fp32' = no autocast)."""
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES.get(precision, torch.float32),
                          enabled=precision in _AUTOCAST_DTYPES)


def is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Conv nets run channels_last (NHWC) on CPU and CUDA: oneDNN and cuDNN's fastest layout."""
    return device.type in ("cpu", "cuda") and is_conv_net(model)


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class Lookahead:
    """Lookahead / EMA of the weights (airbench): every `every` steps, ema <- lerp(ema, w, 1 - d) and w <- ema.

    The decay d = decay**every * t**3 grows with progress t, so early training is free and late
    training is averaged; at the last step the model takes the averaged weights.
    """

    def __init__(self, model: nn.Module, every: int = 5, decay: float = 0.95):
        self.every, self.decay = every, decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def __call__(self, model: nn.Module, info: StepInfo) -> None:
        last = info.step == info.total_steps
        if info.step % self.every and not last:
            return
        d = 1.0 if last else self.decay ** self.every * (info.step / info.total_steps) ** 3
        current = model.state_dict()
        for k, ema in self.state.items():
            ema.lerp_(current[k], 1 - d)
            current[k].copy_(ema)


def train(model: nn.Module, data: TensorData | Iterable, *, epochs: int = 5, optimizer: str = "adam",
          lr: float | None = None, schedule: str | Callable[[float], float] = "cosine",
          batch_size: int = 128, weight_decay: float = 0.0, momentum: float | None = None,
          loss_fn: Callable = cross_entropy, label_smoothing: float = 0.0, on_step: Callable | None = None,
          val_data: TensorData | None = None, augment: bool | str = False, lookahead: bool = False,
          precision: str = "fp32", channels_last: bool | None = None, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = True) -> History:
    """Train `model` in place on `data` and return its History.

    data: a TensorData (batched here with `batch_size`, shuffled with `seed`) or any iterable of
    (x, y) batches. The lr at progress t is lr * schedule(t); "gd" uses the whole set as one batch.
    precision: 'fp32' | 'bf16' | 'fp16' | 'auto' (autocast; fp16 with a GradScaler, GPU only).
    channels_last: None = NHWC for conv nets on CPU / CUDA (measured faster), True / False to force.
    label_smoothing: the default loss's target smoothing ε (targets (1-ε)·onehot + ε/K).
    lookahead: average the weights as training goes (Lookahead above).
    """
    # 1. validate everything before any work
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    make_opt, default_lr = _lookup(OPTIMIZERS, optimizer, "optimizer")
    sched = _lookup(SCHEDULES, schedule, "schedule")
    lr = default_lr if lr is None else lr
    _check_positive("lr", lr, float)
    if not isinstance(weight_decay, (int, float)) or not math.isfinite(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    _check_fraction("label_smoothing", label_smoothing)
    if label_smoothing and loss_fn is not cross_entropy:
        raise ValueError("label_smoothing applies to the default loss; put it inside your loss_fn instead")
    check_augment(augment)
    precision = resolve_precision(precision, device)
    if isinstance(data, TensorData):
        if len(data) == 0:
            raise ValueError("data is empty")
        check_input_shape(model, data)

    # 2. device, layout, batches, optimizer, per-step lr schedule
    device = pick_device(device)
    channels_last = use_channels_last(model, device) if channels_last is None else channels_last
    model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    torch.manual_seed(seed)                                  # dropout and other randomness
    if isinstance(data, TensorData):
        if optimizer == "gd":
            batch_size = len(data)
        batches = Batches(data.to(device), batch_size, seed=seed, augment=augment)
    else:
        batches = data
    if label_smoothing:
        def loss_fn(out, y, x=None):                         # noqa: F811 - the smoothed default
            return F.cross_entropy(out, y, label_smoothing=label_smoothing)
    kw = {} if momentum is None else {"momentum": momentum}
    opt = make_opt(model.parameters(), lr=lr, weight_decay=weight_decay, **kw)
    steps_per_epoch = len(batches)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sched(min(s / total, 1.0)))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    hooks = [h for h in (Lookahead(model) if lookahead else None, on_step) if h is not None]

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
            xb, yb = _layout(xb.to(device, non_blocking=True), channels_last), yb.to(device, non_blocking=True)
            with autocast(precision, device):
                out = model(xb)
            loss = loss_fn(out.float(), yb, xb)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            scheduler.step()
            step += 1
            loss = loss.detach()
            step_losses.append(loss)
            loss_sum += loss * len(yb)
            if yb.dtype == torch.long and yb.dim() == 1:
                correct += (out.argmax(1) == yb).sum()
            seen += len(yb)
            for hook in hooks:
                hook(model, StepInfo(step, total, epoch, loss, opt))
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


def check_input_shape(model: nn.Module, data: TensorData) -> None:
    """Refuse, before any work, a model that cannot take `data`'s examples or gives the wrong class count."""
    p = next(iter(model.parameters()), None)
    probe = data.x[:2].to(p.device if p is not None else data.x.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except RuntimeError as e:
        raise ValueError(f"the model cannot take {data.name} examples of shape {data.shape}: {e}") from e
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and (out.dim() != 2 or out.shape[1] != data.num_classes):
        raise ValueError(f"the model gives outputs of shape {tuple(out.shape[1:])} per example, but "
                         f"{data.name} has {data.num_classes} classes")


def _progress_bar(total: int, enabled: bool):
    if not enabled or os.environ.get("MOKIT_PROGRESS") == "0":
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="train", unit="step", mininterval=0.5, leave=False)


def _flip_views(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x) + model(x.flip(3)))


def _flip_translate_views(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Half the weight on the image and its mirror, half on both mirrored, shifted by one pixel each way."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[2:]
    shifted = (padded[:, :, :h, :w], padded[:, :, 2:, 2:])
    return 0.5 * _flip_views(model, x) + 0.25 * sum(_flip_views(model, v) for v in shifted)


# test-time augmentation: name -> f(model, x) = the averaged logits over the views
TTA: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "none": lambda model, x: model(x),
    "flip": _flip_views,                        # 2 views
    "flip_translate": _flip_translate_views,    # 6 views
}


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, *, batch_size: int = 1024, tta: str = "none",
            device: str | torch.device | None = None) -> torch.Tensor:
    """Model outputs (N, num_classes) for every example of `data`, in order, on the CPU.

    tta: test-time augmentation (TTA): logits averaged over flipped / shifted views of each image.
    """
    views = _lookup(TTA, tta, "tta")
    device = pick_device(device) if device is not None else _model_device(model)
    channels_last = use_channels_last(model, device)
    model.eval()
    x = data.x
    outs = [views(model, _layout(x[i:i + batch_size].to(device), channels_last)).float().cpu()
            for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def evaluate(model: nn.Module, data: TensorData, *, batch_size: int = 1024, tta: str = "none",
             device: str | torch.device | None = None) -> dict:
    """{"accuracy": % correct, "loss": mean cross-entropy, "errors": count wrong, "n": examples}."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    logits = predict(model, data, batch_size=batch_size, tta=tta, device=device)
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


# name -> init(model, train_data) run on a fresh model before training (data-dependent initialisation)
INITS: dict[str, Callable[[nn.Module, TensorData], object]] = {
    "none": lambda model, data: None,
    "whiten": lambda model, data: whiten_init(model, data.x[:5000]),   # patch whitening of the first conv
}


def load_or_train(model_name: str, data: TensorData, *, model_kw: dict | None = None, init: str = "none",
                  seed: int = 0, device=None, progress: bool = True, **train_kw) -> tuple[nn.Module, dict]:
    """The model `model_name` trained on `data` with `train_kw`, from its checkpoint when one exists.

    The checkpoint's name hashes everything that shapes the result (model, knobs, init, data, seed,
    training settings with the precision resolved for this device), so SMOKE runs and full runs,
    or fp32 and bf16 runs, never share a file.
    """
    make_init = _lookup(INITS, init, "init")
    train_kw["precision"] = resolve_precision(train_kw.get("precision", "fp32"), device)
    model_kw = dict(model_kw or {})
    model_kw.setdefault("in_shape", data.shape)
    model_kw.setdefault("num_classes", data.num_classes)
    key = {"model": model_name, "model_kw": model_kw, "init": init,
           "data": [data.name, data.split, len(data), data.real],
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
    make_init(model, data)
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
    # the fast CIFAR-10 recipe (airbench-style, sized for a 2-core CPU; benchmarks/cifar_speed.py measures it)
    "cifar_net": {"dataset": "cifar10", "init": "whiten", "epochs": 8, "optimizer": "nesterov_split",
                  "lr": 0.375, "weight_decay": 0.00204, "schedule": "triangle", "batch_size": 256,
                  "label_smoothing": 0.2, "augment": "flip_translate", "lookahead": True,
                  "precision": "auto", "tta": "flip_translate", "smoke_epochs": 4},
}
SMOKE_TRAIN = 2000     # training examples used by smoke runs (SMOKE=True in the notebooks)
RECIPE_EXTRAS = ("dataset", "init", "tta", "smoke_epochs")   # recipe keys that are not train() arguments


def recipe_train_kw(model_name: str) -> dict:
    """The train() keyword arguments of RECIPES[model_name] (without dataset, init, tta, smoke_epochs)."""
    if model_name not in RECIPES:
        raise ValueError(f"no baseline recipe for {model_name!r}; recipes exist for: {', '.join(RECIPES)}")
    return {k: v for k, v in RECIPES[model_name].items() if k not in RECIPE_EXTRAS}


def baseline(model_name: str, *, smoke: bool = False, dataset: str | None = None, seed: int = 0,
             device=None, progress: bool = True) -> tuple[nn.Module, dict]:
    """The baseline `model_name` trained by its RECIPES entry, loaded from its checkpoint if present.

    smoke=True trains 1 epoch (or the recipe's smoke_epochs) on SMOKE_TRAIN examples (tests); it never shares a checkpoint with
    the full recipe. Returns (model, info) where info has "train", "test" (TensorData on the
    device), "test_acc" and "seconds" (training time, 0 if it was loaded).
    """
    from .data import load_dataset

    if model_name not in RECIPES:
        raise ValueError(f"no baseline recipe for {model_name!r}; recipes exist for: {', '.join(RECIPES)}")
    recipe = dict(RECIPES[model_name])
    dataset = dataset or recipe.pop("dataset")
    recipe.pop("dataset", None)
    tta = recipe.pop("tta", "none")
    smoke_epochs = recipe.pop("smoke_epochs", 1)     # cifar_net needs a few 8-step epochs to beat chance
    device = pick_device(device)
    train_data = load_dataset(dataset, "train", subset=SMOKE_TRAIN if smoke else None, device=device)
    test_data = load_dataset(dataset, "test", subset=1000 if smoke else None, device=device)
    if smoke:
        recipe["epochs"] = smoke_epochs
    model, meta = load_or_train(model_name, train_data, seed=seed, device=device, progress=progress, **recipe)
    return model, {**meta, "train": train_data, "test": test_data,
                   "test_acc": evaluate(model, test_data, tta=tta)["accuracy"], "tta": tta,
                   "seconds": 0.0 if meta["loaded"] else meta["train_seconds"]}
