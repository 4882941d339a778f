"""The training objective on full logits: the readable reference of the fused loss.

Per valid token ``t`` with zone weights ``(w_fkl, w_rkl)`` (:func:`sead.method.zones.zone_weights`)::

    loss_t = w_fkl * KL(p_T || p_S) + w_rkl * R_t

where ``R_t`` is the reverse-KL term of the spec's estimator:

- ``"full"``: ``KL(p_S || p_T)`` over the vocabulary;
- ``"topk"``: the same over the top-k ids of the teacher (FKL) / of the target (RKL), in ``topk_convention``
  (``tail``: plus a tail bucket; ``renormalized``; ``clamped``);
- ``"sampled"``: ``-sg(A_t) log pi_S(y_t)`` with ``A_t = log pi_T(y_t) - log pi_S(y_t)`` (the forward-KL
  term stays exact, from the full logits).

With SG-OPD's sign gate, ``lambda_t`` (:func:`sead.method.gates.sign_gate_lambda`) reshapes the target:
full/topk use ``p_T <- softmax(lambda_t z_T + (1 - lambda_t) z_ref)`` (``z_ref``: the frozen initial
student, or the detached current student when there is no reference model); sampled uses
:func:`sead.method.gates.sign_gated_advantage`. Zones are always decided on the real teacher's entropy.

The fused path (:func:`sead.losses.fused.fused_objective`) computes the same from hidden states; this module,
composed from the pure pieces of :mod:`sead.method`, is what tests and readers compare it against.
:func:`sead_loss` is SEAD's loss with keyword options (a spec built from them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sead.losses.output import SeadLossOutput, zone_stats
from sead.losses.spec import LossSpec
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
    loss_normalizer,
    sead_zones,
    zones_from_thresholds,
)

__all__ = ["logits_objective", "sead_loss", "token_logprobs"]


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(z / tau)[y_t]`` per position: ``[..., V]`` logits and ``[...]`` ids -> ``[...]``."""
    return F.log_softmax(logits / temperature, dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def _check_shapes(spec: LossSpec, logits: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None, correct) -> None:
    if mask.shape != logits.shape[:-1] or (ids is not None and ids.shape != mask.shape):
        shown = "" if ids is None else f" and completion_ids {tuple(ids.shape)}"
        raise ValueError(
            f"mask {tuple(mask.shape)}{shown} must have the logits' leading shape {tuple(logits.shape[:-1])}"
        )
    if spec.needs_token_ids and ids is None:
        raise ValueError("the sampled estimator and the sign gate need `completion_ids`: the sampled tokens")
    if spec.gate is not None and correct is None:
        raise ValueError("sign_gate needs `correct`: the verifier's verdict per rollout")


def _zone_map(spec: LossSpec, h_t, h_s, mask) -> torch.Tensor:
    """The zones of the valid tokens: SEAD's (the spec's cuts, else this batch's percentiles), or RKL everywhere."""
    with torch.no_grad():
        zones = spec.zones
        if zones is None:
            return torch.where(mask != 0, RKL, MASKED).long()
        if zones.cuts is not None:
            return zones_from_thresholds(h_t, h_s, mask, zones.cuts)
        return sead_zones(h_t, h_s, mask, zones.teacher_quantile, zones.skip_fraction)


def _sampled_term(spec, student_logits, teacher_logits, ids, correct, ref_logits, sampler_logprobs):
    """``-sg(A_t) log pi_S(y_t)``, ``A_t`` gated with the sign gate and importance-weighted with sampler log-probs."""
    tau = spec.temperature
    s_logp = token_logprobs(student_logits, ids, tau)
    with torch.no_grad():
        t_logp = token_logprobs(teacher_logits, ids, tau)
        if spec.gate is not None:
            ref_logp = None if ref_logits is None else token_logprobs(ref_logits, ids, tau)
            gate = spec.gate
            adv = sign_gated_advantage(
                t_logp, s_logp.detach(), correct, ref_logp, gate.lambda_consensus, gate.lambda_conflict
            )
        else:
            adv = t_logp - s_logp.detach()
        if sampler_logprobs is not None:  # rollouts drawn from another sampler q: truncated IS weights
            weight = (s_logp.detach() - sampler_logprobs).exp().clamp(max=spec.importance_cap)
            adv = adv * torch.nan_to_num(weight, nan=1.0)
    return -adv * s_logp


def logits_objective(
    spec: LossSpec,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    completion_ids: torch.Tensor | None = None,
    *,
    correct: torch.Tensor | None = None,
    ref_logits: torch.Tensor | None = None,
    sampler_logprobs: torch.Tensor | None = None,
    num_items: float | torch.Tensor | None = None,
) -> SeadLossOutput:
    """Loss of one micro-batch from ``[B, T, V]`` logits, as ``spec`` says; see the module docstring.

    ``completion_ids`` ``[B, T]``: the sampled tokens (the sampled estimator and the gate read them);
    ``correct`` ``[B]`` bool: the verifier's verdict per rollout (the gate); ``ref_logits``: the frozen initial
    student's (the gate; ``None``: the detached student); ``sampler_logprobs`` ``[B, T]``: ``log q(y_t)`` under the
    rollout sampler (sampled estimator: the advantage times ``min(p_S(y_t) / q(y_t), importance_cap)``, NaN: 1);
    ``num_items``: the global denominator (:func:`sead.method.zones.loss_normalizer`). The logits are the models'
    own (after their output transform, :mod:`sead.method.logit_transforms`).
    """
    check_logits(student_logits, teacher_logits, spec.temperature)
    _check_shapes(spec, student_logits, mask, completion_ids, correct)
    valid, tau = mask != 0, spec.temperature
    h_t, h_s = zone_entropies(student_logits, teacher_logits, spec.entropy_top_k, tau, spec.entropy_support)
    zone_map = _zone_map(spec, h_t, h_s, mask)
    w_fkl, w_rkl = (w.to(student_logits.dtype) for w in spec.zone_weights(zone_map))

    extra: dict[str, float] = {}
    target = teacher_logits
    if spec.gate is not None:
        gate = spec.gate
        with torch.no_grad():
            t_logp = token_logprobs(teacher_logits, completion_ids, tau)
            s_logp_sg = token_logprobs(student_logits.detach(), completion_ids, tau)
            lam = sign_gate_lambda(t_logp, s_logp_sg, correct, gate.lambda_consensus, gate.lambda_conflict)
            extra["consensus_frac"] = float((lam[valid] == gate.lambda_consensus).double().mean()) if valid.any() else 0.0
        if spec.estimator != "sampled":
            ref = ref_logits if ref_logits is not None else student_logits.detach()
            target = sgopd_target_logits(teacher_logits, ref, lam)

    if spec.estimator == "topk":
        k, conv = spec.estimator_top_k, spec.topk_convention
        fkl = topk_forward_kl(student_logits, teacher_logits, k, tau, conv)
        rkl_term = topk_reverse_kl(student_logits, target, k, tau, conv)
    else:
        fkl = forward_kl(student_logits, teacher_logits, tau)
        if spec.estimator == "full":
            rkl_term = reverse_kl(student_logits, target, tau)
        else:
            rkl_term = _sampled_term(spec, student_logits, teacher_logits, completion_ids, correct, ref_logits,
                                     sampler_logprobs)  # fmt: skip

    per_token = w_fkl * fkl + w_rkl * rkl_term
    per_token = torch.where(zone_map > SKIP, per_token, torch.zeros_like(per_token))
    loss = per_token.sum() / loss_normalizer(zone_map, spec.normalize, num_items).to(per_token.dtype)
    stats = zone_stats(zone_map, h_t, h_s, per_token)
    stats.update(extra)
    return SeadLossOutput(loss=loss, zones=zone_map, per_token=per_token, stats=stats)


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
    zone_composition: str = "paper",
    fkl_zone_lambda: float = 1.0,
) -> SeadLossOutput:
    """SEAD loss from full logits (the readable reference; the trainer uses the fused path).

    Per valid position ``t``, with zones from :func:`sead_zones` on ``H_T``, ``H_S`` (entropies over
    the teacher's top ``entropy_top_k`` ids renormalised, or each model's own top-k with
    ``entropy_support="own"``, or the full vocabulary; :func:`zone_entropies`):

    - FKL zone: ``alpha * fkl_zone_lambda * KL(p_T || p_S)`` (``alpha`` from :func:`cosine_anneal`)
    - RKL zone: ``KL(p_S || p_T)``
    - skip zone: 0

    (the paper's composition, METHODS.md 1b; ``zone_composition="mix"``, our earlier reading: FKL zone
    ``KL(p_T || p_S)``, RKL zone ``alpha * KL(p_T || p_S) + (1 - alpha) * KL(p_S || p_T)``).

    ``loss = sum_t loss_t / normaliser`` (:func:`sead.method.zones.loss_normalizer`). With ``zones=False``
    every valid position gets ``alpha * KL(p_T || p_S) + (1 - alpha) * KL(p_S || p_T)``, so ``zones=False, alpha=0`` is vanilla OPD: the mean
    reverse KL over valid tokens. ``estimator_top_k`` switches both divergences to their top-k forms
    (the "topk" estimator) in ``topk_convention`` (``tail``: plus a tail bucket; ``renormalized``; ``clamped``).
    It is :func:`logits_objective` with the spec these keywords describe.
    """
    spec = LossSpec.from_options(
        estimator="full" if estimator_top_k is None else "topk",
        estimator_top_k=64 if estimator_top_k is None else estimator_top_k,
        topk_convention=topk_convention, alpha=alpha, zones=zones, teacher_quantile=teacher_quantile,
        skip_fraction=skip_fraction, entropy_top_k=entropy_top_k, entropy_support=entropy_support,
        temperature=temperature, normalize=normalize, zone_composition=zone_composition,
        fkl_zone_lambda=fkl_zone_lambda,
    )  # fmt: skip
    return logits_objective(spec, student_logits, teacher_logits, mask, num_items=num_items)
