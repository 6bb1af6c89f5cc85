"""The fuzz suite that stays (issue 13): property-based tests over the public API's numeric and name
arguments, across mokit's modules.

The property, for every target call below and every value Hypothesis draws for one of its arguments
(the others valid): the call either

  * succeeds, the value is one the argument allows, and the result is valid (checked per target), or
  * raises ValueError / TypeError whose message names the argument, before any work: no state_dict
    entry or train/eval mode changed, no file written, no objective call, no pass over the data
    (at most one forward pass: the shape probe);

and it does so within a time limit (Hypothesis' deadline for slow calls, SIGALRM for hangs).

A target is a call with valid base arguments and, per fuzzed argument, an `Arg`: the edge values
every fuzzer tries (NaN, inf, -1, 0, True, huge integers, wrong types, misspelt names, empty data),
a generated strategy, and the rule of which values are valid. benchmarks/fuzz.py runs every edge
value of every target of this file once, in a watched worker process, and prints the counts.

Tiny synthetic data (32 examples of 1x8x8, 4 classes) and tiny models keep each call in milliseconds.
"""

from __future__ import annotations

import math
import numbers
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import CallTimeout, within
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from mokit import data as D
from mokit import distill, metrics, models, nas, prune, search
from mokit import quantize as Q
from mokit import train as T

NAN, INF = float("nan"), float("inf")
HUGE = 10 ** 18
CALL_SECONDS = 20            # a call still running after this is a hang (SIGALRM); the slowest legal edge
                             # (quantize_tensor mse at grid=10000) takes about 3 s idle and over 5 s under make test

FUZZ_SETTINGS = dict(derandomize=True, database=None, deadline=timedelta(seconds=4),
                     phases=(Phase.explicit, Phase.generate),       # no shrinking: a hang costs seconds
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                            HealthCheck.data_too_large, HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------------------------
# Values: kinds of argument, their edge values and what is valid
# ---------------------------------------------------------------------------------------------

def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def is_flag(v) -> bool:
    return type(v).__name__ in ("bool", "bool_")


def int_in(low, high=None) -> Callable:
    return lambda v: is_int(v) and v >= low and (high is None or v <= high)


def num_in(low=None, high=None, *, low_open=False, high_open=False) -> Callable:
    def ok(v):
        if not is_num(v):
            return False
        if low is not None and (v < low or (low_open and v == low)):
            return False
        return not (high is not None and (v > high or (high_open and v == high)))
    return ok


def same(v, ref) -> bool:
    """v equals ref with the same types throughout (1.0 is not 1, True is not 1, [1] is not (1,))."""
    return type(v) is type(ref) and repr(v) == repr(ref)


def optional(rule: Callable) -> Callable:
    return lambda v: v is None or rule(v)


INT_EDGES = [0, -1, 1, 2, True, False, None, NAN, INF, -INF, 1.5, 2.0, "1", HUGE, -HUGE, [1]]
NUM_EDGES = [NAN, INF, -INF, 0, 0.0, -1, -1e-9, 1e-3, 0.5, True, None, "0.5", HUGE, -HUGE, [0.5]]
FLAG_EDGES = [True, False, None, 0, 1, "yes", "False"]
NAME_EDGES = [None, 3, "", " ", "x" * 200, ["name"], "../etc"]


@dataclass
class Arg:
    """One fuzzed argument: edge values, a generated strategy, and which values are valid."""
    edges: list
    strategy: st.SearchStrategy
    valid: Callable
    names: tuple = ()                  # words an error may use for it (default: the argument's name)

    def values(self) -> st.SearchStrategy:
        return st.one_of(st.sampled_from(self.edges), self.strategy)


def int_arg(valid: Callable, *, extra=(), huge: bool = True, high: int = 40, names=()) -> Arg:
    """An integer argument; huge=False leaves out the huge integers (a valid huge value means real
    work: epochs=10**18 is a long run, not a bad input)."""
    edges = [v for v in INT_EDGES if huge or not (is_int(v) and abs(v) == HUGE)] + list(extra)
    return Arg(edges, st.integers(-3, high), valid, tuple(names))


def num_arg(valid: Callable, *, extra=(), low: float = -2.0, high: float = 2.0, huge: bool = True, names=()) -> Arg:
    edges = [v for v in NUM_EDGES if huge or not (is_num(v) and abs(v) == HUGE)] + list(extra)
    return Arg(edges, st.floats(low, high, allow_nan=False, allow_infinity=False), valid, tuple(names))


def flag_arg(*, none_ok: bool = False, names=()) -> Arg:
    return Arg(list(FLAG_EDGES), st.sampled_from([True, False]),
               (lambda v: v is None or is_flag(v)) if none_ok else is_flag, tuple(names))


def name_arg(valid_names, *, extra=(), valid: Callable | None = None, names=()) -> Arg:
    valid_names = list(valid_names)
    misspelt = [n[:-1] for n in valid_names if len(n) > 1] + [n.upper() for n in valid_names if n.upper() != n]
    edges = valid_names + misspelt[:3] + NAME_EDGES + list(extra)
    return Arg(edges, st.text("abcdefghijklmnopqrstuvwxyz_0123456789", max_size=8),
               valid or (lambda v: isinstance(v, str) and v in valid_names), tuple(names))


def expect(condition, message: str = "wrong result") -> None:
    """A result check (AssertionError, which exercise() reports as a wrong result)."""
    if not condition:
        raise AssertionError(message)


def obj_arg(edges, valid: Callable, names=()) -> Arg:
    return Arg(list(edges), st.sampled_from(list(edges)), valid, tuple(names))


# ---------------------------------------------------------------------------------------------
# Tiny data, tiny models, and what "work" is
# ---------------------------------------------------------------------------------------------

SHAPE, K = (1, 8, 8), 4


def tiny_data(n: int = 32, seed: int = 0) -> D.TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = torch.randn(n, *SHAPE, generator=g) + y.view(-1, 1, 1, 1).float()
    return D.TensorData(x, y, "mnist", "train", tuple(str(i) for i in range(K)), real=False)


TRAIN, VAL, EMPTY = tiny_data(), tiny_data(16, seed=1), tiny_data(32).take(slice(0, 0))
DATA_EDGES = [TRAIN, EMPTY, [], "data", None, 5, torch.zeros(4, 1, 8, 8)]


def tiny_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, K))


