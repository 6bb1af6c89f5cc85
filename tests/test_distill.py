import pytest
import torch
import torch.nn.functional as F

from mokit.data import Batches
from mokit.distill import (
    CachedTeacher,
    HintStudent,
    distill_loss,
    fit_class_bias,
    hint_loss,
    kd_loss,
    penultimate,
    soft_target_loss,
    soft_targets,
)
from mokit.models import create_model
from mokit.train import evaluate, predict, seed_everything, train


@pytest.fixture(scope="module")
def tiny(standin_mnist):
    tr, te = standin_mnist
    seed_everything(0)
    teacher = create_model("mlp", hidden=(64,))
    train(teacher, tr, epochs=5, lr=3e-3, progress=False)
    return tr, te, teacher


def test_soft_targets_hand_made():
    z = torch.tensor([[0.0, 0.0, 2.0]])
    assert torch.allclose(soft_targets(z, 1.0), torch.softmax(z, 1))
    assert torch.allclose(soft_targets(z, 2.0), torch.softmax(torch.tensor([[0.0, 0.0, 1.0]]), 1))
    # very high temperature -> uniform
    assert torch.allclose(soft_targets(z, 1e6), torch.full((1, 3), 1 / 3), atol=1e-5)


@pytest.mark.parametrize("t", [1.0, 3.0, 20.0])
def test_soft_loss_matches_f_kl_div(t):
    g = torch.Generator().manual_seed(0)
    s, v = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g) * 3
    ref = F.kl_div(F.log_softmax(s / t, 1), F.softmax(v / t, 1), reduction="batchmean") * t * t
    assert torch.allclose(soft_target_loss(s, v, t), ref, atol=1e-6)


def test_kd_loss_mixes_by_alpha():
    g = torch.Generator().manual_seed(1)
    s, v, y = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g), torch.arange(6)
    soft = F.kl_div(F.log_softmax(s / 4, 1), F.softmax(v / 4, 1), reduction="batchmean") * 16
    hard = F.cross_entropy(s, y)
    for a in (0.0, 0.3, 1.0):
        assert torch.allclose(kd_loss(s, v, y, temperature=4, alpha=a), a * soft + (1 - a) * hard, atol=1e-6)


def test_high_temperature_gradient_is_logit_matching():
    # d(T^2 KL)/dz = T (q - p) -> (z - v) / K for zero-mean logits (Hinton et al. 2015, sec. 2.1)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 10, generator=g)
    v = torch.randn(1, 10, generator=g)
    z, v = (z - z.mean()).requires_grad_(), v - v.mean()
    soft_target_loss(z, v, 1000.0).backward()
    assert torch.allclose(z.grad, (z - v).detach() / 10, atol=1e-3)


def test_cached_teacher_same_batches_and_logits(tiny):
    tr, _, teacher = tiny
    cache = CachedTeacher(teacher, tr, batch_size=128, seed=3)
    assert torch.allclose(cache.logits, predict(teacher, tr))
    plain = list(tr.batches(128, seed=3))
    for (x, y), (px, py) in zip(cache, plain, strict=True):
        assert torch.equal(x, px) and torch.equal(y, py)
        with torch.no_grad():
            assert torch.allclose(cache(x, y), teacher(x), atol=1e-5)
    assert len(cache) == len(plain)


def test_cached_distillation_equals_live_teacher(tiny):
    tr, te, teacher = tiny
    runs = []
    for cached in (False, True):
        seed_everything(0)
        student = create_model("mlp", hidden=(16,))
        if cached:
            cache = CachedTeacher(teacher, tr, seed=0)
            train(student, cache, epochs=2, loss_fn=distill_loss(cache, temperature=3, alpha=0.7), progress=False)
        else:
            train(student, tr, epochs=2, seed=0, loss_fn=distill_loss(teacher, temperature=3, alpha=0.7),
                  progress=False)
        runs.append(predict(student, te))
    assert torch.allclose(runs[0], runs[1], atol=1e-4)


def test_cache_used_with_other_batches_fails(tiny):
    tr, _, teacher = tiny
    cache = CachedTeacher(teacher, tr)
    with pytest.raises(RuntimeError, match="pass the cache itself"):
        train(create_model("mlp", hidden=(8,)), tr, epochs=1, loss_fn=distill_loss(cache), progress=False)


