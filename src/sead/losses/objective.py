"""The training objective on full logits: any estimator, with or without zones, anneal and sign gate.

The fused path (:func:`sead.losses.fused.fused_objective`) computes the same objective from hidden states; this
module is its readable full-logits reference. Everything is composed from the pure pieces in ``divergences``, ``zones`` and ``gates``.

Per valid token ``t`` with zone weights ``(w_fkl, w_rkl)`` (:func:`sead.method.zones.zone_weights`)::

    loss_t = w_fkl * KL(p_T || p_S) + w_rkl * R_t

where ``R_t`` is the reverse-KL term of the chosen estimator:

- ``"full"``: ``KL(p_S || p_T)`` over the vocabulary;
- ``"topk"``: the same over the top-k ids of the teacher (FKL) / of the target (RKL), in ``topk_convention``
  (``tail``: plus a tail bucket; ``renormalized``; ``clamped``);
- ``"sampled"``: ``-sg(A_t) log pi_S(y_t)`` with ``A_t = log pi_T(y_t) - log pi_S(y_t)`` (the forward-KL
  term stays exact, from the full logits).

With the SG-OPD sign gate, ``lambda_t`` (:func:`sign_gate_lambda`) reshapes the target:
full/topk use ``p_T <- softmax(lambda_t z_T + (1 - lambda_t) z_ref)`` (``z_ref``: the frozen initial
student, or the detached current student when there is no reference model); sampled uses
:func:`sign_gated_advantage`. Zones are always decided on the real teacher's entropy.
"""

from __future__ import annotations

import torch

from sead.losses.output import SeadLossOutput, zone_stats
from sead.method.divergences import (
    check_logits,
    forward_kl,
    reverse_kl,
    sgopd_target_logits,
    topk_forward_kl,
    topk_reverse_kl,
    zone_entropies,
)
from sead.method.gates import sign_gate_lambda, sign_gated_advantage
from sead.method.zones import (
    MASKED,
    RKL,
    SKIP,
    ZoneThresholds,
    loss_normalizer,
    sead_zones,
    zone_weights,
    zones_from_thresholds,
)

__all__ = ["logits_objective"]


def _token_logp(logits_BTV, ids_BT, temperature):
    return torch.log_softmax(logits_BTV / temperature, dim=-1).gather(-1, ids_BT.unsqueeze(-1)).squeeze(-1)