class Watch:
    """What a call did: forward passes of the watched models, objective calls, state, files."""

    def __init__(self, models_: list[nn.Module], folders: list[Path]):
        self.models, self.folders, self.forwards, self.calls = models_, folders, 0, 0
        for m in models_:
            m.register_forward_hook(lambda *_: self._forward())      # completed passes only
        self.state0, self.files0 = self._state(), self._files()

    def _forward(self):
        self.forwards += 1

    def _state(self) -> list:
        out = []
        for m in self.models:
            out.append(({k: v.detach().clone() for k, v in m.state_dict().items()},
                        [x.training for x in m.modules()]))
        return out

    def _files(self) -> set:
        return {p for f in self.folders if f.exists() for p in f.rglob("*")}

    def work(self) -> list[str]:
        """What was done since the watch began (empty: no work). Work is a changed state_dict or
        train/eval mode, a written file, an objective call, or two or more completed forward passes
        (one pass is how train() and create_model probe the input shape; an epoch takes more)."""
        done = []
        if self.forwards >= 2:
            done.append(f"{self.forwards} forward passes")
        if self.calls:
            done.append(f"{self.calls} objective call(s)")
        for (sd0, tr0), (sd1, tr1) in zip(self.state0, self._state()):
            if list(sd0) != list(sd1) or any(not torch.equal(sd0[k], sd1[k]) for k in sd0):
                done.append("the model's state_dict changed")
            elif tr0 != tr1:
                done.append("the model's train/eval mode changed")
        new = self._files() - self.files0
        if new:
            done.append(f"files written: {sorted(map(str, new))[:3]}")
        return done


@dataclass
class Target:
    """A public call with valid base arguments; one argument at a time is fuzzed."""
    name: str
    run: Callable          # (ctx, kwargs) -> result
    base: dict
    args: dict[str, Arg]
    setup: Callable = lambda: {}                       # a fresh context per call: models, data, counters
    check: Callable = lambda ctx, kw, out: None        # asserts a successful result is valid
    max_examples: int = 30
    watch_models: tuple = ("model",)


@dataclass
class Outcome:
    """How one call went. kind: refused | succeeded | unclear | after_work | refused_valid |
    accepted_invalid | wrong_result | crashed | hung."""
    kind: str
    detail: str = ""
    ok: bool = field(init=False)

    def __post_init__(self):
        self.ok = self.kind in ("refused", "succeeded")


def exercise(target: Target, arg: str, value, folders: list[Path], seconds: float = CALL_SECONDS) -> Outcome:
    """Call target with `arg=value` (the rest its valid base) and judge the outcome."""
    spec = target.args[arg]
    ctx = target.setup()
    watch = Watch([ctx[m] for m in target.watch_models if m in ctx], folders)
    ctx["watch"] = watch
    kw = {**target.base, arg: value}
    valid = spec.valid(value)
    try:
        out = within(seconds, lambda: target.run(ctx, kw))
    except CallTimeout as e:
        return Outcome("hung", str(e))
    except (ValueError, TypeError) as e:
        msg = f"{type(e).__name__}: {e}"
        words = spec.names or (arg,)
        if not any(w in str(e) for w in words):
            return Outcome("unclear", f"the error does not name {arg!r}: {msg}"[:400])
        work = watch.work()
        if work:
            return Outcome("after_work", f"refused after work ({'; '.join(work)}): {msg}"[:400])
        if valid:
            return Outcome("refused_valid", f"{arg}={value!r} is valid but was refused: {msg}"[:400])
        return Outcome("refused", msg[:200])
    except Exception as e:                                            # that is the point
        return Outcome("crashed", f"{type(e).__name__}: {e}"[:400])
    if not valid:
        return Outcome("accepted_invalid", f"{arg}={value!r} should have been refused; returned "
                                           f"{type(out).__name__}")
    try:
        target.check(ctx, kw, out)
    except AssertionError as e:
        return Outcome("wrong_result", f"{arg}={value!r}: {e}"[:400])
    return Outcome("succeeded")


# ---------------------------------------------------------------------------------------------
# The targets
# ---------------------------------------------------------------------------------------------

def _model_ctx():
    return {"model": tiny_model()}


def _train_check(ctx, kw, out):
    assert isinstance(out, T.History) and len(out.epochs) == kw["epochs"]
    assert all(math.isfinite(e["train_loss"]) for e in out.epochs)


TRAIN_BASE = {"epochs": 1, "batch_size": 16, "progress": False}
AUGMENTS = [False, True, None, "none", "crop_flip", "flip_translate", "crop", "Crop_flip", 1]
_augment_ok = lambda v: v is None or v is False or v is True or v in D.AUGMENTS   # noqa: E731

TARGETS: list[Target] = []

