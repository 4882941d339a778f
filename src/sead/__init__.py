"""sead: on-policy distillation (OPD, SEAD, SG-OPD) for Hugging Face models, on top of TRL.

``OPDConfig`` and ``OPDTrainer`` are imported lazily (they pull in TRL and transformers); the loss
API lives in ``sead.losses``.
"""

__version__ = "0.1.0"

__all__ = ["OPDConfig", "OPDTrainer", "__version__"]


def __getattr__(name):
    if name == "OPDConfig":
        from .config import OPDConfig

        return OPDConfig
    if name == "OPDTrainer":
        from .trainer import OPDTrainer

        return OPDTrainer
    raise AttributeError(f"module 'sead' has no attribute {name!r}")
