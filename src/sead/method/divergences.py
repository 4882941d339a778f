"""Per-position divergences and entropies over logits.

Every function takes logits ``[..., V]`` and returns one value per position, shape ``[...]``.
Distributions are ``p = softmax(z / temperature)``; student logits always come first, as in TRL's
``generalized_jsd_loss``. Inputs are validated (same vocabulary, finite values): a bad input raises
``ValueError`` naming the argument.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "check_finite",
    "check_logits",
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "mixed_kl",
    "skew_kl",
    "topk_forward_kl",
    "topk_reverse_kl",
    "TOPK_CONVENTIONS",
    "token_entropy",
    "zone_entropies",
    "sgopd_target_logits",
]


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` when ``x`` holds NaN or inf."""
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or inf value(s); refusing to compute a loss on them.")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for the full vocabulary), got {top_k}")


def check_logits(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> None:
    """Raise ``ValueError`` unless both logits share a shape (same vocabulary) and are finite."""
    _check_temperature(temperature)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student_logits has vocabulary size {student_logits.shape[-1]} but teacher_logits has "
            f"{teacher_logits.shape[-1]}: distillation needs one shared vocabulary (same tokenizer)."
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits shape {tuple(student_logits.shape)} != teacher_logits shape "
            f"{tuple(teacher_logits.shape)}: both must cover the same positions."
        )
    check_finite("student_logits", student_logits)
    check_finite("teacher_logits", teacher_logits)


def _log_probs(student_logits, teacher_logits, temperature):
    check_logits(student_logits, teacher_logits, temperature)
    return (
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
    )


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Forward KL, mass-covering: ``KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v))``."""
    logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature)
    # expectation under the teacher p_T
    return F.kl_div(logp_s, logp_t, reduction="none", log_target=True).sum(-1)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Reverse KL, mode-seeking (vanilla OPD): ``KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v))``."""
    logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature)
    # expectation under the student p_S
    return F.kl_div(logp_t, logp_s, reduction="none", log_target=True).sum(-1)


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, temperature: float = 1.0
) -> torch.Tensor:
    """Generalized JSD, TRL convention:
    ``m = (1 - beta) p_S + beta p_T``, ``JSD = beta KL(p_T || m) + (1 - beta) KL(p_S || m)``.

    ``beta = 0`` is exactly ``forward_kl`` and ``beta = 1`` exactly ``reverse_kl``. (Do not anneal the
    direction through ``beta``: the interior collapses towards 0; use ``mixed_kl``.)
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature)
    log_m = torch.logaddexp(logp_s + math.log(1 - beta), logp_t + math.log(beta))
    kl_t_m = F.kl_div(log_m, logp_t, reduction="none", log_target=True).sum(-1)  # under p_T
    kl_s_m = F.kl_div(log_m, logp_s, reduction="none", log_target=True).sum(-1)  # under p_S
    return beta * kl_t_m + (1 - beta) * kl_s_m


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def mixed_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float, temperature: float = 1.0
) -> torch.Tensor:
    """Explicit mix of directions: ``alpha * KL(p_T || p_S) + (1 - alpha) * KL(p_S || p_T)``."""
    _check_unit("alpha", alpha)
    logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature)
    fkl = F.kl_div(logp_s, logp_t, reduction="none", log_target=True).sum(-1)  # under p_T
    rkl = F.kl_div(logp_t, logp_s, reduction="none", log_target=True).sum(-1)  # under p_S
    return alpha * fkl + (1 - alpha) * rkl


def skew_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    skew: float = 0.1,
    temperature: float = 1.0,
    reverse: bool = False,
) -> torch.Tensor:
    """DistiLLM skew KL.

    ``reverse=False``: ``KL(p_T || skew p_T + (1 - skew) p_S)`` (skew forward KL);
    ``reverse=True``:  ``KL(p_S || skew p_S + (1 - skew) p_T)`` (skew reverse KL).
    """
    _check_unit("skew", skew)
    logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature)
    p_anchor, p_other = (logp_s, logp_t) if reverse else (logp_t, logp_s)
    if skew >= 1.0:
        return torch.zeros(logp_s.shape[:-1], dtype=logp_s.dtype, device=logp_s.device)
    if skew <= 0.0:
        log_mix = p_other
    else:
        log_mix = torch.logaddexp(p_anchor + math.log(skew), p_other + math.log(1 - skew))
    # expectation under the anchor distribution (p_T for skew FKL, p_S for skew RKL)
    return F.kl_div(log_mix, p_anchor, reduction="none", log_target=True).sum(-1)


TOPK_CONVENTIONS = ("tail", "renormalized", "clamped")


def _check_convention(convention: str) -> None:
    if convention not in TOPK_CONVENTIONS:
        raise ValueError(f"topk_convention must be one of {list(TOPK_CONVENTIONS)}, got {convention!r}")


def _topk_buckets(student_logits, teacher_logits, top_k, temperature):
    """Log-probabilities of both models over k+1 buckets: the teacher's top-k ids and one tail."""
    _check_top_k(top_k)
    logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature)
    k = min(int(top_k), logp_t.shape[-1])
    idx = logp_t.topk(k, dim=-1).indices
    in_top = torch.zeros_like(logp_t, dtype=torch.bool).scatter_(-1, idx, True)
    floor = torch.finfo(logp_t.dtype).min

    def buckets(logp):
        # tail = logsumexp over the ids outside the top-k: exact even when the tail mass is tiny
        tail = torch.logsumexp(logp.masked_fill(in_top, -math.inf), dim=-1, keepdim=True).clamp(min=floor)
        return torch.cat([logp.gather(-1, idx), tail], dim=-1)

    return buckets(logp_s), buckets(logp_t)