TARGETS.append(Target(
    "train.train", lambda c, kw: T.train(c["model"], kw.pop("data", TRAIN), **kw), TRAIN_BASE, {
        "epochs": int_arg(int_in(1), huge=False, high=3),
        "lr": num_arg(optional(num_in(0, T.MAX_STEP_SIZE, low_open=True)), low=1e-4, high=0.1, huge=True),
        "batch_size": int_arg(int_in(1)),
        "weight_decay": num_arg(optional(num_in(0, T.MAX_STEP_SIZE)), low=0, high=0.1),
        "momentum": num_arg(lambda v: v is None, low=0, high=0.99),       # Adam has no momentum
        "label_smoothing": num_arg(num_in(0, 1, high_open=True), extra=[1.0, 0.99], low=0, high=1),
        "optimizer": name_arg(T.OPTIMIZERS),
        "schedule": name_arg(T.SCHEDULES),
        "precision": name_arg(["fp32", "auto", "fp16"], extra=["fp8", "bf 16"],
                              valid=lambda v: v in ("fp32", "auto")),       # fp16 needs a GPU
        "seed": int_arg(int_in(0, T.SEED_HIGH), extra=[2 ** 32 - 1, 2 ** 32]),
        "device": name_arg(["cpu", "cuda", "tpu", "cuda:7"],
                           valid=lambda v: v is None or v == "cpu" or (v == "cuda" and torch.cuda.is_available())),
        "augment": obj_arg(AUGMENTS, _augment_ok),
        "val_data": obj_arg([None, VAL, EMPTY, [], "val"], lambda v: v is None or v is VAL),
        "data": obj_arg(DATA_EDGES, lambda v: v is TRAIN),
        "lookahead": flag_arg(),
        "channels_last": flag_arg(none_ok=True),
        "progress": flag_arg(),
    }, _model_ctx, _train_check, max_examples=40))

TARGETS.append(Target(
    "train.train(sgd)", lambda c, kw: T.train(c["model"], TRAIN, **kw), {**TRAIN_BASE, "optimizer": "sgd"}, {
        "momentum": num_arg(optional(num_in(0, 1, high_open=True)), extra=[0.9, 1.0], low=0, high=1),
        "lr": num_arg(optional(num_in(0, T.MAX_STEP_SIZE, low_open=True)), low=1e-4, high=0.1),
        "weight_decay": num_arg(optional(num_in(0, T.MAX_STEP_SIZE)), low=0, high=0.1),
    }, _model_ctx, _train_check, max_examples=20))


def _eval_check(ctx, kw, out):
    assert 0 <= out["accuracy"] <= 100 and out["n"] == len(kw.get("data", VAL))


TARGETS.append(Target(
    "train.evaluate", lambda c, kw: T.evaluate(c["model"], kw.pop("data", VAL), **kw), {}, {
        "batch_size": int_arg(int_in(1)),
        "tta": name_arg(T.TTA),
        "device": name_arg(["cpu", "tpu", "cuda:7"], valid=lambda v: v is None or v == "cpu"),
        "data": obj_arg([*DATA_EDGES[1:], VAL], lambda v: v is VAL),
    }, _model_ctx, _eval_check))


def _standin_load(kw):
    old = os.environ.get("MOKIT_STANDIN")
    os.environ["MOKIT_STANDIN"] = "1"                        # generated stand-ins: no files needed
    try:
        return D.load_dataset(kw.pop("name"), kw.pop("split"), **kw)
    finally:
        if old is None:
            os.environ.pop("MOKIT_STANDIN")
        else:
            os.environ["MOKIT_STANDIN"] = old


def _load_check(ctx, kw, out):
    assert isinstance(out, D.TensorData) and len(out) == (kw["subset"] or 2000)
    assert out.x.dtype == torch.float32 and bool(torch.isfinite(out.x).all())


TARGETS.append(Target(
    "data.load_dataset", lambda c, kw: _standin_load(kw), {"name": "mnist", "split": "test", "subset": 8}, {
        "name": name_arg(["mnist", "fashion_mnist"], extra=["mnst", "cifar100"]),
        "split": name_arg(["test"], extra=["val", "validation", "Test"]),
        "subset": int_arg(optional(int_in(1, 2000)), extra=[2000, 2001, 10 ** 9]),
        "seed": int_arg(is_int),
    }, check=_load_check, max_examples=25))


def _batches_check(ctx, kw, out):
    sizes = [len(y) for _, y in out]
    assert sizes and max(sizes) <= kw["batch_size"] and sum(sizes) <= len(TRAIN)


TARGETS.append(Target(
    "data.Batches", lambda c, kw: D.Batches(kw.pop("data", TRAIN), **kw), {"batch_size": 8}, {
        "batch_size": int_arg(int_in(1)),
        "shuffle": flag_arg(),
        "drop_last": flag_arg(),
        "seed": int_arg(is_int),
        "augment": obj_arg(AUGMENTS, _augment_ok),
        "data": obj_arg(DATA_EDGES, lambda v: v is TRAIN),
    }, check=_batches_check))


def _zero_fraction(model) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def _sparsity_check(ctx, kw, out):
    assert isinstance(out, prune.Masks)
    s = kw["sparsity"]
    assert abs(_zero_fraction(ctx["model"]) - s) <= 0.01 + 1 / 1000, (s, _zero_fraction(ctx["model"]))


SPARSITY = num_arg(num_in(0, 1, high_open=True), extra=[1.0, 0.999, 0.5], low=0, high=1)
IMPORTANCE = name_arg(["l1", "l2", "random"], valid=lambda v: v in ("l1", "l2", "random"))
LAYER_NAMES = ["1", "3"]

TARGETS.append(Target(
    "prune.prune_global", lambda c, kw: prune.prune_global(c["model"], **kw), {"sparsity": 0.5}, {
        "sparsity": SPARSITY, "importance": IMPORTANCE,
        "layers": obj_arg([None, ["1", "3"], ["1"], ["nope"], "1", [], [1], [None]],
                          lambda v: v is None or same(v, ["1", "3"]) or same(v, ["1"])),
    }, _model_ctx,
    lambda c, kw, out: _sparsity_check(c, kw, out) if kw.get("layers") in (None, ["1", "3"]) else None))

