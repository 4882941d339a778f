"""Time-bounded grading of math answers with math-verify, in a pool of worker processes.

Grading follows METHODS.md section 3: the final answer is taken from the response by
:func:`sead.grading.answers.extract_answer` (the extraction modes, and :data:`~sead.grading.answers.TRAINING_MODE`,
are there), both it and the gold are parsed with math-verify, and ``verify(gold, pred)`` decides (gold first:
math-verify's comparison is not symmetric).

Time bound. math-verify's own timeouts use ``signal.alarm``, which works only in the main thread
and cannot interrupt sympy while it is inside C code (``9^{9^{9^{9}}}`` hangs ``verify`` for good).
So the sympy work runs in a small pool of persistent worker *processes* (started once, reused for
every grade, talking JSON lines over pipes); a grade that takes longer than ``timeout_seconds``
gets its worker killed (a fresh one is started at once) and returns ``correct=False,
timed_out=True``. This works from any thread, never hangs, and costs a pipe round trip
(a fraction of a millisecond: ``python -m sead.bench.profiles.grading``) per grade. Integer and decimal answers never reach sympy: they are compared exactly in
this process (the fast path, :func:`sead.grading.answers.number_verdict`).

Holds: :func:`grade`, :func:`grade_many`, :func:`grade_groups`, :class:`GradeResult`, :class:`GradeCounter` (and
the module-wide :data:`GRADE_COUNTER`), :func:`shutdown_workers` (the worker pool), :func:`math_reward` and
:func:`make_math_reward` (TRL reward functions).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sead.grading.answers import (
    EXTRACTION_MODES,
    TRAINING_MODE,
    extract_answer,
    normalize_gold,
    number_verdict,
)
from sead.utils.errors import SeadError

DEFAULT_TIMEOUT_SECONDS = 5.0
WORKER_STARTUP_TIMEOUT_SECONDS = 120.0  # importing sympy on a loaded machine; not part of a grade's bound

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "GRADE_COUNTER",
    "GradeCounter",
    "GradeResult",
    "default_num_workers",
    "grade",
    "grade_groups",
    "grade_many",
    "make_math_reward",
    "math_reward",
    "shutdown_workers",
]


# --------------------------------------------------------------------------------------------
# Results and counters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeResult:
    """Outcome of one grade.

    ``correct`` is False whenever the grade could not be completed; ``pred`` is the extracted
    answer (None: nothing could be extracted); ``timed_out`` says the time bound was hit;
    ``error`` holds the message of an exception raised while grading (None if there was none).
    """

    correct: bool
    pred: str | None
    timed_out: bool = False
    error: str | None = None


@dataclass
class GradeCounter:
    """Thread-safe running counts of grades, for logging (e.g. the trainer's ``grader/timeouts``).

    Counts: ``total``, ``correct``, ``timeouts``, ``errors``, ``unparsed`` (no answer extracted).
    """

    total: int = 0
    correct: int = 0
    timeouts: int = 0
    errors: int = 0
    unparsed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, result: GradeResult) -> None:
        with self._lock:
            self.total += 1
            self.correct += int(result.correct)
            self.timeouts += int(result.timed_out)
            self.errors += int(result.error is not None and not result.timed_out)
            self.unparsed += int(result.pred is None)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                "total": self.total,
                "correct": self.correct,
                "timeouts": self.timeouts,
                "errors": self.errors,
                "unparsed": self.unparsed,
            }

    def reset(self) -> dict[str, int]:
        """Zero the counts; returns the counts as they were (handy for per-step logging)."""
        with self._lock:
            snapshot = {
                "total": self.total,
                "correct": self.correct,
                "timeouts": self.timeouts,
                "errors": self.errors,
                "unparsed": self.unparsed,
            }
            self.total = self.correct = self.timeouts = self.errors = self.unparsed = 0
            return snapshot


GRADE_COUNTER = GradeCounter()
"""Counts every :func:`grade` made in this process (unless ``count=False``)."""


# --------------------------------------------------------------------------------------------
# The math-verify side (runs inside worker processes, or in-process when no bound is asked for)
# --------------------------------------------------------------------------------------------

_MV_CACHE: dict[str, object] = {}


def _mv_parse(answer: str):
    """Parse an extracted answer (or a gold) with math-verify, wrapped as ``\\boxed{...}`` so that
    the whole string is taken as one LaTeX expression; cached (golds repeat across samples)."""
    parsed = _MV_CACHE.get(answer)
    if parsed is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

        parsed = parse(
            "\\boxed{" + answer + "}",
            extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
            parsing_timeout=None,
        )
        if len(_MV_CACHE) > 20_000:
            _MV_CACHE.clear()
        _MV_CACHE[answer] = parsed
    return parsed


def _mv_verify(gold: str, pred: str) -> bool:
    """math-verify's verdict, gold first. No time bound: callers bound it."""
    from math_verify import verify

    gold_parsed = _mv_parse(gold)
    pred_parsed = _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True))