def logits_objective(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    completion_ids: torch.Tensor,
    *,
    estimator: str = "full",
    estimator_top_k: int = 64,
    topk_convention: str = "tail",
    alpha: float = 0.0,
    zones: bool = False,
    teacher_quantile: float = 0.9,
    skip_fraction: float = 0.5,
    zone_thresholds: ZoneThresholds | None = None,
    entropy_top_k: int | None = None,
    entropy_support: str = "teacher",
    temperature: float = 1.0,
    normalize: str = "kept",
    num_items: float | torch.Tensor | None = None,
    sign_gate: bool = False,
    correct: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    lambda_consensus: float = 1.8,
    lambda_conflict: float = 1.0,
    sampler_logprobs: torch.Tensor | None = None,
    importance_cap: float = 3.0,
    fkl_zone_alpha: float = 1.0,
) -> SeadLossOutput:
    """Loss of one micro-batch from ``[B, T, V]`` logits; see the module docstring for the formula.

    ``completion_ids`` ``[B, T]`` are the sampled tokens (used by the sampled estimator and the gate);
    ``correct`` ``[B]`` bool is the verifier's verdict per rollout (needed by the sign gate).
    ``sampler_logprobs`` ``[B, T]``: ``log q(y_t)`` under the rollout sampler (sampled estimator): the advantage
    is multiplied by the truncated importance weight ``min(p_S(y_t) / q(y_t), importance_cap)`` (NaN: 1).
    ``topk_convention``: the ``topk`` estimator's support (``tail``, ``renormalized``, ``clamped``:
    :func:`sead.method.divergences.topk_forward_kl`). ``zone_thresholds``: precomputed zone cuts
    (:func:`sead.method.zones.zone_thresholds`) used instead of this batch's percentiles.
    The logits are the models' own (after their output transform, :mod:`sead.method.logit_transforms`).
    """
    if estimator not in ("full", "topk", "sampled"):
        raise ValueError(f"estimator must be 'full', 'topk' or 'sampled', got {estimator!r}")
    check_logits(student_logits, teacher_logits, temperature)
    if mask.shape != student_logits.shape[:-1] or completion_ids.shape != mask.shape:
        raise ValueError(
            f"mask {tuple(mask.shape)} and completion_ids {tuple(completion_ids.shape)} must both have the "
            f"logits' leading shape {tuple(student_logits.shape[:-1])}"
        )
    if sign_gate and correct is None:
        raise ValueError("sign_gate needs `correct`: the verifier's verdict per rollout")
    valid = mask != 0

    h_t, h_s = zone_entropies(student_logits, teacher_logits, entropy_top_k, temperature, entropy_support)
    with torch.no_grad():
        if not zones:
            zone_map = None
        elif zone_thresholds is not None:
            zone_map = zones_from_thresholds(h_t, h_s, mask, zone_thresholds)
        else:
            zone_map = sead_zones(h_t, h_s, mask, teacher_quantile, skip_fraction)
    if zone_map is None:
        zone_map = torch.where(valid, RKL, MASKED).long()
    w_fkl, w_rkl = (w.to(student_logits.dtype) for w in zone_weights(zone_map, alpha, fkl_zone_alpha))

    extra: dict[str, float] = {}
    target = teacher_logits
    lam = None
    if sign_gate:
        with torch.no_grad():
            t_logp = _token_logp(teacher_logits, completion_ids, temperature)
            s_logp_sg = _token_logp(student_logits.detach(), completion_ids, temperature)
            lam = sign_gate_lambda(t_logp, s_logp_sg, correct, lambda_consensus, lambda_conflict)
            extra["consensus_frac"] = (
                float((lam[valid] == lambda_consensus).double().mean()) if valid.any() else 0.0
            )
        if estimator != "sampled":
            ref = ref_logits if ref_logits is not None else student_logits.detach()
            target = sgopd_target_logits(teacher_logits, ref, lam)

    if estimator == "topk":
        fkl = topk_forward_kl(student_logits, teacher_logits, estimator_top_k, temperature, topk_convention)
        rkl_term = topk_reverse_kl(student_logits, target, estimator_top_k, temperature, topk_convention)
    else:
        fkl = forward_kl(student_logits, teacher_logits, temperature)
        if estimator == "full":
            rkl_term = reverse_kl(student_logits, target, temperature)
        else:
            s_logp = _token_logp(student_logits, completion_ids, temperature)
            with torch.no_grad():
                t_logp = _token_logp(teacher_logits, completion_ids, temperature)
                if sign_gate:
                    ref_logp = (
                        None if ref_logits is None else _token_logp(ref_logits, completion_ids, temperature)
                    )
                    adv = sign_gated_advantage(
                        t_logp, s_logp.detach(), correct, ref_logp, lambda_consensus, lambda_conflict
                    )
                else:
                    adv = t_logp - s_logp.detach()
                if sampler_logprobs is not None:  # rollouts drawn from another sampler q: truncated IS weights
                    weight = (s_logp.detach() - sampler_logprobs).exp().clamp(max=importance_cap)
                    adv = adv * torch.nan_to_num(weight, nan=1.0)
            rkl_term = -adv * s_logp

    per_token = w_fkl * fkl + w_rkl * rkl_term
    per_token = torch.where(zone_map > SKIP, per_token, torch.zeros_like(per_token))
    loss = per_token.sum() / loss_normalizer(zone_map, normalize, num_items).to(per_token.dtype)
    stats = zone_stats(zone_map, h_t, h_s, per_token)
    stats.update(extra)
    return SeadLossOutput(loss=loss, zones=zone_map, per_token=per_token, stats=stats)