TARGETS.append(Target(
    "prune.prune_layerwise", lambda c, kw: prune.prune_layerwise(c["model"], **kw), {"sparsity": 0.5}, {
        "sparsity": Arg([*SPARSITY.edges, {"1": 0.5}, {"nope": 0.5}, {"1": NAN}], SPARSITY.strategy,
                        lambda v: SPARSITY.valid(v) or same(v, {"1": 0.5}), ("sparsity", "nope")),
        "importance": IMPORTANCE,
    }, _model_ctx, lambda c, kw, out: _sparsity_check(c, kw, out) if not isinstance(kw["sparsity"], dict) else None))


def _threshold_check(ctx, kw, out):
    for name, m in prune.prunable_layers(ctx["model"]).items():
        w = m.weight.detach()
        assert bool((w.abs() > kw["threshold"]).eq(w != 0).all()), name


TARGETS.append(Target(
    "prune.prune_threshold", lambda c, kw: prune.prune_threshold(c["model"], **kw), {"threshold": 0.05}, {
        "threshold": num_arg(num_in(0), extra=[0.05, 10.0], low=0, high=0.3),
        "importance": name_arg(["l1"], valid=lambda v: v in ("l1", "l2", "random")),
    }, _model_ctx, lambda c, kw, out: _threshold_check(c, kw, out) if kw.get("importance", "l1") == "l1" else None))

TARGETS.append(Target(
    "prune.prune_random", lambda c, kw: prune.prune_random(c["model"], **kw), {"sparsity": 0.5}, {
        "sparsity": SPARSITY, "seed": int_arg(int_in(0, T.SEED_HIGH)),
    }, _model_ctx))

FINE_TUNE = {"epochs": 1, "batch_size": 16, "progress": False}

TARGETS.append(Target(
    "prune.prune_oneshot", lambda c, kw: prune.prune_oneshot(c["model"], kw.pop("data", TRAIN), **kw),
    {"sparsity": 0.5, **FINE_TUNE}, {
        "sparsity": SPARSITY, "epochs": int_arg(int_in(1), huge=False, high=2),
        "lr": num_arg(optional(num_in(0, T.MAX_STEP_SIZE, low_open=True)), low=1e-4, high=0.1),
        "batch_size": int_arg(int_in(1)),
        "data": obj_arg(DATA_EDGES, lambda v: v is TRAIN),
        "val_data": obj_arg([None, VAL, EMPTY], lambda v: v is None or v is VAL),
    }, _model_ctx, max_examples=25))

TARGETS.append(Target(
    "prune.prune_gradual", lambda c, kw: prune.prune_gradual(c["model"], TRAIN, **kw),
    {"sparsity": 0.5, "every": 1, **FINE_TUNE}, {
        "every": int_arg(int_in(1)), "sparsity": SPARSITY,
        "begin": num_arg(num_in(0, 0.7, high_open=True), extra=[0.7, 1.0], low=0, high=1),
        "end": num_arg(num_in(0, 1, low_open=True), extra=[1.0, 1.5], low=0, high=1),
        "epochs": int_arg(int_in(1), huge=False, high=2),
    }, _model_ctx, max_examples=25))

TARGETS.append(Target(
    "prune.prune_iterative", lambda c, kw: prune.prune_iterative(c["model"], TRAIN, **kw),
    {"sparsity": 0.5, "rounds": 1, **FINE_TUNE, "epochs": 2}, {
        "rounds": int_arg(int_in(1, 2), extra=[3]),
        "epochs": int_arg(int_in(1), huge=False, high=2, names=("epochs", "rounds")),
    }, _model_ctx, max_examples=20))


def _qt_check(ctx, kw, out):
    qmin, qmax = Q.qrange(kw["num_bits"], kw.get("symmetric", False))
    assert int(out.q.min()) >= qmin and int(out.q.max()) <= qmax
    assert bool(torch.isfinite(out.dequantize()).all())


X46 = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
X_EDGES = [X46, X46.clone().fill_(NAN), torch.tensor([1.0, INF]), torch.empty(0), [1.0, 2.0], None,
           torch.tensor([1, 2, 3]), torch.zeros(3)]

TARGETS.append(Target(
    "quantize.quantize_tensor", lambda c, kw: Q.quantize_tensor(kw.pop("x"), **kw), {"x": X46, "num_bits": 4}, {
        "num_bits": int_arg(int_in(1, 16), extra=[16, 17]),
        "symmetric": flag_arg(),
        "axis": obj_arg([None, 0, 1, -1, -2, 2, -3, 1.0, True, "0"],
                        lambda v: v is None or (is_int(v) and -2 <= v <= 1)),
        "calibrate": name_arg(Q.CALIBRATORS),
        "x": obj_arg(X_EDGES, lambda v: any(v is e for e in (X46, X_EDGES[6], X_EDGES[7]))),
    }, check=_qt_check))

TARGETS.append(Target(
    "quantize.quantize_tensor(percentile)", lambda c, kw: Q.quantize_tensor(X46, 4, calibrate="percentile", **kw),
    {"percentile": 99.0}, {
        "percentile": num_arg(num_in(50, 100, low_open=True), extra=[50, 100, 99.9], low=40, high=110),
        "percentil": obj_arg([99, 99.9], lambda v: False, ("percentil",)),
    }, check=lambda c, kw, out: None))

TARGETS.append(Target(
    "quantize.quantize_tensor(mse)", lambda c, kw: Q.quantize_tensor(X46, 4, calibrate="mse", **kw),
    {"grid": 10}, {"grid": int_arg(int_in(1, 10_000), extra=[10_000, 10_001])}))


def _positions_check(ctx, kw, out):
    gaps, filler = out
    assert max(gaps) <= 2 ** kw["index_bits"] - 1
    pos, kept = -1, []
    for g, f in zip(gaps, filler):
        pos += g
        if not f:
            kept.append(pos)
    assert kept == [0, 3, 40, 99]


MASK = torch.zeros(100)
MASK[[0, 3, 40, 99]] = 1

TARGETS.append(Target(
    "quantize.relative_positions", lambda c, kw: Q.relative_positions(MASK, **kw), {"index_bits": 4}, {
        "index_bits": int_arg(int_in(1, 32), extra=[32, 33])}, check=_positions_check))


