"""The figures of a sweep, each written to one PNG whose path is returned::

    summaries = aggregate(records)
    plot_rank_curves(summaries, "out/rank.png", "mcc")
    plot_pareto(summaries, "out/pareto.png", "mcc")
    plot_learning_curves(records, "out/curves.png", "mcc")
    plot_similarity_heatmap({"Wq": grid}, 8, 64, "out/subspace.png")   # the LoRA paper's phi(i, j)

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, not with
pyplot: no global backend switch, no figure registry to leak, safe in a
notebook or a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from rank_sweep.errors import RankSweepError
from rank_sweep.results.records import ConfigSummary, TrialRecord
from rank_sweep.results.selection import pareto_front


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def _scored(summaries: Sequence[ConfigSummary]) -> list[ConfigSummary]:
    return [s for s in summaries if s.mean is not None]


def plot_rank_curves(summaries: Sequence[ConfigSummary], path: str | Path, metric_name: str,
                     held: dict | None = None) -> Path:
    """Mean validation score against rank (log2 axis), one line per target set, error bars the interval of
    the mean (dev-set sampling and seed noise) where every point has one, else one seed std; full fine-tuning
    and the head-only reference, if present, as dashed levels. ``held`` (label -> HeldOut of
    :mod:`rank_sweep.results.holdout`): each target set's held-out scores as a dotted line of its colour."""
    scored = _scored(summaries)
    lora = [s for s in scored if s.method == "lora"]
    if not lora:
        raise RankSweepError("no LoRA configuration with a score to plot against rank")
    fig, ax = _figure()
    intervals = all(s.ci_low is not None and s.ci_high is not None for s in lora)
    several_lrs = len({s.lr for s in lora}) > 1  # one line per target set and learning rate: never mixed
    for targets, lr in dict.fromkeys((s.targets, s.lr) for s in lora):
        pts = sorted((s for s in lora if (s.targets, s.lr) == (targets, lr)), key=lambda s: s.r)
        if several_lrs and len(pts) == 1:  # a lone point at another lr (a bracket's, a check's): a grey mark only
            ax.scatter([pts[0].r], [pts[0].mean], marker=".", color="lightgrey", zorder=1)
            continue
        targets = f"{targets} lr={lr:g}" if several_lrs and lr is not None else targets
        yerr = ([[s.mean - s.ci_low for s in pts], [s.ci_high - s.mean for s in pts]] if intervals
                else [s.std for s in pts])
        line = ax.errorbar([s.r for s in pts], [s.mean for s in pts], yerr=yerr, marker="o", capsize=3, label=targets)
        color = line.lines[0].get_color()
        out = [(s.r, held[s.label].score.estimate) for s in pts if s.label in (held or {})]
        if out:  # report-only: what the same configurations score on examples no decision read
            ax.plot(*zip(*out, strict=True), linestyle=":", marker="s", color=color, label=f"{targets} (held-out)")
        stuck = [s for s in pts if s.not_learning]
        if stuck:  # a rank that did not learn is a hole in the curve, not a data point
            ax.scatter([s.r for s in stuck], [s.mean for s in stuck], marker="x", s=80, color=color, zorder=3)
    for s in scored:
        if s.method != "lora":  # full fine-tuning, the head alone, a reference method: a level
            ax.axhline(s.mean, linestyle="--", color="grey", label=f"{s.label} ({s.mean:.4g})")
    ranks = sorted({s.r for s in lora})
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ranks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ranks) == 1:
        ax.set_xlim(ranks[0] / 2, ranks[0] * 2)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel(f"validation {metric_name} " + ("(mean, interval of the mean)" if intervals else "(mean +/- seed std)"))
    ax.set_title(
        f"validation {metric_name} by rank" + (" (x: did not learn)" if any(s.not_learning for s in lora) else "")
    )
    ax.grid(True, alpha=0.3)
    ax.legend(title="targets" + (" (grey dots: single ranks at other lrs)" if several_lrs else ""), fontsize=7,
              title_fontsize=7)
    return _save(fig, path)


