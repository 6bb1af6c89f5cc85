"""mokit.prune against torch.nn.utils.prune and against the dense model it came from."""

import copy
import io

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from mokit import prune as P
from mokit.data import load_dataset
from mokit.models import create_model
from mokit.train import seed_everything, train


def _mlp():
    seed_everything(0)
    return create_model("mlp", hidden=(32, 16), in_shape=(1, 8, 8))


def _cnn(batchnorm=True):
    seed_everything(0)
    return create_model("convnet", channels=(8, 12), dense=(20,), batchnorm=batchnorm, in_shape=(1, 12, 12))


# --- unstructured -------------------------------------------------------------------------------

def test_magnitude_mask_on_hand_made_tensor():
    w = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.2, 0.05]])
    assert P.magnitude_mask(w.abs(), 0.5).tolist() == [[0, 1, 1], [1, 0, 0]]
    assert P.magnitude_mask(w.abs(), 0.0).sum() == 6
    assert P.threshold_mask(w.abs(), 0.3).tolist() == [[0, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.99])
def test_layerwise_matches_torch_l1_unstructured(sparsity):
    ours, ref = _mlp(), _mlp()
    masks = P.prune_layerwise(ours, sparsity)
    for name, m in P.prunable_layers(ref).items():
        tprune.l1_unstructured(m, "weight", amount=sparsity)
        assert torch.equal(masks[name], m.weight_mask), name
        tprune.remove(m, "weight")
    ref_state = ref.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("sparsity", [0.5, 0.92])
def test_global_matches_torch_global_unstructured(sparsity):
    ours, ref = _cnn(), _cnn()
    masks = P.prune_global(ours, sparsity)
    layers = P.prunable_layers(ref)
    tprune.global_unstructured([(m, "weight") for m in layers.values()], tprune.L1Unstructured, amount=sparsity)
    for name, m in layers.items():
        assert torch.equal(masks[name], m.weight_mask), name
    total = sum(m.numel() for m in masks.values())
    assert abs(masks.kept_fraction - round((1 - sparsity) * total) / total) < 1e-9
    assert abs(P.weight_sparsity(ours) - sparsity) < 1e-3


def test_random_pruning_matches_sparsity_and_is_seeded():
    a, b = _mlp(), _mlp()
    ma, mb = P.prune_random(a, 0.7, seed=3), P.prune_random(b, 0.7, seed=3)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    for name, m in ma.items():
        assert abs(1 - m.mean().item() - 0.7) < 0.01, name
    assert not torch.equal(ma["1"], P.prune_layerwise(_mlp(), 0.7)["1"])   # not the magnitude mask


def test_threshold_pruning_and_report():
    model = _mlp()
    P.prune_threshold(model, 0.05)
    for m in P.prunable_layers(model).values():
        w = m.weight[m.weight != 0]
        assert w.abs().min() > 0.05
    report = P.sparsity_report(model)
    assert report[-1]["layer"] == "total"
    assert report[-1]["nonzeros"] == sum(r["nonzeros"] for r in report[:-1])
    assert abs(report[-1]["sparsity %"] - 100 * P.weight_sparsity(model)) < 1e-9


def test_masks_stay_applied_while_training(standin):
    data = load_dataset("mnist", "train", subset=256)
    seed_everything(0)
    model = create_model("lenet300", hidden=(32, 16))
    masks = P.prune_global(model, 0.8)
    train(model, data, epochs=2, on_step=masks, progress=False)
    for name, m in P.prunable_layers(model).items():
        assert torch.all(m.weight[masks[name] == 0] == 0), name
    assert abs(P.weight_sparsity(model) - 0.8) < 1e-3


