"""mokit.check: the shared runner's messages, and every checker accepts a right answer and names a wrong one."""

import math

import pytest
import torch
import torch.nn.functional as F

from mokit import autocompress, check, distill, ensemble, nas, prune
from mokit import quantize as Q
from mokit.train import warmup_cosine


@pytest.fixture(autouse=True)
def _fresh():
    check.reset()
    yield
    check.reset()


def square(x):
    return x * x


def cases():
    return [check.Case("2 squared", (2.0,), 4.0),
            check.Case("a vector", (torch.tensor([1.0, 3.0]),), torch.tensor([1.0, 9.0]))]


def test_pass_prints_a_clear_line_and_is_truthy(capsys):
    result = check.run_checks("square", square, cases(), "multiply x by itself")
    assert result and result.cases == 2
    assert capsys.readouterr().out.strip() == "✓ square: 2 cases passed"
    assert check.passed() == 1


def test_wrong_value_names_the_case_expected_got_and_hint(capsys):
    result = check.run_checks("square", lambda x: x + x, cases(), "multiply x by itself")
    out = capsys.readouterr().out
    assert not result and check.passed() == 0
    assert "✗ square: case 2 of 2 (a vector) is wrong" in out
    assert "expected [1.0, 9.0], got [2.0, 6.0]" in out and "hint: multiply x by itself" in out


def test_wrong_shape_and_type_are_named(capsys):
    check.run_checks("square", lambda x: torch.zeros(3) if torch.is_tensor(x) else x * x, cases(), "h")
    assert "expected shape (2,), got shape (3,)" in capsys.readouterr().out
    check.run_checks("square", lambda x: "four", cases(), "h")
    assert "expected a number (4), got 'four'" in capsys.readouterr().out


def test_big_tensors_report_the_first_differing_index(capsys):
    big = check.Case("big", (torch.arange(20.0),), torch.arange(20.0))
    check.run_checks("same", lambda x: torch.where(x == 13, -1.0, x), [big], "h")
    assert "1 of 20 values differ; first at index (13,): expected 13, got -1" in capsys.readouterr().out


def test_stub_says_not_done_yet_with_the_hint(capsys):
    def stub(x):
        raise NotImplementedError("Exercise: square it")
    result = check.run_checks("square", stub, cases(), "multiply x by itself")
    out = capsys.readouterr().out
    assert not result and "square: not done yet" in out and "hint: multiply x by itself" in out


def test_exceptions_from_the_learner_are_reported_never_raised(capsys):
    result = check.run_checks("square", lambda x: x[5], cases(), "h")
    out = capsys.readouterr().out
    assert not result and "case 1 of 2 (2 squared)" in out and "raised TypeError" in out and "not subscriptable" in out


def test_changing_an_input_in_place_is_caught(capsys):
    def in_place(x):
        return x.mul_(x) if torch.is_tensor(x) else x * x
    assert not check.run_checks("square", in_place, cases(), "h")
    assert "changed its argument 1 in place" in capsys.readouterr().out


def test_not_a_function(capsys):
    assert not check.run_checks("square", 4.0, cases(), "h")
    assert "expected your function, got 4\n" in capsys.readouterr().out


def test_passed_counts_the_latest_result_per_exercise():
    check.run_checks("a", square, cases(), "h")
    check.run_checks("b", square, cases(), "h")
    assert check.passed() == 2
    check.run_checks("a", lambda x: 0, cases(), "h")
    assert check.passed() == 1


# Right answers, written from the package (the notebooks hold the instructors' own versions).
def _momentum(w, g, v, lr, momentum):
    v = momentum * v + g
    return w - lr * v, v


def _global(weights, sparsity):
    return check._global_reference(weights, sparsity)


def _qparams(w, b):
    return Q.compute_qparams(*Q.minmax_range(w, axis=0), b)


def _fake(w, s, z, b):
    return Q.dequantize(Q.quantize(w, s, z, b, axis=0), s, z, axis=0)


