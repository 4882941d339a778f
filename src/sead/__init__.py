"""sead: on-policy distillation (OPD, SEAD, SG-OPD) for Hugging Face models."""

__version__ = "0.1.0"