def test_schedules_reach_the_target_sparsity(standin):
    data = load_dataset("mnist", "train", subset=256)
    assert P.agp_sparsity(0, 0.9) == 0 and P.agp_sparsity(1, 0.9) == pytest.approx(0.9)
    assert P.agp_sparsity(0.5, 0.8) == pytest.approx(0.8 - 0.8 * 0.125)
    for run in (lambda m: P.prune_oneshot(m, data, 0.9, epochs=2, progress=False),
                lambda m: P.prune_iterative(m, data, 0.9, rounds=2, epochs=2, progress=False),
                lambda m: P.prune_gradual(m, data, 0.9, epochs=2, every=1, progress=False)):
        seed_everything(0)
        model = create_model("lenet300", hidden=(32, 16))
        masks = run(model)
        assert abs(P.weight_sparsity(model) - 0.9) < 2e-3
        assert abs(masks.kept_fraction - 0.1) < 2e-3


def test_taylor_importance_needs_and_uses_gradients(standin):
    data = load_dataset("mnist", "train", subset=256)
    model = _mlp_mnist()
    with pytest.raises(ValueError, match="compute_gradients"):
        P.prune_global(model, 0.5, importance="taylor")
    P.compute_gradients(model, data, batches=2)
    m = model[1]
    assert torch.equal(P.taylor_importance(m), (m.weight * m.weight.grad).abs())
    P.prune_global(model, 0.5, importance="taylor")
    assert abs(P.weight_sparsity(model) - 0.5) < 1e-3


def _mlp_mnist():
    seed_everything(0)
    return create_model("lenet300", hidden=(32, 16))


def test_sensitivity_scan_restores_weights(standin):
    data = load_dataset("mnist", "test", subset=200)
    model = _mlp_mnist()
    before = copy.deepcopy(model.state_dict())
    scan = P.sensitivity_scan(model, data, [0.0, 0.5, 0.95])
    assert list(scan) == list(P.prunable_layers(model))
    assert all(0 <= a <= 100 for row in scan.values() for a in row.values())
    assert all(scan[k][0.0] == scan["1"][0.0] for k in scan)             # sparsity 0 = the dense model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_rewind_and_reinit():
    model = _mlp()
    init = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    masks = P.prune_global(model, 0.8)
    P.rewind(model, masks, init)
    w, w0 = model[1].weight, init["1.weight"]
    assert torch.equal(w, w0 * masks["1"])
    P.reinit(model, masks, seed=1)
    assert torch.all(model[1].weight[masks["1"] == 0] == 0)
    assert not torch.equal(model[1].weight, w0 * masks["1"])


# --- structured ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [_mlp, _cnn, lambda: _cnn(batchnorm=False),
                                  lambda: create_model("lenet5", in_shape=(1, 28, 28))])
@pytest.mark.parametrize("importance", ["l1", "l2", "random"])
def test_structured_pruning_equals_masked_model(make, importance):
    model = make().eval()
    with torch.no_grad():                                      # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    keep = P.select_channels(model, 0.5, importance=importance)
    small = P.shrink(model, keep).eval()
    masked = P.mask_channels(model, keep).eval()
    x = torch.randn(16, *([1, 28, 28] if isinstance(model[0], nn.Conv2d) and model[0].kernel_size == (5, 5)
                          else [1, 8, 8] if isinstance(model[1], nn.Linear) else [1, 12, 12]))
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    assert torch.allclose(small(x), masked(x), atol=1e-5)
    # saved as a plain state dict, loaded with weights_only=True, rebuilt from the architecture
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    loaded = P.resize_like(make(), torch.load(buf, weights_only=True)).eval()
    assert torch.equal(loaded(x), small(x))


def test_channel_scores_l1_and_taylor_on_hand_made_layer():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 0.0]]))
    assert P.channel_scores(lin, "l1").tolist() == [3.0, 1.0, 3.0]
    assert P.channel_scores(lin, "l2").tolist() == [5.0, 0.5, 9.0]
    lin.weight.grad = torch.ones(3, 2)
    assert P.channel_scores(lin, "taylor").tolist() == [3.0, 1.0, 3.0]


