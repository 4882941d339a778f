"""Verifier rewards in training: the default math-verify reward, time bounds, fault counting, verdicts.

A rollout is correct when the sum of its rewards reaches ``correct_threshold``. Reward functions follow
TRL's GRPO convention: ``f(prompts, completions, **columns) -> one float per completion``. A reward that
raises, overruns its time bound or returns the wrong number of values never crashes a run: the rollout
counts as incorrect and the fault is counted (``counters/grader_timeouts``, ``counters/grader_errors``).
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from sead.grading.verifier import GradeCounter, make_math_reward
from sead.utils.errors import SeadError

__all__ = ["RewardFunc", "RewardTimeout", "VerdictGrader", "call_time_bounded", "default_reward", "finite_or_zero"]

RewardFunc = Callable[..., list[float]]


def default_reward(answer_column: str, timeout: float, counter: GradeCounter) -> RewardFunc:
    """math-verify on ``\\boxed{}`` against the dataset's answer column (the project's one grader)."""
    grade = make_math_reward(timeout_seconds=timeout, counter=counter)

    def math_verify(prompts, completions, **columns):
        if answer_column not in columns:
            raise SeadError(f"the verifier needs the `{answer_column}` column in the training dataset")
        return grade(prompts=prompts, completions=completions, answer=columns[answer_column])

    math_verify._sead_time_bounded = True  # grades in worker processes with their own per-grade timeout
    return math_verify


class RewardTimeout(BaseException):
    """Raised in the main thread by SIGALRM when a reward function overruns its time bound.

    A ``BaseException`` so that a reward function's own ``except Exception`` does not swallow it."""


def call_time_bounded(func: Callable, seconds: float | None, kwargs: dict) -> Any:
    """``func(**kwargs)``, interrupted after ``seconds`` with :class:`RewardTimeout`.

    The bound uses ``SIGALRM`` (a thread cannot be stopped, and running the function in another thread
    would break graders that use ``signal`` themselves, such as math-verify's own timeouts). So it applies
    in the main thread of POSIX systems and interrupts Python code, not a call stuck inside C code:
    graders that can hang in C should run in a subprocess, as ``sead.grading.verifier`` does. Elsewhere the call
    is unbounded.
    """
    if (
        seconds is None
        or seconds <= 0
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        return func(**kwargs)
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            armed[0] = False
            raise RewardTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    start, old_delay = time.monotonic(), 0.0
    try:
        old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return func(**kwargs)
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
        if old_delay > 0:  # someone else's alarm was pending: re-arm what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3))


def finite_or_zero(value) -> float:
    """A reward as a float; ``None`` (not applicable), NaN, inf or a non-number count as 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


class VerdictGrader:
    """Verdicts of a batch of rollouts from the reward functions, with faults counted, never raised.

    ``pending`` holds the faults of user reward functions since the last :meth:`take_faults`; the
    default verifier counts its own in its :class:`~sead.grading.verifier.GradeCounter`.
    """

    def __init__(self, funcs: list[RewardFunc], timeout: float, correct_threshold: float):
        self.funcs = list(funcs)
        self.timeout = timeout
        self.correct_threshold = correct_threshold
        self.pending = {"grader_timeouts": 0, "grader_errors": 0}
        self._warned: set[tuple[str, str]] = set()

    def take_faults(self) -> dict[str, int]:
        """The user reward functions' faults since the last call, and reset them."""
        faults, self.pending = self.pending, {"grader_timeouts": 0, "grader_errors": 0}
        return faults

    def _fault(self, func, kind: str, count: int, detail: str) -> None:
        """Count ``count`` rollouts whose reward failed (``kind``: ``grader_timeouts`` or ``grader_errors``)."""
        self.pending[kind] += count
        name = getattr(func, "__name__", repr(func))
        if (name, kind) not in self._warned:  # once per function and kind; the counters go on
            self._warned.add((name, kind))
            warnings.warn(
                f"sead: reward function {name}: {detail}; the rollout counts as incorrect (counted in "
                f"counters/{kind}; further such faults are only counted)",
                stacklevel=2,
            )

    def call(self, func, prompts, completions, columns) -> list[float]:
        """One reward function on a batch, fault-tolerant: a batch call that raises, overruns
        ``grader_timeout`` per rollout or returns the wrong number of values is retried one rollout at a time;
        a rollout whose own call still fails gets reward 0 and is counted."""
        n = len(completions)
        if getattr(func, "_sead_time_bounded", False):  # the default verifier bounds and counts each grade
            return list(func(prompts=prompts, completions=completions, **columns))
        bound = self.timeout
        try:
            rewards = call_time_bounded(
                func, bound * n, {"prompts": prompts, "completions": completions, **columns}
            )
            if rewards is not None and len(rewards) == n:
                return list(rewards)
        except SeadError:
            raise
        except (RewardTimeout, Exception):
            pass
        out: list[float] = []
        for i in range(n):
            one = {k: v[i : i + 1] for k, v in columns.items()}
            try:
                r = call_time_bounded(
                    func, bound, {"prompts": prompts[i : i + 1], "completions": completions[i : i + 1], **one}
                )
                if r is None or len(r) != 1:
                    raise ValueError(f"returned {r!r} for one completion; expected a list of one float")
                out.append(r[0])
            except SeadError:
                raise
            except RewardTimeout:
                self._fault(func, "grader_timeouts", 1, f"timed out after {bound:g} s on a rollout")
                out.append(0.0)
            except Exception as err:
                self._fault(func, "grader_errors", 1, f"raised {err!r} on a rollout")
                out.append(0.0)
        return out

    def grade(self, inputs: list[dict[str, Any]], completions: list[str]) -> list[bool]:
        prompts = [x["prompt"] for x in inputs]
        keys = [k for k in inputs[0] if k not in ("prompt", "completion")]
        columns = {k: [x[k] for x in inputs] for k in keys}
        total = [0.0] * len(completions)
        for func in self.funcs:
            rewards = self.call(func, prompts, completions, columns)
            total = [t + finite_or_zero(r) for t, r in zip(total, rewards)]
        return [t >= self.correct_threshold for t in total]
