import pytest
import torch
from torch import nn

from mokit import metrics


def test_accuracy_and_confusion_hand_made():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    assert metrics.accuracy(pred, y) == pytest.approx(100 * 4 / 6)
    cm = metrics.confusion_matrix(y, pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    r = metrics.per_class_report(y, pred, 3)
    # class 0: TP 1, FP 1, FN 1 -> P 0.5, R 0.5; class 1: TP 2, FP 1 -> P 2/3, R 1
    assert r["precision"] == pytest.approx([0.5, 2 / 3, 1.0])
    assert r["recall"] == pytest.approx([0.5, 1.0, 0.5])
    assert r["f1"][1] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    logits = torch.nn.functional.one_hot(pred, 3).float()
    assert metrics.accuracy(logits, y) == metrics.accuracy(pred, y)


def test_counts_and_size():
    m = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))
    assert metrics.count_params(m) == 10 * 5 + 5 + 5 * 2 + 2
    with torch.no_grad():
        m[0].weight[:, :5] = 0
    assert metrics.count_nonzeros(m) == 67 - 25
    size = metrics.model_size(m)
    assert size["bytes"] > 67 * 4 and 0 < size["zipped_bytes"]
    zeros = nn.Linear(1000, 100)
    nn.init.zeros_(zeros.weight)
    s = metrics.model_size(zeros)
    assert s["zipped_bytes"] < 0.05 * s["bytes"]                # zeros compress away


def test_macs_match_hand_count():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    assert metrics.count_macs(m, (1, 28, 28)) == 26 * 26 * 4 * 9 + 4 * 26 * 26 * 10


def test_latency_is_measured_and_restores_threads():
    threads = torch.get_num_threads()
    r = metrics.measure_latency(nn.Linear(64, 64), (64,), batch_size=8, repeats=5, threads=1)
    assert r["threads"] == 1 and r["ms"] > 0 and r["throughput"] == pytest.approx(8 / (r["ms"] / 1e3))
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="batch_size"):
        metrics.measure_latency(nn.Linear(4, 4), (4,), batch_size=0)


def test_summarize_table():
    t = metrics.summarize({"a": nn.Linear(4, 2), "b": nn.Linear(4, 3)}, in_shape=(4,), repeats=2)
    assert [r["model"] for r in t] == ["a", "b"] and t[0]["params"] == 10
    assert "ms @ batch 256" in str(t) and "<table>" in t._repr_html_()
    with pytest.raises(ValueError):
        metrics.summarize({})
