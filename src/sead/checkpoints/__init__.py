"""Layer 1 (beside ``method``), imports ``utils`` only: real checkpoints as files. ``fetch`` (pretrained checkpoints
a package registry ships, fetched once into the cache), ``gguf`` (GGUF files as plain Hugging Face directories),
``prune`` (depth pruning: keep some decoder layers).
"""