def _books_ctx():
    model = tiny_model()
    return {"model": model, "books": Q.kmeans_share(model, 2, layers=["1"])}


TARGETS.append(Target(
    "quantize.deep_compression_size", lambda c, kw: Q.deep_compression_size(c["model"], c["books"], **kw),
    {"index_bits": 5}, {
        "index_bits": int_arg(int_in(1, 32), extra=[32, 33]), "huffman": flag_arg(),
    }, _books_ctx, lambda c, kw, out: expect(out["bytes"] > 0 and out["ratio"] > 0, "no size")))

TARGETS.append(Target(
    "quantize.huffman_code", lambda c, kw: Q.huffman_code(**kw), {"symbols": [1, 2, 2]}, {
        "symbols": obj_arg([[], [1], [1, 2, 2], [1.5], ["a"], None, 5, [True], [NAN], [HUGE, 0]],
                           lambda v: isinstance(v, list) and bool(v) and all(is_int(s) for s in v)),
    }, check=lambda c, kw, out: expect(set(out) == set(kw["symbols"]), "symbols lost")))

TARGETS.append(Target(
    "quantize.kmeans_1d", lambda c, kw: Q.kmeans_1d(X46.flatten(), **kw), {"k": 4}, {
        "k": int_arg(int_in(1, 2 ** 16), extra=[2 ** 16 + 1]), "iters": int_arg(int_in(0, 100_000), huge=True),
    }, check=lambda c, kw, out: expect(len(out[0]) == kw["k"], "wrong k")))


def _fq_check(ctx, kw, out):
    model = out if isinstance(out, nn.Module) else ctx["model"]          # kmeans_share returns the books
    assert bool(torch.isfinite(model(torch.randn(2, *SHAPE))).all())


TARGETS.append(Target(
    "quantize.fake_quantize_model", lambda c, kw: Q.fake_quantize_model(c["model"], **kw), {"num_bits": 4}, {
        "num_bits": int_arg(int_in(1, 16)),
        "per_channel": flag_arg(), "symmetric": flag_arg(),
        "calibrate": name_arg(Q.CALIBRATORS),
        "layers": obj_arg([None, ["1"], ["nope"], "1", ["2"], [1]], lambda v: v is None or same(v, ["1"]),
                          ("layers", "nope", "layer '2'", "1")),
    }, _model_ctx, _fq_check))

TARGETS.append(Target(
    "quantize.kmeans_share", lambda c, kw: Q.kmeans_share(c["model"], **kw), {"num_bits": 2}, {
        "num_bits": int_arg(int_in(1, 16), high=8),
        "layers": obj_arg([None, ["1"], ["nope"], "1"], lambda v: v is None or same(v, ["1"]), ("layers", "nope")),
    }, _model_ctx, _fq_check))

CALIB = [torch.randn(16, *SHAPE)]

TARGETS.append(Target(
    "quantize.quantize_int8", lambda c, kw: Q.quantize_int8(c["model"], kw.pop("data", CALIB), **kw),
    {"num_batches": 1, "batch_size": 16}, {
        "num_batches": int_arg(int_in(1)), "batch_size": int_arg(int_in(1)),
        "engine": name_arg(torch.backends.quantized.supported_engines, extra=["tpu"],
                           valid=lambda v: v in ("x86", "fbgemm", "qnnpack", "onednn")
                           and v in torch.backends.quantized.supported_engines),
        "data": obj_arg([CALIB, [], None], lambda v: v is CALIB, ("data", "calibration")),
    }, lambda: {"model": tiny_model().eval()}, _fq_check, max_examples=15))


def _kd_logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, K, generator=g), torch.randn(8, K, generator=g), torch.arange(8) % K


TEMPERATURE = num_arg(num_in(distill.MIN_TEMPERATURE, distill.MAX_TEMPERATURE),
                      extra=[1e-3, 0.01, 4.0, 1e-38, 1e-300, 1e6, 1.5e6], low=0, high=20)
ALPHA = num_arg(num_in(0, 1), extra=[1.0, 1.0001], low=-0.5, high=1.5)

TARGETS.append(Target(
    "distill.kd_loss", lambda c, kw: distill.kd_loss(*_kd_logits(), **kw), {}, {
        "temperature": TEMPERATURE, "alpha": ALPHA,
    }, check=lambda c, kw, out: expect(bool(torch.isfinite(out)) and float(out) >= -1e-6, f"loss {out}")))

TARGETS.append(Target(
    "distill.soft_targets", lambda c, kw: distill.soft_targets(_kd_logits()[0], **kw), {"temperature": 4.0}, {
        "temperature": TEMPERATURE,
    }, check=lambda c, kw, out: expect(torch.allclose(out.sum(1), torch.ones(8)), "not a distribution")))

TARGETS.append(Target(
    "distill.distill_loss", lambda c, kw: distill.distill_loss(c["model"], **kw), {}, {
        "temperature": TEMPERATURE, "alpha": ALPHA,
    }, _model_ctx, check=lambda c, kw, out: expect(callable(out), "not a loss")))

TARGETS.append(Target(
    "distill.CachedTeacher", lambda c, kw: distill.CachedTeacher(c["model"], kw.pop("data", TRAIN), **kw),
    {"batch_size": 16}, {
        "batch_size": int_arg(int_in(1)), "seed": int_arg(int_in(0, T.SEED_HIGH)),
        "augment": obj_arg(AUGMENTS, _augment_ok),
        "precision": name_arg(["fp32", "fp16"], extra=["fp8"], valid=lambda v: v == "fp32"),
        "data": obj_arg(DATA_EDGES, lambda v: v is TRAIN),
    }, lambda: {"model": tiny_model().eval()},
    check=lambda c, kw, out: expect(len(out) >= 1, "no batches")))


