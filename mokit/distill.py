"""Knowledge distillation as `loss_fn`s for the one `train` loop (Hinton et al. 2015; FitNets).

    loss = distill_loss(teacher, temperature=4, alpha=0.9)         # teacher(x) every step
    train(student, data, loss_fn=loss)
    cache = CachedTeacher(teacher, data)                            # teacher run once, up front
    train(student, cache, loss_fn=distill_loss(cache, temperature=4, alpha=0.9))
    cache = CachedTeacher(teacher, data, augment="flip_translate")  # logits per augmented batch,
    cache.rewind()                                                  # kept for the next student

Soft targets at temperature T: p_i = softmax(v / T)_i for teacher logits v, q_i = softmax(z / T)_i
for student logits z. The loss mixes them with the hard labels y:

    L = alpha * T^2 * KL(p || q) + (1 - alpha) * CE(z, y)

T^2 keeps the soft term's gradient, T (q - p), the same size as T changes; as T grows it tends to
(z - v) / K for zero-mean logits: distillation becomes matching logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .data import Batches, TensorData, check_augment
from .train import (
    autocast,
    check_data,
    check_seed,
    check_shape,
    model_device,
    predict,
    resolve_precision,
)

# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1e6


def check_temperature(temperature) -> float:
    """temperature as a float in [0.01, 1e6], else ValueError naming the value (far below 0.01, logits / T
    overflow float32 and the softmax becomes NaN; at 1e6 the soft targets are already uniform)."""
    return validate.number("temperature", temperature, low=MIN_TEMPERATURE, high=MAX_TEMPERATURE)


def check_alpha(alpha) -> float:
    """alpha (weight of the soft-target term) as a float in [0, 1], else ValueError."""
    return validate.number("alpha", alpha, low=0, high=1, what="weight of the soft targets")


def _check_same_classes(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"the teacher outputs {tuple(teacher_logits.shape)} but the student "
                         f"{tuple(student_logits.shape)}: teacher and student must have the same "
                         f"number of outputs (classes)")


# ---------------------------------------------------------------------------------------------
# The losses, written out
# ---------------------------------------------------------------------------------------------


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p = softmax(logits / T), row-wise; (N, K) -> (N, K). Higher T -> softer."""
    return F.softmax(logits / check_temperature(temperature), dim=1)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(p || q) = T^2 * mean_n sum_i p_i (log p_i - log q_i), p, q at temperature T."""
    t = check_temperature(temperature)
    _check_same_classes(student_logits, teacher_logits)
    log_p = F.log_softmax(teacher_logits.detach() / t, dim=1)      # (N, K) teacher
    log_q = F.log_softmax(student_logits / t, dim=1)                # (N, K) student
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    return t * t * kl


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, *,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """alpha * T^2 * KL(p || q) + (1 - alpha) * CE(z, y) - Hinton et al. 2015."""
    alpha = check_alpha(alpha)
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    if alpha == 1:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, y)


# ---------------------------------------------------------------------------------------------
# Where the teacher's logits come from: the teacher itself, or a cache of them
# ---------------------------------------------------------------------------------------------


class CachedTeacher:
    """The teacher's logits for every training batch, computed once; serves them per batch.

    Use it as train()'s data *and* as the teacher of distill_loss: it yields exactly the batches of
    `Batches(data, batch_size, seed=seed, augment=augment)` (what `train(model, data, seed=seed,
    augment=augment)` draws), remembers which examples the batch in use holds, and the loss looks
    up that batch's logits (checking the labels match). So a student trained from scratch with
    the same seed sees the same batches, and the teacher's cost is paid once:
    - without augmentation the teacher runs once over `data` up front (`logits`, (N, K));
    - with augmentation every epoch's images differ, so each augmented batch's logits are computed
      the first time the loss asks for them and kept; `rewind()` replays the same batches from the
      first epoch, so further students (other seeds) reuse them instead of running the teacher.
    """

    def __init__(self, teacher: nn.Module | Callable, data: TensorData, *, batch_size: int = 128,
                 seed: int = 0, augment: bool | str = False, precision: str = "fp32",
                 logits: torch.Tensor | None = None):
        check_data(data)
        batch_size = validate.integer("batch_size", batch_size, low=1)
        self.augment = check_augment(augment)
        self.data, self.batch_size, self.seed = data, min(batch_size, len(data)), check_seed(seed)
        self.precision = resolve_precision(precision, data.device)
        if isinstance(teacher, CachedTeacher):
            raise TypeError("teacher must be a model or a callable (x, y) -> logits, not another CachedTeacher "
                            "(its logits belong to its own batches): pass its logits= instead")
        self.teacher = teacher_logits_fn(teacher)
        if logits is not None and self.augment != "none":
            raise ValueError("logits can be given only without augmentation (augmented images change every epoch)")
        if logits is not None:
            _check_logits(logits, len(data), "logits")
        if self.augment == "none":
            if logits is None:
                logits = _check_logits(self._teacher_pass(teacher), len(data), "the teacher's logits")
            self.logits: torch.Tensor | None = logits.to(data.device)            # (N, K)
        else:
            self.logits = None
        self.augmented_logits: list[list[torch.Tensor]] = []        # [epoch][step] -> (B, K)
        self.teacher_batches = 0                                     # teacher passes over augmented batches
        self.rewind()

    def _teacher_pass(self, teacher) -> torch.Tensor:
        """The teacher's logits over `data` in order: predict() for a model, batch by batch for a callable."""
        if isinstance(teacher, nn.Module):
            return predict(teacher, self.data)
        with torch.no_grad():
            return torch.cat([self.teacher(x, y).float() for x, y in self.data.batches(1024, shuffle=False)])

    def rewind(self) -> CachedTeacher:
        """Start over: the next pass serves the first epoch's batches again (cached logits are kept)."""
        # Batches over (images, example indices): its labels tell which examples each batch holds
        index_data = replace(self.data, y=torch.arange(len(self.data), device=self.data.device))
        self._batches = Batches(index_data, self.batch_size, seed=self.seed, augment=self.augment)
        self._epoch = -1
        self._batch: tuple[int, torch.Tensor, torch.Tensor] | None = None   # (step, indices, labels)
        return self

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._epoch += 1
        for step, (x, idx) in enumerate(self._batches):
            self._batch = (step, idx, self.data.y[idx])
            yield x, self.data.y[idx]
        self._batch = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cached teacher logits of the batch (x, y) this cache yielded last."""
        if self._batch is None:
            raise RuntimeError("CachedTeacher has no current batch: pass the cache itself as train()'s data")
        step, idx, labels = self._batch
        if len(y) != len(idx) or not torch.equal(y, labels.to(y.device)):
            raise RuntimeError("the batch being trained on is not the one the cache yielded last: "
                               "pass the cache itself as train()'s data")
        if self.logits is not None:
            return self.logits[idx].to(x.device)
        while len(self.augmented_logits) <= self._epoch:
            self.augmented_logits.append([])
        epoch = self.augmented_logits[self._epoch]
        if step == len(epoch):                                      # first time this batch is served
            with torch.no_grad(), autocast(self.precision, x.device):
                epoch.append(self.teacher(x, y).float())
            self.teacher_batches += 1
        return epoch[step].to(x.device)


def _check_logits(logits, n: int, name: str) -> torch.Tensor:
    """logits as a finite float tensor (n, K), else ValueError / TypeError naming them."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (N, num_classes), got {type(logits).__name__}")
    if logits.dim() != 2 or len(logits) != n or not logits.is_floating_point():
        raise ValueError(f"{name} must be a float tensor of shape ({n}, num_classes) (one row per example), "
                         f"got {logits.dtype} of shape {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"{name} must be finite: they hold NaN or inf")
    return logits


def teacher_logits_fn(teacher: nn.Module | CachedTeacher | Callable) -> Callable:
    """(x, y) -> teacher logits: a CachedTeacher as is, a model run in eval mode without gradients."""
    if isinstance(teacher, CachedTeacher):
        return teacher
    if isinstance(teacher, nn.Module):
        teacher.eval()

        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return teacher(x)
        return run
    if callable(teacher):
        return teacher
    raise TypeError(f"teacher must be an nn.Module, a CachedTeacher or a callable, got {type(teacher).__name__}")


def distill_loss(teacher: nn.Module | CachedTeacher | Callable, *, temperature: float = 4.0,
                 alpha: float = 0.9) -> Callable:
    """A train() loss_fn(output, y, x) = kd_loss(output, teacher(x), y, temperature, alpha)."""
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    logits_of = teacher_logits_fn(teacher)

    def loss_fn(output: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return kd_loss(output, logits_of(x, y), y, temperature=temperature, alpha=alpha)
    return loss_fn


# ---------------------------------------------------------------------------------------------
# Hints (FitNets, Romero et al. 2015): match an inner layer of the teacher through an adapter
# ---------------------------------------------------------------------------------------------


def _layer(model: nn.Module, layer: str, name: str) -> nn.Module:
    """The submodule of `model` called `layer`, else ValueError listing the layers."""
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or not layer or layer not in modules:
        raise ValueError(f"no layer {layer!r} in {type(model).__name__} ({name}); layers: "
                         f"{', '.join(n for n in modules if n)}")
    return modules[layer]


def penultimate(model: nn.Module) -> str:
    """The name of the layer whose output the classifier reads - the usual FitNets hint layer: the last
    leaf module before the final Linear, skipping shape-only layers (Flatten, Dropout, Identity).
    ValueError if the model has no such layer."""
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if n and not list(m.children())]           # leaves, in order
    linears = [i for i, n in enumerate(names) if isinstance(modules[n], nn.Linear)]
    before = [n for n in names[:linears[-1]] if not isinstance(modules[n], (nn.Flatten, nn.Dropout, nn.Identity))] \
        if linears else []
    if not before:
        raise ValueError(f"{type(model).__name__} has no layer before a final Linear classifier; "
                         f"layers: {', '.join(names)}")
    return before[-1]


def _capture(module: nn.Module, store: dict, key: str):
    return module.register_forward_hook(lambda m, i, out: store.__setitem__(key, out))


class HintStudent(nn.Module):
    """The student plus a small adapter (Linear, or 1x1 conv for feature maps) from its `layer`'s
    output to the teacher's `teacher_layer` output. forward returns the student's logits;
    train this wrapper, then keep `.student`."""

    def __init__(self, student: nn.Module, teacher: nn.Module, layer: str, teacher_layer: str,
                 in_shape=(1, 28, 28)):
        super().__init__()
        for what, m in (("student", student), ("teacher", teacher)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{what} must be an nn.Module, got {type(m).__name__}")
        s_layer, t_layer = _layer(student, layer, "layer"), _layer(teacher, teacher_layer, "teacher_layer")
        in_shape = check_shape("in_shape", in_shape)
        self.student = student
        self.features: dict[str, torch.Tensor] = {}
        self._teacher = [teacher]                       # a list: not a submodule, not trained
        self._hooks = [_capture(s_layer, self.features, "student"), _capture(t_layer, self.features, "teacher")]
        was = student.training
        try:
            with torch.no_grad():                       # probe both feature shapes
                student.eval()
                student(torch.zeros(2, *in_shape, device=model_device(student)))
                teacher.eval()
                teacher(torch.zeros(2, *in_shape, device=model_device(teacher)))
            s, t = self.features.pop("student", None), self.features.pop("teacher", None)
            if not isinstance(s, torch.Tensor) or not isinstance(t, torch.Tensor):
                raise ValueError("the hint layers must output tensors")
            if s.dim() != t.dim() or s.dim() not in (2, 4) or (s.dim() == 4 and s.shape[2:] != t.shape[2:]):
                raise ValueError(f"hint layers do not line up: student {tuple(s.shape[1:])}, "
                                 f"teacher {tuple(t.shape[1:])}")
        except Exception as e:                          # no hook is left on the caller's models
            self.remove_hooks()
            if isinstance(e, ValueError):
                raise
            raise ValueError(f"cannot run the student and the teacher on inputs of shape {in_shape}: {e}") from e
        finally:
            student.train(was)
        self.adapter = (nn.Conv2d(s.shape[1], t.shape[1], 1) if s.dim() == 4
                        else nn.Linear(s.shape[1], t.shape[1])).to(model_device(student))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def remove_hooks(self) -> nn.Module:
        """Detach the feature hooks; returns the plain student."""
        for h in self._hooks:
            h.remove()
        return self.student


def hint_loss(model: HintStudent, *, weight: float = 1.0, temperature: float = 4.0,
              alpha: float = 0.9) -> Callable:
    """loss_fn = kd_loss(...) + weight * mean (adapter(student features) - teacher features)^2."""
    if not isinstance(model, HintStudent):
        raise TypeError("model must be a HintStudent (the student wrapped with its adapter), "
                        f"got {type(model).__name__}")
    weight = validate.number("weight", weight, low=0, what="hint weight, the feature term's share")
    temperature, alpha = check_temperature(temperature), check_alpha(alpha)
    teacher = model._teacher[0]

    def loss_fn(output: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher.eval()
            t_logits = teacher(x)                       # also fills features["teacher"]
        hint = F.mse_loss(model.adapter(model.features["student"]), model.features["teacher"])
        return kd_loss(output, t_logits, y, temperature=temperature, alpha=alpha) + weight * hint
    return loss_fn


# ---------------------------------------------------------------------------------------------
# The omitted class (Hinton et al. 2015, section 3): raise its bias afterwards
# ---------------------------------------------------------------------------------------------


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last nn.Linear (its output layer)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer")
    return linears[-1]


@torch.no_grad()
def fit_class_bias(model: nn.Module, data: TensorData, cls: int, fraction: float | None = None,
                   *, iters: int = 40) -> float:
    """Raise the output bias of class `cls` until the model predicts it for `fraction` of `data`
    (default 1 / num_classes); uses no labels. Bisection on the shift; returns it (applied)."""
    out = last_linear(model)
    if out.bias is None:
        raise ValueError(f"the output layer of {type(model).__name__} has no bias to raise")
    cls = validate.integer("cls", cls, what="a class index")
    if not 0 <= cls < out.out_features:
        raise ValueError(f"class {cls} is not between 0 and {out.out_features - 1}")
    fraction = 1 / out.out_features if fraction is None else \
        validate.number("fraction", fraction, low=0, high=1, low_open=True, high_open=True,
                        what="share of predictions wanted")
    iters = validate.integer("iters", iters, low=1, what="bisection steps")
    check_data(data)
    logits = predict(model, data)                       # (N, K); a bias shift moves column cls only
    lo, hi = -50.0, 50.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        shifted = logits.clone()
        shifted[:, cls] += mid
        lo, hi = (mid, hi) if (shifted.argmax(1) == cls).float().mean() < fraction else (lo, mid)
    shift = (lo + hi) / 2
    out.bias[cls] += shift
    return shift