def test_distilled_student_learns(tiny):
    tr, te, teacher = tiny
    seed_everything(0)
    student = create_model("mlp", hidden=(16,))
    train(student, tr, epochs=5, lr=3e-3, loss_fn=distill_loss(teacher, temperature=4, alpha=0.9), progress=False)
    assert evaluate(student, te)["accuracy"] > 50


@pytest.mark.parametrize("t", [0, -1.0, float("nan"), "4", True])
def test_bad_temperature(t):
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(torch.nn.Linear(2, 2), temperature=t)


@pytest.mark.parametrize("a", [-0.1, 1.5, None])
def test_bad_alpha(a):
    with pytest.raises(ValueError, match="alpha"):
        distill_loss(torch.nn.Linear(2, 2), alpha=a)


def test_teacher_with_other_output_size_fails(tiny):
    tr, _, _ = tiny
    teacher = create_model("mlp", hidden=(8,), num_classes=5)
    with pytest.raises(ValueError, match="same number of outputs"):
        train(create_model("mlp", hidden=(8,)), tr, epochs=1, loss_fn=distill_loss(teacher), progress=False)


@pytest.mark.parametrize("name, kwargs, layer", [("lenet5", {}, "8"), ("mlp", {"hidden": (16, 8)}, "4"),
                                                  ("cifar_net", {}, "23")])
def test_penultimate_names_the_layer_the_classifier_reads(name, kwargs, layer):
    model = create_model(name, **kwargs)
    assert penultimate(model) == layer
    modules = dict(model.named_modules())
    assert not isinstance(modules[layer], (torch.nn.Linear, torch.nn.Flatten))


def test_penultimate_refuses_a_model_without_hidden_layer():
    with pytest.raises(ValueError, match="no layer before a final Linear"):
        penultimate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="no layer before a final Linear"):
        penultimate(torch.nn.Sequential(torch.nn.ReLU()))


def test_hint_student_trains_adapter_and_student(tiny):
    tr, te, _ = tiny
    teacher = create_model("lenet5", channels=(4, 8), hidden=32)
    seed_everything(0)
    wrapped = HintStudent(create_model("mlp", hidden=(16,)), teacher, layer="2", teacher_layer="8")
    assert tuple(wrapped.adapter.weight.shape) == (32, 16)
    before = wrapped.adapter.weight.detach().clone()
    train(wrapped, tr, epochs=1, loss_fn=hint_loss(wrapped, weight=1.0), progress=False)
    assert not torch.equal(before, wrapped.adapter.weight)
    student = wrapped.remove_hooks()
    assert evaluate(student, te)["n"] == len(te)
    with pytest.raises(ValueError, match="no layer"):
        HintStudent(create_model("mlp", hidden=(16,)), teacher, layer="99", teacher_layer="8")
    with pytest.raises(ValueError, match="hint weight"):
        hint_loss(wrapped, weight=-1)


def test_fit_class_bias_reaches_fraction(tiny):
    _, te, teacher = tiny
    import copy
    model = copy.deepcopy(teacher)
    shift = fit_class_bias(model, te, cls=3, fraction=0.5)
    frac = (predict(model, te).argmax(1) == 3).float().mean().item()
    assert shift > 0 and abs(frac - 0.5) < 0.02
    with pytest.raises(ValueError, match="class 12"):
        fit_class_bias(model, te, cls=12)


def test_augmented_cache_serves_the_trainers_batches_and_reuses_logits(tiny):
    tr, _, teacher = tiny
    cache = CachedTeacher(teacher, tr, batch_size=256, seed=5, augment="flip_translate")
    plain = Batches(tr, 256, seed=5, augment="flip_translate")
    served = []
    for _ in range(2):                                       # two epochs: the flips alternate
        for (x, y), (px, py) in zip(cache, plain, strict=True):
            assert torch.equal(x, px) and torch.equal(y, py)
            served.append(cache(x, y))
            with torch.no_grad():
                assert torch.allclose(served[-1], teacher(x), atol=1e-5)
    assert cache.teacher_batches == 2 * len(cache)
    cache.rewind()                                           # the same batches again, no teacher pass
    again = [cache(x, y) for _ in range(2) for x, y in cache]
    assert cache.teacher_batches == 2 * len(cache)
    assert all(torch.equal(a, b) for a, b in zip(served, again, strict=True))


