"""Compression that searches itself: a `mokit.search` space of compression settings, one fixed pipeline
that applies a setting, and an objective that measures what it bought (accuracy, file size, latency).

    space = compression_space()                    # width, distill, sparsity, num_bits: a mokit.search space
    objective = CompressionObjective(teacher, train_data, val_data, model="lenet5")
    reference = objective(BASELINE, 1)             # the teacher itself, measured the same way
    result = search.optuna_search(objective, space, budget=1, n_trials=100, sampler="nsga2",
                                  objectives=list(OBJECTIVES.items()), seconds=120)
    front = nas.trial_front(result.trials, OBJECTIVES)              # accuracy x size x latency
    i = fastest_within([t.metrics for t in ok], reference["val_acc"], 1.0)   # the fastest within 1 point

The pipeline (`compress`), always in this order, each step skipped when its setting says so:
1. student: width w < 1 builds the model's architecture with every layer w times as wide and trains it
   `budget` epochs, by distillation from the teacher (distill=True: kd_loss on soft targets, the teacher's
   logits computed once) or on the labels alone; w = 1 starts from (a copy of) the teacher.
2. channels: `prune.prune_channels` removes `sparsity` of every layer's units (the layers really shrink),
   then `finetune_epochs` epochs of fine-tuning (by distillation when distill=True).
3. int8: num_bits=8 converts the model to int8 with PyTorch's x86 kernels (`quantize.quantize_int8`, or
   FX graph mode for nets eager mode cannot take), calibrated on training images; num_bits=32 keeps
   float32, in channels_last for conv nets (their fastest CPU layout).
Every model comes back as a CPU model in eval mode, as it would be deployed. `measure` gives its accuracy,
the bytes of its saved state dict (`quantize.file_bytes`) and its median latency per batch of
`latency_batch` images on the CPU with `threads` threads (`metrics.measure_latency`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from . import distill, prune, quantize, search, validate
from .data import TensorData
from .metrics import measure_latency
from .models import create_model, whiten_init
from .search import choice
from .train import check_data, check_seed, evaluate, pick_device, predict, seed_everything, train
from .zoo import recipe_train_kw

DECISIONS = ("width", "distill", "sparsity", "num_bits")     # every config sets all four
BITS = (8, 32)                     # int8 has real kernels here; float32 is the uncompressed format
MAX_SPARSITY = 0.95                # channels removed per layer, at most (every layer keeps a few units)
BASELINE = {"width": 1.0, "distill": False, "sparsity": 0.0, "num_bits": 32}   # the teacher as it is
OBJECTIVES = {"val_acc": True, "bytes": False, "latency_ms": False}          # name -> maximize


# ---------------------------------------------------------------------------------------------
# 1. The models it knows: how to build a student of width w, how to train it, how to make it int8
# ---------------------------------------------------------------------------------------------

def _units(n: int, width: float) -> int:
    return max(1, round(n * width))


def _lenet5(width: float, data: TensorData) -> nn.Module:
    """LeNet-5 with conv widths (20, 50) and hidden 500, each times `width`."""
    return create_model("lenet5", channels=(_units(20, width), _units(50, width)), hidden=_units(500, width),
                        in_shape=data.shape, num_classes=data.num_classes)


def _cifar_net(width: float, data: TensorData) -> nn.Module:
    """The fast CIFAR net with block widths (32, 64, 128) times `width`, its first conv whitened on the data."""
    model = cast(nn.Sequential, create_model("cifar_net", widths=tuple(_units(c, width) for c in (32, 64, 128)),
                         in_shape=data.shape, num_classes=data.num_classes))
    return whiten_init(model, data.x[:5000].to(next(model.parameters()).device))


@dataclass(frozen=True)
class Family:
    """What compress needs to know about one registry model."""
    build: Callable[[float, TensorData], nn.Module]     # (width, train data) -> a fresh student
    student_kw: dict                                    # train() keywords for a student (epochs: the budget)
    finetune_kw: dict                                   # train() keywords after pruning
    int8: Callable[..., nn.Module]                      # (model, data, num_batches=) -> int8 model


_CIFAR_RECIPE = {k: v for k, v in recipe_train_kw("cifar_net").items()
                 if k not in ("epochs", "label_smoothing", "augment")}   # short runs: no smoothing, no augmentation
FAMILIES: dict[str, Family] = {
    # notebook 10's distillation settings (Adam 3e-3 for a student, 1e-3 to fine-tune, as notebook 03)
    "lenet5": Family(_lenet5, {"optimizer": "adam", "lr": 3e-3, "schedule": "cosine", "batch_size": 128},
                     {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine", "batch_size": 128},
                     quantize.quantize_int8),
    # the zoo's fast CIFAR recipe for a student; notebook 03's Nesterov fine-tune after pruning
    "cifar_net": Family(_cifar_net, _CIFAR_RECIPE,
                        {"optimizer": "nesterov_split", "lr": 0.1, "weight_decay": 0.00204, "schedule": "cosine",
                         "batch_size": 256, "precision": "auto"},
                        quantize.quantize_int8_fx),
}


def check_model_name(model) -> Family:
    return validate.choice("model", model, FAMILIES)


# ---------------------------------------------------------------------------------------------
# 2. The space and its configs
# ---------------------------------------------------------------------------------------------

def _width(v) -> float:
    return validate.number("width", v, low=0, high=1, low_open=True, what="a fraction of every layer's units")


def _sparsity(v) -> float:
    return validate.number("sparsity", v, low=0, high=MAX_SPARSITY, what="fraction of each layer's channels removed")


def _bits(v) -> int:
    return validate.choice("num_bits", validate.integer("num_bits", v), BITS)


def _distill(v) -> bool:
    return validate.flag("distill", v)


CHECKS: dict[str, Callable] = {"width": _width, "distill": _distill, "sparsity": _sparsity, "num_bits": _bits}


def _options(name: str, values) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of options, got {values!r}")
    return tuple(CHECKS[name](v) for v in values)


def compression_space(*, widths: Sequence[float] = (1.0, 0.5),
                      distill: Sequence[bool] = (True, False), sparsities: Sequence[float] = (0.0, 0.5, 0.75),
                      bits: Sequence[int] = (8, 32)) -> dict:
    """The search space {width, distill, sparsity, num_bits}, one choice each (a mokit.search space)."""
    options = {"width": _options("width", widths), "distill": _options("distill", distill),
               "sparsity": _options("sparsity", sparsities), "num_bits": _options("num_bits", bits)}
    return search.validate_space({name: choice(*values) for name, values in options.items()})


def check_config(config, space: dict | None = None) -> dict:
    """config as compress takes it: a dict setting each of DECISIONS to an allowed value (and, with a
    space, to one of the space's values), else ValueError / TypeError naming the setting and the value."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict of {', '.join(DECISIONS)}, got {type(config).__name__}")
    unknown = [k for k in config if k not in DECISIONS]
    if unknown:
        raise ValueError(f"config has unknown settings {unknown}; a compression config sets {', '.join(DECISIONS)}")
    missing = [k for k in DECISIONS if k not in config]
    if missing:
        raise ValueError(f"config misses {missing}; a compression config sets {', '.join(DECISIONS)}")
    out = {k: CHECKS[k](config[k]) for k in DECISIONS}
    if space is not None:
        for k, v in out.items():
            p = space.get(k)
            inside = p is not None and (v in p.options if p.kind == "choice" else p.low <= v <= p.high)
            if not inside:
                allowed = "not in the space" if p is None else (
                    ", ".join(map(repr, p.options)) if p.kind == "choice" else f"{p.low:g}..{p.high:g}")
                raise ValueError(f"config {k}={config[k]!r} is outside the search space ({k}: {allowed})")
    return out


# ---------------------------------------------------------------------------------------------
# 3. The pipeline: student -> channels -> int8
# ---------------------------------------------------------------------------------------------

def _check_teacher(teacher, data: TensorData) -> nn.Module:
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a trained nn.Module, got {type(teacher).__name__}")
    with torch.no_grad():
        try:
            was = teacher.training
            teacher.eval()
            out = teacher(data.x[:2].to(next(teacher.parameters()).device))
            teacher.train(was)
        except (RuntimeError, StopIteration) as e:
            raise ValueError(f"the teacher does not run on this data's examples {data.shape}: {e}") from None
    if out.shape != (min(2, len(data)), data.num_classes):
        raise ValueError(f"the teacher gives outputs of shape {tuple(out.shape[1:])}, the data has "
                         f"{data.num_classes} classes")
    return teacher


def deploy(model: nn.Module, num_bits: int, data: TensorData, *, int8: Callable[..., nn.Module],
           calib_batches: int = 4) -> nn.Module:
    """The model as it runs on the CPU: int8 through `int8(model, data, num_batches=calib_batches)`, or a
    float32 copy (in channels_last, input included, for conv nets). Eval mode either way."""
    model.eval()
    if num_bits == 8:
        return int8(model, data, num_batches=calib_batches).eval()
    fp32 = copy.deepcopy(model).cpu().eval()
    if any(isinstance(m, nn.Conv2d) for m in fp32.modules()):
        return quantize.ChannelsLastInput(fp32.to(memory_format=torch.channels_last)).eval()
    return fp32


def _loss_and_data(config: dict, teacher: nn.Module, data: TensorData, logits, batch_size: int, seed: int):
    """(train data, train() keywords) for one training run: a CachedTeacher and kd_loss when distilling."""
    if not config["distill"]:
        return data, {"batch_size": batch_size}
    cache = distill.CachedTeacher(teacher, data, batch_size=batch_size, seed=seed, logits=logits)
    return cache, {"loss_fn": distill.distill_loss(cache, temperature=config["temperature"],
                                                   alpha=config["alpha"])}


def compress(config: dict, teacher: nn.Module, data: TensorData, *, model: str, budget: int = 1,
             finetune_epochs: int = 1, temperature: float = 4.0, alpha: float = 0.9, calib_batches: int = 4,
             seed: int = 0, device=None, logits: torch.Tensor | None = None) -> nn.Module:
    """The teacher compressed by `config` (see the module's docstring for the three steps): a CPU model in
    eval mode. budget: the student's training epochs; logits: the teacher's logits over `data` (N, K),
    if already computed. Every argument is checked before any work."""
    config = check_config(config)
    family = check_model_name(model)
    check_data(data)
    _check_teacher(teacher, data)
    search.check_budget(budget)
    finetune_epochs = validate.integer("finetune_epochs", finetune_epochs, low=0, high=search.MAX_EPOCHS)
    kd = {"temperature": distill.check_temperature(temperature), "alpha": distill.check_alpha(alpha)}
    calib_batches = validate.integer("calib_batches", calib_batches, low=1, high=10_000)
    seed = check_seed(seed)
    device = pick_device(device)
    shape = (len(data), data.num_classes)
    if logits is not None and (not isinstance(logits, torch.Tensor) or tuple(logits.shape) != shape):
        raise ValueError(f"logits must be the teacher's logits over data, shape ({len(data)}, {data.num_classes}), "
                         f"got {getattr(logits, 'shape', type(logits).__name__)}")
    setting = {**config, **kd}
    fit = {"device": device, "progress": False}
    # 1. the student: a narrower copy of the architecture trained for `budget` epochs, or the teacher itself
    if config["width"] < 1:
        seed_everything(seed)
        student = family.build(config["width"], data).to(device)
        kw = {k: v for k, v in family.student_kw.items() if k != "batch_size"}
        train_data, how = _loss_and_data(setting, teacher, data, logits, family.student_kw["batch_size"], seed)
        train(student, train_data, epochs=budget, seed=seed, **kw, **how, **fit)
    else:
        student = copy.deepcopy(teacher).to(device)
    # 2. channels removed for real (every layer but the output and a frozen one), then a short fine-tune
    if config["sparsity"] > 0:
        student = prune.prune_channels(cast(nn.Sequential, student), config["sparsity"])   # checked there
        if finetune_epochs:
            kw = {k: v for k, v in family.finetune_kw.items() if k != "batch_size"}
            train_data, how = _loss_and_data(setting, teacher, data, logits, family.finetune_kw["batch_size"], seed + 1)
            train(student, train_data, epochs=finetune_epochs, seed=seed + 1, **kw, **how, **fit)
    # 3. int8 kernels, or float32 as deployed
    return deploy(student, config["num_bits"], data, int8=family.int8, calib_batches=calib_batches)


# ---------------------------------------------------------------------------------------------
# 4. Measuring, the objective, the pick
# ---------------------------------------------------------------------------------------------

def count_weights(model: nn.Module) -> int:
    """Elements of every weight and bias, float or int8 (torch.ao's int8 modules keep theirs packed)."""
    total = 0
    for m in model.modules():
        for name in ("weight", "bias"):
            t = getattr(m, name, None)
            if callable(t) and not isinstance(t, torch.Tensor):        # an int8 module: weight() unpacks
                t = t()
            if isinstance(t, torch.Tensor):
                total += t.numel()
    return total


def int8_layers(model: nn.Module) -> int:
    """Layers that compute in int8: torch.ao's quantized modules with weights (fused ones included)."""
    return sum(1 for m in model.modules() if type(m).__module__.startswith(("torch.ao.nn.quantized",
                                                                          "torch.ao.nn.intrinsic.quantized"))
               and callable(getattr(m, "weight", None)))


def measure(model: nn.Module, data: TensorData, *, latency_batch: int = 256, threads: int | None = 1,
            repeats: int = 10) -> dict:
    """{"val_acc": accuracy % on data, "bytes": saved state dict, "latency_ms": median ms per batch of
    latency_batch on the model's device (the CPU for a deployed model), "weights", "int8_layers"}."""
    check_data(data)
    latency = measure_latency(model, data.shape, batch_size=latency_batch, repeats=repeats, threads=threads)
    return {"val_acc": evaluate(model, data)["accuracy"], "bytes": quantize.file_bytes(model),
            "latency_ms": latency["ms"], "weights": count_weights(model), "int8_layers": int8_layers(model)}


class CompressionObjective:
    """objective(config, budget) -> measure(compress(config, ...)) for mokit.search; budget: student epochs.

    State that outlives a trial: the teacher's logits over train_data (computed once, for every student),
    and each trial's compressed model (`model(config, budget)` gives it back, compressing again only for a
    trial read from an earlier search's log).
    """

    def __init__(self, teacher: nn.Module, train_data: TensorData, val_data: TensorData, *, model: str,
                 space: dict | None = None, finetune_epochs: int = 1, temperature: float = 4.0, alpha: float = 0.9,
                 calib_batches: int = 4, latency_batch: int = 256, threads: int | None = 1, repeats: int = 10,
                 seed: int = 0, device=None):
        check_model_name(model)
        check_data(train_data, "train_data")
        check_data(val_data, "val_data")
        _check_teacher(teacher, train_data)
        if space is not None:
            search.validate_space(space)
            extra = [k for k in space if k not in DECISIONS]
            if extra:
                raise ValueError(f"space has decisions {extra} compress does not know; it takes {', '.join(DECISIONS)}")
        validate.integer("finetune_epochs", finetune_epochs, low=0, high=search.MAX_EPOCHS)
        distill.check_temperature(temperature)
        distill.check_alpha(alpha)
        validate.integer("calib_batches", calib_batches, low=1, high=10_000)
        validate.integer("latency_batch", latency_batch, low=1, high=2 ** 16)
        if threads is not None:
            validate.integer("threads", threads, low=1, high=4096)
        validate.integer("repeats", repeats, low=1, high=10_000)
        pick_device(device)
        self.teacher, self.train_data, self.val_data, self.space = teacher, train_data, val_data, space
        self.compress_kw = dict(model=model, finetune_epochs=finetune_epochs, temperature=temperature, alpha=alpha,
                                calib_batches=calib_batches, seed=check_seed(seed), device=device)
        self.measure_kw: dict = {"latency_batch": latency_batch, "threads": threads, "repeats": repeats}
        self.logits = predict(teacher, train_data)          # (N, K): the one teacher pass every student shares
        self.models: dict[str, nn.Module] = {}

    def model(self, config: dict, budget: int) -> nn.Module:
        """The compressed model of (config, budget): this search's, or compressed again (same seed)."""
        key = search.trial_key(check_config(config), budget)
        if key not in self.models:
            self.models[key] = compress(config, self.teacher, self.train_data, budget=budget, logits=self.logits,
                                        **self.compress_kw)
        return self.models[key]

    def __call__(self, config: dict, budget: int) -> dict:
        check_config(config, self.space if config != BASELINE else None)
        t0 = time.perf_counter()
        compressed = self.model(config, budget)
        seconds = time.perf_counter() - t0
        return {**measure(compressed, self.val_data, **self.measure_kw), "compress_seconds": seconds}


def fastest_within(points: Sequence[Mapping], baseline_acc: float, max_drop: float = 1.0, *,
                   metric: str = "val_acc", latency: str = "latency_ms") -> int | None:
    """Index of the fastest point (lowest `latency`) whose `metric` is at least baseline_acc - max_drop;
    equal latencies: the more accurate one, then the first. None when no point qualifies; a point
    with NaN in either is never picked."""
    baseline_acc = validate.number("baseline_acc", baseline_acc)
    max_drop = validate.number("max_drop", max_drop, low=0, what="accuracy points one may lose")
    ok = [i for i, p in enumerate(points)
          if not (math.isnan(p[metric]) or math.isnan(p[latency])) and p[metric] >= baseline_acc - max_drop]
    return min(ok, key=lambda i: (points[i][latency], -points[i][metric], i)) if ok else None
