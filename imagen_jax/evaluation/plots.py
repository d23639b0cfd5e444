"""Figures a reader can check: matplotlib on its Agg backend (no display needed, nothing interactive), with labelled
axes and units, legends and error bars. Used by the guidance sweep (evaluation/run.py), the baseline comparison's
training curves and the benchmarks' time-to-quality curves."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (set before pyplot is first imported: this never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str) -> str:
    """Writes `fig` to `path` (folders created), closes it, returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def binomial_halfwidth(accuracy: float, count: int, z: float = 1.96) -> float:
    """The half-width of the normal-approximation 95% interval of an accuracy measured on `count` samples:
    z * sqrt(p (1 - p) / n); 0 when count is 0."""
    if count <= 0:
        return 0.0
    return z * math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / count)


def sweep_figure(points: Sequence[Mapping[str, Any]], option: str, feature_space: str, path: str) -> str:
    """FID (y) against the judge's alignment (x, all attributes right, with its 95% binomial interval), one line per
    prompt set, each point labelled with the swept option's value."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for split in dict.fromkeys(p["prompt_set"] for p in points):
        mine = [p for p in points if p["prompt_set"] == split]
        xs = [float(p["alignment"]["all"]) for p in mine]
        ys = [float(p["fid"]) for p in mine]
        bars = [
            binomial_halfwidth(x, int(p["alignment"].get("count", 0))) for x, p in zip(xs, mine, strict=True)
        ]
        ax.errorbar(xs, ys, xerr=bars, fmt="o-", capsize=3, label=f"{split} prompts")
        for x, y, p in zip(xs, ys, mine, strict=True):
            ax.annotate(
                f"{option}={p['value']}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7
            )
    ax.set_xlabel("alignment: judge accuracy, all attributes right (bars: 95% binomial interval)")
    ax.set_ylabel(f"FID in the {feature_space} feature space (lower is better)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"FID against alignment, sweeping {option}", fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)


def curves_figure(
    panels: Mapping[str, Mapping[str, Sequence[tuple[int, Sequence[tuple[int, float]]]]]],
    path: str,
    ylabel: str = "training loss (the family's objective, mean over the batch)",
) -> str:
    """One panel per model: for each of its series (e.g. loss, or a GAN's d_loss and g_loss) a thin line per seed
    and, where seeds share steps, their mean with min-max error bars. panels: {model: {series: [(seed, [(step,
    value), ...]), ...]}}."""
    import numpy as np

    plt = pyplot()
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.6 * max(len(panels), 1), 3.6), dpi=110)
    axes = np.atleast_1d(axes)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (model, series) in zip(axes, panels.items(), strict=False):
        for c, (name, seeds) in enumerate(series.items()):
            colour = colours[c % len(colours)]
            for _seed, curve in seeds:
                if curve:
                    steps, values = zip(*curve, strict=True)
                    ax.plot(steps, values, "-", color=colour, lw=0.7, alpha=0.35)
            common = sorted(
                set.intersection(*[{s for s, _ in curve} for _, curve in seeds if curve] or [set()])
            )
            if common:
                table = np.array([[dict(curve)[s] for s in common] for _, curve in seeds if curve])
                mean = table.mean(0)
                ax.errorbar(
                    common,
                    mean,
                    yerr=[mean - table.min(0), table.max(0) - mean],
                    fmt="-",
                    color=colour,
                    lw=1.5,
                    capsize=2,
                    errorevery=max(1, len(common) // 10),
                    label=f"{name} (mean of {len(table)} seed(s); bars min-max)",
                )
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
    return save(fig, path)


def alignment_figure(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    intervals: Mapping[str, Mapping[str, tuple[float, float | None]]],
    path: str,
) -> str:
    """Alignment per model and prompt set: a bar at the mean over seeds with its 95% interval (the caller's, e.g.
    Student t; none for one seed) and every seed's value as a dot. values: {model: {prompt set: [per seed]}};
    intervals: {model: {prompt set: (mean, half-width or None)}}."""
    import numpy as np

    plt = pyplot()
    models = list(values)
    splits = list(dict.fromkeys(s for per in values.values() for s in per))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(models), 4.0), dpi=120)
    width = 0.8 / max(len(splits), 1)
    for j, split in enumerate(splits):
        xs = np.arange(len(models)) + (j - (len(splits) - 1) / 2) * width
        means = [intervals[m][split][0] for m in models]
        errors = [intervals[m][split][1] or 0.0 for m in models]
        ax.bar(xs, means, width * 0.9, yerr=errors, capsize=4, alpha=0.6, label=f"{split} prompts")
        for x, m in zip(xs, models, strict=True):
            seeds = values[m][split]
            ax.plot([x] * len(seeds), seeds, "k.", ms=4)
    ax.set_xticks(np.arange(len(models)), models, rotation=15, fontsize=8)
    ax.set_ylabel("alignment: judge accuracy, all attributes right")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("mean over seeds, bars: 95% Student-t interval, dots: seeds", fontsize=9)
    ax.legend(fontsize=8)
    return save(fig, path)
