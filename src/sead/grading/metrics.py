"""The metrics of METHODS.md section 3, over verdicts.

For a question with ``n`` sampled responses of which ``c`` are correct:

- **avg@k** (with ``n = k`` samples): the per-sample accuracy ``c / k``, averaged over questions;
- **pass@k**: the unbiased estimator of Chen et al. (2021),
  ``pass@k = 1 - C(n - c, k) / C(n, k)``, averaged over questions (:func:`pass_at_k`);
- **greedy pass@1**: one response at temperature 0, correct or not, averaged over questions.
"""

from __future__ import annotations

from collections.abc import Sequence

from sead.grading.verifier import GradeResult

__all__ = ["avg_at_k", "mean_pass_at_k", "pass_at_k", "pass_at_k_curve", "report_ks", "summarize_grades"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question with ``n`` samples, ``c`` of them correct.

    ``pass@k = 1 - C(n-c, k) / C(n, k)``: the probability that at least one of ``k`` samples drawn
    without replacement from the ``n`` is correct. Computed in the numerically stable product form
    ``C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)`` (exactly 1 when ``n - c < k``).
    """
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    n, c, k = int(n), int(c), int(k)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """avg@k: ``mean_q (c_q / n_q)``, the per-sample accuracy averaged over questions."""
    if not correct:
        raise ValueError("avg_at_k needs at least one question")
    per_question = []
    for i, row in enumerate(correct):
        if len(row) == 0:
            raise ValueError(f"question {i} has no samples")
        per_question.append(sum(bool(x) for x in row) / len(row))
    return sum(per_question) / len(per_question)


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """``mean_q pass@k(n_q, c_q)`` over questions."""
    if not correct:
        raise ValueError("mean_pass_at_k needs at least one question")
    return sum(pass_at_k(len(row), sum(bool(x) for x in row), k) for row in correct) / len(correct)


def report_ks(k: int) -> list[int]:
    """The k's pass@k is reported at: powers of two below ``k``, and ``k``."""
    ks = [1]
    while ks[-1] * 2 < k:
        ks.append(ks[-1] * 2)
    if ks[-1] != k:
        ks.append(k)
    return ks


def pass_at_k_curve(correct: Sequence[Sequence[bool]], k: int) -> dict[str, float]:
    """``{"1": pass@1, "2": pass@2, "4": ..., str(k): pass@k}`` averaged over questions."""
    return {str(j): mean_pass_at_k(correct, j) for j in report_ks(k)}


def summarize_grades(results: Sequence[GradeResult]) -> dict[str, int]:
    """Counts of timeouts, errors (other than timeouts) and unparsed answers (nothing extracted)."""
    return {
        "timeouts": sum(r.timed_out for r in results),
        "errors": sum(r.error is not None and not r.timed_out for r in results),
        "unparsed": sum(r.pred is None for r in results),
    }
