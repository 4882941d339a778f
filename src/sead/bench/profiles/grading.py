"""What one grade costs: ``python -m sead.bench.profiles.grading [--integers N] [--fractions M] [--repeats R]``.

Times :func:`sead.grading.verifier.grade` per grade, median over ``R`` repeats: the integer fast path (``N``
responses ``so the answer is i`` against gold ``18``: compared exactly in this process, never reaching sympy),
a fraction graded by math-verify in a worker process (``M`` responses ``\\boxed{\\frac{i}{2i}}`` against gold
``\\frac{1}{2}``, each a new answer: the gold's parse is cached, as in training where golds repeat), and the
same fractions with math-verify in this process (``timeout_seconds=None``: the pipe round trip is the
difference). The worker's start (importing sympy) is paid once before the timing and printed apart. Prints the
machine (processor, CPU count) and a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

from sead.grading.verifier import grade

Case = tuple[str, str, bool]  # response, gold, the verdict it must get


def _time_per_grade(cases: list[Case], timeout_seconds: float | None) -> float:
    """Seconds per grade over ``cases``, each graded once; a verdict other than the expected one stops the profile."""
    start = time.perf_counter()
    for response, gold, expected in cases:
        result = grade(response, gold, timeout_seconds=timeout_seconds, count=False)
        if result.correct != expected:
            raise RuntimeError(f"graded {response!r} against {gold!r}: {result}, expected correct={expected}")
    return (time.perf_counter() - start) / len(cases)


def integer_cases(n: int) -> list[Case]:
    """``n`` integer answers ``0 .. n-1`` against the gold ``18`` (the fast path decides each exactly)."""
    return [(f"so the answer is {i}", "18", i == 18) for i in range(n)]


def fraction_cases(m: int, offset: int) -> list[Case]:
    """``m`` distinct fractions equal to the gold ``\\frac{1}{2}`` (``offset`` keeps repeats from hitting the cache)."""
    return [(f"\\boxed{{\\frac{{{i}}}{{{2 * i}}}}}", "\\frac{1}{2}", True) for i in range(offset + 1, offset + m + 1)]


def measure(integers: int = 2000, fractions: int = 100, repeats: int = 5) -> dict[str, object]:
    """Per-grade medians (seconds) over ``repeats``: ``integer``, ``worker`` (math-verify in a worker process) and
    ``in_process`` (math-verify here); ``worker_start``: the first math-verify grade, worker start included."""
    start = time.perf_counter()
    _time_per_grade(fraction_cases(1, 0), timeout_seconds=60.0)  # starts the worker, imports sympy there
    worker_start = time.perf_counter() - start
    _time_per_grade(fraction_cases(1, 0), timeout_seconds=None)  # imports math-verify here
    times: dict[str, list[float]] = {"integer": [], "worker": [], "in_process": []}
    for r in range(repeats):
        times["integer"].append(_time_per_grade(integer_cases(integers), timeout_seconds=5.0))
        times["worker"].append(_time_per_grade(fraction_cases(fractions, (2 * r + 1) * fractions), timeout_seconds=5.0))
        in_process = fraction_cases(fractions, (2 * r + 2) * fractions)
        times["in_process"].append(_time_per_grade(in_process, timeout_seconds=None))
    return {"worker_start": worker_start, **{k: statistics.median(v) for k, v in times.items()}, "all": times}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sead.bench.profiles.grading", description=__doc__.splitlines()[0])
    p.add_argument("--integers", type=int, default=2000, help="integer grades per repeat (the fast path)")
    p.add_argument("--fractions", type=int, default=100, help="fraction grades per repeat (math-verify)")
    p.add_argument("--repeats", type=int, default=5, help="repeats; the median is printed")
    a = p.parse_args(argv)
    if min(a.integers, a.fractions, a.repeats) < 1:
        p.error("--integers, --fractions and --repeats must be at least 1")
    m = measure(a.integers, a.fractions, a.repeats)
    processor = platform.processor() or platform.machine()
    print(f"machine: {processor}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}")
    print(f"median of {a.repeats} repeats; worker start (first math-verify grade): {m['worker_start']:.2f} s\n")
    print("| grade | grades per repeat | median per grade | grades per second |")
    print("|---|---|---|---|")
    rows = (
        ("integer, fast path (no sympy)", a.integers, m["integer"]),
        ("fraction, math-verify in a worker process", a.fractions, m["worker"]),
        ("fraction, math-verify in this process", a.fractions, m["in_process"]),
    )
    for name, n, per in rows:
        print(f"| {name} | {n} | {per * 1e3:.3f} ms | {1 / per:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