def test_remove_blocks_equals_zeroed_residual_branch():
    seed_everything(0)
    model = create_model("cifar_resnet", blocks=(2, 1, 1)).eval()
    assert P.removable_blocks(model) == ["stages.0.0", "stages.0.1"]
    names = ["stages.0.1"]
    masked = copy.deepcopy(model)
    with torch.no_grad():
        block = dict(masked.named_modules())["stages.0.1"]
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    small = P.remove_blocks(model, names).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(small(x), masked(x), atol=1e-5)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    loaded = P.resize_like(create_model("cifar_resnet", blocks=(2, 1, 1)), torch.load(buf, weights_only=True))
    assert torch.equal(loaded.eval()(x), small(x))
    with pytest.raises(ValueError, match="projection"):
        P.remove_blocks(model, ["stages.1.0"])


# --- growing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, position, width", [(_mlp, 1, 50), (_cnn, 0, 13), (_cnn, 4, 20),
                                                   (lambda: _cnn(False), 3, 30)])
def test_widen_keeps_the_function(make, position, width):
    model = make().eval()
    wide = P.widen(model, position, width).eval()
    x = torch.randn(8, *([1, 8, 8] if isinstance(model[1], nn.Linear) else [1, 12, 12]))
    assert P.prunable_layers(wide)[str(position)].weight.shape[0] == width
    assert (wide(x) - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("make, position", [(_mlp, 2), (_cnn, 2), (lambda: _cnn(False), 1)])
def test_deepen_keeps_the_function(make, position):
    model = make().eval()
    deep = P.deepen(model, position).eval()
    x = torch.randn(8, *([1, 8, 8] if isinstance(model[1], nn.Linear) else [1, 12, 12]))
    assert len(deep) == len(model) + 2
    assert (deep(x) - model(x)).abs().max() <= 1e-5


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "half", None, True])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a finite number in \[0, 1\)"):
        P.prune_global(_mlp(), bad)
    with pytest.raises(ValueError, match="sparsity"):
        P.prune_channels(_mlp(), bad)


def test_unknown_importance_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown importance 'l3'.*l1, l2, taylor, random"):
        P.prune_global(_mlp(), 0.5, importance="l3")
    with pytest.raises(ValueError, match="unknown importance"):
        P.prune_channels(_cnn(), 0.5, importance="fisher")


def test_structured_pruning_names_unhandled_module_types():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(TypeError, match="LayerNorm"):
        P.prune_channels(model, 0.5)
    with pytest.raises(TypeError, match="ResNet"):
        P.prune_channels(create_model("cifar_resnet"), 0.5)
    with pytest.raises(TypeError, match="groups"):
        P.prune_channels(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1)), 0.5)


def test_empty_model():
    for call in (lambda m: P.prune_global(m, 0.5), lambda m: P.prune_layerwise(m, 0.5),
                 lambda m: P.prune_channels(m, 0.5), P.sparsity_report):
        with pytest.raises(ValueError, match="empty model"):
            call(nn.Sequential())


def test_other_bad_input():
    with pytest.raises(ValueError, match="no prunable layer named"):
        P.prune_layerwise(_mlp(), {"nope": 0.5})
    with pytest.raises(ValueError, match="not prunable"):
        P.prune_channels(_mlp(), {5: 0.5})
    with pytest.raises(ValueError, match="width must be"):
        P.widen(_mlp(), 1, 3)
    with pytest.raises(ValueError, match="must be a ReLU"):
        P.deepen(_mlp(), 1)
    with pytest.raises(ValueError, match="rounds"):
        P.prune_iterative(_mlp(), None, 0.5, rounds=3, epochs=2)
    with pytest.raises(ValueError, match="begin"):
        P.GradualPruning(0.5, begin=0.8, end=0.2)


# --- devices and random states (issue 12 s.4) ---------------------------------------------------

def test_masks_live_on_the_weights_device():
    model = _cnn().to("meta")                      # a device that is not the CPU, on any machine
    for masks in (P.prune_global(model, 0.5), P.prune_layerwise(model, 0.5), P.prune_threshold(model, 0.1)):
        for name, m in P.prunable_layers(model).items():
            assert masks[name].device == m.weight.device and masks[name].dtype == m.weight.dtype, name


