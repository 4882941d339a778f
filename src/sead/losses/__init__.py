"""Public loss API of sead: divergences, zones, schedules, gates, and the SEAD / OPD / SG-OPD losses.

Layer 2 (imports ``sead.utils`` and ``sead.method``): what a loss call computes (``spec``: :class:`LossSpec`, with
:class:`ZoneSpec` and :class:`GateSpec`), the fused chunked objective over hidden states and heads (``fused``, with
its inputs and projections in ``heads``, one call's checked inputs in ``problem``, per-chunk terms in ``terms`` and
passes in ``passes``), the full-logits reference (``objective``: the whole training objective and ``sead_loss``), and
the shared result object (``output``).

Everything here is a pure function over tensors. ``logits_objective`` is the whole training objective on full
logits (every estimator, zones, anneal, sign gate) and ``fused_objective`` the same from hidden states and heads
(also from a served teacher's top-k, :class:`SparseTeacher`); both take a :class:`LossSpec` with the tensors.
``sead_loss`` (full logits) and ``fused_sead_loss`` (hidden states, never the ``[N, V]`` logits) are SEAD's loss
with keyword options.

Example::

    import torch
    from sead.losses import sead_loss

    student_BTV = torch.randn(2, 5, 100, requires_grad=True)
    teacher_BTV = torch.randn(2, 5, 100)
    mask_BT = torch.ones(2, 5)
    out = sead_loss(student_BTV, teacher_BTV, mask_BT, alpha=0.5)  # zones on, annealed mix
    out.loss.backward()
    out.stats["frac_skip"]  # 0.5: half of the tokens get no gradient
"""

from sead.losses.fused import (
    LMHead,
    SparseTeacher,
    auto_chunk_size,
    fused_objective,
    fused_sead_loss,
    fused_zone_entropies,
)
from sead.losses.objective import logits_objective, sead_loss, token_logprobs
from sead.losses.output import SeadLossOutput, zone_stats
from sead.losses.spec import GateSpec, LossSpec, ZoneSpec
from sead.method.divergences import (
    check_logits,
    forward_kl,
    generalized_jsd,
    mixed_kl,
    reverse_kl,
    sgopd_target_logits,
    skew_kl,
    token_entropy,
    topk_forward_kl,
    topk_reverse_kl,
    zone_entropies,
)
from sead.method.gates import sign_gate_lambda, sign_gated_advantage
from sead.method.logit_transforms import LogitTransform, check_output_transform, logit_transform_of
from sead.method.schedules import cosine_anneal, teacher_mix_ratio
from sead.method.zones import (
    FKL,
    MASKED,
    RKL,
    SKIP,
    ZoneThresholds,
    loss_normalizer,
    sead_zones,
    zone_fractions,
    zone_thresholds,
    zone_weights,
    zones_from_thresholds,
)

__all__ = [
    "check_logits",
    "loss_normalizer",
    "token_logprobs",
    "FKL",
    "GateSpec",
    "LossSpec",
    "ZoneSpec",
    "MASKED",
    "RKL",
    "SKIP",
    "LMHead",
    "LogitTransform",
    "SeadLossOutput",
    "SparseTeacher",
    "ZoneThresholds",
    "auto_chunk_size",
    "check_output_transform",
    "cosine_anneal",
    "forward_kl",
    "fused_objective",
    "fused_sead_loss",
    "fused_zone_entropies",
    "logit_transform_of",
    "logits_objective",
    "generalized_jsd",
    "mixed_kl",
    "reverse_kl",
    "sead_loss",
    "sead_zones",
    "sgopd_target_logits",
    "sign_gate_lambda",
    "sign_gated_advantage",
    "skew_kl",
    "teacher_mix_ratio",
    "token_entropy",
    "topk_forward_kl",
    "topk_reverse_kl",
    "zone_entropies",
    "zone_fractions",
    "zone_thresholds",
    "zone_stats",
    "zone_weights",
    "zones_from_thresholds",
]
