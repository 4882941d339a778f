"""Seed statistics of the quality benchmark: mean +- sd, and paired differences with a 95% interval.

Runs of two variants with the same seed share the prepared models, the training prompts, the difficulty
pre-pass and the held-out problems, so their difference is paired: per seed ``d_s = x_s - y_s``, and the
interval is Student's t on the differences, ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)``.

With few seeds that interval is wide (t_{0.975, 1} = 12.7): :func:`block_residual_sd` and :func:`contrast` read
every variant's runs as one randomized block design (variants x seeds, additive model ``y_vs = mu + a_v + b_s + e``)
and pool the residual variance over all variants, ``(V - 1)(S - 1)`` degrees of freedom instead of ``S - 1``.
When variants ran different seeds (more seeds for the pair the question is about), :func:`additive_fit` fits the same
model by least squares over the cells that exist, and :func:`fitted_contrast` reads contrasts off it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = [
    "binomial_se",
    "additive_fit",
    "block_residual_sd",
    "contrast",
    "fitted_contrast",
    "interaction",
    "mean_sd",
    "paired_by_prompt",
    "paired_difference",
    "seeds_for_half_width",
    "t_quantile_975",
    "value_at",
]

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


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent problems: ``sqrt(p (1 - p) / n)``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return math.sqrt(p * (1.0 - p) / n)


def seeds_for_half_width(sd: float, half_width: float, max_seeds: int = 1000) -> int | None:
    """The fewest seeds ``n >= 2`` whose paired 95% interval ``t_{0.975, n-1} sd / sqrt(n)`` is at most
    ``half_width`` for differences of sample sd ``sd`` (``None`` past ``max_seeds``)."""
    if half_width <= 0:
        raise ValueError(f"half_width must be > 0, got {half_width}")
    for n in range(2, max_seeds + 1):
        if t_quantile_975(n - 1) * sd / math.sqrt(n) <= half_width:
            return n
    return None


def value_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """``y`` at ``x`` on the piecewise-linear curve through ``(xs, ys)`` (``xs`` increasing); ``None`` outside it."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("value_at needs as many ys as xs, at least one")
    if x < xs[0] or x > xs[-1]:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return float(ys[-1])


def interaction(joint: Sequence[float], singles: Sequence[Sequence[float]], base: Sequence[float]) -> dict:
    """The interaction of components over seeds: per seed ``(joint - base) - sum_c (single_c - base)``, with its 95%
    interval (:func:`paired_difference` against 0). Positive: together they give more than the sum of their parts."""
    n = len(base)
    if len(joint) != n or any(len(s) != n for s in singles):
        raise ValueError("interaction needs the same seeds in every variant")
    terms = [(j - b) - sum(s[i] - b for s in singles) for i, (j, b) in enumerate(zip(joint, base))]
    return paired_difference(terms, [0.0] * n)


