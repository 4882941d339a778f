"""Layer 5, training prompts: loading a dataset and its gold answers (``datasets``), and the curriculum's difficulty
pre-pass over them (``difficulty``). Imports the layers below; not ``sead.tasks`` (same layer).
"""