def _keep_top(configs, scores, eta):
    order = sorted(range(len(configs)), key=lambda i: -scores[i])
    return [configs[i] for i in order[:max(1, len(configs) // eta)]]


def _widen(config, name, options):
    larger = [o for o in options if o > config[name]]
    return {**config, name: min(larger)} if larger else None


def _timed_median(run, clock, warmup, repeats):
    import statistics
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = clock()
        run()
        times.append(clock() - t0)
    return statistics.median(times)


def _timed_mean_no_warmup(run, clock, warmup, repeats):
    t0 = clock()
    for _ in range(repeats):
        run()
    return (clock() - t0) / repeats


def _adagrad(w, g, s, lr, eps):
    s = s + g * g
    return w - lr * g / (torch.sqrt(s) + eps), s


def _rmsprop(w, g, s, lr, alpha, eps):
    s = alpha * s + (1 - alpha) * g * g
    return w - lr * g / (torch.sqrt(s) + eps), s


def _allocate(scan, sizes, max_drop):
    chosen = {k: 0.0 for k in scan}
    while True:
        used = sum(scan[k][chosen[k]] for k in scan)
        steps = []
        for k in scan:
            higher = sorted(x for x in scan[k] if x > chosen[k])
            if higher and used - scan[k][chosen[k]] + scan[k][higher[0]] <= max_drop:
                gain = sizes[k] * (higher[0] - chosen[k]) / (scan[k][higher[0]] - scan[k][chosen[k]] + 1e-9)
                steps.append((gain, k, higher[0]))
        if not steps:
            return chosen
        _, k, level = max(steps)
        chosen[k] = level


def _ste(w, scale):
    r = torch.round(w / scale) * scale
    return w + (r - w).detach()


def _fold(w, b, mean, var, gamma, beta, eps):
    f = gamma / torch.sqrt(var + eps)
    return w * f.view(-1, 1, 1, 1), (b - mean) * f + beta


def _halving(configs, objective, budgets, eta):
    trials = []
    for i, b in enumerate(budgets):
        scores = [objective(c, b) for c in configs]
        trials += list(zip(configs, [b] * len(configs), scores))
        if i < len(budgets) - 1:
            order = sorted(range(len(configs)), key=lambda j: -scores[j])
            configs = [configs[j] for j in order[:max(1, len(configs) // eta)]]
    return trials


def _all_reduce(grads):
    mean = [torch.stack([w[p] for w in grads]).mean(0) for p in range(len(grads[0]))]
    return [[m.clone() for m in mean] for _ in grads]


def _validate(body, in_shape):
    if not isinstance(body, dict) or "inputs" not in body:
        raise ValueError("body must be a JSON object with 'inputs'")
    try:
        x = torch.tensor(body["inputs"], dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"inputs must be nested lists of numbers ({e})") from e
    if x.dim() != len(in_shape) + 1 or tuple(x.shape[1:]) != tuple(in_shape) or len(x) == 0:
        raise ValueError(f"inputs must have shape (N, {in_shape}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("inputs must be finite")
    return x


RIGHT_AND_WRONG = {
    "warmup_cosine": (warmup_cosine, lambda t, w: 0.5 * (1 + math.cos(math.pi * t))),
    "momentum_step": (_momentum, lambda w, g, v, lr, mu: (w - lr * g, g)),
    "global_magnitude_masks": (_global, lambda ws, s: [prune.magnitude_mask(w.abs(), s) for w in ws]),
    "agp_sparsity": (lambda t, s: prune.agp_sparsity(t, s), lambda t, s: s * t ** 3),
    "channels_to_keep": (lambda w, s: check._keep_reference(w, s),
                         lambda w, s: torch.topk(w.flatten(1).sum(1),
                                                 max(1, round((1 - s) * len(w)))).indices.sort().values),
    "per_channel_qparams": (_qparams, lambda w, b: Q.compute_qparams(w.amin(1), w.amax(1), b, symmetric=True)),
    "fake_quantize": (_fake, lambda w, s, z, b: s[:, None] * (torch.round(w / s[:, None]) + z[:, None] - z[:, None])),
    "soft_targets": (distill.soft_targets, lambda z, t: torch.softmax(z / t, dim=0)),
    "kd_loss": (lambda z, v, y, t, a: distill.kd_loss(z, v, y, temperature=t, alpha=a),
                lambda z, v, y, t, a: a * F.kl_div(F.log_softmax(z / t, 1), F.softmax(v / t, 1), reduction="batchmean")
                + (1 - a) * F.cross_entropy(z, y)),
    "average_probs": (lambda z, w: ensemble.average_probs(z, w).exp(), lambda z, w: torch.softmax(z, 2).mean(0)),
    "majority_vote": (ensemble.vote, lambda z: z.mean(0).argmax(1)),
    "keep_top": (_keep_top, lambda c, s, eta: sorted(c, key=lambda x: -s[c.index(x)])[:len(c) // eta]),
    "widen": (_widen, lambda c, n, o: {**c, n: max(o)}),
    "dominates": (nas.dominates, lambda a, b, obj: all(a[k] >= b[k] for k in obj)),
    "timed_median": (_timed_median, _timed_mean_no_warmup),
    "adagrad_step": (_adagrad, lambda w, g, s, lr, eps: (w - lr * g / (torch.sqrt(s) + eps), s + g * g)),
    "rmsprop_step": (_rmsprop, lambda w, g, s, lr, alpha, eps: _rmsprop(w, g, s, lr, 1 - alpha, eps)),
    "allocate_sparsity": (_allocate, lambda scan, sizes, d: {k: max(scan[k]) for k in scan}),
    "ste_round": (_ste, lambda w, scale: torch.round(w / scale) * scale),
    "fold_batchnorm": (_fold, lambda w, b, mean, var, gamma, beta, eps: (w * (gamma / var.sqrt()).view(-1, 1, 1, 1),
                                                                          (b - mean) * gamma / var.sqrt() + beta)),
    "zero_point_matmul": (lambda x, z, w: x.long() @ w.long().T - z * w.long().sum(1),
                          lambda x, z, w: x.float() @ w.float().T - z * w.float().sum(1)),
    "halving_loop": (_halving, lambda c, o, b, eta: [(x, b[-1], o(x, b[-1])) for x in c]),
    "bubble_fraction": (lambda s, m: (s - 1) / (m + s - 1), lambda s, m: (s - 1) / m),
    "idle_share": (lambda sp, w: 1 - sum(e - s for s, e in sp) / (w * max(e for _, e in sp)),
                   lambda sp, w: 1 - sum(e - s for s, e in sp) / max(e for _, e in sp)),
    "all_reduce_mean": (_all_reduce, lambda grads: [list(w) for w in grads]),
    "validate_request": (_validate, lambda body, in_shape: torch.tensor(body["inputs"], dtype=torch.float32)),
    "nm_mask": (lambda w, n, m: torch.zeros_like(g := w.reshape(w.shape[0], -1, m).abs()).scatter_(
        -1, g.topk(n, dim=-1).indices, 1.0).reshape(w.shape),
                lambda w, n, m: (w.abs() > w.abs().median()).float()),               # half, but not per group
    "subnet_weight": (lambda w, n, c, k: w[:n, :c, (w.shape[-1] - k) // 2:(w.shape[-1] + k) // 2,
                                            (w.shape[-1] - k) // 2:(w.shape[-1] + k) // 2],
                      lambda w, n, c, k: w[:n, :c, :k, :k]),                  # the corner, not the centre
    "gptq_step": (lambda w, i, q, u: torch.stack([w[:, j] - (w[:, i] - q) / u[i, i] * u[i, j] if j >= i else w[:, j]
                                                   for j in range(w.shape[1])], 1),
                  lambda w, i, q, u: torch.cat([w[:, :i], w[:, i:] - (w[:, i] - q)[:, None] * u[i, i:][None, :]], 1)),
    "percentile": (lambda v, q: sorted(v)[int(q * (len(v) - 1))],
                   lambda v, q: sorted(v)[int(q * len(v)) - 1]),         # an off-by-one position
    "fastest_within": (autocompress.fastest_within,
                       lambda p, b, d: min(range(len(p)), key=lambda i: p[i]["latency_ms"])),   # ignores the bar
}


@pytest.mark.parametrize("name", sorted(RIGHT_AND_WRONG))
def test_each_checker_accepts_a_right_answer_and_explains_a_wrong_one(name, capsys):
    checker = getattr(check, name)
    right, wrong = RIGHT_AND_WRONG[name]
    assert checker(right), capsys.readouterr().out
    assert capsys.readouterr().out.startswith(f"✓ {name}: ")
    assert not checker(wrong)
    out = capsys.readouterr().out
    assert out.startswith(f"✗ {name}: case ") and "expected" in out and "hint: " in out, out


def test_every_checker_is_in_the_table():
    checkers = {n for n, f in vars(check).items() if callable(f) and getattr(f, "__module__", "") == "mokit.check"
                and not n.startswith("_") and n not in {"Case", "CheckResult", "Hints", "passed", "reset", "run_checks"}
                and not isinstance(f, type)}
    assert checkers == set(RIGHT_AND_WRONG)


def test_hints_come_in_tiers_idea_then_api_then_code(capsys):
    hints = check.Hints("square it", "use *", "return x * x")
    said = []
    for _ in range(4):
        check.run_checks("square", lambda x: x + 1, cases(), hints)
        said.append(capsys.readouterr().out)
    assert "hint: square it" in said[0] and "(hint 1 of 3: the idea; check again for the API)" in said[0]
    assert "hint: use *" in said[1] and "(hint 2 of 3: the API; check again for the code)" in said[1]
    assert "hint: return x * x" in said[2] and "(hint 3 of 3: the code)" in said[2]
    assert "hint: return x * x" in said[3]                          # the code stays from then on
    assert "return x * x" not in said[0] + said[1]
    check.reset()
    check.run_checks("square", lambda x: x + 1, cases(), hints)
    assert "hint: square it" in capsys.readouterr().out             # a fresh session starts at the idea


@pytest.mark.parametrize("name", sorted(RIGHT_AND_WRONG))
def test_every_checker_gives_three_different_hints_before_the_code(name, capsys):
    def stub(*args):
        raise NotImplementedError("Exercise")
    shown = []
    for _ in range(3):
        assert not getattr(check, name)(stub)
        out = capsys.readouterr().out
        assert "not done yet" in out
        shown.append(out.split("hint: ", 1)[1].split("\n")[0])
    assert len(set(shown)) == 3, shown
    _, wrong = RIGHT_AND_WRONG[name]
    getattr(check, name)(wrong)                                       # a wrong answer moves the tier on too
    assert "(hint 3 of 3: the code)" in capsys.readouterr().out