def block_residual_sd(table: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Residual sd and degrees of freedom of the additive two-way model of a randomized block design,
    ``table[v][s]`` = variant ``v`` with seed ``s`` (every variant with the same seeds)::

        sigma^2 = sum_vs (y_vs - ybar_v. - ybar_.s + ybar_..)^2 / ((V - 1)(S - 1))

    (the variant-by-seed interaction is the error term; V >= 2 variants, S >= 2 seeds)."""
    rows = [[float(x) for x in row] for row in table]
    n_v = len(rows)
    n_s = len(rows[0]) if rows else 0
    if n_v < 2 or n_s < 2 or any(len(r) != n_s for r in rows):
        raise ValueError(f"a block design needs >= 2 variants with the same >= 2 seeds; got {[len(r) for r in rows]}")
    grand = sum(map(sum, rows)) / (n_v * n_s)
    row_mean = [sum(r) / n_s for r in rows]
    col_mean = [sum(r[s] for r in rows) / n_v for s in range(n_s)]
    ss = sum((rows[v][s] - row_mean[v] - col_mean[s] + grand) ** 2 for v in range(n_v) for s in range(n_s))
    df = (n_v - 1) * (n_s - 1)
    return math.sqrt(ss / df), df


def contrast(means: Sequence[float], coefficients: Sequence[float], sigma: float, df: int, n_seeds: int) -> dict:
    """A contrast ``L = sum_i c_i mean_i`` of variant means over ``n_seeds`` seeds, with its 95% interval from the
    pooled residual sd: ``L +- t_{0.975, df} * sigma * sqrt(sum_i c_i^2 / n_seeds)``. A paired difference is
    ``c = (1, -1)``; SEAD's interaction ``sead + 2 opd - zones - anneal - curriculum`` is ``c = (1, 2, -1, -1, -1)``.
    ``{"mean", "half_width", "ci_low", "ci_high", "df"}``."""
    if len(means) != len(coefficients) or not means:
        raise ValueError("contrast needs one coefficient per mean")
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    value = sum(c * m for c, m in zip(coefficients, means))
    half = t_quantile_975(df) * sigma * math.sqrt(sum(c * c for c in coefficients) / n_seeds)
    return {"mean": value, "half_width": half, "ci_low": value - half, "ci_high": value + half, "df": df}


def additive_fit(cells: dict[tuple[str, int], float]) -> dict:
    """Least-squares fit of the additive model ``y_vs = a_v + b_s + e`` (``b`` of the first seed fixed at 0) over the
    ``(variant, seed)`` cells that exist: an unbalanced randomized block design (some variants ran more seeds).
    Returns ``{"variants", "seeds", "effects", "cov", "sigma", "df"}``: each variant's effect ``a_v`` (differences of
    effects are seed-adjusted differences of means), ``cov`` the ``(X'X)^-1`` block of the effects (times
    ``sigma^2`` their covariance), and the residual sd on ``N - rank(X)`` degrees of freedom. On a balanced table it
    is :func:`block_residual_sd` and the plain means."""
    import numpy as np

    variants = list(dict.fromkeys(v for v, _ in cells))
    seeds = sorted({s for _, s in cells})
    X = np.zeros((len(cells), len(variants) + len(seeds) - 1))
    y = np.zeros(len(cells))
    for row, ((v, s), value) in enumerate(cells.items()):
        X[row, variants.index(v)] = 1.0
        if seeds.index(s):
            X[row, len(variants) + seeds.index(s) - 1] = 1.0
        y[row] = float(value)
    rank = int(np.linalg.matrix_rank(X))
    df = len(cells) - rank
    if len(variants) < 2 or df < 1:
        raise ValueError(f"an additive fit needs >= 2 variants and more cells than parameters; got {len(cells)} cells")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    rss = float(((y - X @ coef) ** 2).sum())
    inv = np.linalg.pinv(X.T @ X)
    V = len(variants)
    return {"variants": variants, "seeds": seeds, "effects": coef[:V].tolist(), "cov": inv[:V, :V].tolist(),
            "sigma": math.sqrt(rss / df), "df": df}  # fmt: skip


def fitted_contrast(fit: dict, names: Sequence[str], coefficients: Sequence[float]) -> dict:
    """A contrast ``L = sum_i c_i a_{names_i}`` (coefficients summing to 0: estimable) of an :func:`additive_fit`,
    with its 95% interval ``L +- t_{0.975, df} * sigma * sqrt(c' (X'X)^-1 c)``; the keys of :func:`contrast`."""
    if len(names) != len(coefficients) or abs(sum(coefficients)) > 1e-9:
        raise ValueError("a fitted contrast needs one coefficient per variant, summing to 0")
    idx = [fit["variants"].index(n) for n in names]
    value = sum(c * fit["effects"][i] for c, i in zip(coefficients, idx))
    var = sum(ci * cj * fit["cov"][i][j] for ci, i in zip(coefficients, idx) for cj, j in zip(coefficients, idx))
    half = t_quantile_975(fit["df"]) * fit["sigma"] * math.sqrt(max(var, 0.0))
    return {"mean": value, "half_width": half, "ci_low": value - half, "ci_high": value + half, "df": fit["df"]}


def paired_by_prompt(x_SN: Sequence[Sequence[float]], y_SN: Sequence[Sequence[float]]) -> dict[str, float | int | None]:
    """Paired ``x - y`` over ``N`` held-out prompts, each prompt's difference averaged over the ``S`` seeds:
    ``d_n = mean_s (x_sn - y_sn)``, then ``mean(d) +- t_{0.975, N-1} * sd(d) / sqrt(N)`` (``{"mean", "sd", "n",
    "ci_low", "ci_high"}``). It measures how much the verdicts on this test set say (the prompts' sampling noise),
    not how much another seed would change them (:func:`paired_difference`)."""
    if len(x_SN) != len(y_SN) or not x_SN:
        raise ValueError(f"paired samples need the same seeds: {len(x_SN)} vs {len(y_SN)} rows")
    n = len(x_SN[0])
    if any(len(row) != n for row in (*x_SN, *y_SN)):
        raise ValueError("paired samples need the same prompts in every row")
    d = [statistics.mean(float(x[i]) - float(y[i]) for x, y in zip(x_SN, y_SN)) for i in range(n)]
    return paired_difference(d, [0.0] * n)
