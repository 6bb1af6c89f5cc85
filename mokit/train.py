"""The one training loop and the one evaluation, used by every technique and notebook.

    history = train(model, data, epochs=5, optimizer="adam", schedule="cosine")
    metrics = evaluate(model, test_data)          # {"accuracy": 98.4, "loss": ..., "errors": ...}

Accuracies are percentages (0-100) everywhere in mokit, so "points" mean percentage points.
Behaviour is passed in as callables: `loss_fn(output, y, x) -> loss` and
`on_step(model, StepInfo)` (pruning masks, schedules, logging).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .data import (
    Batch,
    Batches,
    DataOrBatches,
    TensorData,
    atomic_torch_save,
    check_augment,
    safe_torch_load,
)

# ---------------------------------------------------------------------------------------------
# Device and seeds
# ---------------------------------------------------------------------------------------------

def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else $MOKIT_DEVICE, else CUDA when present, else Apple MPS, else CPU.

    A device that does not exist here ('gpu', 'cuda' without a GPU, 'cuda:7' on a 1-GPU machine) is
    refused with a ValueError naming it, before any work."""
    if device is not None:
        return check_device(device)
    env = os.environ.get("MOKIT_DEVICE")
    if env:
        return check_device(env, "MOKIT_DEVICE")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DEVICE_NAMES = "'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"


def check_device(device, name: str = "device") -> torch.device:
    """`device` as a torch.device that exists on this machine, else ValueError naming it."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"unknown {name} {device!r}; use {DEVICE_NAMES}") from None
    elif isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        dev = torch.device("cuda", device)
    else:
        raise ValueError(f"{name} must be {DEVICE_NAMES}, got {device!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name} {str(dev)!r}: CUDA is not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{name} {str(dev)!r}: there is no CUDA device {dev.index} "
                             f"(this machine has {count}: cuda:0 to cuda:{count - 1})")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{name} 'mps': Apple MPS is not available on this machine; use 'cpu'")
    return dev


SEED_HIGH = 2 ** 32 - 1     # NumPy's limit; torch takes it too


def check_seed(seed, name: str = "seed") -> int:
    """`seed` as an int in [0, 2**32 - 1] (not a bool), else ValueError."""
    return validate.integer(name, seed, low=0, high=SEED_HIGH, what="a seed below 2**32")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices). Call it explicitly; nothing seeds on import."""
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Optimizers and schedules: dispatch tables, not if-chains
# ---------------------------------------------------------------------------------------------

class OptimizerFactory:
    """A registry entry's optimizer: make(params, lr, weight_decay=None, **kw) -> torch.optim.Optimizer.

    weight_decay: this optimizer's own default, used when none is given (an explicit 0 stays 0).
    takes: the keywords it accepts besides lr and weight_decay (train's momentum= and optimizer_kw=).
    """

    def __init__(self, build: Callable[..., torch.optim.Optimizer], *, weight_decay: float = 0.0,
                 takes: tuple[str, ...] = ()):
        self.build, self.weight_decay, self.takes = build, weight_decay, tuple(takes)

    def __call__(self, params, lr: float, weight_decay: float | None = None, **kw) -> torch.optim.Optimizer:
        bad = [k for k in kw if k not in self.takes]
        if bad:
            raise ValueError(f"this optimizer takes no {bad[0]}=; it takes {_takes_text(self)}")
        return self.build(params, lr=lr, weight_decay=self.weight_decay if weight_decay is None else weight_decay,
                          **kw)

    def __repr__(self) -> str:
        return f"OptimizerFactory(weight_decay={self.weight_decay}, takes={self.takes})"


def _takes_text(make: OptimizerFactory) -> str:
    return ", ".join(f"{k}=" for k in ("lr", "weight_decay", *make.takes))


def _sgd(momentum: float = 0.0, nesterov: bool = False):
    def build(params, lr, weight_decay, momentum=momentum, dampening=0.0):
        return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                               weight_decay=weight_decay)
    return build


def _split_sgd(momentum: float = 0.85, bias_scale: float = 64.0):
    """Nesterov SGD where biases and BatchNorm shifts (1-D tensors) get `bias_scale` x the lr and
    1/bias_scale x the weight decay, so their step lr * weight_decay is the same as the weights' (airbench)."""
    def build(params, lr, weight_decay, momentum=momentum):
        params = [p for p in params if p.requires_grad]
        flat, rest = [p for p in params if p.ndim < 2], [p for p in params if p.ndim >= 2]
        groups = [dict(params=rest, lr=lr, weight_decay=weight_decay),
                  dict(params=flat, lr=lr * bias_scale, weight_decay=weight_decay / bias_scale)]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=lr, momentum=momentum, nesterov=True)
    return build


