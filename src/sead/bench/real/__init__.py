"""``sead bench real``: the methods on real pretrained weights. ``compare`` runs the benchmark and reports it,
``worker`` is its worker process (one run, one evaluation), ``mechanisms`` measures SEAD's and SG-OPD's mechanisms
on the real pair's rollouts."""

from sead.bench.real.compare import (
    DEFAULT_STEPS,
    METHODS,
    bench_real,
    plot_real,
    prepare_pair,
    real_markdown,
    summarize_real,
)

__all__ = ["DEFAULT_STEPS", "METHODS", "bench_real", "plot_real", "prepare_pair", "real_markdown", "summarize_real"]
