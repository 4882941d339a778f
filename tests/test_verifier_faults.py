"""Verifier faults: a grader timeout or exception on one rollout marks it incorrect and is counted in the
logs (``counters/grader_timeouts``, ``counters/grader_errors``); it never crashes or hangs the run."""

from __future__ import annotations

import signal
import time

import pytest

import sead.grading.verifier as verify
from _tiny import parity_reward, tiny_dataset, tiny_trainer
from sead.grading.rewards import RewardTimeout as _RewardTimeout
from sead.grading.rewards import call_time_bounded as _call_time_bounded

BAD = "Q: 1+1=? A:"


def _dataset():
    """8 rows, 4 of them with the prompt the faulty graders choke on. One epoch = 2 steps of 4."""
    ds = tiny_dataset(8)
    return ds.map(lambda row, i: {"prompt": BAD} if i % 2 == 0 else {}, with_indices=True)


def _last_log(trainer):
    return [e for e in trainer.state.log_history if "loss" in e][-1]


def test_reward_exception_on_some_rollouts(tmp_path):
    calls = []

    def flaky(prompts, completions, **columns):
        calls.append(len(completions))
        if BAD in prompts:
            raise RuntimeError("grader crashed")
        return parity_reward(prompts, completions)

    trainer = tiny_trainer(tmp_path, dataset=_dataset(), method="opd", max_steps=2, reward_funcs=[flaky])
    with pytest.warns(UserWarning, match="raised RuntimeError"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert trainer.sead_counters["grader_errors"] == 4  # exactly the 4 bad rollouts, not their batches
    assert _last_log(trainer)["counters/grader_errors"] == 4
    assert calls[0] == 4 and calls[1:5] == [1, 1, 1, 1]  # batch call failed -> one rollout at a time


def test_reward_timeout_on_some_rollouts(tmp_path):
    def hangs(prompts, completions, **columns):
        if BAD in prompts:
            time.sleep(60)  # a grader stuck on this rollout
        return parity_reward(prompts, completions)

    previous = signal.getsignal(signal.SIGALRM)
    trainer = tiny_trainer(tmp_path, dataset=_dataset(), method="opd", max_steps=2, reward_funcs=[hangs],
                           grader_timeout=0.2)
    start = time.monotonic()
    with pytest.warns(UserWarning, match="timed out after 0.2 s"):
        trainer.train()
    assert time.monotonic() - start < 30
    assert trainer.state.global_step == 2
    assert trainer.sead_counters["grader_timeouts"] == 4  # exactly the 4 stuck rollouts
    assert _last_log(trainer)["counters/grader_timeouts"] == 4
    assert signal.getsignal(signal.SIGALRM) is previous  # the time bound cleans up after itself


def test_reward_wrong_length_and_non_finite_values(tmp_path):
    def sloppy(prompts, completions, **columns):
        if len(completions) > 1:
            return [1.0]  # wrong length: regraded one by one
        return [float("nan")] if BAD in prompts else [None]

    trainer = tiny_trainer(tmp_path, dataset=_dataset(), method="opd", max_steps=2, reward_funcs=[sloppy])
    trainer.train()
    assert trainer.state.global_step == 2
    assert _last_log(trainer)["rollout/pass_rate"] == 0.0  # NaN and None count as 0: incorrect


def test_default_verifier_timeout_and_error_are_counted(tmp_path, monkeypatch):
    """The built-in math-verify grader: its per-grade timeouts and errors reach the trainer's counters."""
    real = verify.grade_many

    def faulty(responses, golds, **kwargs):
        results = real(responses, golds, **kwargs)
        results[0] = verify.GradeResult(correct=False, pred=None, timed_out=True, error="timed out")
        results[1] = verify.GradeResult(correct=False, pred=None, error="ValueError: bad latex")
        return results

    monkeypatch.setattr(verify, "grade_many", faulty)
    trainer = tiny_trainer(tmp_path, method="sead", max_steps=2)
    trainer.train()
    log = _last_log(trainer)
    assert trainer.sead_counters == {"nonfinite_skipped_steps": 0, "grader_timeouts": 2, "grader_errors": 2}
    assert log["counters/grader_timeouts"] == 2 and log["counters/grader_errors"] == 2


def test_call_time_bounded_unit():
    assert _call_time_bounded(lambda x: x + 1, 1.0, {"x": 1}) == 2
    assert _call_time_bounded(lambda x: x, None, {"x": 3}) == 3
    start = time.monotonic()
    with pytest.raises(_RewardTimeout):
        _call_time_bounded(lambda secs: time.sleep(secs), 0.1, {"secs": 10})
    assert time.monotonic() - start < 5

    # a function that swallows ordinary exceptions is still stopped
    def stubborn():
        try:
            time.sleep(10)
        except Exception:
            return "swallowed"

    with pytest.raises(_RewardTimeout):
        _call_time_bounded(stubborn, 0.1, {})
    # an outer pending alarm survives (re-armed with what was left of it)
    fired = []
    old = signal.signal(signal.SIGALRM, lambda s, f: fired.append(s))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        assert _call_time_bounded(lambda: 5, 2.0, {}) == 5
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 0 < remaining <= 0.5
        time.sleep(0.7)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