def _topk_gathered(student_logits, teacher_logits, top_k, temperature):
    """Both models' full-vocabulary log-probs at the teacher's top-k ids (``[..., k]`` each)."""
    _check_top_k(top_k)
    logp_s, logp_t = _log_probs(student_logits, teacher_logits, temperature)
    idx = logp_t.topk(min(int(top_k), logp_t.shape[-1]), dim=-1).indices
    return logp_s.gather(-1, idx), logp_t.gather(-1, idx)


def _topk_pair(student_logits, teacher_logits, top_k, temperature, convention):
    """``(A, B)``: the student's and the teacher's log-probs over the support of ``convention``."""
    _check_convention(convention)
    if convention == "tail":
        return _topk_buckets(student_logits, teacher_logits, top_k, temperature)
    a, b = _topk_gathered(student_logits, teacher_logits, top_k, temperature)
    if convention == "renormalized":
        return F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
    return a, b


def topk_forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    top_k: int = 64,
    temperature: float = 1.0,
    convention: str = "tail",
) -> torch.Tensor:
    """Forward KL over the teacher's top-k ids ``I`` (``convention``, see docs/methods.md):

    - ``"tail"``: k+1 buckets (the ids of ``I`` and a tail bucket with each model's remaining mass):
      ``sum_b q_T(b) (log q_T(b) - log q_S(b))``;
    - ``"renormalized"`` (NeMo-RL): both restricted to ``I`` and renormalised, ``r = softmax(z[I] / tau)``:
      ``sum_{i in I} r_T(i) (log r_T(i) - log r_S(i))``;
    - ``"clamped"`` (verl ``forward_kl_topk``): full-vocabulary log-probs at ``I``, no tail, clamped at 0:
      ``max(0, sum_{i in I} p_T(i) (log p_T(i) - log p_S(i)))``.
    """
    a, b = _topk_pair(student_logits, teacher_logits, top_k, temperature, convention)
    kl = F.kl_div(a, b, reduction="none", log_target=True).sum(-1)  # under the teacher's support
    return kl.clamp(min=0) if convention == "clamped" else kl


