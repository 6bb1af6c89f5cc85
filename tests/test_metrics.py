import math

import pytest
import torch
from conftest import within
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
    assert size["bytes"] > 67 * 4 and size["zipped_bytes"] > 0
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


def test_speedup_interleaves_single_passes_and_sees_real_work():
    one, eight = nn.Linear(256, 256), nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])
    order = []
    one.register_forward_hook(lambda *_: order.append("one"))
    eight[0].register_forward_hook(lambda *_: order.append("eight"))
    one.train(), eight.eval()
    threads = torch.get_num_threads()
    r = metrics.speedup(one, eight, (256,), batch_size=64, pairs=6, warmup=0, threads=1)
    timed = order[2:]                                             # after one shape-check pass each
    assert [timed[i:i + 2] for i in range(0, 12, 2)] == [["eight", "one"], ["one", "eight"]] * 3
    assert r["speedup"] > 2.5 and r["reference_ms"] > r["ms"] > 0 and r["threads"] == 1
    assert torch.get_num_threads() == threads and one.training and not eight.training
    assert metrics.speedup(eight, one, (256,), batch_size=64, pairs=6, threads=1)["speedup"] < 0.4


@pytest.mark.parametrize("kw, match", [
    ({"pairs": 0}, "pairs must be an integer in \\[1, 100000\\], got 0"),
    ({"pairs": float("nan")}, "pairs must be an integer"),
    ({"warmup": -1}, "warmup"), ({"threads": 0}, "threads"), ({"batch_size": 2 ** 21}, "batch_size"),
])
def test_speedup_refuses_before_running(kw, match):
    calls = []
    model = nn.Linear(4, 4)
    model.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match=match):
        metrics.speedup(model, nn.Linear(4, 4), (4,), **kw)
    assert calls == []
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        metrics.speedup(model, "dense", (4,))


def test_summarize_table():
    t = metrics.summarize({"a": nn.Linear(4, 2), "b": nn.Linear(4, 3)}, in_shape=(4,), repeats=2)
    assert [r["model"] for r in t] == ["a", "b"] and t[0]["params"] == 10
    assert "ms @ batch 256" in str(t) and "<table>" in t._repr_html_()
    with pytest.raises(ValueError):
        metrics.summarize({})


# ---------------------------------------------------------------------------------------------
# Bad input (issue 13): a clear error before any work, never a hang or a silent wrong result
# ---------------------------------------------------------------------------------------------



@pytest.mark.parametrize("kw, match", [
    ({"min_seconds": float("inf")}, "min_seconds must be a finite number in \\[0, 3600\\], got inf"),
    ({"min_seconds": float("nan")}, "min_seconds must be a finite number"),
    ({"min_seconds": -1}, "min_seconds"),
    ({"repeats": 10 ** 9}, "repeats must be an integer in \\[1, 1e\\+06\\], got 1000000000"),
    ({"repeats": True}, "repeats must be an integer"),
    ({"warmup": -1}, "warmup must be an integer"),
    ({"threads": 0}, "threads must be an integer"),
    ({"batch_size": 2.0}, "batch_size must be an integer"),
])
def test_measure_latency_refuses_before_running(kw, match):
    calls = []
    model = nn.Linear(4, 4)
    model.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    with pytest.raises(ValueError, match=match):
        within(5, lambda: metrics.measure_latency(model, (4,), **kw))
    assert calls == [] and model.training                      # nothing ran, the model was not touched


@pytest.mark.parametrize("shape", [(0,), (-1, 4), (2.5,), (True,), (), "44"])
def test_in_shape_must_be_positive_integers(shape):
    with pytest.raises((ValueError, TypeError), match="in_shape"):
        metrics.measure_latency(nn.Linear(4, 4), shape)
    with pytest.raises((ValueError, TypeError), match="in_shape"):
        metrics.count_macs(nn.Linear(4, 4), shape)