def _adam(params, lr, weight_decay, **kw):
    """Adam, fused into one kernel where the device supports it (CUDA)."""
    params = list(params)
    fused = bool(params) and all(p.is_cuda for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None, **kw)


_SGD_KW = ("momentum", "dampening")
_ADAM_KW = ("betas", "eps", "amsgrad")
# name -> (make(params, lr, weight_decay=None, **kw), default learning rate); each entry's own
# default weight decay and extra keywords are in its OptimizerFactory
OPTIMIZERS: dict[str, tuple[OptimizerFactory, float]] = {
    "gd": (OptimizerFactory(_sgd(), takes=_SGD_KW), 0.5),   # full-batch gradient descent: one step per epoch
    "sgd": (OptimizerFactory(_sgd(), takes=_SGD_KW), 0.1),
    "momentum": (OptimizerFactory(_sgd(0.9), takes=_SGD_KW), 0.05),
    "nesterov": (OptimizerFactory(_sgd(0.9, nesterov=True), takes=("momentum",)), 0.05),
    "adagrad": (OptimizerFactory(torch.optim.Adagrad, takes=("lr_decay", "eps", "initial_accumulator_value")), 0.05),
    "rmsprop": (OptimizerFactory(torch.optim.RMSprop, takes=("alpha", "eps", "centered")), 1e-3),
    "adam": (OptimizerFactory(_adam, takes=_ADAM_KW), 1e-3),
    "adamw": (OptimizerFactory(torch.optim.AdamW, weight_decay=0.01, takes=_ADAM_KW), 1e-3),   # AdamW's usual 0.01
    "nesterov_split": (OptimizerFactory(_split_sgd(), takes=("momentum",)), 0.75),  # biases / BN shifts at 64x the lr
}
# the weight decay train() uses when none is given, by optimizer (read from the entries above)
DEFAULT_WEIGHT_DECAY: dict[str, float] = {n: m.weight_decay for n, (m, _) in OPTIMIZERS.items() if m.weight_decay}
# the optimizers that take momentum= (in [0, 1); Nesterov needs it > 0)
MOMENTUM_OPTIMIZERS = tuple(n for n, (m, _) in OPTIMIZERS.items() if "momentum" in m.takes)
MAX_STEP_SIZE = 1e6     # the largest lr / weight decay accepted: beyond it training only diverges or overflows
_NESTEROV = ("nesterov", "nesterov_split")
# train()'s arguments that a callable optimizer factory sets itself
_FACTORY_SETS = ("lr", "weight_decay", "momentum", "optimizer_kw")


def warmup_cosine(t: float, warmup: float = 0.1) -> float:
    """The lr multiplier at progress t in [0, 1): linear from 0 to 1 over `warmup`, then cosine to 0."""
    return t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (1 - warmup)))


# name -> lr multiplier as a function of training progress t in [0, 1)
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda t: 1.0,
    "step": lambda t: 0.1 ** int(t * 3),                       # x0.1 at 1/3 and 2/3 of training
    "exponential": lambda t: 0.01 ** t,                        # decays to 1% by the end
    "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
    "warmup_cosine": warmup_cosine,                           # linear warm-up for 10%, then cosine
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
        """Every epoch's `key` (epoch, train_loss, train_acc, lr, seconds, val_acc with val_data)."""
        keys = list(dict.fromkeys(k for e in self.epochs for k in e))
        if any(key not in e for e in self.epochs):
            raise ValueError(f"no column {key!r} in every epoch of this history; columns: {', '.join(keys)}")
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
    if not isinstance(precision, str) or precision not in PRECISIONS:
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
        self.every = validate.integer("every", every, low=1, what="steps between averages")
        self.decay = validate.number("decay", decay, low=0, high=1)
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