def test_masks_are_not_copied_at_every_step(monkeypatch):
    model = _cnn()
    masks = P.prune_global(model, 0.7)
    calls = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(a) or real_to(self, *a, **k))
    for _ in range(3):
        masks(model)                               # what train(on_step=masks) calls after each step
    assert calls == [], f"{len(calls)} tensor copies in 3 steps"
    model.double()                                 # the model changed dtype: each mask moves once
    masks(model)
    masks(model)
    assert len(calls) == len(masks)
    assert all(m.dtype == torch.float64 for m in masks.values())


def test_prune_random_and_reinit_leave_the_callers_random_state_alone(monkeypatch):
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: seeded.append(seed))
    models = [_mlp() for _ in range(3)]           # (seed_everything seeds CUDA too: before the check)
    torch.manual_seed(123)
    seeded.clear()
    cpu_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    masks = P.prune_random(models[0], 0.5, seed=1)
    model, again = models[1], models[2]
    P.reinit(model, masks, seed=2)
    assert seeded == [], f"the global CUDA generator was reseeded with {seeded}"
    assert torch.equal(torch.random.get_rng_state(), cpu_state)
    if cuda_state is not None:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_state))
    P.reinit(again, masks, seed=2)                 # seeded: the same fresh weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


# --- the CIFAR net: a frozen whitening conv, BatchNorm with a frozen scale ------------------------

def _cifar():
    seed_everything(0)
    model = create_model("cifar_net", widths=(8, 12, 16)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-0.2, 0.2)
    return model


def test_frozen_whitening_conv_is_never_pruned():
    model = _cifar()
    whiten = model[0].weight.clone()
    assert "0" not in P.prunable_layers(model)
    P.prune_global(model, 0.9)
    assert torch.equal(model[0].weight, whiten)
    assert abs(P.weight_sparsity(model) - 0.9) < 1e-3
    assert "0" not in P.sensitivity_scan(model, _cifar_data(), [0.0, 0.5])
    with pytest.raises(ValueError, match="no prunable layer named"):
        P.prune_global(model, 0.5, layers=["0"])


def _cifar_data():
    from mokit.data import TensorData
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g),
                      "cifar10", "test", tuple(str(i) for i in range(10)), False)


def test_channel_pruning_of_the_cifar_net():
    model = _cifar()
    keep = P.select_channels(model, 0.5)
    assert 0 not in keep and sorted(keep) == [2, 6, 9, 13, 16, 20]          # not the frozen whitening conv
    small, masked = P.shrink(model, keep).eval(), P.mask_channels(model, keep).eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(small(x), masked(x), atol=1e-5)
    assert [m.out_channels for m in small if isinstance(m, nn.Conv2d)] == [24, 4, 4, 6, 6, 8, 8]
    frozen = {n for n, p in small.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in model.named_parameters() if not p.requires_grad}   # BN scales stay fixed
    buf = io.BytesIO()
    torch.save(small.state_dict(), buf)
    buf.seek(0)
    loaded = P.resize_like(create_model("cifar_net", widths=(8, 12, 16)), torch.load(buf, weights_only=True))
    assert torch.equal(loaded.eval()(x), small(x))
    assert {n for n, p in loaded.named_parameters() if not p.requires_grad} == frozen


# --- allocation from the scan -------------------------------------------------------------------

def test_allocate_sparsity_buys_the_cheapest_weights_first():
    scan = {"robust": {0.0: 90.0, 0.5: 90.0, 0.9: 89.0}, "fragile": {0.0: 90.0, 0.5: 80.0, 0.9: 50.0}}
    chosen = P.allocate_sparsity(scan, {"robust": 100, "fragile": 100}, 0.5)
    assert chosen == pytest.approx({"robust": 0.9, "fragile": 0.1})
    # a bump (noise) in the curve: the drop is made non-decreasing and convex before pricing
    bumpy = {"a": {0.0: 90.0, 0.5: 85.0, 0.7: 86.0, 0.9: 85.0}, "b": {0.0: 90.0, 0.9: 60.0}}
    chosen = P.allocate_sparsity(bumpy, {"a": 100, "b": 100}, 0.3)
    assert chosen == pytest.approx({"a": 0.6, "b": 0.0})
    with pytest.raises(ValueError, match="beyond the scan"):
        P.allocate_sparsity(scan, {"robust": 100, "fragile": 100}, 0.95)
    with pytest.raises(ValueError, match="needs sparsity 0"):
        P.allocate_sparsity({"a": {0.5: 80.0}}, {"a": 10}, 0.2)
    with pytest.raises(ValueError, match="same layers"):
        P.allocate_sparsity(scan, {"robust": 100}, 0.2)


