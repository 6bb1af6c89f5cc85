"""mokit.latency: the per-layer table sees every layer call with its input shape, shares entries between
nets, fits an overhead, predicts, and stores only numbers (a bad or foreign file is refused by name)."""

import json
import math

import pytest
import torch
from torch import nn

from mokit import nas
from mokit.latency import LatencyTable, layer_calls, layer_key

SHAPE = (1, 28, 28)
CONFIGS = [
    {"n_conv": 1, "c0": 8, "k0": 3, "pool0": True, "n_dense": 0, "activation": "relu", "batchnorm": True,
     "global_pool": False},
    {"n_conv": 2, "c0": 8, "k0": 3, "pool0": True, "c1": 16, "k1": 5, "pool1": True, "n_dense": 1, "d0": 32,
     "activation": "relu", "batchnorm": True, "global_pool": False},
    {"n_conv": 2, "c0": 4, "k0": 5, "pool0": False, "c1": 8, "k1": 3, "pool1": True, "n_dense": 0,
     "activation": "gelu", "batchnorm": False, "global_pool": True},
]


def test_layer_calls_are_every_leaf_in_order_with_its_input_shape():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
    calls = layer_calls(model.train(), SHAPE)
    assert [m for m, _ in calls] == list(model)
    assert [s for _, s in calls] == [SHAPE, (4, 26, 26), (4, 26, 26), (4, 13, 13), (676,)]
    assert model.training                                                      # left as it was
    assert layer_key(model[1], (4, 26, 26)) == "ReLU() @ (4, 26, 26)"


def test_the_table_shares_layers_fits_and_predicts():
    models = [nas.build(c, SHAPE) for c in CONFIGS]
    table = LatencyTable(repeats=5)
    sums = [table.table_ms(m, SHAPE) for m in models]
    n_calls = sum(len(layer_calls(m, SHAPE)) for m in models)
    assert 0 < len(table.entries) < n_calls                                    # the first conv stage is shared
    assert all(s > 0 for s in sums)
    assert table.predict(models[0], SHAPE) == pytest.approx(sums[0])           # before a fit: the plain sum
    fit = table.fit(models, SHAPE)
    assert fit["models"] == 3 and fit["layers"] == len(table.entries) and math.isfinite(fit["scale"])
    for m in models:
        measured = LatencyTable(repeats=5)._ms(m, SHAPE)
        assert 0.2 * measured < table.predict(m, SHAPE) < 5 * measured        # the right order of magnitude


def test_save_and_load_keep_numbers_only(tmp_path):
    table = LatencyTable(repeats=3)
    table.fit([nas.build(c, SHAPE) for c in CONFIGS[:2]], SHAPE)
    path = table.save(tmp_path / "lut.json")
    back = LatencyTable.load(path)
    assert back.entries == table.entries and (back.overhead_ms, back.scale) == (table.overhead_ms, table.scale)
    blob = json.loads(path.read_text())
    for bad in ("{not json", json.dumps(blob | {"entries": {"x": "__import__('os')"}}),
                json.dumps(blob | {"entries": {"x": -1.0}}), json.dumps(blob | {"scale": "nan"}),
                json.dumps({k: v for k, v in blob.items() if k != "entries"}), json.dumps(blob | {"threads": 0})):
        path.write_text(bad)
        with pytest.raises(ValueError, match=r"lut\.json: not a latency table"):
            LatencyTable.load(path)
    with pytest.raises(ValueError, match=r"missing\.json"):
        LatencyTable.load(tmp_path / "missing.json")


@pytest.mark.parametrize("call, match", [
    (lambda: LatencyTable(batch_size=0), "batch_size"), (lambda: LatencyTable(repeats=math.nan), "repeats"),
    (lambda: LatencyTable(threads=0), "threads"), (lambda: LatencyTable().fit([nn.ReLU()], SHAPE), "at least 2"),
    (lambda: layer_calls("model", SHAPE), "nn.Module"), (lambda: layer_calls(nn.ReLU(), (1, 0, 28)), "in_shape"),
])
def test_bad_input_is_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_model_on_the_table_runs_no_grad_and_keeps_its_weights():
    model = nas.build(CONFIGS[1], SHAPE)
    before = [p.detach().clone() for p in model.parameters()]
    LatencyTable(repeats=2).table_ms(model, SHAPE)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