class FreezeAfter:
    """Stop training some parameters part-way: {name: fraction of the steps after which it is frozen}.

    airbench freezes its whitening conv's bias after 3 of ~13 epochs at no cost in accuracy: from then
    on backward no longer needs the gradient of the first conv's input, the largest activation of the
    net (measured here: a cifar_net step 24% faster). At the last step the parameters train again, as
    they would in a model loaded from its checkpoint.
    """

    def __init__(self, model: nn.Module, freeze: dict[str, float]):
        params = dict(model.named_parameters())
        self.when = [(params[name], fraction) for name, fraction in freeze.items()]

    def __call__(self, model: nn.Module, info: StepInfo) -> None:
        for p, fraction in self.when:
            if info.step == info.total_steps:
                p.requires_grad_(True)
            elif p.requires_grad and info.step >= fraction * info.total_steps:
                p.requires_grad_(False)
                p.grad = None                         # optimizers skip it from the next step


def check_freeze(model: nn.Module, freeze) -> dict[str, float] | None:
    """freeze: None, or {parameter name of `model`: fraction of training in (0, 1]}."""
    if freeze is None:
        return None
    if not isinstance(freeze, dict):
        raise TypeError(f"freeze must be None or a dict {{parameter name: fraction of training}}, got {freeze!r}")
    params = dict(model.named_parameters())
    checked = {}
    for name, fraction in freeze.items():
        validate.choice("parameter to freeze", name, params)
        checked[name] = validate.number(f"freeze[{name!r}]", fraction, low=0, high=1, low_open=True,
                                        what="fraction of the steps after which it stops training")
    return checked


def train(model: nn.Module, data: DataOrBatches, *, epochs: int = 5,
          optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
          lr: float | None = None, schedule: str | Callable[[float], float] = "cosine",
          batch_size: int = 128, weight_decay: float | None = None, momentum: float | None = None,
          optimizer_kw: dict | None = None, loss_fn: Callable = cross_entropy, label_smoothing: float = 0.0,
          on_step: Callable | None = None,
          val_data: TensorData | None = None, augment: bool | str = False, lookahead: bool = False,
          freeze: dict[str, float] | None = None, precision: str = "fp32", channels_last: bool | None = None,
          compile: bool = False, seed: int = 0,
          device: str | torch.device | None = None, progress: bool = True) -> History:
    """Train `model` in place on `data` and return its History.

    data: a TensorData (batched here with `batch_size`, shuffled with `seed`) or a re-iterable of
    (x, y) batches with a len() (a list, Batches, CachedTeacher). The lr at progress t is
    lr * schedule(t); "gd" uses the whole set as one batch.
    optimizer: a name in OPTIMIZERS, or a factory `params -> torch.optim.Optimizer` that sets its own
    lr and keywords (`torch.optim.Adam`, `functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)`,
    `lambda p: torch.optim.AdamW(p, lr=3e-4, betas=(0.9, 0.95))`); the schedule then scales its lr,
    and lr / weight_decay / momentum / optimizer_kw must be left unset.
    weight_decay: None = the entry's own default (0, AdamW 0.01); a number, 0 included, is used as is.
    momentum: only for the optimizers that take it (MOMENTUM_OPTIMIZERS), in [0, 1) (Nesterov: (0, 1)).
    optimizer_kw: further keywords of the named optimizer ({"betas": (0.9, 0.95)} for Adam); one it
    does not take is refused, naming what it takes (OPTIMIZERS[name][0].takes).
    precision: 'fp32' | 'bf16' | 'fp16' | 'auto' (autocast; fp16 with a GradScaler, GPU only).
    channels_last: None = NHWC for conv nets on CPU / CUDA (measured faster), True / False to force.
    compile: run the forward pass (and so its backward) through torch.compile: the first steps compile
    (seconds; again for a new batch shape, e.g. a short last batch), later ones may run faster. Needs
    a C++ compiler on the CPU and Triton on CUDA (checked before any work).
    label_smoothing: the default loss's target smoothing ε (targets (1-ε)·onehot + ε/K).
    lookahead: average the weights as training goes (Lookahead above).
    freeze: {parameter name: fraction}: stop training that parameter after that fraction of the steps.
    Every argument is checked (check_train_args) before any work: a bad one raises ValueError or
    TypeError naming it, with the model untouched.
    """
    # 1. validate everything before any work
    a = check_train_args(**locals())
    epochs, batch_size, lr, seed = a["epochs"], a["batch_size"], a["lr"], a["seed"]
    sched = _lookup(SCHEDULES, schedule, "schedule")
    precision, label_smoothing = a["precision"], a["label_smoothing"]
    dev: torch.device = a["device"]

    # 2. device, layout, batches, optimizer, per-step lr schedule
    channels_last = use_channels_last(model, dev) if a["channels_last"] is None else a["channels_last"]
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    torch.manual_seed(seed)                                  # dropout and other randomness
    if isinstance(data, TensorData):
        if optimizer == "gd":
            batch_size = len(data)
        batches: Iterable[Batch] = Batches(data.to(dev), batch_size, seed=seed, augment=augment)
    else:
        batches = data
    if label_smoothing:
        def loss_fn(out, y, x=None):                         # the smoothed default
            return F.cross_entropy(out, y, label_smoothing=label_smoothing)
    if isinstance(optimizer, str):
        opt = OPTIMIZERS[optimizer][0](model.parameters(), lr=lr, weight_decay=a["weight_decay"], **a["optimizer_kw"])
    else:
        opt = optimizer(model.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"the optimizer factory must return a torch.optim.Optimizer, got {type(opt).__name__}")
        lr = opt.param_groups[0]["lr"]
    steps_per_epoch = len(batches)  # type: ignore[arg-type]  # check_train_args: batches have a len()
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: sched(min(s / total, 1.0)))
    scaler = torch.amp.GradScaler(dev.type) if precision == "fp16" else None
    hooks = [h for h in (Lookahead(model) if lookahead else None,
                         FreezeAfter(model, a["freeze"]) if a["freeze"] else None,
                         on_step) if h is not None]
    progress = a["progress"]

    # 3. the loop
    forward = torch.compile(model) if a["compile"] else model     # shares the model's parameters
    history, step = History(), 0
    bar = _progress_bar(total, progress)
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen, lr_now = 0, opt.param_groups[0]["lr"]
        step_losses = []
        for xb, yb in batches:
            xb, yb = _layout(xb.to(dev, non_blocking=True), channels_last), yb.to(dev, non_blocking=True)
            with autocast(precision, dev):
                out = forward(xb)
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
        if not step_losses:
            if bar is not None:
                bar.close()
            raise ValueError(f"data gave no batches in epoch {epoch + 1} although len(data) is {steps_per_epoch}: "
                             f"pass a re-iterable (a list, Batches), not a one-shot iterator or generator")
        record = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(seen, 1),
                  "train_acc": 100.0 * correct.item() / max(seen, 1), "lr": lr_now,
                  "seconds": time.perf_counter() - t0}
        if val_data is not None:
            record["val_acc"] = evaluate(model, val_data, device=dev)["accuracy"]
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