def _constraint_check(ctx, kw, out):
    config = {"n_conv": 1, "c0": 4, "k0": 3, "pool0": True, "n_dense": 0, "activation": "relu",
              "batchnorm": False, "global_pool": False}
    assert isinstance(out(config), bool)


LIMIT = num_arg(num_in(0, low_open=True), extra=[20_000, 1e9], low=-10, high=1e6)
TARGETS.append(Target(
    "nas.constraint", lambda c, kw: nas.constraint(**kw), {"max_params": 20_000}, {
        "max_params": Arg(LIMIT.edges, LIMIT.strategy, LIMIT.valid),      # the only limit: None refused
        "max_macs": Arg(LIMIT.edges, LIMIT.strategy, optional(LIMIT.valid)),
        "num_classes": int_arg(int_in(1, 100_000)),
        "in_shape": obj_arg([(1, 28, 28), (0, 28, 28), (1, 28), (1.0, 28, 28), None, "1,28,28"],
                            lambda v: same(v, (1, 28, 28)) or same(v, (1, 28))),
    }, check=lambda c, kw, out: _constraint_check(c, kw, out) if kw.get("in_shape", (1, 28, 28)) == (1, 28, 28)
    and kw.get("num_classes", 10) == 10 else None))


def _space_check(ctx, kw, out):
    config = search.sample(out, random.Random(0))
    model = nas.build(config, (1, 16, 16), 3).eval()
    assert model(torch.zeros(1, 1, 16, 16)).shape == (1, 3)


TARGETS.append(Target(
    "nas.conv_space", lambda c, kw: nas.conv_space(**kw), {"max_conv": 2, "max_dense": 1}, {
        "max_conv": int_arg(int_in(1, 16), high=4, extra=[16, 17]),
        "max_dense": int_arg(int_in(0, 16), high=4, extra=[17]),
        "channels": obj_arg([(4, 8), (), (0,), (4.0,), "48", (True,), (HUGE,)], lambda v: same(v, (4, 8))),
        "kernels": obj_arg([(3, 5), (4,), (), (3.0,)], lambda v: same(v, (3, 5))),
        "activations": obj_arg([("relu",), ("swish",), ()], lambda v: same(v, ("relu",))),
    }, check=_space_check, max_examples=25))

TARGETS.append(Target(
    "nas.mlp_space", lambda c, kw: nas.mlp_space(**kw), {"max_layers": 2}, {
        "max_layers": int_arg(int_in(1, 16), high=4, extra=[16, 17]),
        "widths": obj_arg([(8, 16), (), (0,), (8.0,), (HUGE,)], lambda v: same(v, (8, 16))),
    }, check=_space_check))

TARGETS.append(Target(
    "nas.arch_cost", lambda c, kw: nas.arch_cost({"n_hidden": 1, "h0": 8, "activation": "relu"}, **kw),
    {"latency": True, "repeats": 2}, {
        "repeats": int_arg(int_in(1, 10_000), high=3, extra=[10_001]),
        "latency": flag_arg(),
        "num_classes": int_arg(int_in(1, 100_000), high=5),
    }, check=lambda c, kw, out: expect(out["params"] > 0, "no params")))


def _latency_check(ctx, kw, out):
    assert out["ms"] > 0 and out["batch_size"] == kw.get("batch_size", 1)


TARGETS.append(Target(
    "metrics.measure_latency", lambda c, kw: metrics.measure_latency(c["model"], kw.pop("in_shape", SHAPE), **kw),
    {"repeats": 2, "warmup": 0}, {
        "batch_size": int_arg(int_in(1, 2 ** 20), high=8),
        "repeats": int_arg(int_in(1, 10 ** 6), high=5, extra=[10 ** 6 + 1]),
        "warmup": int_arg(int_in(0, 10 ** 6), high=3),
        "threads": int_arg(optional(int_in(1, 4096)), high=2, extra=[4097]),
        "min_seconds": num_arg(num_in(0, 3600), low=0, high=0.01, extra=[3601]),
        "in_shape": obj_arg([SHAPE, (64,), (0,), (-1, 8, 8), (1.0, 8, 8), (True,), (), "188", None, (5,), (1, 8)],
                            lambda v: same(v, SHAPE) or same(v, (64,))),
    }, _model_ctx, _latency_check))

TARGETS.append(Target(
    "metrics.count_macs", lambda c, kw: metrics.count_macs(c["model"], **kw), {"in_shape": SHAPE}, {
        "in_shape": obj_arg([SHAPE, (64,), (0,), (1.0, 8, 8), (True,), (), None, (5,), (HUGE,)],
                            lambda v: same(v, SHAPE) or same(v, (64,))),
    }, lambda: {"model": tiny_model().eval()},
    check=lambda c, kw, out: expect(out == 64 * 16 + 16 * K, f"MACs {out}")))

Y3 = torch.tensor([0, 1, 2, 2])


def _cm_check(ctx, kw, out):
    k = kw["num_classes"]
    assert out.shape == (k, k) and int(out.sum()) == 4 and int(out.trace()) == int((kw["y_pred"] == Y3).sum())


TARGETS.append(Target(
    "metrics.confusion_matrix", lambda c, kw: metrics.confusion_matrix(Y3, **kw), {"y_pred": Y3, "num_classes": 3}, {
        "num_classes": int_arg(int_in(3, 100_000), high=6),
        "y_pred": obj_arg([Y3, torch.tensor([0, 1, 3, 2]), torch.tensor([0, -1, 2, 2]), torch.tensor([0.5, 1, 2, 2]),
                           Y3.view(2, 2), [0, 1, 2, 2], torch.tensor([0, 1, 2])],
                          lambda v: v is Y3, ("y_pred", "shape", "y_true")),
    }, check=_cm_check))

