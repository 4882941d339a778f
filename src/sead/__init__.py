"""sead: on-policy distillation (OPD, SEAD, SG-OPD) for Hugging Face models, on top of TRL.

``OPDConfig`` and ``OPDTrainer`` are imported lazily (they pull in TRL and transformers); the loss
API lives in ``sead.losses``. The package's layers: docs/architecture.md.
"""

from sead.utils.cpu_numerics import strict_cpu_gemm
from sead.utils.deepspeed_env import choose_cpu_for_deepspeed
from sead.utils.version import __version__

choose_cpu_for_deepspeed()  # before accelerate imports DeepSpeed: no accelerator warning on a CPU-only torch
strict_cpu_gemm()  # before MKL's first GEMM: CPU products round the same with any number of threads

__all__ = ["OPDConfig", "OPDTrainer", "__version__"]


def __getattr__(name):
    if name == "OPDConfig":
        from sead.training.config import OPDConfig

        return OPDConfig
    if name == "OPDTrainer":
        from sead.training.trainer import OPDTrainer

        return OPDTrainer
    raise AttributeError(f"module 'sead' has no attribute {name!r}")
