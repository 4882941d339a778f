"""``sead plan``: will a recipe fit on a GPU node, and how (DDP, DeepSpeed ZeRO-2 / ZeRO-3, FSDP2).

- :mod:`sead.plan.models`: a model's architecture facts (table, ``config.json``, checkpoint, built-in task);
- :mod:`sead.plan.memory`: the per-GPU estimate of one recipe under every strategy, and its advice;
- :mod:`sead.plan.recipe`: a recipe's YAML read into the estimate's inputs, then planned;
- :mod:`sead.plan.report`: a plan as text.
"""

from sead.plan.memory import (
    ACCELERATE_CONFIGS,
    ASSUMPTIONS,
    STRATEGIES,
    PlanInputs,
    frozen_bytes,
    plan_memory,
    plan_teacher_server,
    uses_fused_loss,
)
from sead.plan.models import KNOWN_MODELS, ModelFacts, facts_from_config, lookup_model
from sead.plan.recipe import plan_recipe
from sead.plan.report import format_plan

__all__ = [
    "ACCELERATE_CONFIGS",
    "ASSUMPTIONS",
    "KNOWN_MODELS",
    "STRATEGIES",
    "ModelFacts",
    "PlanInputs",
    "facts_from_config",
    "format_plan",
    "frozen_bytes",
    "lookup_model",
    "plan_memory",
    "plan_recipe",
    "plan_teacher_server",
    "uses_fused_loss",
]