X_LABELS = {"trainable_params": "trainable parameters", "peak_memory_mb": "peak training memory (MiB)"}


def plot_pareto(
    summaries: Sequence[ConfigSummary],
    path: str | Path,
    metric_name: str,
    front: Sequence[ConfigSummary] | None = None,
    direction: str = "maximize",
    x: str = "trainable_params",
) -> Path:
    """Score against ``x`` (log x): trainable params, or ``peak_memory_mb``; the Pareto front (by default of
    the learning configurations) marked and joined, non-learning ones crossed."""
    pts = [s for s in _scored(summaries) if getattr(s, x) is not None]
    if not pts:
        raise RankSweepError(f"no configuration with a score and a {X_LABELS[x]} to plot")
    if front is None:  # as select() draws it: a configuration that does not learn is no trade-off
        front = pareto_front([s for s in pts if not s.not_learning], direction, cost=x)
    front = sorted(front, key=lambda s: getattr(s, x))
    fig, ax = _figure()
    ax.errorbar(
        [getattr(s, x) for s in pts],
        [s.mean for s in pts],
        yerr=[s.std for s in pts],
        fmt="o",
        color="tab:grey",
        alpha=0.7,
        capsize=2,
        label="configurations",
    )
    ax.plot(
        [getattr(s, x) for s in front],
        [s.mean for s in front],
        "-D",
        color="tab:red",
        label="Pareto front",
    )
    stuck = [s for s in pts if s.not_learning]
    if stuck:
        ax.scatter(
            [getattr(s, x) for s in stuck],
            [s.mean for s in stuck],
            marker="x",
            s=80,
            color="k",
            label="not learning",
        )
    for s in pts:
        ax.annotate(s.label, (getattr(s, x), s.mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel(f"validation {metric_name}")
    ax.set_title(f"validation {metric_name} against cost")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_learning_curves(records: Sequence[TrialRecord], path: str | Path, metric_name: str) -> Path:
    """Validation score per epoch of every trial that reported one; one colour per
    configuration, pruned trials dashed, failed ones dotted."""
    with_curve = [r for r in records if r.intermediate]
    if not with_curve:
        raise RankSweepError("no trial reported validation scores per epoch")
    fig, ax = _figure()
    configs = list(dict.fromkeys((r.targets, r.r) for r in with_curve))
    colors = {c: f"C{i % 10}" for i, c in enumerate(configs)}
    styles = {"PRUNED": "--", "FAIL": ":"}
    labelled: set[tuple[str, int]] = set()
    for rec in with_curve:
        key = (rec.targets, rec.r)
        label = None
        if key not in labelled:
            labelled.add(key)
            label = rec.point.config.label
        epochs = range(1, len(rec.intermediate) + 1)
        ax.plot(epochs, rec.intermediate, styles.get(rec.state, "-"), marker=".", color=colors[key], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric_name}")
    ax.set_title(f"validation {metric_name} per epoch (dashed: pruned)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_similarity_heatmap(grids: dict[str, np.ndarray], r1: int, r2: int, path: str | Path,
                            title: str | None = None) -> Path:
    """Write one PNG with a heatmap panel per key: ``i`` (1..r1) down, ``j`` (1..r2) across, colour 0..1."""
    if not grids:
        raise ValueError("grids is empty: nothing to plot")
    for key, g in grids.items():
        if np.shape(g) != (r1, r2):
            raise ValueError(f"grid {key!r} has shape {np.shape(g)}, expected ({r1}, {r2})")
    n = len(grids)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.6 * ncols + 1.0, 3.0 * nrows + (0.5 if title else 0.0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, (key, g) in zip(axes.flat, grids.items(), strict=False):
        image = ax.imshow(np.asarray(g, dtype=float), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                          origin="upper", interpolation="nearest", extent=(0.5, r2 + 0.5, r1 + 0.5, 0.5))
        ax.set_title(str(key), fontsize=8)
        ax.set_xlabel(f"j (r={r2})")
        ax.set_ylabel(f"i (r={r1})")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, label="phi(i, j)", shrink=0.9).mappable.set_clim(0.0, 1.0)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