def _train_arg_names() -> list[str]:
    return [n for n in inspect.signature(train).parameters if n not in ("model", "data")]




def check_data(data, name: str = "data") -> TensorData:
    """`data` as a non-empty TensorData, else TypeError / ValueError naming it."""
    if not isinstance(data, TensorData):
        raise TypeError(f"{name} must be a TensorData (load_dataset(...)), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{name} is empty (0 examples); it needs at least one example")
    return data


def check_shape(name: str, shape) -> tuple[int, ...]:
    """`shape` (one example's shape, e.g. (1, 28, 28)) as a non-empty tuple of integers >= 1, else ValueError."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise ValueError(f"{name} must be a tuple of sizes >= 1 such as (1, 28, 28), got {shape!r}")
    dims = list(shape)
    if not dims:
        raise ValueError(f"{name} must be a tuple of sizes >= 1 such as (1, 28, 28), got {shape!r}")
    return tuple(validate.integer(f"{name}[{i}]", d, low=1, what=f"in_shape {shape!r}") for i, d in enumerate(dims))


def _check_batches(model: nn.Module, data) -> None:
    """train()'s data: a non-empty TensorData that fits the model, or a re-iterable of batches with a len()."""
    if isinstance(data, TensorData):
        check_data(data)
        check_input_shape(model, data)
        return
    if isinstance(data, Iterator):
        raise TypeError(f"data is a one-shot iterator ({type(data).__name__}): every epoch iterates it again, "
                        f"so pass a re-iterable with a len() (a list of (x, y) batches, Batches, a CachedTeacher)")
    if isinstance(data, (str, bytes, dict, torch.Tensor, np.ndarray)) or not isinstance(data, Iterable) \
            or not isinstance(data, Sized):
        raise TypeError(f"data must be a TensorData or a re-iterable of (x, y) batches with a len() "
                        f"(a list, Batches, a CachedTeacher), got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("data has no batches (len(data) is 0); it needs at least one (x, y) batch")
    if isinstance(data, (list, tuple)):
        bad = next((i for i, b in enumerate(data) if not (isinstance(b, (list, tuple)) and len(b) == 2
                                                          and all(isinstance(t, torch.Tensor) for t in b))), None)
        if bad is not None:
            raise TypeError(f"data[{bad}] must be an (x, y) pair of tensors, got {type(data[bad]).__name__}")


def check_train_args(model: nn.Module, data, **train_kw) -> dict:
    """The arguments of train(model, data, **train_kw), checked and resolved as train() uses them
    (lr, weight_decay, momentum, precision and device filled in), without any work. A bad one
    raises ValueError / TypeError naming it. train() calls it first; so do functions that change
    a model before they train it (prune_oneshot, prune_iterative, prune_gradual)."""
    names = _train_arg_names()
    for k in train_kw:
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            raise TypeError(f"train() has no argument {k!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                            f"it takes: {', '.join(names)}")
    bound = inspect.signature(train).bind(model, data, **train_kw)
    bound.apply_defaults()
    a = dict(bound.arguments)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    a["epochs"] = validate.integer("epochs", a["epochs"], low=1, what="passes over the data")
    a["batch_size"] = validate.integer("batch_size", a["batch_size"], low=1)
    _check_optimizer(a)
    sched = _lookup(SCHEDULES, a["schedule"], "schedule")
    for t in (0.0, 0.5, 0.999):                      # a callable schedule must give usable multipliers
        validate.number(f"schedule({t})", sched(t), low=0, what="the lr multiplier at that progress")
    if not callable(a["loss_fn"]):
        raise TypeError(f"loss_fn must be a callable (output, y, x) -> loss, got {a['loss_fn']!r}")
    a["label_smoothing"] = validate.number("label_smoothing", a["label_smoothing"], low=0, high=1, high_open=True)
    if a["label_smoothing"] and a["loss_fn"] is not cross_entropy:
        raise ValueError("label_smoothing applies to the default loss; put it inside your loss_fn instead")
    if a["on_step"] is not None and not callable(a["on_step"]):
        raise TypeError(f"on_step must be None or a callable (model, StepInfo) -> None, got {a['on_step']!r}")
    check_augment(a["augment"])
    a["lookahead"] = validate.flag("lookahead", a["lookahead"])
    a["freeze"] = check_freeze(model, a["freeze"])
    a["channels_last"] = validate.flag("channels_last", a["channels_last"], none_ok=True)
    a["compile"] = validate.flag("compile", a["compile"])
    a["progress"] = validate.flag("progress", a["progress"])
    a["seed"] = check_seed(a["seed"])
    a["device"] = pick_device(a["device"])
    a["precision"] = resolve_precision(a["precision"], a["device"])
    if a["compile"]:
        check_compile(a["device"])
    _check_batches(model, data)
    if a["val_data"] is not None:
        check_data(a["val_data"], "val_data")
        check_input_shape(model, a["val_data"])
    return a


def check_compile(device: torch.device) -> None:
    """torch.compile's default backend (inductor) can build kernels for `device`, else ValueError: it writes
    C++ on the CPU (a compiler must be on PATH; $CXX is used when set) and Triton kernels on CUDA."""
    if device.type == "cpu":
        found = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)]
        if not found:
            raise ValueError("compile=True on the CPU needs a C++ compiler (g++, c++ or clang++ on PATH, or $CXX) "
                             "for torch.compile's inductor backend, and none was found: install one, or compile=False")
    elif device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            raise ValueError("compile=True on CUDA needs Triton (pip install triton), which is not installed; "
                             "or compile=False")
    else:
        raise ValueError(f"compile=True works on the CPU and on CUDA, not on device {str(device)!r}; use compile=False")


