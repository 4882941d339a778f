"""``sead eval --backend vllm`` (and every engine sead builds) piped to a file: no carriage-return bars, no INFO or
WARNING lines from vLLM (its engine processes inherit ``VLLM_LOGGING_LEVEL``); on a terminal nothing changes."""

from __future__ import annotations

from sead.engines.sampling import Sampling
from sead.engines.vllm_engine import VLLMSampler, quiet_vllm_in_logs


class _Engine:
    def __init__(self):
        self.use_tqdm = None

    def generate(self, requests, params, use_tqdm=True):
        self.use_tqdm = use_tqdm

        class Out:
            outputs = [type("C", (), {"token_ids": [1]})()]

        return [Out() for _ in requests]


def test_quiet_in_logs(monkeypatch):
    monkeypatch.delenv("VLLM_LOGGING_LEVEL", raising=False)
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)
    monkeypatch.setenv("SEAD_PROGRESS", "lines")
    assert quiet_vllm_in_logs()
    import os

    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR" and os.environ["TORCH_CPP_LOG_LEVEL"] == "ERROR"
    engine = _Engine()
    VLLMSampler(engine, sampling_params_cls=dict).sample_ids([[1, 2]], Sampling(n=1, max_new_tokens=2), progress="eval")
    assert engine.use_tqdm is False  # vLLM's own bar writes carriage returns


def test_a_terminal_and_the_users_level_are_left_alone(monkeypatch):
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "DEBUG")
    monkeypatch.setenv("SEAD_PROGRESS", "lines")
    quiet_vllm_in_logs()
    import os

    assert os.environ["VLLM_LOGGING_LEVEL"] == "DEBUG"
    monkeypatch.setenv("SEAD_PROGRESS", "bar")
    monkeypatch.delenv("VLLM_LOGGING_LEVEL")
    assert not quiet_vllm_in_logs() and "VLLM_LOGGING_LEVEL" not in os.environ
    engine = _Engine()
    VLLMSampler(engine, sampling_params_cls=dict).sample_ids([[1, 2]], Sampling(n=1, max_new_tokens=2), progress="eval")
    assert engine.use_tqdm is True
