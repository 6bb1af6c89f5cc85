"""plot.optimizer_paths: real torch optimizers stepped on a 2-D function, checked against closed forms."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from mokit import plot


def bowl(w):
    """The ill-conditioned quadratic f(x1, x2) = 0.1 x1^2 + 2 x2^2 (minimum 0 at the origin)."""
    return 0.1 * w[0] ** 2 + 2 * w[1] ** 2


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.4),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.4),
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_paths_have_one_row_per_step_and_start_at_the_start():
    fig, paths = plot.optimizer_paths(bowl, OPTIMIZERS, start=(-5.0, -2.0), steps=12)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert list(paths) == list(OPTIMIZERS)
    for name, path in paths.items():
        assert path.shape == (13, 2), name
        assert torch.equal(path[0], torch.tensor([-5.0, -2.0])), name
        assert not path.requires_grad, name


def test_sgd_follows_the_closed_form_and_decreases_f():
    # on f = a1 x1^2 + a2 x2^2, a gradient step is x_i <- (1 - 2 lr a_i) x_i, so x_t = x_0 (1 - 2 lr a_i)^t
    lr, steps, start = 0.4, 20, torch.tensor([-5.0, -2.0])
    _, paths = plot.optimizer_paths(bowl, {"sgd": lambda p: torch.optim.SGD(p, lr=lr)},
                                    start=start.tolist(), steps=steps)
    t = torch.arange(steps + 1, dtype=torch.float32)[:, None]
    expected = start * (1 - 2 * lr * torch.tensor([0.1, 2.0])) ** t          # (steps + 1, 2)
    torch.testing.assert_close(paths["sgd"], expected, rtol=1e-5, atol=1e-6)
    values = torch.stack([bowl(w) for w in paths["sgd"]])
    assert (values[1:] < values[:-1]).all(), values                          # every step lowers f
    assert values[-1] < 0.05 * values[0]


def test_a_diverging_optimizer_still_draws():
    # lr 10 multiplies x2 by -39 every step: it overflows to inf, then nan; the view ignores those points
    fig, paths = plot.optimizer_paths(bowl, {"too high": lambda p: torch.optim.SGD(p, lr=10.0),
                                             "sgd": OPTIMIZERS["sgd"]}, steps=40)
    assert not torch.isfinite(paths["too high"][-1]).all()
    assert torch.isfinite(paths["sgd"]).all()
    xlim = fig.axes[0].get_xlim()
    assert all(abs(v) < 100 for v in xlim), xlim


@pytest.mark.parametrize("start, steps", [((1.0,), 5), ((1.0, 2.0, 3.0), 5), ((1.0, 2.0), 0), ((1.0, 2.0), 2.5),
                                          ((1.0, 2.0), True)])
def test_bad_start_or_steps_is_refused(start, steps):
    with pytest.raises(ValueError, match=r"start|steps"):
        plot.optimizer_paths(bowl, OPTIMIZERS, start=start, steps=steps)


def test_lr_sweep_draws_one_line_per_optimizer_on_a_log_axis():
    rows = [{"optimizer": name, "lr": lr, "accuracy %": acc}
            for name, base in (("sgd", 0.1), ("adam", 1e-3))
            for lr, acc in ((base * 5, 90.0), (base, 95.0), (base / 5, 80.0))]
    ax = plot.lr_sweep(rows).axes[0]
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"sgd", "adam"}
    assert list(lines["adam"].get_xdata()) == sorted(r["lr"] for r in rows if r["optimizer"] == "adam")
    assert list(lines["adam"].get_ydata()) == [80.0, 95.0, 90.0]
