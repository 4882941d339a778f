"""Shared pieces of the benchmarks: machine facts, subprocess runs, medians."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
from importlib.metadata import version

# A warm-up run longer than this (seconds) is timed as the first of the runs (see bench_loss).
LONG_RUN_S = 10.0
# Runs whose warm-up takes over SLOW_RUN_S are timed SLOW_RUN_REPS times at most (make bench's 90-minute budget:
# 8 of the loss part's 26 minutes on 2026-12-01 were the 4th and 5th runs of implementations over 5 s; at over
# 2 s, and with warm-ups over 10 s counted as a timed run, about 11 of the 26 are saved).
SLOW_RUN_S = 2.0
SLOW_RUN_REPS = 3


def machine_facts() -> dict:
    """What every number is measured on: date, cores, CPU, library versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    libs = {name: version(name) for name in ("torch", "transformers", "trl", "accelerate", "sead-opd")}
    import torch

    from ..fused import fast_bf16_matmul

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        # the SIMD level torch dispatches to, and whether bf16 matmuls are native: both change the loss timings
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_matmul_native": fast_bf16_matmul("cpu"),
        "python": platform.python_version(),
        **libs,
    }


def run_worker(args: list[str], timeout: float = 3600, env: dict | None = None) -> dict:
    """Run ``python -m sead.bench.worker ARGS`` and return the JSON it prints on its last line."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "sead.bench.worker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"error": f"worker exited {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
    return json.loads(lines[-1])


def median(values) -> float:
    return float(statistics.median(values))


#: The line prefix of a result in ``python -m sead.bench.worker serve``'s output (libraries may print too).
RESULT_PREFIX = "@sead-result "


class WorkerProcess:
    """One ``python -m sead.bench.worker serve`` process that runs jobs one after another: each job is a list of
    worker arguments sent as one JSON line on its stdin; its result comes back as one ``RESULT_PREFIX`` line. A
    process is reused across jobs so that each pays torch/transformers/TRL's import time (about 10 s on 2 cores)
    once, not once per job; every job seeds its own run, so its result does not depend on what ran before it
    (tests/test_bench_workers.py)."""

    def __init__(self, env: dict | None = None, cmd: list[str] | None = None):
        import tempfile

        self.cmd = cmd or [sys.executable, "-m", "sead.bench.worker", "serve"]
        self.env = {**os.environ, **(env or {})}
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.stderr.seek(0)
            self.stderr.truncate()
            self.proc = subprocess.Popen(
                self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self.stderr, text=True, env=self.env, bufsize=1,
            )
        return self.proc

    def run(self, args: list[str]) -> dict:
        proc = self._start()
        try:
            proc.stdin.write(json.dumps(args) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                if line.startswith(RESULT_PREFIX):
                    return json.loads(line[len(RESULT_PREFIX):])
        except (BrokenPipeError, OSError):
            pass
        # the process died in the middle of the job (killed, out of memory, a crash in native code)
        code = proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-2000:].strip().splitlines()
        return {"error": f"worker exited {code}: {tail[-1] if tail else ''}"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


def run_workers(jobs: list[tuple[str, list[str]]], workers: int, progress: bool, desc: str) -> dict[str, dict]:
    """Run ``(key, worker args)`` jobs on ``workers`` long-lived worker processes (:class:`WorkerProcess`, one
    torch thread each); ``{key: result}`` in job order."""
    import queue
    import threading

    from ..progress import progress_bar

    out: dict[str, dict] = {}
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    lock = threading.Lock()

    with progress_bar(total=len(jobs), desc=desc, disable=not progress) as bar:
        def drain() -> None:
            worker = WorkerProcess(env)
            try:
                while True:
                    try:
                        key, args = todo.get_nowait()
                    except queue.Empty:
                        return
                    res = worker.run(args)
                    with lock:
                        out[key] = res
                        bar.update(1)
            finally:
                worker.close()

        threads = [threading.Thread(target=drain, daemon=True) for _ in range(max(1, min(workers, len(jobs))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {key: out[key] for key, _ in jobs}