def topk_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    top_k: int = 64,
    temperature: float = 1.0,
    convention: str = "tail",
) -> torch.Tensor:
    """Reverse KL over the top-k ids ``I`` of ``teacher_logits`` (the target), in ``convention``:
    ``"tail"``: ``sum_b q_S(b) (log q_S(b) - log q_T(b))`` over k+1 buckets; ``"renormalized"``:
    ``sum_{i in I} r_S(i) (log r_S(i) - log r_T(i))``; ``"clamped"``: ``max(0, sum_{i in I} p_S(i)
    (log p_S(i) - log p_T(i)))`` (the mirror of verl's forward form; verl itself has no reverse top-k KL)."""
    a, b = _topk_pair(student_logits, teacher_logits, top_k, temperature, convention)
    kl = F.kl_div(b, a, reduction="none", log_target=True).sum(-1)  # under the student's support
    return kl.clamp(min=0) if convention == "clamped" else kl


def token_entropy(
    logits: torch.Tensor,
    top_k: int | None = None,
    temperature: float = 1.0,
    support_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Entropy in nats, ``H = -sum_v p(v) log p(v)`` with ``p = softmax(z / temperature)``.

    With ``top_k``, the entropy of ``p`` restricted to k ids and renormalised (``softmax`` over those
    k logits only): the ids of the k largest ``support_logits`` when given (SEAD's student entropy over
    the teacher's top-k), else the k largest ``logits`` themselves. No gradient is needed for zone
    decisions; callers detach.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    check_finite("logits", logits)
    z = logits / temperature
    if top_k is not None and top_k < z.shape[-1]:
        if support_logits is None:
            z = z.topk(top_k, dim=-1).values
        else:
            if support_logits.shape != logits.shape:
                raise ValueError(
                    f"support_logits shape {tuple(support_logits.shape)} != logits shape {tuple(logits.shape)}"
                )
            z = z.gather(-1, support_logits.topk(top_k, dim=-1).indices)
    logp = F.log_softmax(z, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def zone_entropies(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    top_k: int | None = None,
    temperature: float = 1.0,
    support: str = "teacher",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H_T, H_S)`` for SEAD's zones (METHODS.md 1a), detached.

    ``H_T`` is the teacher's entropy over its top-k logits renormalised; ``H_S`` is the student's over
    the same ids (``support="teacher"``, the default: "computed over the teacher's top-k") or over its
    own top-k (``support="own"``). ``top_k=None``: both over the full vocabulary.
    """
    if support not in ("teacher", "own"):
        raise ValueError(f"entropy_support must be 'teacher' or 'own', got {support!r}")
    with torch.no_grad():
        t, s = teacher_logits.detach(), student_logits.detach()
        h_t = token_entropy(t, top_k, temperature)
        h_s = token_entropy(s, top_k, temperature, support_logits=t if support == "teacher" else None)
    return h_t, h_s


def sgopd_target_logits(
    teacher_logits: torch.Tensor, ref_logits: torch.Tensor, lam: float | torch.Tensor
) -> torch.Tensor:
    """SG-OPD full-estimator target (ExOPD reward scaling): ``lam * z_T + (1 - lam) * z_ref``.

    ``lam`` is a float or a per-position tensor shaped ``logits.shape[:-1]``; ``lam > 1`` extrapolates
    beyond the teacher away from the reference, ``lam < 1`` interpolates towards the reference.
    The target distribution is ``softmax`` of the result.
    """
    if teacher_logits.shape != ref_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} != ref_logits shape {tuple(ref_logits.shape)}"
        )
    if isinstance(lam, torch.Tensor):
        if lam.shape != teacher_logits.shape[:-1]:
            raise ValueError(
                f"lam must be a float or shaped {tuple(teacher_logits.shape[:-1])}, got {tuple(lam.shape)}"
            )
        lam = lam.unsqueeze(-1).to(teacher_logits.dtype)
    return lam * teacher_logits + (1 - lam) * ref_logits
