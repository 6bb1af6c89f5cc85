"""Bad inputs to mokit.prune (issue 13): each one gets a ValueError / TypeError naming the argument and
what is allowed, before any work - no weight zeroed, no training step run."""

import math

import pytest
import torch
from torch import nn

from mokit import prune as P
from mokit.data import load_dataset
from mokit.models import create_model
from mokit.train import seed_everything

NAN, INF = math.nan, math.inf


@pytest.fixture(scope="module")
def data():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOKIT_STANDIN", "1")
        return load_dataset("mnist", "train", subset=128)


def _mlp():
    """lenet300 with layers '1', '3', '5' (Linear), on MNIST-shaped input."""
    seed_everything(0)
    return create_model("lenet300", hidden=(32, 16))


def _cnn():
    seed_everything(0)
    return create_model("convnet", channels=(8, 12), dense=(20,), in_shape=(1, 12, 12))


def refused_before_work(call, model: nn.Module, match: str, kinds=(ValueError, TypeError)):
    """call() raises one of `kinds` matching `match`, with model's state unchanged and no training step run."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    hook = model.register_forward_pre_hook(lambda m, i: steps.append(1) if m.training else None)
    try:
        with pytest.raises(kinds, match=match) as info:
            call()
    finally:
        hook.remove()
    assert steps == [], f"{len(steps)} training forward passes before {info.value!r}"
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), f"the model changed before {info.value!r}"
    return info.value


def _ones(model, name):
    return torch.ones_like(dict(model.named_modules())[name].weight)


# (label, call(model, data), what the message must say); every call gets a fresh _mlp()
CASES = [
    # threshold pruning: a non-finite threshold used to zero every weight
    ("threshold nan", lambda m, d: P.prune_threshold(m, NAN), "threshold must be a finite number >= 0"),
    ("threshold inf", lambda m, d: P.prune_threshold(m, INF), "threshold must be"),
    ("threshold -1", lambda m, d: P.prune_threshold(m, -1), "threshold must be"),
    ("threshold True", lambda m, d: P.prune_threshold(m, True), "threshold must be"),
    ("threshold str", lambda m, d: P.prune_threshold(m, "0.1"), "threshold must be"),
    ("threshold None", lambda m, d: P.prune_threshold(m, None), "threshold must be"),
    ("threshold importance", lambda m, d: P.prune_threshold(m, 0.1, importance="l3"), "unknown importance 'l3'"),
    ("threshold_mask nan", lambda m, d: P.threshold_mask(m[1].weight.abs(), NAN), "threshold must be"),
    ("magnitude_mask nan", lambda m, d: P.magnitude_mask(m[1].weight.abs(), NAN), "sparsity must be"),
    # global / layerwise
    ("global layers unknown", lambda m, d: P.prune_global(m, 0.5, layers=["nope"]),
     r"no prunable layer named \['nope'\]"),
    ("global layers str", lambda m, d: P.prune_global(m, 0.5, layers="1"), "layers must be a list of layer names"),
    ("global layers empty", lambda m, d: P.prune_global(m, 0.5, layers=[]), "layers is empty"),
    ("global layers twice", lambda m, d: P.prune_global(m, 0.5, layers=["1", "1"]), "more than once"),
    ("global layers unhashable", lambda m, d: P.prune_global(m, 0.5, layers=[["1"]]), "no prunable layer named"),
    ("global layers int", lambda m, d: P.prune_global(m, 0.5, layers=5), "layers must be a list"),
    ("global sparsity nan", lambda m, d: P.prune_global(m, NAN), "sparsity must be"),
    ("global sparsity inf", lambda m, d: P.prune_global(m, INF), "sparsity must be"),
    ("global importance int", lambda m, d: P.prune_global(m, 0.5, importance=5), "unknown importance 5"),
    ("global importance list", lambda m, d: P.prune_global(m, 0.5, importance=["l1"]), "unknown importance"),
    ("global not a model", lambda m, d: P.prune_global("model", 0.5), "model must be an nn.Module"),
    ("layerwise unknown", lambda m, d: P.prune_layerwise(m, {"nope": 0.5}), "no prunable layer named"),
    ("layerwise nan", lambda m, d: P.prune_layerwise(m, {"1": NAN}), "sparsity must be"),
    ("layerwise True", lambda m, d: P.prune_layerwise(m, {"1": True}), "sparsity must be"),
    ("layerwise str", lambda m, d: P.prune_layerwise(m, "x"), "sparsity must be"),
    ("layerwise importance", lambda m, d: P.prune_layerwise(m, 0.5, importance=None), "unknown importance"),
    ("random seed -1", lambda m, d: P.prune_random(m, 0.5, seed=-1), "seed must be"),
    ("random seed True", lambda m, d: P.prune_random(m, 0.5, seed=True), "seed must be"),
    ("random seed 1.5", lambda m, d: P.prune_random(m, 0.5, seed=1.5), "seed must be"),
    ("random sparsity nan", lambda m, d: P.prune_random(m, NAN), "sparsity must be"),
    # Masks: a bare KeyError before
    ("Masks unknown layer", lambda m, d: P.Masks({"nope": torch.ones(3)}).apply(m),
     r"no Linear or Conv2d layer named \['nope'\]"),
    ("Masks unknown after a good one", lambda m, d: P.Masks({"1": _ones(m, "1") * 0, "nope": torch.ones(3)})(m),
     "no Linear or Conv2d layer named"),
    ("Masks shape", lambda m, d: P.Masks({"1": torch.zeros(3, 3)}).apply(m), r"mask '1' has shape \(3, 3\)"),
    ("Masks shape after a good one", lambda m, d: P.Masks({"1": _ones(m, "1") * 0, "3": torch.zeros(2)}).apply(m),
     "mask '3' has shape"),
    ("Masks not a tensor", lambda m, d: P.Masks({"1": 5}).apply(m), "mask '1' must be a tensor"),
    ("Masks not a layer", lambda m, d: P.Masks({"2": torch.ones(3)}).apply(m), "no Linear or Conv2d layer named"),
    # gradients
    ("gradients batches 0", lambda m, d: P.compute_gradients(m, d, batches=0), "batches must be"),
    ("gradients batches True", lambda m, d: P.compute_gradients(m, d, batches=True), "batches must be"),
    ("gradients batch_size 0", lambda m, d: P.compute_gradients(m, d, batch_size=0), "batch_size must be"),
    ("gradients empty data", lambda m, d: P.compute_gradients(m, d.take(slice(0, 0))), "data is empty"),
    ("gradients no data", lambda m, d: P.compute_gradients(m, None), "data must be a TensorData"),
    # the AGP schedule
    ("agp t nan", lambda m, d: P.agp_sparsity(NAN, 0.5), "t must be"),
    ("agp sparsity", lambda m, d: P.agp_sparsity(0.5, 1.5), "sparsity must be"),
    ("agp initial", lambda m, d: P.agp_sparsity(0.5, 0.5, initial=NAN), "initial must be"),
    ("Gradual every 0", lambda m, d: P.GradualPruning(0.5, every=0), "every must be"),
    ("Gradual every True", lambda m, d: P.GradualPruning(0.5, every=True), "every must be"),
    ("Gradual every 2.5", lambda m, d: P.GradualPruning(0.5, every=2.5), "every must be"),
    ("Gradual begin nan", lambda m, d: P.GradualPruning(0.5, begin=NAN), "begin must be"),
    ("Gradual begin True", lambda m, d: P.GradualPruning(0.5, begin=True, end=1), "begin must be"),
    ("Gradual end 1.5", lambda m, d: P.GradualPruning(0.5, end=1.5), "end must be"),
    ("Gradual end nan", lambda m, d: P.GradualPruning(0.5, end=NAN), "end must be"),
    ("Gradual begin > end", lambda m, d: P.GradualPruning(0.5, begin=0.8, end=0.2), "begin < end"),
    ("Gradual prune", lambda m, d: P.GradualPruning(0.5, prune=5), "prune must be"),
    # prune then train: everything is checked before the pruning
    ("oneshot epochs 0", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=0), "epochs must be"),
    ("oneshot epochs True", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=True), "epochs must be"),
    ("oneshot epochs nan", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=NAN), "epochs must be"),
    ("oneshot lr nan", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=1, lr=NAN), "lr must be"),
    ("oneshot momentum adam", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=1, momentum=0.9), "takes no momentum"),
    ("oneshot batch_size 0", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=1, batch_size=0), "batch_size must be"),
    ("oneshot misspelt", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=1, lrr=0.1), "no argument 'lrr'"),
    ("oneshot on_step", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=1, on_step=print), "on_step"),
    ("oneshot sparsity", lambda m, d: P.prune_oneshot(m, d, 1.5, epochs=1), "sparsity must be"),
    ("oneshot prune", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=1, prune="global"), "prune must be"),
    ("oneshot empty data", lambda m, d: P.prune_oneshot(m, d.take(slice(0, 0)), 0.5, epochs=1), "data is empty"),
    ("oneshot empty val_data", lambda m, d: P.prune_oneshot(m, d, 0.5, epochs=1, val_data=d.take(slice(0, 0))),
     "val_data is empty"),
    ("iterative rounds True", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=True, epochs=2), "rounds must be"),
    ("iterative rounds 0", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=0, epochs=2), "rounds must be"),
    ("iterative rounds > epochs", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=3, epochs=2), "rounds must be"),
    ("iterative rounds 1.5", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=1.5, epochs=2), "rounds must be"),
    ("iterative epochs nan", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=1, epochs=NAN), "epochs must be"),
    ("iterative epochs 0", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=1, epochs=0), "epochs must be"),
    ("iterative lr nan", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=1, epochs=1, lr=NAN), "lr must be"),
    ("iterative misspelt", lambda m, d: P.prune_iterative(m, d, 0.5, rounds=1, epochs=1, optimiser="sgd"),
     "did you mean 'optimizer'"),
    ("iterative sparsity", lambda m, d: P.prune_iterative(m, d, NAN, rounds=1, epochs=1), "sparsity must be"),
    ("gradual every 0", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=1, every=0), "every must be"),
    ("gradual every True", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=1, every=True), "every must be"),
    ("gradual begin nan", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=1, begin=NAN), "begin must be"),
    ("gradual end 1.5", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=1, end=1.5), "end must be"),
    ("gradual lr nan", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=1, lr=NAN), "lr must be"),
    ("gradual epochs 0", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=0), "epochs must be"),
    ("gradual batch_size", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=1, batch_size=True), "batch_size must be"),
    ("gradual on_step", lambda m, d: P.prune_gradual(m, d, 0.5, epochs=1, on_step=print), "on_step"),
    # sensitivity scan and allocation
    ("scan sparsity nan", lambda m, d: P.sensitivity_scan(m, d, [0.0, NAN]), "sparsity must be"),
    ("scan sparsity 1.5", lambda m, d: P.sensitivity_scan(m, d, [0.5, 1.5]), "sparsity must be"),
    ("scan sparsities number", lambda m, d: P.sensitivity_scan(m, d, 0.5), "sparsities must be a list"),
    ("scan sparsities str", lambda m, d: P.sensitivity_scan(m, d, "05"), "sparsities must be a list"),
    ("scan layers str", lambda m, d: P.sensitivity_scan(m, d, [0.5], layers="1"), "layers must be a list"),
    ("scan layers unknown", lambda m, d: P.sensitivity_scan(m, d, [0.5], layers=["nope"]), "no prunable layer named"),
    ("scan empty data", lambda m, d: P.sensitivity_scan(m, d.take(slice(0, 0)), [0.5]), "data is empty"),
    ("scan no data", lambda m, d: P.sensitivity_scan(m, None, [0.5]), "data must be a TensorData"),
    ("scan importance", lambda m, d: P.sensitivity_scan(m, d, [0.5], importance="l3"), "unknown importance"),
    ("allocate size 0", lambda m, d: P.allocate_sparsity({"a": {0: 90.0, 0.5: 80.0}}, {"a": 0}, 0.2), "sizes"),
    ("allocate size True", lambda m, d: P.allocate_sparsity({"a": {0: 90.0, 0.5: 80.0}}, {"a": True}, 0.2), "sizes"),
    ("allocate size 1.5", lambda m, d: P.allocate_sparsity({"a": {0: 90.0, 0.5: 80.0}}, {"a": 1.5}, 0.2), "sizes"),
    ("allocate sparsity nan", lambda m, d: P.allocate_sparsity({"a": {0: 90.0}}, {"a": 5}, NAN), "sparsity must be"),
    ("allocate empty scan", lambda m, d: P.allocate_sparsity({}, {}, 0.2), "scan is empty"),
    ("allocate scan not a dict", lambda m, d: P.allocate_sparsity([1], {"a": 1}, 0.2), "scan must be a dict"),
    ("allocate accuracy nan", lambda m, d: P.allocate_sparsity({"a": {0: 90.0, 0.5: NAN}}, {"a": 5}, 0.2), "accuracy"),
    ("allocate scan sparsity", lambda m, d: P.allocate_sparsity({"a": {0: 90.0, 1.5: 80.0}}, {"a": 5}, 0.2),
     "sparsity must be"),
    ("allocate curve not a dict", lambda m, d: P.allocate_sparsity({"a": [90.0]}, {"a": 5}, 0.2), "scan of layer 'a'"),
    # lottery tickets
    ("rewind unknown mask", lambda m, d: P.rewind(m, P.Masks({"nope": torch.ones(2)}), _mlp().state_dict()),
     "no Linear or Conv2d layer named"),
    ("rewind state", lambda m, d: P.rewind(m, P.Masks(), 5), "init_state must be"),
    ("rewind masks", lambda m, d: P.rewind(m, 5, _mlp().state_dict()), "masks must be"),
    ("reinit seed True", lambda m, d: P.reinit(m, P.Masks(), seed=True), "seed must be"),
    ("reinit seed -1", lambda m, d: P.reinit(m, P.Masks(), seed=-1), "seed must be"),
    ("reinit unknown mask", lambda m, d: P.reinit(m, P.Masks({"nope": torch.ones(2)}), seed=0),
     "no Linear or Conv2d layer named"),
    # structured
    ("shrink position", lambda m, d: P.shrink(m, {99: torch.tensor([0])}), "positions .*99.* cannot be re-sized"),
    ("shrink index range", lambda m, d: P.shrink(m, {1: torch.tensor([0, 32])}), r"indices .* in \[0, 32\)"),
    ("shrink index negative", lambda m, d: P.shrink(m, {1: torch.tensor([-1])}), r"indices .* in \[0, 32\)"),
    ("shrink empty", lambda m, d: P.shrink(m, {1: torch.tensor([], dtype=torch.long)}), "at least one"),
    ("shrink float index", lambda m, d: P.shrink(m, {1: torch.tensor([0.5])}), "integer"),
    ("shrink 2-D index", lambda m, d: P.shrink(m, {1: torch.zeros(2, 2, dtype=torch.long)}), "1-D"),
    ("shrink plan", lambda m, d: P.shrink(m, [1]), "plan must be a dict"),
    ("select nan", lambda m, d: P.select_channels(m, {1: NAN}), "sparsity must be"),
    ("select True", lambda m, d: P.select_channels(m, True), "sparsity must be"),
    ("select importance", lambda m, d: P.select_channels(m, 0.5, importance="l3"), "unknown importance"),
    ("prune_channels position", lambda m, d: P.prune_channels(m, {"1": 0.5}), "not prunable"),
    ("mask_channels position", lambda m, d: P.mask_channels(m, {99: torch.tensor([0])}), "positions .*99"),
    ("mask_channels index", lambda m, d: P.mask_channels(m, {1: torch.tensor([40])}), r"in \[0, 32\)"),
    ("remove_blocks str", lambda m, d: P.remove_blocks(create_model("cifar_resnet"), "stages.0.1"),
     "names must be a list"),
    ("remove_blocks unknown", lambda m, d: P.remove_blocks(create_model("cifar_resnet"), ["nope"]),
     "not a residual block"),
    ("resize_like missing", lambda m, d: P.resize_like(m, {k: v for k, v in m.state_dict().items() if k != "3.weight"}),
     "state_dict has no '3.weight'"),
    ("resize_like not a dict", lambda m, d: P.resize_like(m, 5), "state_dict must be a dict"),
    ("widen width True", lambda m, d: P.widen(m, 1, True), "width must be"),
    ("widen width nan", lambda m, d: P.widen(m, 1, NAN), "width must be"),
    ("widen width 40.5", lambda m, d: P.widen(m, 1, 40.5), "width must be"),
    ("widen width small", lambda m, d: P.widen(m, 1, 3), "width must be"),
    ("widen position True", lambda m, d: P.widen(m, True, 40), "position must be"),
    ("widen position str", lambda m, d: P.widen(m, "1", 40), "position must be"),
    ("widen position 5", lambda m, d: P.widen(m, 5, 40), "cannot be widened"),
    ("widen seed", lambda m, d: P.widen(m, 1, 40, seed=-1), "seed must be"),
    ("deepen True", lambda m, d: P.deepen(m, True), "position must be"),
    ("deepen nan", lambda m, d: P.deepen(m, NAN), "position must be"),
    ("deepen str", lambda m, d: P.deepen(m, "2"), "position must be"),
    ("deepen -1", lambda m, d: P.deepen(m, -1), "must be a ReLU"),
    ("channel_scores importance", lambda m, d: P.channel_scores(m[1], "l3"), "unknown importance"),
    ("sparsity_report not a model", lambda m, d: P.sparsity_report(None), "model must be an nn.Module"),
]


@pytest.mark.parametrize("label, call, match", CASES, ids=[c[0] for c in CASES])
def test_refused_before_work(data, label, call, match):
    model = _mlp()
    refused_before_work(lambda: call(model, data), model, match)


def test_gradual_pruning_with_every_above_the_step_count_still_reaches_the_target(data):
    model = _mlp()
    masks = P.prune_gradual(model, data, 0.8, epochs=1, every=1000, progress=False)   # 1 step of 128
    assert abs(P.weight_sparsity(model) - 0.8) < 2e-3 and abs(masks.kept_fraction - 0.2) < 2e-3


def test_layer_names_may_be_any_sequence():
    model = _mlp()
    masks = P.prune_global(model, 0.5, layers=("1", "3"))
    assert list(masks) == ["1", "3"]


def test_a_plain_dict_of_masks_is_accepted_by_rewind():
    model = _mlp()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    masks = dict(P.prune_global(model, 0.5))
    P.rewind(model, masks, init)
    assert torch.equal(model[1].weight, init["1.weight"] * masks["1"])


def test_scan_restores_the_weights_even_when_evaluation_fails(data, monkeypatch):
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(*a, **k):
        raise RuntimeError("evaluation broke")
    monkeypatch.setattr(P, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        P.sensitivity_scan(model, data, [0.5])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_cnn_plan_checks_use_channels():
    model = _cnn()
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        P.shrink(model, {0: torch.tensor([8])})
    assert P.shrink(model, {0: [0, 1, 1]})[0].out_channels == 3           # a list of indices is fine