LOGITS = torch.nn.functional.one_hot(Y3, 3).float()
TARGETS.append(Target(
    "metrics.accuracy", lambda c, kw: metrics.accuracy(kw.pop("output"), Y3), {"output": LOGITS}, {
        "output": obj_arg([LOGITS, LOGITS.unsqueeze(-1), LOGITS[:3], Y3, torch.empty(0, 3), [0, 1],
                           LOGITS.view(1, 4, 3)],
                          lambda v: v is LOGITS or v is Y3, ("output", "predictions")),
    }, check=lambda c, kw, out: expect(out == 100.0, f"accuracy {out}")))

SPACE = {"a": search.choice(1, 2, 3), "b": search.int_range(0, 3)}          # 12 configs


def _objective_ctx():
    ctx: dict = {}

    def objective(config, budget):
        ctx["watch"].calls += 1
        return {"score": config["a"] * 10 + config["b"] + 0.001 * min(budget, 1000)}
    ctx["objective"] = objective
    return ctx


def _search_check(ctx, kw, out):
    assert isinstance(out, search.SearchResult) and out.trials
    assert all(t.status == "ok" for t in out.trials)


def _plain_name(v) -> bool:
    return v is None or (isinstance(v, str) and bool(v) and not v.startswith(".")
                         and not any(c in v for c in "/\\\0"))


SEARCH_COMMON = {
    "seed": int_arg(is_int),
    "maximize": flag_arg(),
    # a metric the objective does not return can only show after a trial: not fuzzed with names
    "metric": obj_arg(["score", "", None, 3, ["score"]], lambda v: v == "score"),
    "name": name_arg(["fuzz_search"], extra=[".hidden", "a/b", "a\\b"], valid=_plain_name),
}

for strategy, base, own in [
    ("random_search", {"budget": 1, "n_trials": 4},
     {"budget": int_arg(int_in(1, search.MAX_EPOCHS)), "n_trials": int_arg(int_in(1, search.MAX_COUNT))}),
    ("grid_search", {"budget": 1, "points": 2},
     {"budget": int_arg(int_in(1, search.MAX_EPOCHS)),
      "points": int_arg(lambda v: int_in(1, search.MAX_COUNT)(v) or same(v, {"b": 2}),
                        extra=[{"b": 2}, {"nope": 2}])}),
    ("successive_halving", {"n_configs": 4, "min_budget": 1, "max_budget": 9},
     {"n_configs": int_arg(int_in(1, search.MAX_COUNT)),
      "min_budget": int_arg(int_in(1, 9), names=("min_budget", "max_budget")),
      "max_budget": int_arg(int_in(1, search.MAX_EPOCHS), names=("max_budget", "min_budget")),
      "eta": int_arg(int_in(2, search.MAX_ETA))}),
    ("hyperband", {"min_budget": 1, "max_budget": 9},
     {"min_budget": int_arg(int_in(1, 9), names=("min_budget", "max_budget")),
      "max_budget": int_arg(int_in(1, search.MAX_EPOCHS), names=("max_budget", "min_budget")),
      "eta": int_arg(int_in(2, search.MAX_ETA))}),
    ("evolution", {"budget": 1, "n_trials": 6, "population": 3},
     {"n_trials": int_arg(int_in(1, search.MAX_COUNT)), "population": int_arg(int_in(1, search.MAX_COUNT)),
      "sample_size": int_arg(int_in(1, search.MAX_COUNT))}),
    ("hill_climb", {"budget": 1, "n_trials": 5},
     {"n_trials": int_arg(int_in(1, search.MAX_COUNT)), "neighbors": int_arg(int_in(1, search.MAX_COUNT))}),
    ("tree_search", {"budget": 1, "n_trials": 5},
     {"n_trials": int_arg(int_in(1, search.MAX_COUNT)), "points": int_arg(int_in(1, search.MAX_COUNT)),
      "exploration": num_arg(num_in(0), low=0, high=3)}),
]:
    args = {**own, **{k: v for k, v in SEARCH_COMMON.items() if strategy != "grid_search" or k != "seed"}}
    TARGETS.append(Target(
        f"search.{strategy}", lambda c, kw, s=strategy: getattr(search, s)(c["objective"], SPACE, **kw),
        base, args, _objective_ctx, _search_check, max_examples=20, watch_models=()))


def _cm_model_check(ctx, kw, out):
    shape = kw.get("in_shape", SHAPE)
    out.eval()
    assert out(torch.zeros(2, *shape)).shape == (2, kw.get("num_classes", K))


def _mlp_valid_hidden(v) -> bool:
    if isinstance(v, str) or not isinstance(v, (list, tuple)) or len(v) > 64 or not all(int_in(1, 4096)(h) for h in v):
        return False
    sizes = [64, *v, K]
    return sum((a + 1) * b for a, b in pairwise(sizes)) <= models.MAX_PARAMS


def _ints_valid(high: int = 4096):
    return lambda v: isinstance(v, (list, tuple)) and len(v) <= 64 and all(int_in(1, high)(c) for c in v)


def _convnet_channels_ok(v) -> bool:
    """Valid channels for the convnet target (8x8 input, 3x3 kernels, pooling, dense (8,), 4 classes)."""
    if not _ints_valid()(v):
        return False
    chans, size = [1, *v], 8
    conv = sum(a * b * 9 + 2 * b for a, b in pairwise(chans))
    for _ in v:
        size = size // 2 if size >= 2 else size
    flat = chans[-1] * size * size
    return conv + (flat + 1) * 8 + 9 * K <= models.MAX_PARAMS


def _shape_ok(image: bool):
    return lambda v: isinstance(v, tuple) and len(v) >= 1 and (len(v) == 3 or not image) \
        and all(int_in(1)(d) for d in v) and math.prod(v) <= models.MAX_INPUT


