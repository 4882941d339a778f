"""PNG plots of a demo or benchmark run (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_accuracy_curves", "plot_entropy_histogram", "plot_grouped_bars", "plot_series"]


def plot_accuracy_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    *,
    title: str = "Held-out accuracy vs training step",
    reference: Mapping[str, float] | None = None,
    xlabel: str = "optimizer step",
) -> Path:
    """One line per method: ``curves[method] = [(step, accuracy), ...]`` (or ``(seconds, accuracy)`` with another
    ``xlabel``); ``reference`` draws horizontal lines (e.g. the teacher)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    # more lines than the default cycle's 10 colours: tab20, so that no two share one
    colors = plt.get_cmap("tab20").colors if len(curves) > 10 else [None] * len(curves)
    for (name, points), color in zip(curves.items(), colors):
        if points:
            steps, accs = zip(*points)
            ax.plot(steps, [100 * a for a in accs], marker="o", ms=3, label=name, color=color)
    for name, value in (reference or {}).items():
        ax.axhline(100 * value, ls="--", lw=1, color="gray")
        ax.text(0, 100 * value, f" {name}", va="bottom", color="gray", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def plot_series(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    secondary: Mapping[str, Sequence[tuple[int, float]]] | None = None,
    secondary_label: str = "",
) -> Path:
    """Several named ``(step, value)`` series on one axis, optionally more on a right-hand axis."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in series.items():
        if points:
            ax.plot(*zip(*points), label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for name, points in secondary.items():
            if points:
                ax2.plot(*zip(*points), ls="--", color="black", label=name)
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_entropy_histogram(
    histogram: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "Teacher entropy on student rollouts, by oracle position",
) -> Path:
    """Stacked histogram of the teacher's per-token entropy: ``histogram["edges"]`` (bin edges, nats) and
    one count list per kind of position (``fork``, ``forced``, ``off_path``); log-scaled counts."""
    edges = list(histogram["edges"])
    widths = [b - a for a, b in zip(edges, edges[1:])]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bottom = [0.0] * len(widths)
    labels = {"forced": "forced by the prefix", "fork": "fork (several correct tokens)", "off_path": "after leaving every correct path"}
    for key, label in labels.items():
        counts = list(histogram.get(key, []))
        if not counts:
            continue
        ax.bar(edges[:-1], counts, width=widths, bottom=bottom, align="edge", label=label, alpha=0.85)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("teacher entropy H_T (nats)")
    ax.set_ylabel("tokens")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_grouped_bars(groups: Mapping[str, Mapping[str, float]], path: str | Path, *, title: str, ylabel: str,
                      categories: Sequence[str]) -> Path:
    """One group of bars per entry of ``groups`` (``{label: {category: value}}``), one bar per category (a missing
    value: no bar); written to ``path``."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    width = 0.8 / max(len(groups), 1)
    for i, (label, values) in enumerate(groups.items()):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(categories))]
        ax.bar(xs, [values.get(c, float("nan")) for c in categories], width=width, label=label)
    ax.set_xticks(range(len(categories)), list(categories))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
