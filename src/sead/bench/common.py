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
LONG_RUN_S = 20.0
# Runs whose warm-up takes over SLOW_RUN_S are timed SLOW_RUN_REPS times at most (make bench's 90-minute budget:
# 8 of the loss part's 26 minutes on 2026-12-01 were the 4th and 5th runs of such implementations).
SLOW_RUN_S = 5.0
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


def run_workers(jobs: list[tuple[str, list[str]]], workers: int, progress: bool, desc: str) -> dict[str, dict]:
    """Run ``(key, worker args)`` jobs, ``workers`` processes at a time (one torch thread each);
    ``{key: result}`` in job order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from ..progress import progress_bar

    out: dict[str, dict] = {}
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, progress_bar(total=len(jobs), desc=desc, disable=not progress) as bar:
        futures = {pool.submit(run_worker, args, 7200, env): key for key, args in jobs}
        for future in as_completed(futures):
            out[futures[future]] = future.result()
            bar.update(1)
    return {key: out[key] for key, _ in jobs}
