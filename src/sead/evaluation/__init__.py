"""Layer 6, evaluating a model on math benchmarks: the benchmark registry (``benchmarks``: the test sets and the
built-in task's test split) and the run (``evaluate``: ``sead eval``). Imports the layers below; not
``sead.training`` or ``sead.plan`` (same layer).
"""