def _quiet_math_verify_logs() -> None:
    import logging

    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # the "timeout is disabled" warning: we enforce the bound ourselves
        import math_verify.grader as grader_mod
        import math_verify.parser as parser_mod

        grader_mod.TIMEOUT_WARNING_SHOWN = True
        parser_mod.TIMEOUT_WARNING_SHOWN = True
    except Exception:  # pragma: no cover - older/newer math-verify without the flag
        pass


def _worker_main() -> None:  # pragma: no cover - runs in a child process
    """Worker loop: read ``{"gold", "pred"}`` JSON lines on stdin, answer ``{"correct", "error"}``."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the protocol channel
    _quiet_math_verify_logs()
    import math_verify  # noqa: F401  (import cost paid before "ready")

    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = {"correct": _mv_verify(request["gold"], request["pred"]), "error": None}
        except BaseException as err:  # noqa: BLE001 - report everything, keep serving
            reply = {"correct": False, "error": f"{type(err).__name__}: {err}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _WorkerTimeout(Exception):
    pass


class _Worker:
    """One persistent grading process and a reader thread feeding its replies into a queue."""

    def __init__(self) -> None:
        src_dir = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = src_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sead.grading.verifier as v; v._worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.ready = False
        reader = threading.Thread(target=self._read, name="sead-grader-reader", daemon=True)
        reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.replies.put(line)
        except (OSError, ValueError):
            pass
        self.replies.put(None)  # EOF: the process is gone

    def _get(self, timeout: float) -> dict:
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise _WorkerTimeout from None
        if line is None:
            raise RuntimeError("grading worker exited unexpectedly")
        return json.loads(line)

    def wait_ready(self) -> None:
        if not self.ready:
            try:
                self._get(WORKER_STARTUP_TIMEOUT_SECONDS)
            except _WorkerTimeout:
                self.kill()
                raise RuntimeError(
                    f"grading worker did not start within {WORKER_STARTUP_TIMEOUT_SECONDS:.0f} s"
                ) from None
            self.ready = True

    def request(self, gold: str, pred: str, timeout: float) -> dict:
        self.wait_ready()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
        self.proc.stdin.flush()
        return self._get(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # pragma: no cover
                pass

    def close(self) -> None:
        """Polite shutdown: EOF on stdin ends the worker loop."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _WorkerPool:
    """Idle workers, handed out one per concurrent grade (so threads grade in parallel)."""

    MAX_IDLE = 16

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def acquire(self) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive():
                    return worker
        return _Worker()

    def release(self, worker: _Worker) -> None:
        with self.lock:
            if worker.alive() and len(self.idle) < self.MAX_IDLE:
                self.idle.append(worker)
                return
        worker.close()

    def replace(self, worker: _Worker) -> None:
        """Kill a stuck worker and start its successor now, so its import overlaps other work."""
        worker.kill()
        successor = _Worker()
        self.release(successor)

    def close(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for worker in workers:
            worker.close()


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _WorkerPool:
    """The process-wide pool (a fresh one after ``fork``: the parent's pipes are not ours)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _WorkerPool()
        return _POOL


def shutdown_workers() -> None:
    """Stop the grading worker processes (they restart on the next grade). Called at exit."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown_workers)


# --------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------


def grade(
    response: str,
    gold,
    *,
    timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    mode: str = "auto",
    count: bool = True,
) -> GradeResult:
    """Grade one response against a gold answer.

    The answer is extracted with :func:`~sead.grading.answers.extract_answer` (``mode``), then compared with
    math-verify as ``verify(parse(gold), parse(pred))``. Plain integers/decimals are compared
    exactly without sympy. The sympy work runs in a persistent worker process bounded by
    ``timeout_seconds`` (``None``: no bound, in this process, for debugging): past the bound the
    result is ``correct=False, timed_out=True``. Never raises for bad model output; an exception
    inside math-verify gives ``correct=False`` with ``error`` set. ``gold`` may be a number or a
    string (``$...$`` and a ``\\boxed{}`` wrapper are removed). ``count`` adds the result to
    :data:`GRADE_COUNTER`.
    """
    result = _grade(response, gold, timeout_seconds=timeout_seconds, mode=mode)
    if count:
        GRADE_COUNTER.update(result)
    return result


def _grade(response, gold, *, timeout_seconds: float | None, mode: str) -> GradeResult:
    if mode not in EXTRACTION_MODES:
        raise ValueError(f"mode must be one of {EXTRACTION_MODES}, got {mode!r}")
    if response is None:
        return GradeResult(correct=False, pred=None)
    pred = extract_answer(str(response), mode=mode)
    if pred is None:
        return GradeResult(correct=False, pred=None)
    gold_str = normalize_gold(gold)
    if not gold_str:
        return GradeResult(correct=False, pred=pred, error="empty gold answer")
    fast = number_verdict(gold_str, pred)
    if fast is not None:
        return GradeResult(correct=fast, pred=pred)
    if timeout_seconds is None or timeout_seconds <= 0:
        _quiet_math_verify_logs()
        try:
            return GradeResult(correct=_mv_verify(gold_str, pred), pred=pred)
        except Exception as err:  # noqa: BLE001
            return GradeResult(correct=False, pred=pred, error=f"{type(err).__name__}: {err}"[:500])
    return _grade_in_worker(gold_str, pred, float(timeout_seconds))


def _grade_in_worker(gold: str, pred: str, timeout_seconds: float) -> GradeResult:
    pool = _pool()
    worker = pool.acquire()
    try:
        worker.wait_ready()
        reply = worker.request(gold, pred, timeout_seconds)
    except _WorkerTimeout:
        pool.replace(worker)
        return GradeResult(
            correct=False, pred=pred, timed_out=True, error=f"grading timed out after {timeout_seconds:g} s"
        )
    except Exception as err:  # worker died (e.g. out of memory): count as an error, start afresh
        worker.kill()
        return GradeResult(correct=False, pred=pred, error=f"grading worker failed: {err}"[:500])
    pool.release(worker)
    return GradeResult(correct=bool(reply["correct"]), pred=pred, error=reply.get("error"))


def default_num_workers() -> int:
    """Parallel graders for :func:`grade_many`: the CPU count, capped at 8."""
    return max(1, min(8, os.cpu_count() or 1))


def grade_many(
    responses: Sequence[str],
    golds: Sequence,
    *,
    timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    mode: str = "auto",
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    count: bool = True,
) -> list[GradeResult]:
    """Grade ``responses[i]`` against ``golds[i]`` for all i, in order, with ``num_workers`` parallel
    worker processes (default :func:`default_num_workers`). ``progress(n)`` is called as grades finish."""
    if len(responses) != len(golds):
        raise ValueError(f"responses and golds differ in length: {len(responses)} vs {len(golds)}")
    workers = default_num_workers() if num_workers is None else max(1, int(num_workers))

    def one(pair) -> GradeResult:
        result = grade(pair[0], pair[1], timeout_seconds=timeout_seconds, mode=mode, count=count)
        if progress is not None:
            progress(1)
        return result

    pairs = list(zip(responses, golds))
    if workers == 1 or len(pairs) <= 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sead-grade") as pool:
        return list(pool.map(one, pairs))


# --------------------------------------------------------------------------------------------
# TRL reward functions
# --------------------------------------------------------------------------------------------


def grade_groups(
    responses: Sequence[Sequence[str]], golds: Sequence[str], **kwargs
) -> list[list[GradeResult]]:
    """:func:`grade_many` over groups: ``responses[q]`` are question ``q``'s answers, all graded against
    ``golds[q]``; one list of results per question, in order. ``kwargs`` go to :func:`grade_many`."""
    flat = grade_many(
        [r for group in responses for r in group], [g for group, g in zip(responses, golds) for _ in group], **kwargs
    )
    out, i = [], 0
    for group in responses:
        out.append(flat[i : i + len(group)])
        i += len(group)
    return out


def _completion_text(completion) -> str:
    """A completion as text: a string, or the content of the last assistant message of a
    conversational completion ``[{"role": ..., "content": ...}, ...]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, Iterable):
        messages = list(completion)
        assistant = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        chosen = assistant[-1] if assistant else (messages[-1] if messages else {})
        content = chosen.get("content", "") if isinstance(chosen, dict) else chosen
        if isinstance(content, list):  # multimodal-style content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return str(completion)


def make_math_reward(
    *,
    timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    mode: str = TRAINING_MODE,
    counter: GradeCounter | None = None,
    num_workers: int | None = None,
) -> Callable[..., list[float]]:
    """A TRL-style reward function ``f(prompts, completions, answer, **kwargs) -> list[float]``:
    1.0 where the completion's final answer equals ``answer[i]`` (see :func:`grade`), else 0.0.

    ``mode`` defaults to ``"strict"`` (:data:`~sead.grading.answers.TRAINING_MODE`): only an explicit final
    answer counts, so a rollout cut off at the length limit without one earns 0 (see
    :func:`~sead.grading.answers.extract_answer`).

    Results are also added to ``counter`` (besides :data:`GRADE_COUNTER`), e.g. to log timeouts.
    The gold column may be named ``answer`` or ``gold``.
    """

    def math_reward(prompts=None, completions=None, answer=None, **kwargs) -> list[float]:
        if completions is None:
            raise SeadError("math_reward: no `completions` were passed (TRL passes them as a keyword).")
        golds = answer if answer is not None else kwargs.get("gold")
        if golds is None:
            raise SeadError(
                "math_reward needs the gold answers: give the dataset an `answer` column "
                "(TRL passes dataset columns to reward functions as keyword arguments)."
            )
        if isinstance(golds, (str, int, float)):
            golds = [golds] * len(completions)
        if len(golds) != len(completions):
            raise SeadError(f"math_reward: {len(completions)} completions but {len(golds)} answers.")
        texts = [_completion_text(c) for c in completions]
        results = grade_many(
            texts, list(golds), timeout_seconds=timeout_seconds, mode=mode, num_workers=num_workers
        )
        if counter is not None:
            for r in results:
                counter.update(r)
        return [1.0 if r.correct else 0.0 for r in results]

    math_reward.__name__ = "math_reward"
    return math_reward


math_reward = make_math_reward()
math_reward.__doc__ = """TRL GRPO-style reward: 1.0 if the completion's answer matches ``answer[i]``, else 0.0.

Strict extraction (:data:`~sead.grading.answers.TRAINING_MODE`): only an explicit final answer (``\\boxed{}``, ``####``,
an ``Answer:`` line, "the answer is") counts.

``completions`` are strings or conversational message lists. Counts go to :data:`GRADE_COUNTER`
(``GRADE_COUNTER.reset()`` returns and zeroes them, e.g. once per logging step)."""
