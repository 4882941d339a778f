"""Shared pieces of the benchmarks: machine facts, a measurement in a process of its own, medians."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
from importlib.metadata import version

from sead.experiments import workers


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

    from sead.losses.fused import fast_bf16_matmul

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
    """One ``python -m sead.bench.worker`` measurement (loss or step) in a fresh process of its own."""
    return workers.run_worker(args, timeout, env, module="sead.bench.worker")


def median(values) -> float:
    return float(statistics.median(values))
