"""Property-based fuzzing (Hypothesis) of the numeric and name arguments of train, evaluate and prune
(issue 13): every call either succeeds or raises ValueError / TypeError naming the argument, before any
work (the model unchanged, no training step run). Divergence (FloatingPointError) is a result, not a
refusal: a huge but valid lr may diverge."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mokit import models
from mokit import prune as P
from mokit import train as T

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                    derandomize=True)

anything = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2 ** 70), 2 ** 70),
                     st.booleans(), st.none(), st.text(max_size=4), st.lists(st.integers(0, 3), max_size=2))
small_int = st.one_of(st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                      st.none(), st.text(max_size=2))


@pytest.fixture(scope="module")
def tiny(standin_mnist):
    return standin_mnist[0].subset(32), standin_mnist[1].subset(16)


def _fresh():
    T.seed_everything(0)
    return models.create_model("mlp", hidden=(8,))


def _run_checked(call, model, name):
    """Run call(); a refusal must name `name` and leave the model untouched with no training step."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    hook = model.register_forward_pre_hook(lambda m, i: steps.append(1) if m.training else None)
    try:
        call()
    except (ValueError, TypeError) as e:
        assert name in str(e), f"{e!r} does not name {name}"
        assert steps == [], f"{len(steps)} training steps before {e!r}"
        after = model.state_dict()
        assert all(torch.equal(v, after[k]) for k, v in before.items()), f"the model changed before {e!r}"
        return "refused"
    except FloatingPointError:
        return "diverged"
    finally:
        hook.remove()
    return "ran"


TRAIN_ARGS = {   # name -> (strategy, fixed other arguments)
    "lr": (anything, {"optimizer": "sgd"}),
    "weight_decay": (anything, {"optimizer": "sgd"}),
    "momentum": (anything, {"optimizer": "momentum"}),
    "label_smoothing": (anything, {}),
    "seed": (anything, {}),
    "epochs": (small_int, {}),
    "batch_size": (st.one_of(st.integers(-3, 40), anything.filter(lambda v: not isinstance(v, int))), {}),
    "optimizer": (st.one_of(st.sampled_from(list(T.OPTIMIZERS)), anything), {}),
    "schedule": (st.one_of(st.sampled_from(list(T.SCHEDULES)), anything), {}),
    "precision": (st.one_of(st.sampled_from(["fp32", "bf16", "fp16", "auto"]), anything), {"device": "cpu"}),
    "augment": (anything, {}),
    "lookahead": (anything, {}),
    "channels_last": (anything, {}),
}


@pytest.mark.parametrize("name", list(TRAIN_ARGS))
def test_train_argument_fuzz(tiny, name):
    strategy, fixed = TRAIN_ARGS[name]

    @SETTINGS
    @given(value=strategy)
    def check(value):
        model = _fresh()
        kw = {"epochs": 1, "progress": False, **fixed, name: value}
        _run_checked(lambda: T.train(model, tiny[0], **kw), model, name)
    check()


@pytest.mark.parametrize("name, strategy", [("batch_size", st.one_of(st.integers(-3, 40), anything)),
                                            ("tta", st.one_of(st.sampled_from(list(T.TTA)), anything))])
def test_evaluate_argument_fuzz(tiny, name, strategy):
    @SETTINGS
    @given(value=strategy)
    def check(value):
        model = _fresh()
        outcome = _run_checked(lambda: T.evaluate(model, tiny[1], **{name: value}), model, name)
        assert outcome in ("ran", "refused")
    check()


PRUNE_CALLS = {   # name -> (call(model, data, value), strategy)
    "threshold": (lambda m, d, v: P.prune_threshold(m, v), anything),
    "sparsity": (lambda m, d, v: P.prune_global(m, v), anything),
    "every": (lambda m, d, v: P.prune_gradual(m, d, 0.5, epochs=1, every=v, progress=False), small_int),
    "begin": (lambda m, d, v: P.prune_gradual(m, d, 0.5, epochs=1, begin=v, progress=False), anything),
    "epochs": (lambda m, d, v: P.prune_oneshot(m, d, 0.5, epochs=v, progress=False), small_int),
    "rounds": (lambda m, d, v: P.prune_iterative(m, d, 0.5, rounds=v, epochs=2, progress=False), small_int),
    "lr": (lambda m, d, v: P.prune_oneshot(m, d, 0.5, epochs=1, lr=v, optimizer="sgd", progress=False), anything),
    "layers": (lambda m, d, v: P.prune_global(m, 0.5, layers=v),
               st.one_of(anything, st.lists(st.sampled_from(["1", "3", "nope", ""]), max_size=3))),
    "importance": (lambda m, d, v: P.prune_global(m, 0.5, importance=v),
                   st.one_of(st.sampled_from(["l1", "l2", "random", "taylor"]), anything)),
    "width": (lambda m, d, v: P.widen(m, 1, v), st.one_of(st.integers(-3, 64), anything)),
    "position": (lambda m, d, v: P.deepen(m, v), st.one_of(st.integers(-3, 8), anything)),
}


@pytest.mark.parametrize("name", list(PRUNE_CALLS))
def test_prune_argument_fuzz(tiny, name):
    call, strategy = PRUNE_CALLS[name]

    @SETTINGS
    @given(value=strategy)
    def check(value):
        T.seed_everything(0)
        model = models.create_model("lenet300", hidden=(16, 8))
        outcome = _run_checked(lambda: call(model, tiny[0], value), model, name)
        if outcome == "ran" and name == "threshold":            # a threshold that ran was a real one
            assert math.isfinite(value) and value >= 0
    check()
