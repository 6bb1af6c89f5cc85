"""mokit.supernet: weight sharing is exact (the supernet's forward is its extracted subnet's), only a
subnet's slices train, sampling rules, BatchNorm recalibration against a hand computation, bad input."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from mokit import search
from mokit.data import TensorData
from mokit.latency import LatencyTable
from mokit.metrics import count_params
from mokit.supernet import SAMPLING_RULES, Residual, SubnetSampler, Supernet, center_crop, recalibrate_bn
from mokit.train import train

SHAPE = (1, 16, 16)
SMALL = dict(widths=((2, 4), (4, 8)), depths=(1, 2), kernels=(3, 5))


def tiny_data(n=64, seed=0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, *SHAPE, generator=g) + y.view(-1, 1, 1, 1) / 3
    return TensorData(x, y, "tiny", "train", tuple(str(i) for i in range(10)), real=False)


def configs(net: Supernet, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [net.largest(), net.smallest()] + [search.sample(net.space(), rng) for _ in range(n)]


def test_center_crop_is_the_middle_of_the_kernel():
    w = torch.arange(2 * 25.0).view(1, 2, 5, 5)
    assert torch.equal(center_crop(w, 3), w[..., 1:4, 1:4])
    assert torch.equal(center_crop(w, 1), w[..., 2:3, 2:3])
    assert torch.equal(center_crop(w, 5), w)
    for bad in (0, 2, 4, 7):
        with pytest.raises(ValueError, match=f"kernel {bad}"):
            center_crop(w, bad)


def test_space_lists_every_stage_and_the_extremes():
    net = Supernet(SHAPE, **SMALL)
    space = net.space()
    assert list(space) == ["d0", "w0", "k0", "d1", "w1", "k1"]
    assert net.largest() == {"d0": 2, "w0": 4, "k0": 5, "d1": 2, "w1": 8, "k1": 5}
    assert net.smallest() == {"d0": 1, "w0": 2, "k0": 3, "d1": 1, "w1": 4, "k1": 3}
    assert len(search.grid(space)) == (2 * 2 * 2) ** 2


@pytest.mark.parametrize("trained", [False, True])
def test_supernet_forward_equals_the_extracted_subnet(trained):
    torch.manual_seed(0)
    net = Supernet(SHAPE, **SMALL)
    if trained:      # BatchNorm statistics and weights moved away from their initial values
        train(net, tiny_data(), epochs=1, batch_size=16, on_step=SubnetSampler(net), progress=False)
    net.eval()
    x = tiny_data(8, seed=1).x
    for c in configs(net, 6):
        sub = net.extract(c).eval()
        with torch.no_grad():
            torch.testing.assert_close(net.set(c)(x), sub(x), rtol=1e-5, atol=1e-5)
        assert sum(isinstance(m, Residual) for m in sub) == c["d0"] + c["d1"] - 2
        assert sum(isinstance(m, nn.Conv2d) for m in sub.modules()) == c["d0"] + c["d1"]


def test_extract_has_the_subnets_own_size_and_copies_weights():
    net = Supernet(SHAPE, **SMALL)
    small, large = net.extract(net.smallest()), net.extract(net.largest())
    assert count_params(small) < count_params(large) <= count_params(net)
    first = small[0]
    assert isinstance(first, nn.Conv2d) and tuple(first.weight.shape) == (2, 1, 3, 3)
    with torch.no_grad():
        first.weight.add_(1.0)                   # a copy: the supernet keeps its weights
    assert not torch.equal(net.stages[0][0].conv.weight[:2, :1, 1:4, 1:4], first.weight)


def test_a_training_step_touches_only_the_active_slices():
    torch.manual_seed(0)
    net = Supernet(SHAPE, **SMALL).set({"d0": 1, "w0": 2, "k0": 3, "d1": 1, "w1": 4, "k1": 3})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = tiny_data(16).x, tiny_data(16).y
    nn.functional.cross_entropy(net(x), y).backward()
    g = net.stages[0][0].conv.weight.grad
    assert g[:2, :, 1:4, 1:4].abs().sum() > 0
    assert g[2:].abs().sum() == 0 and g[:, :, 0].abs().sum() == 0         # other channels, the 5x5 ring
    assert net.stages[0][1].conv.weight.grad is None                     # depth 1: block 2 unused
    bn = net.stages[0][0].bn                                             # running stats: the first 2 only
    assert not torch.equal(bn.running_mean[:2], before["stages.0.0.bn.running_mean"][:2])
    assert torch.equal(bn.running_mean[2:], before["stages.0.0.bn.running_mean"][2:])


def test_sandwich_rule_trains_the_extremes_in_turn():
    net = Supernet(SHAPE, **SMALL)
    sampler = SubnetSampler(net, rule="sandwich", seed=3)
    assert net.active == net.largest()                                   # the first step's subnet
    seen = [dict(net.active)] + [sampler.next() for _ in range(7)]
    assert seen[0] == seen[4] == net.largest() and seen[1] == seen[5] == net.smallest()
    assert sampler.counts == {"largest": 2, "smallest": 2, "random": 4}


@pytest.mark.parametrize("rule", SAMPLING_RULES)
def test_every_rule_draws_configs_inside_the_space(rule):
    net = Supernet(SHAPE, **SMALL)
    sampler = SubnetSampler(net, rule=rule, seed=0)
    for _ in range(20):
        assert net.check_config(sampler.next()) == net.active
    steps = train(net, tiny_data(), epochs=1, batch_size=16, on_step=sampler, progress=False).steps
    assert len(steps) == 4 and sampler.calls == 25


def test_recalibrate_bn_gives_the_plain_average_of_the_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=0.3))
    data = tiny_data(40)
    seen = recalibrate_bn(model, data, batch_size=8)
    with torch.no_grad():
        z = model[0](data.x)                                             # (N, 3, 14, 14)
    mean = z.mean(dim=(0, 2, 3))
    batch_vars = torch.stack([z[i:i + 8].var(dim=(0, 2, 3), unbiased=True) for i in range(0, 40, 8)])
    assert seen == 40 and model[1].momentum == 0.3 and model.training
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, batch_vars.mean(0), rtol=1e-4, atol=1e-5)
    assert recalibrate_bn(model, data, batch_size=8, max_batches=2) == 16


def test_recalibration_repairs_what_shared_statistics_break():
    """Stats shared by every subnet are wrong for any one of them: recalibrating brings an extracted
    subnet's eval-mode output back to its train-mode (batch-statistics) output."""
    torch.manual_seed(0)
    net = Supernet(SHAPE, **SMALL)
    train(net, tiny_data(), epochs=2, batch_size=16, on_step=SubnetSampler(net), progress=False)
    data = tiny_data(64, seed=5)
    sub = net.extract(net.smallest())
    sub.train()
    with torch.no_grad():
        target = sub(data.x)
        stale = (sub.eval()(data.x) - target).abs().mean()
        recalibrate_bn(sub, data, batch_size=64)
        fresh = (sub.eval()(data.x) - target).abs().mean()
    assert fresh < 0.1 * stale


