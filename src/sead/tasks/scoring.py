"""Held-out scores of a built-in task's model: greedy accuracy, and avg@k / pass@k of sampled answers.

Responses come from :func:`sead.engines.hf.generate_responses` and are graded with the project's one
grader, :func:`sead.grading.verifier.grade`; avg@k and pass@k are :mod:`sead.evaluation.evaluate`'s estimators.
"""

from __future__ import annotations

from sead.engines.hf import generate_responses

__all__ = ["evaluate_accuracy", "evaluate_sampled"]


def _check_dataset(dataset) -> None:
    for column in ("prompt", "answer", "level"):
        if column not in dataset.column_names:
            raise ValueError(f"dataset needs a {column!r} column, has {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")


def _grade_rows(responses, dataset) -> dict[int, list[list[bool]]]:
    """``{level: [[correct per sample] per prompt]}``."""
    from sead.grading.answers import TRAINING_MODE
    from sead.grading.verifier import grade

    by_level: dict[int, list[list[bool]]] = {}
    for samples, gold, level in zip(responses, dataset["answer"], dataset["level"]):
        by_level.setdefault(int(level), []).append([bool(grade(r, str(gold), mode=TRAINING_MODE).correct) for r in samples])
    return dict(sorted(by_level.items()))


def evaluate_accuracy(
    model,
    tokenizer,
    dataset,
    batch_size: int = 256,
    max_new_tokens: int = 32,
    progress: bool | str = False,
) -> dict:
    """Greedy accuracy of ``model`` on ``dataset`` (columns ``prompt``, ``answer``, ``level``).

    Returns ``{"accuracy": float, "accuracy_by_level": {level: float}, "n": int}``.
    """
    _check_dataset(dataset)
    responses = generate_responses(
        model,
        tokenizer,
        list(dataset["prompt"]),
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    by_level = {level: [row[0] for row in rows] for level, rows in _grade_rows(responses, dataset).items()}
    total = [c for flags in by_level.values() for c in flags]
    return {
        "accuracy": sum(total) / len(total),
        "accuracy_by_level": {level: sum(f) / len(f) for level, f in by_level.items()},
        "n": len(total),
    }


def evaluate_sampled(
    model,
    tokenizer,
    dataset,
    k: int = 8,
    temperature: float = 1.0,
    batch_size: int = 512,
    max_new_tokens: int = 32,
    seed: int = 0,
) -> dict:
    """avg@k and pass@k of ``k`` answers sampled at ``temperature`` per prompt of ``dataset``.

    avg@k is the mean over prompts of the fraction of correct samples (per-sample accuracy); pass@k
    the fraction of prompts with at least one correct sample (with exactly ``k`` samples, the unbiased
    estimator ``1 - C(n-c, k) / C(n, k)`` is this indicator). Returns ``{"avg_at_k", "pass_at_k",
    "avg_at_k_by_level", "pass_at_k_by_level", "k", "temperature", "n"}``.
    """
    from sead.grading.metrics import avg_at_k, mean_pass_at_k

    _check_dataset(dataset)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampled answers, got {temperature}")
    responses = generate_responses(
        model,
        tokenizer,
        list(dataset["prompt"]),
        num_samples=k,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )
    by_level = _grade_rows(responses, dataset)
    rows = [row for level_rows in by_level.values() for row in level_rows]
    return {
        "avg_at_k": avg_at_k(rows),
        "pass_at_k": mean_pass_at_k(rows, k),
        "avg_at_k_by_level": {level: avg_at_k(r) for level, r in by_level.items()},
        "pass_at_k_by_level": {level: mean_pass_at_k(r, k) for level, r in by_level.items()},
        "k": k,
        "temperature": temperature,
        "n": len(rows),
    }
