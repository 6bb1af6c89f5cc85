"""Plots of searches: best-so-far against compute, and each trial against each decision."""

from __future__ import annotations

from collections.abc import Sequence

from .runner import SearchResult


def plot_best_so_far(results: dict[str, SearchResult], *, title: str = "best so far against compute"):
    """One step line per strategy: best full-budget value against cumulative epochs spent."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, r in results.items():
        xs, ys = r.curve()
        ax.step(xs, ys, where="post", label=f"{label} ({r.compute} epochs)", marker=".")
    metric = next(iter(results.values())).metric if results else ""
    ax.set(xlabel="compute spent (training epochs)", ylabel=f"best {metric}", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_trials(result: SearchResult, names: Sequence[str] | None = None, *, title: str = ""):
    """One scatter per decision: metric against that decision's value (colour = budget)."""
    import matplotlib.pyplot as plt

    names = list(names or dict.fromkeys(k for t in result.trials for k in t.config))
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    ok = [t for t in result.trials if t.status == "ok"]
    for ax, n in zip(axes[0], names):
        pts = [(t.config[n], t.value(result.metric, result.maximize), t.budget) for t in ok if n in t.config]
        xs = [p[0] if isinstance(p[0], (int, float)) else str(p[0]) for p in pts]
        ax.scatter(xs, [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis", s=18)
        if pts and all(isinstance(x, float) for x in xs) and min(xs) > 0 and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(n)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    axes[0][0].set_ylabel(result.metric)
    fig.suptitle(title or f"{result.strategy}: trials (colour = budget)")
    fig.tight_layout()
    return fig