def _check_optimizer(a: dict) -> None:
    """train()'s optimizer, lr, weight_decay, momentum and optimizer_kw, checked and filled in (in `a`)."""
    optimizer = a["optimizer"]
    if isinstance(optimizer, OptimizerFactory):
        name = next((n for n, (m, _) in OPTIMIZERS.items() if m is optimizer), None)
        raise ValueError(f"optimizer: a registry entry's factory takes (params, lr); pass its name "
                         f"(optimizer={name!r}) or a factory params -> torch.optim.Optimizer")
    if callable(optimizer):                          # a factory params -> optimizer sets all of them itself
        for k in _FACTORY_SETS:
            if a[k] is not None:
                raise ValueError(f"{k}= goes into your optimizer factory (optimizer={optimizer!r} sets it), "
                                 f"not into train(); got {k}={a[k]!r}")
        a["optimizer_kw"] = {}
        return
    make, default_lr = _lookup(OPTIMIZERS, optimizer, "optimizer")
    a["lr"] = validate.number("lr", default_lr if a["lr"] is None else a["lr"], low=0, high=MAX_STEP_SIZE,
                              low_open=True, what="larger ones only diverge, or overflow float32")
    wd = a["weight_decay"]
    a["weight_decay"] = make.weight_decay if wd is None else \
        validate.number("weight_decay", wd, low=0, high=MAX_STEP_SIZE, what="larger ones only diverge")
    kw = a["optimizer_kw"] or {}
    if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
        raise TypeError(f"optimizer_kw must be None or a dict of keyword -> value, got {kw!r}")
    if a["momentum"] is not None:
        if "momentum" in kw:
            raise ValueError("momentum is given twice (momentum= and optimizer_kw['momentum']); give it once")
        kw = {**kw, "momentum": a["momentum"]}
    for k in kw:
        if k in ("lr", "weight_decay"):
            raise ValueError(f"optimizer_kw[{k!r}]: pass {k}= to train() itself")
        if k not in make.takes:
            users = [n for n, (m, _) in OPTIMIZERS.items() if k in m.takes]
            where = f"{k}= applies to {', '.join(users)}" if users else f"no registered optimizer takes {k}="
            raise ValueError(f"optimizer {optimizer!r} takes no {k}= (it takes {_takes_text(make)}); {where}; "
                             f"got {k}={kw[k]!r}")
    if "momentum" in kw:
        kw["momentum"] = validate.number("momentum", kw["momentum"], low=0, high=1, low_open=optimizer in _NESTEROV,
                                         high_open=True, what=f"for {optimizer!r}")
        a["momentum"] = kw["momentum"]
    try:                                             # the values too: torch checks them on a throwaway tensor
        make([torch.zeros(2, 2, requires_grad=True)], lr=a["lr"], weight_decay=a["weight_decay"], **kw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"optimizer {optimizer!r} refuses optimizer_kw={kw!r}: {e}") from None
    a["optimizer_kw"] = kw


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_data(data)
    batch_size = validate.integer("batch_size", batch_size, low=1)
    views = _lookup(TTA, tta, "tta")
    device = pick_device(device) if device is not None else model_device(model)
    channels_last = use_channels_last(model, device)
    model.eval()
    x = data.x
    outs = [views(model, _layout(x[i:i + batch_size].to(device), channels_last)).float().cpu()
            for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def evaluate(model: nn.Module, data: TensorData, *, batch_size: int = 1024, tta: str = "none",
             device: str | torch.device | None = None) -> dict:
    """{"accuracy": % correct, "loss": mean cross-entropy, "errors": count wrong, "n": examples}."""
    check_data(data)
    logits = predict(model, data, batch_size=batch_size, tta=tta, device=device)
    y = data.y.cpu()
    wrong = int((logits.argmax(1) != y).sum())
    return {"accuracy": 100.0 * (1 - wrong / len(y)), "loss": float(F.cross_entropy(logits, y)),
            "errors": wrong, "n": len(y)}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Checkpoints: train once, load afterwards
# ---------------------------------------------------------------------------------------------

def save_model(model: nn.Module, path, meta: dict | None = None) -> None:
    """Save the state dict (+ JSON-able meta) atomically; nothing is written when an argument is bad."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if meta is not None and not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict (or None), got {type(meta).__name__}")
    try:
        text = json.dumps(meta or {})
    except (TypeError, ValueError) as e:
        raise TypeError(f"meta must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from None
    atomic_torch_save({"state_dict": model.state_dict(), "meta": text}, path)


def load_state(path) -> tuple[dict, dict]:
    """(state_dict, meta) from a file written by save_model, loaded with weights_only=True.

    The loaded structure is checked: a dict with "state_dict" (a dict of name -> tensor) and an
    optional "meta" (a JSON object, as save_model writes it); anything else raises ValueError."""
    blob = safe_torch_load(path)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(f"{path} is not a mokit checkpoint (no state_dict)")
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        bad = type(state).__name__ if not isinstance(state, dict) else \
            next(f"{k!r}: {type(v).__name__}" for k, v in state.items()
                 if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        raise ValueError(f"{path} is not a mokit checkpoint: its state_dict must be a dict of name -> tensor, "
                         f"got {bad}")
    meta = blob.get("meta", "{}")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a mokit checkpoint: its meta must be a JSON object ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a mokit checkpoint: its meta must be a JSON object (a dict), "
                         f"got {type(meta).__name__}")
    return state, meta
