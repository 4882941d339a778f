"""Work in other processes: long-lived worker processes that run jobs one after another, one JSON line each way.

A job is a list of a worker module's command-line arguments (``python -m MODULE serve`` reads one JSON list per
stdin line); its result comes back as one ``RESULT_PREFIX`` line on stdout (libraries may print too). A process is
reused across jobs so that each pays torch/transformers/TRL's import time (about 10 s on 2 cores) once, not once
per job; every job seeds its own run, so its result does not depend on what ran before it
(tests/test_bench_workers.py). A job that raises comes back as ``{"error": ...}`` and the next one runs; a process
that dies or overruns its time is reported (``{"error": "worker exited N: <last stderr line>"}``) and replaced.

This is the parent's side; the worker's side is :func:`sead.experiments.worker.serve`. Worker modules:
:mod:`sead.experiments.worker` (one seed's data, one variant's run: the default) and :mod:`sead.bench.worker`
(loss and step measurements).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from sead.experiments.worker import RESULT_PREFIX

__all__ = ["EXPERIMENT_WORKER", "WorkerProcess", "run_worker", "run_workers"]

#: The worker module that runs the quality experiment's jobs.
EXPERIMENT_WORKER = "sead.experiments.worker"


class WorkerProcess:
    """One ``python -m MODULE serve`` process (``cmd``: another command) that runs jobs one after another."""

    def __init__(self, env: dict | None = None, cmd: list[str] | None = None, module: str = EXPERIMENT_WORKER):
        import tempfile

        self.cmd = cmd or [sys.executable, "-m", module, "serve"]
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
            )  # fmt: skip
        return self.proc

    def run(self, args: list[str], timeout: float | None = None) -> dict:
        """The job's result; a process killed after ``timeout`` seconds (``None``: no bound) is reported."""
        proc = self._start()
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            proc.stdin.write(json.dumps(args) + "\n")
            proc.stdin.flush()
            for line in proc.stdout:
                if line.startswith(RESULT_PREFIX):
                    return json.loads(line[len(RESULT_PREFIX) :])
        except (BrokenPipeError, OSError):
            pass
        finally:
            if timer is not None:
                timer.cancel()
        # the process died in the middle of the job (killed, out of memory, a crash in native code, its time up)
        code = proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-2000:].strip().splitlines()
        if timer is not None and timer.finished.is_set() and code < 0:
            return {"error": f"worker killed after {timeout:g} s (its time bound): {tail[-1] if tail else ''}"}
        return {"error": f"worker exited {code}: {tail[-1] if tail else ''}"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


def run_worker(
    args: list[str], timeout: float = 3600, env: dict | None = None, module: str = EXPERIMENT_WORKER
) -> dict:
    """One job in a fresh process of its own (a clean peak-memory reading), bounded by ``timeout`` seconds."""
    worker = WorkerProcess(env, module=module)
    try:
        return worker.run(args, timeout)
    finally:
        worker.close()


def run_workers(
    jobs: list[tuple[str, list[str]]],
    workers: int,
    progress: bool,
    desc: str,
    timeout: float | None = 7200,
    module: str = EXPERIMENT_WORKER,
) -> dict[str, dict]:
    """Run ``(key, worker args)`` jobs on ``workers`` long-lived worker processes (one torch thread each), each job
    bounded by ``timeout`` seconds; ``{key: result}`` in job order. With ``SEAD_BENCH_JOURNAL`` set to a file, every
    finished job is appended to it as it ends (one JSON line ``{"desc", "key", "result"}``), so a crash or Ctrl-C of a
    long benchmark loses only the jobs in flight."""
    import queue

    from sead.utils.progress import progress_bar

    out: dict[str, dict] = {}
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    lock = threading.Lock()
    journal = os.environ.get("SEAD_BENCH_JOURNAL")

    with progress_bar(total=len(jobs), desc=desc, disable=not progress) as bar:

        def drain() -> None:
            worker = WorkerProcess(env, module=module)
            try:
                while True:
                    try:
                        key, args = todo.get_nowait()
                    except queue.Empty:
                        return
                    res = worker.run(args, timeout)
                    with lock:
                        out[key] = res
                        bar.update(1)
                        if journal:
                            with open(journal, "a") as f:
                                f.write(json.dumps({"desc": desc, "key": key, "result": res}) + "\n")
            finally:
                worker.close()

        threads = [threading.Thread(target=drain, daemon=True) for _ in range(max(1, min(workers, len(jobs))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {key: out[key] for key, _ in jobs}
