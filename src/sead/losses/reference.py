"""The readable full-logits reference losses: SEAD's zone loss and the sampled (policy-gradient) estimator.

Pure functions over ``[..., V]`` logits, composed from :mod:`sead.method`. The trainer computes the same
objective from hidden states (:func:`sead.losses.fused.fused_objective`); these are what tests and readers
compare it against. Public through :mod:`sead.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sead.losses.output import SeadLossOutput, zone_stats
from sead.method.divergences import (
    check_logits,
    forward_kl,
    reverse_kl,
    topk_forward_kl,
    topk_reverse_kl,
    zone_entropies,
)
from sead.method.zones import MASKED, RKL, SKIP, loss_normalizer, sead_zones, zone_weights

__all__ = ["sampled_opd_loss", "sead_loss", "token_logprobs"]


def _check_mask(mask: torch.Tensor, expected: torch.Size, name: str = "mask") -> None:
    if mask.shape != expected:
        raise ValueError(
            f"{name} shape {tuple(mask.shape)} must equal the logits' leading shape {tuple(expected)}"
        )


def sead_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: float = 0.0,
    zones: bool = True,
    teacher_quantile: float = 0.9,
    skip_fraction: float = 0.5,
    entropy_top_k: int | None = None,
    temperature: float = 1.0,
    normalize: str = "kept",
    num_items: float | torch.Tensor | None = None,
    estimator_top_k: int | None = None,
    entropy_support: str = "teacher",
    topk_convention: str = "tail",
) -> SeadLossOutput:
    """SEAD loss from full logits (the readable reference; the trainer uses the fused path).

    Per valid position ``t``, with zones from :func:`sead_zones` on ``H_T``, ``H_S`` (entropies over
    the teacher's top ``entropy_top_k`` ids renormalised, or each model's own top-k with
    ``entropy_support="own"``, or the full vocabulary; :func:`zone_entropies`):

    - FKL zone: ``KL(p_T || p_S)``
    - RKL zone: ``alpha * KL(p_T || p_S) + (1 - alpha) * KL(p_S || p_T)`` (``alpha`` from :func:`cosine_anneal`)
    - skip zone: 0

    ``loss = sum_t loss_t / normaliser`` (:func:`sead.method.zones.loss_normalizer`). With ``zones=False``
    every valid position is in the RKL zone, so ``zones=False, alpha=0`` is vanilla OPD: the mean
    reverse KL over valid tokens. ``estimator_top_k`` switches both divergences to their top-k forms
    (the "topk" estimator) in ``topk_convention`` (``tail``: plus a tail bucket; ``renormalized``; ``clamped``).
    """
    check_logits(student_logits, teacher_logits, temperature)
    _check_mask(mask, student_logits.shape[:-1])
    h_t, h_s = zone_entropies(student_logits, teacher_logits, entropy_top_k, temperature, entropy_support)
    if zones:
        zone_map = sead_zones(h_t, h_s, mask, teacher_quantile, skip_fraction)
    else:
        zone_map = torch.where(mask != 0, RKL, MASKED).long()
    w_fkl, w_rkl = zone_weights(zone_map, alpha)
    if estimator_top_k is None:
        fkl = forward_kl(student_logits, teacher_logits, temperature)
        rkl = reverse_kl(student_logits, teacher_logits, temperature)
    else:
        fkl = topk_forward_kl(student_logits, teacher_logits, estimator_top_k, temperature, topk_convention)
        rkl = topk_reverse_kl(student_logits, teacher_logits, estimator_top_k, temperature, topk_convention)
    # masked positions may hold garbage logits; weights are 0 there, use where() to keep NaN-free
    per_token = w_fkl.to(fkl.dtype) * fkl + w_rkl.to(rkl.dtype) * rkl
    per_token = torch.where(zone_map > SKIP, per_token, torch.zeros_like(per_token))
    denom = loss_normalizer(zone_map, normalize, num_items)
    loss = per_token.sum() / denom.to(per_token.dtype)
    return SeadLossOutput(
        loss=loss, zones=zone_map, per_token=per_token, stats=zone_stats(zone_map, h_t, h_s, per_token)
    )


def sampled_opd_loss(
    student_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    num_items: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """The "sampled" estimator: ``-sum_t sg(A_t) log pi_S(y_t) / normaliser`` over valid tokens.

    With ``A_t = log pi_T(y_t) - log pi_S(y_t)`` this is the policy-gradient form of reverse KL
    (Thinking Machines' on-policy distillation; verl's ``use_policy_gradient``); SG-OPD passes its
    gated advantages (:func:`sign_gated_advantage`). ``student_logp``: ``[B, T]`` log-probabilities of
    the sampled tokens, differentiable. Normaliser: ``num_items`` or the number of valid tokens.
    """
    if advantages.shape != student_logp.shape:
        raise ValueError(
            f"advantages shape {tuple(advantages.shape)} != student_logp shape {tuple(student_logp.shape)}"
        )
    _check_mask(mask, student_logp.shape)
    if not torch.isfinite(advantages[mask != 0]).all():
        raise ValueError("advantages contain NaN or inf at valid positions")
    m = (mask != 0).to(student_logp.dtype)
    denom = (
        torch.as_tensor(num_items, dtype=student_logp.dtype)
        if num_items is not None
        else m.sum().clamp(min=1)
    )
    return -(advantages.detach() * student_logp * m).sum() / denom


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(z / tau)[y_t]`` per position: ``[..., V]`` logits and ``[...]`` ids -> ``[...]``."""
    return F.log_softmax(logits / temperature, dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
