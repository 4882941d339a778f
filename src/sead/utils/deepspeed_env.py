"""DeepSpeed's accelerator choice on a CPU-only torch, made without its warning.

accelerate imports DeepSpeed whenever it is installed (``accelerate/accelerator.py``), and DeepSpeed picks its
accelerator at import: with no ``DS_ACCELERATOR`` set and no GPU it logs ``[WARNING] Setting accelerator to CPU. If
you have GPU or other accelerator, we were unable to detect it.`` in every process, every command. On a torch built
for the CPU only (a ``+cpu`` version) nothing else can be detected, so :func:`choose_cpu_for_deepspeed` sets
``DS_ACCELERATOR=cpu``, DeepSpeed's own answer there, which it then takes silently. Anywhere else (a CUDA build,
``DS_ACCELERATOR`` already set, no DeepSpeed) nothing changes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

__all__ = ["choose_cpu_for_deepspeed"]


def choose_cpu_for_deepspeed(environ=None) -> bool:
    """Set ``DS_ACCELERATOR=cpu`` when DeepSpeed is installed, the variable is unset and torch is a ``+cpu`` build;
    return whether it was set."""
    env = os.environ if environ is None else environ
    if "DS_ACCELERATOR" in env or importlib.util.find_spec("deepspeed") is None:
        return False
    try:
        cpu_only = importlib.metadata.version("torch").endswith("+cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    if cpu_only:
        env["DS_ACCELERATOR"] = "cpu"
    return cpu_only
