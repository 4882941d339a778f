"""Benchmarks behind ``sead bench`` / ``make bench``: loss kernels, training step, distillation quality.

Each measurement that needs a clean peak-memory reading runs in its own subprocess
(``python -m sead.bench.worker ...``), so one implementation's allocations never count for another.
"""