def test_scratch_student_on_the_cache_equals_plain_augmented_training(tiny):
    tr, te, teacher = tiny
    cache = CachedTeacher(teacher, tr, batch_size=128, seed=2, augment="flip_translate")
    runs = []
    for data in (tr, cache):
        seed_everything(0)
        student = create_model("mlp", hidden=(16,))
        kw = {"seed": 2, "augment": "flip_translate"} if data is tr else {}
        train(student, data, epochs=2, batch_size=128, progress=False, **kw)
        runs.append(predict(student, te))
    assert torch.allclose(runs[0], runs[1], atol=1e-5)
    assert cache.teacher_batches == 0                        # the scratch student never asked the teacher


def test_cache_bad_input(tiny):
    tr, _, teacher = tiny
    with pytest.raises(ValueError, match="augment"):
        CachedTeacher(teacher, tr, augment="mixup")
    with pytest.raises(ValueError, match="batch_size"):
        CachedTeacher(teacher, tr, batch_size=0)
    with pytest.raises(ValueError, match="only without augmentation"):
        CachedTeacher(teacher, tr, augment="flip_translate", logits=torch.zeros(len(tr), 10))


# --- bad input, refused before any work (issue 13) ----------------------------------------------

NAN, INF = float("nan"), float("inf")


def _unchanged_after(call, model, match, kinds=(ValueError, TypeError)):
    """call() raises one of `kinds` matching `match`; model's state and its hooks are as before."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = {n: len(m._forward_hooks) for n, m in model.named_modules()}
    with pytest.raises(kinds, match=match):
        call()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the model changed"
    assert hooks == {n: len(m._forward_hooks) for n, m in model.named_modules()}, "a hook was left behind"


def _student():
    seed_everything(1)
    return create_model("mlp", hidden=(16,))


BAD_DISTILL = [
    ("cache empty data", lambda tr, t: CachedTeacher(t, tr.take(slice(0, 0))), "data is empty"),
    ("cache no data", lambda tr, t: CachedTeacher(t, None), "data must be a TensorData"),
    ("cache batch_size True", lambda tr, t: CachedTeacher(t, tr, batch_size=True), "batch_size must be"),
    ("cache batch_size 1.5", lambda tr, t: CachedTeacher(t, tr, batch_size=1.5), "batch_size must be"),
    ("cache seed -1", lambda tr, t: CachedTeacher(t, tr, seed=-1), "seed must be"),
    ("cache seed True", lambda tr, t: CachedTeacher(t, tr, seed=True), "seed must be"),
    ("cache logits length", lambda tr, t: CachedTeacher(t, tr, logits=torch.zeros(3, 10)), "logits must be"),
    ("cache logits type", lambda tr, t: CachedTeacher(t, tr, logits=5), "logits must be"),
    ("cache logits 1-D", lambda tr, t: CachedTeacher(t, tr, logits=torch.zeros(len(tr))), "logits must be"),
    ("cache logits nan", lambda tr, t: CachedTeacher(t, tr, logits=torch.full((len(tr), 10), NAN)), "finite"),
    ("cache logits int", lambda tr, t: CachedTeacher(t, tr, logits=torch.zeros(len(tr), 10, dtype=torch.long)),
     "logits must be"),
    ("cache teacher 5", lambda tr, t: CachedTeacher(5, tr), "teacher must be"),
    ("cache of a cache", lambda tr, t: CachedTeacher(CachedTeacher(t, tr.subset(8)), tr), "teacher must be"),
    ("cache precision", lambda tr, t: CachedTeacher(t, tr, precision="fp8"), "unknown precision"),
    ("distill teacher 5", lambda tr, t: distill_loss(5), "teacher must be"),
    ("distill temperature inf", lambda tr, t: distill_loss(t, temperature=INF), "temperature must be"),
    ("soft_targets nan", lambda tr, t: soft_targets(torch.zeros(2, 3), NAN), "temperature must be"),
    ("kd alpha nan", lambda tr, t: kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                           alpha=NAN), "alpha must be"),
    ("hint weight nan", lambda tr, t: hint_loss(_hint(t), weight=NAN), "weight must be"),
    ("hint weight inf", lambda tr, t: hint_loss(_hint(t), weight=INF), "weight must be"),
    ("hint weight True", lambda tr, t: hint_loss(_hint(t), weight=True), "weight must be"),
    ("hint weight str", lambda tr, t: hint_loss(_hint(t), weight="1"), "weight must be"),
    ("hint temperature", lambda tr, t: hint_loss(_hint(t), temperature=NAN), "temperature must be"),
    ("hint model", lambda tr, t: hint_loss(t), "model must be a HintStudent"),
    ("hint layer", lambda tr, t: HintStudent(_student(), t, layer="99", teacher_layer="1"), "no layer '99'"),
    ("hint teacher_layer", lambda tr, t: HintStudent(_student(), t, layer="1", teacher_layer="99"), "no layer '99'"),
    ("hint layer int", lambda tr, t: HintStudent(_student(), t, layer=1, teacher_layer="1"), "no layer 1"),
    ("hint in_shape 0", lambda tr, t: HintStudent(_student(), t, "1", "1", in_shape=(0, 28, 28)), "in_shape"),
    ("hint in_shape str", lambda tr, t: HintStudent(_student(), t, "1", "1", in_shape="abc"), "in_shape"),
    ("hint in_shape float", lambda tr, t: HintStudent(_student(), t, "1", "1", in_shape=(1, 28.5, 28)), "in_shape"),
    ("hint in_shape misfit", lambda tr, t: HintStudent(_student(), t, "2", "2", in_shape=(3, 32, 32)),
     r"cannot run .* on inputs of shape \(3, 32, 32\)"),
    ("hint teacher", lambda tr, t: HintStudent(_student(), 5, "1", "1"), "teacher must be an nn.Module"),
    ("bias cls True", lambda tr, t: fit_class_bias(t, tr, cls=True), "cls must be"),
    ("bias cls 1.5", lambda tr, t: fit_class_bias(t, tr, cls=1.5), "cls must be"),
    ("bias cls nan", lambda tr, t: fit_class_bias(t, tr, cls=NAN), "cls must be"),
    ("bias cls -1", lambda tr, t: fit_class_bias(t, tr, cls=-1), "class -1"),
    ("bias fraction nan", lambda tr, t: fit_class_bias(t, tr, 3, NAN), "fraction must be"),
    ("bias fraction True", lambda tr, t: fit_class_bias(t, tr, 3, True), "fraction must be"),
    ("bias fraction 1", lambda tr, t: fit_class_bias(t, tr, 3, 1.0), "fraction must be"),
    ("bias iters 0", lambda tr, t: fit_class_bias(t, tr, 3, iters=0), "iters must be"),
    ("bias iters True", lambda tr, t: fit_class_bias(t, tr, 3, iters=True), "iters must be"),
    ("bias empty data", lambda tr, t: fit_class_bias(t, tr.take(slice(0, 0)), 3), "data is empty"),
    ("bias no Linear", lambda tr, t: fit_class_bias(torch.nn.Sequential(torch.nn.Flatten()), tr, 3), "no nn.Linear"),
]


def _hint(teacher):
    """A HintStudent on a copy of the teacher (its feature hook stays off the shared one)."""
    import copy
    return HintStudent(_student(), copy.deepcopy(teacher), layer="2", teacher_layer="2")


@pytest.mark.parametrize("label, call, match", BAD_DISTILL, ids=[c[0] for c in BAD_DISTILL])
def test_distill_bad_input_refused_before_work(tiny, label, call, match):
    tr, _, teacher = tiny
    _unchanged_after(lambda: call(tr, teacher), teacher, match)


def test_cache_of_a_plain_callable_teacher(tiny):
    tr, _, teacher = tiny
    sub = tr.subset(64)

    def logits(x, y):
        with torch.no_grad():
            return teacher(x)
    cache = CachedTeacher(logits, sub)
    assert torch.allclose(cache.logits, predict(teacher, sub), atol=1e-5)