INTS_EDGES = [[], [8], [0], [-1], [True], [8.0], "8", 8, None, [HUGE], [4] * 65, [4096] * 10, (4,) * 5, [NAN]]
SHAPE_EDGES = [SHAPE, (1, 28, 28), (3, 4, 4), (0, 8, 8), (1, -1, 8), (1, 8), (1.0, 8, 8), (True, 8, 8), "188",
               None, (1, 10 ** 9, 10 ** 9), (64,)]

TARGETS.append(Target(
    "models.create_model(mlp)", lambda c, kw: models.create_model(kw.pop("name"), **kw),
    {"name": "mlp", "hidden": (8,), "in_shape": SHAPE, "num_classes": K}, {
        "name": name_arg(["mlp", "lenet300"], extra=["mpl", "resnet50"], names=("model",)),
        "hidden": obj_arg(INTS_EDGES, _mlp_valid_hidden),
        "in_shape": obj_arg(SHAPE_EDGES, _shape_ok(False)),
        "num_classes": int_arg(int_in(1, 100_000), high=12),
        "dropout": num_arg(num_in(0, 1, high_open=True), extra=[1.0, 0.5], low=-0.5, high=1.5),
        "activation": name_arg(models.ACTIVATIONS),
        "hiden": obj_arg([(8,)], lambda v: False, ("hiden",)),
    }, check=_cm_model_check, watch_models=()))

TARGETS.append(Target(
    "models.create_model(convnet)", lambda c, kw: models.create_model("convnet", **kw),
    {"channels": (4,), "dense": (8,), "in_shape": SHAPE, "num_classes": K}, {
        "channels": obj_arg(INTS_EDGES, _convnet_channels_ok),
        "dense": obj_arg([[], [8], [0], [True], "8", [HUGE]], _ints_valid(), ("dense",)),
        "kernel_sizes": obj_arg([3, 5, 4, 0, True, [3], [3, 3], 3.0, "3"],
                                lambda v: (v in (3, 5) and is_int(v)) or same(v, [3]), ("kernel",)),
        "pool": obj_arg([True, False, [True], [False, True], "yes", 1, None],
                        lambda v: is_flag(v) or same(v, [True]), ("pool",)),
        "batchnorm": flag_arg(), "global_pool": flag_arg(),
        "in_shape": obj_arg(SHAPE_EDGES, _shape_ok(True)),
    }, check=_cm_model_check, watch_models=(), max_examples=30))

TARGETS.append(Target(
    "models.create_model(others)", lambda c, kw: models.create_model(kw.pop("name"), in_shape=(3, 16, 16), **kw),
    {"name": "cifar_resnet", "num_classes": K}, {
        "name": name_arg(["cifar_resnet", "cifar_cnn", "cifar_net"], names=("model",)),
        "num_classes": int_arg(int_in(1, 100_000), high=12),
    }, check=lambda c, kw, out: expect(out.eval()(torch.zeros(1, 3, 16, 16)).shape == (1, kw["num_classes"]),
                                       "wrong output shape"), watch_models=(), max_examples=15))


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Where a call could write: the runs root and the cache (both temporary here) and the cwd."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOKIT_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return [D.runs_root(), cache, tmp_path]


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz(target, folders):
    @settings(max_examples=target.max_examples, **FUZZ_SETTINGS)
    @given(st.data())
    def run(data):
        arg = data.draw(st.sampled_from(sorted(target.args)), label="argument")
        value = data.draw(target.args[arg].values(), label="value")
        outcome = exercise(target, arg, value, folders)
        assert outcome.ok, f"{target.name}({arg}={value!r}): {outcome.kind}: {outcome.detail}"

    run()


def edge_inputs(target: Target) -> list[tuple[str, object]]:
    """Every (argument, edge value) pair of a target: what benchmarks/fuzz.py counts."""
    return [(arg, v) for arg, spec in sorted(target.args.items()) for v in spec.edges]


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_fuzz_edges(target, folders):
    """Every edge value of every argument, each once (Hypothesis draws only some of them)."""
    failures = []
    for arg, value in edge_inputs(target):
        outcome = exercise(target, arg, value, folders)
        if not outcome.ok:
            failures.append(f"{arg}={value!r:.60}: {outcome.kind}: {outcome.detail}")
    assert not failures, f"{target.name}: {len(failures)} of {len(edge_inputs(target))} edge inputs:\n" + \
        "\n".join(failures)


@settings(max_examples=60, **FUZZ_SETTINGS)
@given(st.lists(st.fixed_dictionaries({"acc": st.one_of(st.just(NAN), st.floats(-5, 5), st.integers(0, 3)),
                                       "params": st.one_of(st.just(NAN), st.integers(0, 4), st.just(INF))}),
                max_size=12))
def test_pareto_front_against_brute_force_with_nan(points):
    """NaN points never reach the front and dominate nothing; the rest is the brute-force front."""
    objectives = {"acc": True, "params": False}
    front = nas.pareto_front(points, objectives)
    ok = [i for i, p in enumerate(points) if not any(math.isnan(p[k]) for k in objectives)]
    brute = [i for i in ok if not any(
        points[j]["acc"] >= points[i]["acc"] and points[j]["params"] <= points[i]["params"]
        and (points[j]["acc"] > points[i]["acc"] or points[j]["params"] < points[i]["params"]) for j in ok)]
    assert sorted(front) == brute
    accs = [points[i]["acc"] for i in front]
    assert accs == sorted(accs, reverse=True)


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_target_base_call_is_valid(target, folders):
    """The tables hold: the base arguments are valid (the call succeeds with a valid result), every
    argument has edge values, and the edge list holds at least one invalid value."""
    ctx = target.setup()
    ctx["watch"] = Watch([ctx[m] for m in target.watch_models if m in ctx], folders)
    kw = dict(target.base)
    target.check(ctx, kw, within(CALL_SECONDS, lambda: target.run(ctx, kw)))
    for name, spec in target.args.items():
        assert spec.edges and not all(spec.valid(v) for v in spec.edges), (target.name, name)
