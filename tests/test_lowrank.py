"""mokit.lowrank: truncated SVD of Linear layers and the k x 1 / 1 x k split of convs, exact at full rank,
optimal (Eckart-Young) below it, ranks from energy or a parameter budget, and bad input refused by name."""

import math

import pytest
import torch
from torch import nn

from mokit import lowrank as L
from mokit.metrics import count_params
from mokit.models import create_model


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p)
    return module.eval()


def test_svd_linear_is_exact_at_full_rank_and_optimal_below_it():
    layer = seeded(nn.Linear(40, 24))
    x = torch.randn(16, 40)
    full = L.svd_linear(layer, L.max_rank(layer))
    assert L.max_rank(layer) == 24
    torch.testing.assert_close(full(x), layer(x), rtol=1e-4, atol=1e-4)
    s = L.singular_values(layer)
    for r in (1, 5, 12):
        two = L.svd_linear(layer, r)
        assert [tuple(m.weight.shape) for m in two] == [(r, 40), (24, r)] and two[0].bias is None
        w_r = two[1].weight @ two[0].weight
        err = torch.linalg.matrix_norm(layer.weight - w_r).item()
        assert err == pytest.approx(s[r:].pow(2).sum().sqrt().item(), rel=1e-4)      # Eckart-Young
        torch.testing.assert_close(two(x) - x @ w_r.T, two[1].bias.expand(16, -1))


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 8, 5), nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2)),
                                  nn.Conv2d(2, 5, 3, padding=1, bias=False)])
def test_split_conv_is_exact_at_full_rank_and_keeps_stride_and_padding(conv):
    conv = seeded(conv)
    x = torch.randn(2, conv.in_channels, 13, 11)
    full = L.split_conv(conv, L.max_rank(conv))
    torch.testing.assert_close(full(x), conv(x), rtol=1e-4, atol=1e-3)
    low = L.split_conv(conv, 1)
    assert low(x).shape == conv(x).shape
    assert [m.kernel_size for m in low] == [(conv.kernel_size[0], 1), (1, conv.kernel_size[1])]
    assert count_params(low) < count_params(conv)


def test_ranks_from_energy_and_from_a_parameter_budget():
    layer = seeded(nn.Linear(100, 60))
    s2 = L.singular_values(layer) ** 2
    ranks = [L.rank_for_energy(layer, e) for e in (0.1, 0.5, 0.9, 0.999, 1.0)]
    assert ranks == sorted(ranks) and ranks[0] >= 1 and ranks[-1] == 60
    for e, r in zip((0.1, 0.5, 0.9, 0.999), ranks):
        assert s2[:r].sum() / s2.sum() >= e - 1e-6 > s2[:r - 1].sum() / s2.sum()          # the smallest such rank
    for ratio in (0.05, 0.3, 0.9):
        r = L.rank_for_params(layer, ratio)
        assert r * 160 <= ratio * 6000 < (r + 1) * 160 or r == 1
    assert L.rank_for_params(layer, 1e-6) == 1


def test_factorize_shrinks_a_copy_and_leaves_the_model_and_its_last_layer_alone():
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert sorted(L.factorizable(model)) == ["0", "3", "7"]                  # the classifier is not
    small = L.factorize(model, params=0.25)
    assert count_params(small) < 0.4 * count_params(model)
    assert isinstance(small[9], nn.Linear) and isinstance(small[7], nn.Sequential)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(4, 1, 28, 28)
    near = L.factorize(model, energy=0.9999)
    assert (near(x) - model(x)).abs().max() < 1e-2 * model(x).abs().max()
    picked = L.factorize(model, {"7": 8})
    assert picked[7][0].out_features == 8 and isinstance(picked[3], nn.Conv2d)
    loss = nn.functional.cross_entropy(picked(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()                                                          # it trains like any model
    assert picked[7][0].weight.grad is not None


def test_a_total_gives_the_most_parameters_that_fit():
    model = create_model("lenet5")
    for target in (30_000, 100_000, 250_000):
        small = L.factorize(model, total=target)
        n = count_params(small)
        assert 0.9 * target <= n <= target, (target, n)
    with pytest.raises(ValueError, match="total=100 parameters is out of reach"):
        L.factorize(model, total=100)


def test_a_rule_skips_layers_that_would_not_shrink():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    same = L.factorize(model, energy=1.0)                                    # rank 4: 32 > 16 weights
    assert isinstance(same[0], nn.Linear)


@pytest.mark.parametrize("call, match", [
    (lambda m: L.factorize(m, {"7": 0}), "rank of layer '7'"),
    (lambda m: L.factorize(m, {"7": 501}), r"rank of layer '7'.*\(500, 800\)"),
    (lambda m: L.factorize(m, {"7": 2.5}), "rank of layer '7'"),
    (lambda m: L.factorize(m, {"9": 2}), r"no factorizable layer named \['9'\]"),
    (lambda m: L.factorize(m, {}), "ranks"),
    (lambda m: L.factorize(m), "exactly one of"),
    (lambda m: L.factorize(m, total=0), "total"), (lambda m: L.factorize(m, total=1e5), "total"),
    (lambda m: L.factorize(m, energy=0.5, params=0.5), "exactly one of"),
    (lambda m: L.factorize(m, energy=math.nan), "energy"),
    (lambda m: L.factorize(m, energy=0.0), "energy"),
    (lambda m: L.factorize(m, energy=1.5), "energy"),
    (lambda m: L.factorize(m, params=math.inf), "ratio"),
    (lambda m: L.svd_linear(m[0], 2), "nn.Linear"),
    (lambda m: L.split_conv(m[7], 2), "nn.Conv2d"),
    (lambda m: L.split_conv(nn.Conv2d(4, 4, 3, groups=2), 1), "groups=1"),
    (lambda m: L.max_rank(nn.ReLU()), "nn.Linear or an nn.Conv2d"),
])
def test_bad_input_is_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call(create_model("lenet5"))
