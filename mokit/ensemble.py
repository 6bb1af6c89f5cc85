"""Combining models: ensembles of outputs, fusion of weights, and reuse of weights (transfer).

    team = Ensemble([m1, m2, m3], combine="probs")        # an nn.Module: evaluate(team, test)
    w = fit_weights([m1, m2, m3], val)                     # weights fitted on a validation split
    soup = uniform_soup(finetuned)                         # one model: the average of the weights
    model = prepare_transfer(mnist_model, "frozen", num_classes=10)   # new head, frozen features

Output combinations, for member logits z_m (N, K) and weights w_m >= 0 summing to 1:
    probs   log sum_m w_m softmax(z_m)       (probability averaging, returned as log-probabilities)
    logits  sum_m w_m z_m                    (logit averaging)
    vote    the class most members pick      (ties: the one with the larger averaged probability)
A soup (Wortsman et al. 2022) averages the weights theta = sum_m w_m theta_m of models fine-tuned
from one start; it costs one model at inference, an ensemble costs M.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .data import TensorData
from .train import check_data, check_shape, evaluate, model_device, predict


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


def _linears(model: nn.Module, why: str) -> list[tuple[str, nn.Linear]]:
    """(name, layer) of every nn.Linear of `model`, else ValueError saying `why` one is needed."""
    found = [(n, m) for n, m in _check_model(model).named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: {why}")
    return found

# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def num_outputs(model: nn.Module, in_shape: Sequence[int] | None = None) -> int:
    """Number of outputs: from a forward pass on zeros of `in_shape`, else the last Linear's size."""
    _check_model(model)
    if in_shape is not None:
        in_shape = check_shape("in_shape", in_shape)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, *in_shape, device=model_device(model)))
        except RuntimeError as e:
            raise ValueError(f"cannot run {type(model).__name__} on inputs of shape {in_shape}: {e}") from e
        finally:
            model.train(was)
        return out.shape[-1]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot tell how many outputs {type(model).__name__} has: give in_shape")
    return linears[-1].out_features


def check_members(models: Sequence[nn.Module], in_shape: Sequence[int] | None = None) -> list[nn.Module]:
    """models as a non-empty list whose members all have the same number of outputs."""
    if (isinstance(models, nn.Module) and not isinstance(models, nn.ModuleList)) \
            or isinstance(models, (str, bytes)) or not isinstance(models, Iterable):
        single = " (one model: wrap it in a list)" if isinstance(models, nn.Module) else ""
        raise TypeError(f"models must be a list of nn.Modules{single}, got {type(models).__name__}")
    models = list(models)
    if not models:
        raise ValueError("an ensemble needs at least one model, got none")
    bad = [type(m).__name__ for m in models if not isinstance(m, nn.Module)]
    if bad:
        raise TypeError(f"ensemble members must be nn.Modules, got {', '.join(bad)}")
    sizes = [num_outputs(m, in_shape) for m in models]
    if len(set(sizes)) > 1:
        raise ValueError(f"ensemble members must have the same number of outputs, got {sizes}")
    return models


def check_weights(weights, n: int) -> torch.Tensor:
    """weights as a float tensor of n values >= 0, normalised to sum to 1 (None: uniform)."""
    if weights is None:
        return torch.full((n,), 1.0 / n)
    allowed = f"weights must be {n} finite numbers >= 0 with a positive sum"
    if isinstance(weights, (torch.Tensor, np.ndarray)):
        real = (weights.dtype != torch.bool and not weights.dtype.is_complex) if isinstance(weights, torch.Tensor) \
            else (np.issubdtype(weights.dtype, np.integer) or np.issubdtype(weights.dtype, np.floating))
        if not real:
            raise ValueError(f"{allowed}, got {weights!r}")
        w = torch.as_tensor(weights).detach().cpu().float().flatten()
    else:
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
            raise ValueError(f"{allowed}, got {weights!r}")
        values = [v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in weights]
        if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
            raise ValueError(f"{allowed}, got {values!r}")
        w = torch.tensor([float(v) for v in values], dtype=torch.float32)
    if len(w) != n or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{allowed}, got {w.tolist()}")
    return w / w.sum()


# ---------------------------------------------------------------------------------------------
# Combining outputs
# ---------------------------------------------------------------------------------------------


def average_probs(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log sum_m w_m softmax(z_m): (M, N, K) member logits -> (N, K) log-probabilities."""
    w = weights.to(logits.device).view(-1, 1, 1)
    return torch.logsumexp(F.log_softmax(logits, dim=2) + w.log(), dim=0)


def average_logits(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_m w_m z_m: (M, N, K) -> (N, K)."""
    return (weights.to(logits.device).view(-1, 1, 1) * logits).sum(0)


COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "probs": average_probs, "logits": average_logits,
}


def vote(logits: torch.Tensor) -> torch.Tensor:
    """Majority vote: (M, N, K) member logits -> (N,) classes; ties go to the larger mean probability."""
    _, _, k = logits.shape
    counts = F.one_hot(logits.argmax(2), k).sum(0).float()            # (N, K) votes per class
    tie_break = F.softmax(logits, dim=2).mean(0)                       # (N, K) in [0, 1)
    return (counts + tie_break / 2).argmax(1)                          # a vote outweighs any tie-break


