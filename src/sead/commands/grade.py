"""``sead grade``: grade existing responses (jsonl) without a model.

Each input row holds ``responses`` (a list of strings) or ``response`` (one string), and its gold
answer: taken with the benchmark's rule when ``--benchmark`` is given (so rows of a benchmark file
work as they are), else from an ``answer`` (or ``gold``) field. Each output row is the input row
plus ``correct`` (list of bools) and ``pred`` (the extracted answers; null where none was found).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sead.commands.engine_args import add_mode_argument
from sead.grading.verifier import DEFAULT_TIMEOUT_SECONDS
from sead.utils.errors import SeadError
from sead.utils.jsonl import read_jsonl, write_jsonl


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="jsonl with `responses` (or `response`) per row")
    parser.add_argument(
        "--output", required=True, help="jsonl to write: input rows plus `correct` and `pred`"
    )
    parser.add_argument("--benchmark", default=None, help="take the gold answer with this benchmark's rule")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds per grade")
    add_mode_argument(parser)
    parser.add_argument("--workers", type=int, default=None, help="parallel grading processes")


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SeadError(f"--input {str(path)!r} does not exist; give a jsonl file of responses.")
    rows = read_jsonl(path)
    if not rows:
        raise SeadError(f"--input {str(path)!r} has no rows.")
    return rows


def row_responses(row: dict[str, Any], where: str) -> list[str]:
    if "responses" in row:
        responses = row["responses"]
        if not isinstance(responses, list) or not responses:
            raise SeadError(f"{where}: `responses` must be a non-empty list of strings.")
        return ["" if r is None else str(r) for r in responses]
    if "response" in row:
        return ["" if row["response"] is None else str(row["response"])]
    raise SeadError(f"{where}: no `responses` (list of strings) or `response` field; add one.")


def row_gold(row: dict[str, Any], benchmark, where: str) -> str:
    from sead.evaluation.benchmarks import gold_answer_field

    if benchmark is not None:
        try:
            return benchmark.gold_answer(row)
        except SeadError as err:
            raise SeadError(f"{where}: {err}") from None
    if row.get("answer") is None and row.get("gold") is None:
        raise SeadError(
            f"{where}: no gold answer: add an `answer` (or `gold`) field, or pass --benchmark NAME "
            "to take it with that benchmark's rule."
        )
    return gold_answer_field(row, benchmark="input")


def run(args: argparse.Namespace) -> int:
    from sead.evaluation.benchmarks import get_benchmark
    from sead.grading.metrics import avg_at_k, mean_pass_at_k, report_ks, summarize_grades
    from sead.grading.verifier import grade_groups
    from sead.utils.progress import progress_bar

    in_path, out_path = Path(args.input), Path(args.output)
    benchmark = get_benchmark(args.benchmark) if args.benchmark else None
    rows = read_rows(in_path)
    responses = [row_responses(row, f"{in_path}:row {i + 1}") for i, row in enumerate(rows)]
    golds = [row_gold(row, benchmark, f"{in_path}:row {i + 1}") for i, row in enumerate(rows)]

    with progress_bar(total=sum(map(len, responses)), desc="grading", unit="ans") as bar:
        graded = grade_groups(
            responses, golds, timeout_seconds=args.timeout, mode=args.mode, num_workers=args.workers, progress=bar.update
        )
    flat = [r for group in graded for r in group]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    correct = [[r.correct for r in results] for results in graded]
    write_jsonl(
        out_path, (dict(row, correct=c, pred=[r.pred for r in results]) for row, c, results in zip(rows, correct, graded))
    )

    k = min(len(group) for group in responses)
    counts = summarize_grades(flat)
    print(f"graded {len(flat)} responses to {len(rows)} questions (mode {args.mode}) -> {out_path}")
    print(f"avg@k (per-sample accuracy): {100 * avg_at_k(correct):.2f}")
    for j in report_ks(k):
        print(f"pass@{j}: {100 * mean_pass_at_k(correct, j):.2f}")
    print(f"timeouts: {counts['timeouts']}  errors: {counts['errors']}  unparsed: {counts['unparsed']}")
    return 0