def test_confusion_matrix_refuses_labels_outside_the_classes():
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="y_true has labels outside \\[0, 2\\] \\(num_classes=3\\): \\[3\\]"):
        metrics.confusion_matrix(y, torch.tensor([0, 1, 2, 0]), 3)           # was counted as (1, 0)
    with pytest.raises(ValueError, match=r"y_pred has labels outside \[0, 2\].*\[-1\]"):
        metrics.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, -1]), 3)
    with pytest.raises(ValueError, match="y_pred has labels outside"):
        metrics.per_class_report(torch.tensor([0, 1]), torch.tensor([0, 5]), 3)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        metrics.confusion_matrix(y, y, 0)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        metrics.confusion_matrix(y, y, 4.0)
    with pytest.raises(ValueError, match="y_true must hold integer class labels"):
        metrics.confusion_matrix(torch.tensor([0.5, 1.0]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="1-D tensor of class labels"):
        metrics.confusion_matrix(y.view(2, 2), y.view(2, 2), 4)
    assert metrics.confusion_matrix(torch.tensor([0.0, 1.0]), torch.tensor([1, 1]), 2).tolist() == [[0, 1], [0, 1]]


def test_accuracy_refuses_shapes_it_would_score_wrongly():
    y = torch.tensor([0, 1, 2])
    logits = torch.nn.functional.one_hot(y, 3).float()
    assert metrics.accuracy(logits, y) == 100.0
    with pytest.raises(ValueError, match="output must be scores \\(N, C\\) or predicted labels \\(N,\\), "
                                         "got shape \\(3, 3, 1\\)"):
        metrics.accuracy(logits.unsqueeze(-1), y)                           # returned 0.0
    with pytest.raises(ValueError, match="y must be a 1-D tensor"):
        metrics.accuracy(logits, y.view(3, 1))
    with pytest.raises(ValueError, match="accuracy of no examples"):
        metrics.accuracy(torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(TypeError, match=r"output must be a torch\.Tensor"):
        metrics.accuracy([0, 1, 2], y)


def test_summarize_checks_everything_first():
    calls = []
    model = nn.Linear(4, 2)
    model.register_forward_hook(lambda *_: calls.append(1))
    for kw, match in [({"batch_sizes": (1, 0)}, "batch_sizes"), ({"repeats": 0}, "repeats"),
                      ({"batch_sizes": ()}, "batch_sizes"), ({"in_shape": (0,)}, "in_shape")]:
        with pytest.raises(ValueError, match=match):
            metrics.summarize({"a": model}, **{"in_shape": (4,), **kw})
    assert calls == []
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        metrics.summarize({"a": "not a model"}, in_shape=(4,))


def test_a_shape_the_model_cannot_take_names_in_shape():
    model = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="the model does not run on in_shape \\(5,\\)"):
        metrics.count_macs(model, (5,))                                     # was a RuntimeError
    with pytest.raises(ValueError, match="the model does not run on in_shape \\(1, 8\\)"):
        metrics.measure_latency(model, (1, 8))
    assert model.training


def test_kendall_tau_against_a_brute_force_count_and_its_edges():
    import itertools
    import random
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randrange(2, 9)
        x, y = [rng.randrange(4) for _ in range(n)], [rng.randrange(4) for _ in range(n)]
        pairs = list(itertools.combinations(range(n), 2))

        def sign(v, i, j):
            return (v[i] > v[j]) - (v[i] < v[j])
        num = sum(sign(x, i, j) * sign(y, i, j) for i, j in pairs)
        den = (sum(sign(x, i, j) != 0 for i, j in pairs) * sum(sign(y, i, j) != 0 for i, j in pairs)) ** 0.5
        got = metrics.kendall_tau(x, y)
        assert (math.isnan(got) and den == 0) or got == pytest.approx(num / den)
    assert metrics.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    for bad in ([1.0], [1, float("nan")]):
        with pytest.raises(ValueError):
            metrics.kendall_tau(bad, [1, 2])
