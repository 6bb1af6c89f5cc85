"""Matplotlib figures the notebooks show. Each returns its Figure (and never calls plt.show);
optimizer_paths also returns the paths it drew."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from . import nas, validate
from .data import TensorData
from .metrics import pareto_front
from .search import SearchResult
from .train import History


def training_curves(histories: Mapping[str, History], *, smooth: int = 20, title: str = ""):
    """Per-step loss (moving average over `smooth` steps) and per-epoch accuracy, one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, h in histories.items():
        loss = torch.tensor(h.steps)
        if smooth > 1 and len(loss) > smooth:
            loss = torch.nn.functional.avg_pool1d(loss[None, None], smooth, 1).flatten()
        ax_loss.plot(loss, label=name)
        key = "val_acc" if "val_acc" in h.final else "train_acc"
        ax_acc.plot(h.column("epoch"), h.column(key), marker="o", label=name)
        ax_acc.set_ylabel("validation accuracy %" if key == "val_acc" else "train accuracy %")
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", title="accuracy")
    ax_acc.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion(cm: torch.Tensor, classes: Sequence[str], *, title: str = "confusion matrix"):
    """Heat map of a confusion matrix with counts written in each cell."""
    k = len(classes)
    fig, ax = plt.subplots(figsize=(0.55 * k + 2, 0.55 * k + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            v = int(cm[i, j])
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(k), classes, rotation=60, fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def samples(data: TensorData, n: int = 32, *, predictions: torch.Tensor | None = None, seed: int = 0):
    """A grid of n examples with their labels (and predictions, red when wrong)."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
    x = data.x[idx].cpu().float()
    x = (x - x.amin(dim=(1, 2, 3), keepdim=True)) / (x.amax(dim=(1, 2, 3), keepdim=True)
                                                     - x.amin(dim=(1, 2, 3), keepdim=True) + 1e-8)
    cols = 8
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.2, rows * 1.35))
    for ax, i, img in zip(axes.flat, idx.tolist(), x):
        ax.imshow(img.permute(1, 2, 0).squeeze(-1), cmap="gray" if img.shape[0] == 1 else None)
        label = data.classes[int(data.y[i])]
        if predictions is not None:
            pred = data.classes[int(predictions[i])]
            ax.set_title(f"{pred}", fontsize=7, color="black" if pred == label else "red")
        else:
            ax.set_title(label, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def bars(values: Mapping[str, float], *, errors: Mapping[str, float] | None = None,
         ylabel: str = "", title: str = "", ylim: tuple[float, float] | None = None):
    """A labelled bar chart (with optional error bars), values written above the bars."""
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(names)), 3.5))
    err = [errors[n] for n in names] if errors else None
    rects = ax.bar(names, [values[n] for n in names], yerr=err, capsize=4, color="tab:blue")
    ax.bar_label(rects, fmt="%.2f", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def load_sweep(sweep: Sequence[dict], *, title: str = "load sweep"):
    """serve.load_sweep's results: throughput (left axis) and p50 / p99 latency (right axis) against
    concurrent clients (log x)."""
    clients = [r["concurrency"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    ax.plot(clients, [r["throughput"] for r in sweep], "o-", color="C0", label="throughput")
    ax.set_xscale("log", base=2)
    ax.set_xticks(clients, [str(c) for c in clients])
    ax.set(xlabel="concurrent clients", ylabel="throughput (requests/s)", title=title)
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    for key, style in (("p50_ms", ":"), ("p99_ms", "--")):
        right.plot(clients, [r[key] for r in sweep], "s" + style, color="C3", label=key.replace("_ms", ""))
    right.set(ylabel="latency (ms)")
    right.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [str(h.get_label()) for h in handles], loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def tradeoffs(rows, *, x: str = "file KB", y: str = "accuracy %", color: str = "ms @ 256"):
    """Accuracy against file size (log) with latency as colour; the 3-objective Pareto front ringed
    (no other model is at least as accurate, as small and as fast, and better in one)."""
    front = set(pareto_front(list(rows), {y: True, x: False, color: False}))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    pts = ax.scatter([r[x] for r in rows], [r[y] for r in rows], c=[r[color] for r in rows], cmap="viridis_r",
                     s=60, zorder=3)
    for i, r in enumerate(rows):
        if i in front:
            ax.scatter(r[x], r[y], s=220, facecolors="none", edgecolors="crimson", lw=1.5, zorder=2)
        ax.annotate(r["model"], (r[x], r[y]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    fig.colorbar(pts, ax=ax, label=color)
    ax.set(xscale="log", xlabel=f"{x} (log)", ylabel=y, title="accuracy vs file size vs latency (ringed: Pareto front)")
    fig.tight_layout()
    return fig


def optimizer_paths(f: Callable[[torch.Tensor], torch.Tensor],
                    optimizers: Mapping[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]], *,
                    start: Sequence[float] = (-5.0, -2.0), steps: int = 20, optimum: Sequence[float] | None = None,
                    title: str = ""):
    """Each optimizer's path on a 2-D function, drawn over its contours; returns (Figure, paths).

    f maps a (2,) tensor to a scalar; optimizers maps a name to a factory `make(params) -> torch.optim
    optimizer` (e.g. `lambda p: torch.optim.SGD(p, lr=0.4)`). From the same `start` each takes `steps`
    steps w <- opt.step() on loss f(w); paths[name] is a (steps + 1, 2) tensor whose row 0 is `start`.
    `optimum`, if given, is marked with a cross.
    """
    if len(start) != 2:
        raise ValueError(f"start must be a 2-D point (x1, x2), got {start!r}")
    validate.integer("steps", steps, low=1)
    paths = {}
    for name, make in optimizers.items():
        w = torch.tensor([float(v) for v in start], requires_grad=True)
        opt, path = make([w]), [w.detach().clone()]
        for _ in range(steps):
            opt.zero_grad()
            f(w).backward()
            opt.step()
            path.append(w.detach().clone())
        paths[name] = torch.stack(path)                               # (steps + 1, 2)
    # the view: the start and every finite point, at most 3x the start's reach from the origin
    points = torch.cat([p for p in paths.values()])
    reach = 3 * max(abs(float(v)) for v in start) + 1e-6
    points = points[torch.isfinite(points).all(1) & (points.abs() <= reach).all(1)]
    lo, hi = points.min(0).values, points.max(0).values
    pad = 0.15 * (hi - lo) + 0.5
    g1, g2 = torch.meshgrid(torch.linspace(lo[0] - pad[0], hi[0] + pad[0], 120),
                            torch.linspace(lo[1] - pad[1], hi[1] + pad[1], 120), indexing="ij")
    with torch.no_grad():
        z = torch.func.vmap(f)(torch.stack([g1, g2], -1).reshape(-1, 2)).reshape(g1.shape)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.contour(g1, g2, z, levels=20, colors="lightgray", linewidths=0.8)
    for name, route in paths.items():
        ax.plot(route[:, 0], route[:, 1], "o-", ms=3, lw=1.2, label=name)
    ax.plot(*[float(v) for v in start], "k*", ms=12, label="start")
    if optimum is not None:
        ax.plot(*[float(v) for v in optimum], "kP", ms=9, label="minimum")
    ax.set(xlim=(float(g1.min()), float(g1.max())), ylim=(float(g2.min()), float(g2.max())),
           xlabel="$x_1$", ylabel="$x_2$", title=title or f"{steps} steps from the same start")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig, paths


def lr_sweep(rows: Sequence[Mapping], *, y: str = "accuracy %", title: str = "learning-rate sweep"):
    """Accuracy against learning rate (log x), one line per optimizer: rows of {"optimizer", "lr", y}."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        mine = sorted((r["lr"], r[y]) for r in rows if r["optimizer"] == name)
        ax.plot([lr for lr, _ in mine], [v for _, v in mine], "o-", label=name)
    ax.set(xscale="log", xlabel="learning rate (log)", ylabel=y, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# searches (notebooks 07, 08)

def best_so_far(results: Mapping[str, SearchResult], *, title: str = "best so far against compute"):
    """One step line per strategy: best full-budget value against cumulative epochs spent."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, r in results.items():
        xs, ys = r.curve()
        ax.step(xs, ys, where="post", label=f"{label} ({r.compute} epochs)", marker=".")
    metric = next(iter(results.values())).metric if results else ""
    ax.set(xlabel="compute spent (training epochs)", ylabel=f"best {metric}", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def worker_timeline(results: Mapping[str, SearchResult], *, title: str = "trials on the workers"):
    """One row per (search, worker), one bar per trial from its start to its end, coloured and labelled
    by budget: the gaps are workers waiting (searches from search.parallel_halving / async_halving)."""
    rows = [(label, w) for label, r in results.items()
            for w in sorted({t.info["worker"] for t in r.trials if t.info.get("worker", -1) >= 0})]
    if not rows:
        raise ValueError("no trial has worker times: run the searches with parallel_halving or async_halving")
    budgets = sorted({t.budget for r in results.values() for t in r.trials})
    colors = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(7.5, 0.8 + 0.45 * len(rows)))
    for i, (label, w) in enumerate(rows):
        mine = [t for t in results[label].trials if t.info.get("worker") == w]
        ax.broken_barh([(t.info["start"], t.info["end"] - t.info["start"]) for t in mine], (i - 0.4, 0.8),
                       facecolors=[colors(budgets.index(t.budget) / max(1, len(budgets) - 1)) for t in mine],
                       edgecolor="white")
        for t in mine:
            ax.text((t.info["start"] + t.info["end"]) / 2, i, str(t.budget), ha="center", va="center",
                    fontsize=7, color="white")
    ax.set(yticks=range(len(rows)), yticklabels=[f"{label}: worker {w}" for label, w in rows],
           xlabel="seconds since the search started (bar label: the trial's budget in epochs)", title=title)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def trials(result: SearchResult, names: Sequence[str] | None = None, *, title: str = ""):
    """One scatter per decision: metric against that decision's value (colour = budget)."""
    names = list(names or dict.fromkeys(k for t in result.trials for k in t.config))
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    ok = [t for t in result.trials if t.status == "ok"]
    for ax, n in zip(axes[0], names):
        pts = [(t.config[n], t.value(result.metric, result.maximize), t.budget) for t in ok if n in t.config]
        xs = [p[0] if isinstance(p[0], (int, float)) else str(p[0]) for p in pts]
        ax.scatter(xs, [p[1] for p in pts], c=[p[2] for p in pts], cmap="viridis", s=18)
        floats = [x for x in xs if isinstance(x, float)]
        if pts and len(floats) == len(xs) and min(floats) > 0 and max(floats) / min(floats) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(n)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    axes[0][0].set_ylabel(result.metric)
    fig.suptitle(title or f"{result.strategy}: trials (colour = budget)")
    fig.tight_layout()
    return fig


def pareto(results: Mapping[str, SearchResult], x: str = "params", y: str = "val_acc", *, logx: bool = True,
           title: str = ""):
    """Scatter of every trial (y against x) per search, with the overall Pareto front drawn."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    everything = []
    for label, r in results.items():
        ok = [t for t in r.trials if t.status == "ok" and x in t.metrics]
        everything += ok
        ax.scatter([t.metrics[x] for t in ok], [t.metrics[y] for t in ok], s=16, alpha=0.7, label=label)
    front = sorted(nas.trial_front(everything, {y: True, x: False}), key=lambda t: t.metrics[x])
    ax.step([t.metrics[x] for t in front], [t.metrics[y] for t in front], where="post", color="black",
            lw=1.2, label="Pareto front")
    ax.set(xlabel=x, ylabel=y, title=title or f"{y} against {x}")
    if logx:
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def best_so_far_bands(bands: Mapping[str, Sequence], *, xlabel: str = "simulated seconds",
                      ylabel: str = "best val_acc %", title: str = "best so far against compute",
                      ylim: tuple[float, float] | None = None):
    """One line per strategy, its mean best-so-far, in a shaded band: bands[name] = (x, mean, low, high),
    as mokit.bench.Comparison.bands() gives them (nan where a strategy has no value yet)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, (x, mean, low, high) in bands.items():
        (line,) = ax.plot(x, mean, label=label, lw=1.6)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, lw=0)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