@pytest.mark.parametrize("seed", range(5))
def test_allocate_sparsity_reaches_the_target_on_random_scans(seed):
    g = torch.Generator().manual_seed(seed)
    grid = [0.0, 0.5, 0.8, 0.9, 0.95]
    scan = {f"l{i}": {s: 90.0 - float(torch.rand(1, generator=g)) * 40 * s for s in grid} for i in range(4)}
    sizes = {f"l{i}": int(torch.randint(10, 1000, (1,), generator=g)) for i in range(4)}
    target = float(torch.rand(1, generator=g)) * 0.95
    chosen = P.allocate_sparsity(scan, sizes, target)
    assert all(0 <= s <= 0.95 for s in chosen.values())
    assert sum(sizes[n] * s for n, s in chosen.items()) / sum(sizes.values()) == pytest.approx(target)


# --- N:M (2:4) sparsity --------------------------------------------------------------------------


def test_nm_mask_keeps_the_n_largest_of_every_m_consecutive_weights():
    w = torch.tensor([[0.1, -0.9, 0.3, 0.05, 2.0, -0.01, 0.5, -0.6]])
    assert P.nm_mask(w.abs(), 2, 4).tolist() == [[0, 1, 1, 0, 1, 0, 0, 1]]
    assert P.nm_mask(w.abs(), 1, 4).tolist() == [[0, 1, 0, 0, 1, 0, 0, 0]]
    conv = torch.randn(4, 2, 2, 2)                         # groups run over in_channels x kh x kw
    mask = P.nm_mask(conv.abs(), 2, 4)
    assert mask.shape == conv.shape and (mask.reshape(4, -1, 4).sum(-1) == 2).all()
    brute = torch.stack([torch.isin(torch.arange(4), g.abs().argsort(descending=True)[:2]).float()
                         for g in conv.reshape(-1, 4)]).reshape(conv.shape)
    assert torch.equal(mask, brute)


def test_prune_nm_masks_every_group_and_the_pattern_survives_training():
    seed_everything(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    masks = P.prune_nm(net, 2, 4)
    assert set(masks) == {"1", "3"} and masks.kept_fraction == 0.5
    x, y = torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,))
    train(net, [(x, y)], epochs=3, lr=0.01, on_step=masks, progress=False)
    for name in masks:
        groups = dict(net.named_modules())[name].weight.detach().reshape(-1, 4)
        assert ((groups != 0).sum(1) <= 2).all(), name


@pytest.mark.parametrize("call, match", [
    (lambda: P.nm_mask(torch.randn(3, 6), 2, 4), "6 inputs, not a multiple of m=4"),
    (lambda: P.nm_mask(torch.randn(3, 8), 5, 4), r"n must be an integer in \[1, 4\]"),
    (lambda: P.nm_mask(torch.randn(3, 8), 2, float("inf")), "m must be an integer"),
    (lambda: P.nm_mask(torch.randn(8), 2, 4), "weight-shaped tensor"),
    (lambda: P.prune_nm(nn.Sequential(nn.Linear(3, 3)), 2, 4), "no layer .* groups of m=4"),
    (lambda: P.prune_nm(nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 3)), 2, 4, layers=["9"]), "9"),
])
def test_nm_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_magnitude_mask_of_channels_last_scores_is_the_contiguous_one():
    """A conv weight moved to channels_last (as train() does on CPU) gives the same mask, not an error."""
    w = torch.randn(8, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    expected = P.magnitude_mask(w.abs(), 0.6)
    got = P.magnitude_mask(w.abs().to(memory_format=torch.channels_last), 0.6)
    assert torch.equal(got, expected) and got.sum() == round(0.4 * w.numel())
