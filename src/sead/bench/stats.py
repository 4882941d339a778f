"""Seed statistics of the quality benchmark: mean +- sd, and paired differences with a 95% interval.

Runs of two variants with the same seed share the prepared models, the training prompts, the difficulty
pre-pass and the held-out problems, so their difference is paired: per seed ``d_s = x_s - y_s``, and the
interval is Student's t on the differences, ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["t_quantile_975", "mean_sd", "paired_difference"]

# t_{0.975, df}, df = 1..30 (standard tables)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (table for df <= 30, then the
    Cornish-Fisher expansion ``z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2)``, z = 1.95996)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, sample sd)``; the sd of one value is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sd needs at least one value")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(x: Sequence[float], y: Sequence[float]) -> dict[str, float | int | None]:
    """Paired ``x - y`` over seeds: ``{"mean", "sd", "n", "ci_low", "ci_high"}`` (95%, Student's t on the
    differences; ``None`` bounds with one seed)."""
    if len(x) != len(y):
        raise ValueError(f"paired samples need the same seeds: {len(x)} vs {len(y)} values")
    d = [float(a) - float(b) for a, b in zip(x, y)]
    mean, sd = mean_sd(d)
    n = len(d)
    if n < 2:
        return {"mean": mean, "sd": sd, "n": n, "ci_low": None, "ci_high": None}
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}
