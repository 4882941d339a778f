"""Profiling scripts behind the benchmarks' analysis, each ``python -m sead.bench.profiles.NAME``: where the fused
losses spend their time (``loss``), a task's mechanisms on the prepared student's rollouts (``mechanisms``), what the
curriculum feeds the student (``quality``), which tokens the zones skip (``zones``), how far each top-k convention is
from the exact KL (``topk_conventions``), what one grade of an answer costs (``grading``)."""