def test_the_latency_table_prices_extracted_subnets():
    net = Supernet(SHAPE, **SMALL)
    table = LatencyTable(repeats=2)
    subs = [net.extract(c) for c in configs(net, 2)]
    table.fit(subs, SHAPE)
    assert all(table.predict(s, SHAPE) > 0 for s in subs)


@pytest.mark.parametrize("bad, match", [
    ({"d0": 3, "w0": 2, "k0": 3, "d1": 1, "w1": 4, "k1": 3}, r"d0=3 is outside this supernet; allowed: \[1, 2\]"),
    ({"d0": 1, "w0": 3, "k0": 3, "d1": 1, "w1": 4, "k1": 3}, r"w0=3 is outside"),
    ({"d0": 1, "w0": 2, "k0": 7, "d1": 1, "w1": 4, "k1": 3}, r"k0=7 is outside"),
    ({"d0": 1, "w0": 2, "k0": 3}, r"needs exactly the decisions"),
    ({"d0": 1, "w0": 2, "k0": 3, "d1": 1, "w1": 4, "k1": 3, "d2": 1}, r"needs exactly the decisions"),
])
def test_a_subnet_outside_the_space_is_named(bad, match):
    net = Supernet(SHAPE, **SMALL)
    before = dict(net.active)
    for call in (net.set, net.extract, net.check_config):
        with pytest.raises(ValueError, match=match):
            call(bad)
    assert net.active == before
    with pytest.raises(TypeError, match="dict of decisions"):
        net.set([1, 2])


@pytest.mark.parametrize("kw, match", [
    (dict(widths=()), "widths must be a non-empty"),
    (dict(widths=((4, 0),)), r"widths\[0\]"),
    (dict(widths=((4,), (float("nan"),))), r"widths\[1\]"),
    (dict(kernels=(3, 4)), "kernels must be odd"),
    (dict(kernels=(2,)), "kernels must be odd"),
    (dict(depths=(0, 1)), "depths"),
    (dict(widths=((2,),) * 5), "5 stages halve a 16-pixel input"),
    (dict(in_shape=(16, 16)), "in_shape"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_supernets_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Supernet(**{"in_shape": SHAPE, **kw})


def test_bad_sampler_and_recalibration_inputs():
    net = Supernet(SHAPE, **SMALL)
    with pytest.raises(ValueError, match="rule"):
        SubnetSampler(net, rule="greedy")
    with pytest.raises(TypeError, match="needs a Supernet"):
        SubnetSampler(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no BatchNorm"):
        recalibrate_bn(nn.Linear(2, 2), tiny_data())
    with pytest.raises(ValueError, match="empty"):
        recalibrate_bn(net.extract(), tiny_data().take(slice(0, 0)))
    with pytest.raises(ValueError, match="batch_size"):
        recalibrate_bn(net.extract(), tiny_data(), batch_size=0)