class Ensemble(nn.Module):
    """M models whose outputs are combined (`combine` = "probs" or "logits") with `weights`."""

    def __init__(self, models: Sequence[nn.Module], *, combine: str = "probs", weights=None,
                 in_shape: Sequence[int] | None = None):
        super().__init__()
        validate.choice("combine", combine, COMBINE)
        self.members = nn.ModuleList(check_members(models, in_shape))
        self.combine = combine
        self.register_buffer("weights", check_weights(weights, len(self.members)))

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(M, N, K) logits of every member."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return COMBINE[self.combine](self.member_logits(x), cast(torch.Tensor, self.weights))


@torch.no_grad()
def member_logits(models: Sequence[nn.Module], data: TensorData) -> torch.Tensor:
    """(M, N, K) logits of each model on every example of `data` (CPU)."""
    models = check_members(models)
    check_data(data)
    return torch.stack([predict(m, data) for m in models])


def vote_accuracy(models: Sequence[nn.Module], data: TensorData) -> float:
    """Accuracy (%) of the majority vote of `models` on `data`."""
    pred = vote(member_logits(models, data))
    return 100.0 * (pred == data.y.cpu()).float().mean().item()


def fit_weights(models: Sequence[nn.Module], val_data: TensorData, *, combine: str = "probs",
                steps: int = 300, lr: float = 0.05) -> torch.Tensor:
    """Ensemble weights w = softmax(a) minimising the cross-entropy of the combined output on
    `val_data` (a split the members were not trained on). Returns w (M,), summing to 1."""
    validate.choice("combine", combine, COMBINE)
    steps = validate.integer("steps", steps, low=1, what="optimizer steps")
    lr = validate.number("lr", lr, low=0, low_open=True)
    models = check_members(models)
    check_data(val_data, "val_data")
    logits = member_logits(models, val_data)                            # (M, N, K)
    y = val_data.y.cpu()
    a = torch.zeros(len(logits), requires_grad=True)
    opt = torch.optim.Adam([a], lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(COMBINE[combine](logits, F.softmax(a, 0)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return F.softmax(a.detach(), 0)


# ---------------------------------------------------------------------------------------------
# Fusing weights: soups of models fine-tuned from one start
# ---------------------------------------------------------------------------------------------


def average_weights(models: Sequence[nn.Module], weights=None) -> nn.Module:
    """A copy of models[0] with theta = sum_m w_m theta_m (floating-point entries; others from models[0])."""
    models = check_members(models)
    w = check_weights(weights, len(models))
    states = [m.state_dict() for m in models]
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"model {i} does not have the same architecture as model 0; "
                             f"weights can only be averaged between identical architectures")
    fused = {k: sum(wi * s[k].float() for wi, s in zip(w.tolist(), states, strict=True)).to(states[0][k].dtype)
             if states[0][k].is_floating_point() else states[0][k].clone() for k in keys}
    soup = copy.deepcopy(models[0])
    soup.load_state_dict(fused)
    return soup


def uniform_soup(models: Sequence[nn.Module]) -> nn.Module:
    """The plain average of the weights of `models`."""
    return average_weights(models)


def greedy_soup(models: Sequence[nn.Module], val_data: TensorData) -> tuple[nn.Module, list[int]]:
    """Greedy soup: sort by validation accuracy, add a model to the soup only if the soup's
    validation accuracy does not drop. Returns (soup, indices of the models in it)."""
    models = check_members(models)
    check_data(val_data, "val_data")
    score = {i: evaluate(m, val_data)["accuracy"] for i, m in enumerate(models)}
    order = sorted(score, key=lambda i: score[i], reverse=True)
    chosen, best = [order[0]], score[order[0]]
    for i in order[1:]:
        acc = evaluate(average_weights([models[j] for j in [*chosen, i]]), val_data)["accuracy"]
        if acc >= best:
            chosen, best = [*chosen, i], acc
    return average_weights([models[j] for j in chosen]), chosen


# ---------------------------------------------------------------------------------------------
# Reusing weights on a new task: transfer learning
# ---------------------------------------------------------------------------------------------


def new_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A copy of `model` whose last nn.Linear is replaced by a freshly initialised one with
    `num_classes` outputs (seed with seed_everything before calling)."""
    num_classes = validate.integer("num_classes", num_classes, low=1)
    _linears(model, "new_head replaces the last one")
    model = copy.deepcopy(model)
    name, old = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes).to(old.weight.device))
    return model


def freeze_features(model: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter except the last nn.Linear's (in place)."""
    head = _linears(model, "freeze_features keeps the last one trainable")[-1][1]
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in head_params)
    return model


def reinitialize(model: nn.Module) -> nn.Module:
    """A copy of `model` with every layer's reset_parameters() called: same shape, no knowledge."""
    model = copy.deepcopy(_check_model(model))
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return model


TRANSFER: dict[str, Callable[[nn.Module, int], nn.Module]] = {
    "frozen": lambda model, k: freeze_features(new_head(model, k)),     # features fixed, new head
    "full": lambda model, k: new_head(model, k),                         # everything fine-tuned
    "scratch": lambda model, k: reinitialize(new_head(model, k)),        # same net, random start
}


def prepare_transfer(model: nn.Module, mode: str, num_classes: int) -> nn.Module:
    """A copy of the pretrained `model` set up for a new task: mode "frozen", "full" or "scratch"."""
    make = validate.choice("transfer mode", mode, TRANSFER)
    num_classes = validate.integer("num_classes", num_classes, low=1)
    _linears(model, "transfer replaces the last one with a new head")
    return make(model, num_classes)


def trainable_params(model: nn.Module) -> int:
    """Number of parameter elements that will be trained (requires_grad)."""
    return sum(p.numel() for p in _check_model(model).parameters() if p.requires_grad)
