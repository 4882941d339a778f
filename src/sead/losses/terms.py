"""Per-token loss terms of the fused objective on one chunk's tiles, with their gradients.

Every function takes the student's log-probabilities ``logp_s`` (``[n, V]``, at temperature ``tau``,
after the model's output transform) and returns the term's value per row and its gradient with
respect to the student's scaled logits ``s = z_S / tau`` (the caller applies the chain rule through
``tau``, the output transform and ``lm_head``). A gradient is either a dense ``[n, V]`` tile or, for the
top-k and sampled terms, the sparse form :class:`Grad`::

    dT/ds_v = a_n p_S(v) + [v = idx[n, j]] e[n, j]       (+ exp(logp_S(v) + D[n, v]) with ``D``)

Directions: FKL is ``KL(teacher || student)`` (under the teacher), RKL is ``KL(student || target)``
(under the student). The top-k conventions (``topk_convention``):

- ``tail``: k+1 buckets, the other side's top-k ids and one tail with the remaining mass of each model;
- ``renormalized`` (NeMo-RL): both distributions restricted to the other side's top-k ids and renormalised;
- ``clamped`` (verl): full-vocabulary log-probs at the other side's top-k ids, no tail, the sum clamped at 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sead.losses.heads import rowdot
from sead.method.divergences import TOPK_CONVENTIONS

__all__ = [
    "TOPK_CONVENTIONS",
    "Buckets",
    "Grad",
    "dense_buckets",
    "sparse_buckets",
    "sparse_tail_floor",
    "full_fkl",
    "full_rkl",
    "topk_term",
    "importance_weight",
    "sampled_term",
    "gated_target",
    "add_grad",
]


def sparse_tail_floor(k: int, dtype: torch.dtype) -> float:
    """Smallest teacher tail mass a served teacher's top-k can resolve: ``1 - sum_j p_j`` over ``k`` log-probs of
    ``dtype`` carries a rounding error of up to about ``k eps(dtype)`` (``7.6e-6`` for 64 fp32 log-probs), and a
    zero tail would make the tail bucket's reverse KL infinite."""
    return k * torch.finfo(dtype).eps


class Buckets(NamedTuple):
    """The other side of a top-k term: ids ``idx`` ``[n, k]``, that distribution's full-vocabulary
    log-probs there ``logb`` ``[n, k]``, and its log tail mass ``tail`` ``[n]`` (floored at the dtype's min)."""

    idx: torch.Tensor
    logb: torch.Tensor
    tail: torch.Tensor


class Grad(NamedTuple):
    """Sparse gradient ``a p_S(v) + sum_j [v = idx_j] e_j`` (``D``: an extra dense exponent tile, or None)."""

    a: torch.Tensor | None
    idx: torch.Tensor | None
    e: torch.Tensor | None
    dense: torch.Tensor | None = None


def _floor(x):
    return torch.finfo(x.dtype).min


def _outside_lse(logp_nV, idx_nK):
    """``log sum_{v not in idx} p(v)``: exact even when the tail mass is tiny; floored (empty tail)."""
    masked = logp_nV.scatter(-1, idx_nK, float("-inf"))
    return torch.logsumexp(masked, dim=-1).clamp(min=_floor(logp_nV))


def dense_buckets(logb_nV: torch.Tensor, top_k: int) -> Buckets:
    """Buckets of a dense distribution: its ``top_k`` ids (``min(top_k, V)``), log-probs there, and tail."""
    k = min(int(top_k), logb_nV.shape[-1])
    top = logb_nV.topk(k, dim=-1)
    return Buckets(top.indices, top.values, _outside_lse(logb_nV, top.indices))


def sparse_buckets(ids_nK: torch.Tensor, logprobs_nK: torch.Tensor, top_k: int, tail_min: float) -> Buckets:
    """Buckets of a served teacher: its first ``top_k`` ids (sorted by log-prob, descending) and a tail of
    mass ``max(1 - sum_j p_j, tail_min)`` (:func:`sparse_tail_floor`); the k+1 buckets are renormalised to sum
    to 1 (a no-op when the tail is above the floor; otherwise it absorbs the served log-probs' rounding)."""
    k = min(int(top_k), ids_nK.shape[-1])
    lp = logprobs_nK[:, :k].clamp(min=_floor(logprobs_nK))
    tail = (1.0 - lp.exp().sum(-1)).clamp(min=tail_min).log()
    buckets = torch.log_softmax(torch.cat([lp, tail.unsqueeze(-1)], dim=-1), dim=-1)
    return Buckets(ids_nK[:, :k], buckets[:, :k], buckets[:, k])


def full_fkl(logp_s, p_s, logp_t, p_t):
    """``FKL = sum_v p_T (log p_T - log p_S)`` (under the teacher); ``dFKL/ds = p_S - p_T``."""
    value = rowdot(p_t, logp_t - logp_s)
    return value, p_s - p_t


def full_rkl(logp_s, p_s, logq, want_grad=True):
    """``RKL = sum_v p_S (log p_S - log q)`` (under the student); ``dRKL/ds = p_S (log p_S - log q - RKL)``."""
    diff = logp_s - logq
    value = rowdot(p_s, diff)
    if not want_grad:
        return value, None
    return value, diff.sub_(value.unsqueeze(-1)).mul_(p_s)


def topk_term(logp_s, p_s, other: Buckets, convention: str, direction: str):
    """One top-k term of the student against ``other`` (teacher for FKL, target for RKL) over ``other.idx``.

    With ``A = logp_S[idx]``, ``A_tail = log sum_{v not in idx} p_S(v)``, ``B = other.logb``, ``B_tail = other.tail``:

    - ``tail``, FKL: ``sum_b e^{B_b} (B_b - A_b)`` over the k+1 buckets;
      gradient ``p_S(v) - exp(logp_S(v) + B_b(v) - A_b(v))`` (``b(v)``: v's bucket).
    - ``tail``, RKL: ``sum_b e^{A_b} (A_b - B_b)``; gradient ``p_S(v) (A_b(v) - B_b(v) - RKL)``.
    - ``renormalized``: ``Â = log_softmax(A)``, ``B̂ = log_softmax(B)`` over the k ids;
      FKL ``sum_j e^{B̂_j} (B̂_j - Â_j)``, gradient ``e^{Â_j} - e^{B̂_j}`` at ``idx_j`` (0 elsewhere);
      RKL ``sum_j e^{Â_j} (Â_j - B̂_j)``, gradient ``e^{Â_j} (Â_j - B̂_j - RKL)`` at ``idx_j``.
    - ``clamped``: FKL ``max(0, sum_j e^{B_j} (B_j - A_j))``, gradient (where the sum is >= 0)
      ``p_S(v) sum_j e^{B_j} - [v = idx_j] e^{B_j}``; RKL ``max(0, sum_j e^{A_j} (A_j - B_j))``, gradient
      ``[v = idx_j] e^{A_j} (A_j - B_j + 1) - p_S(v) (sum_j e^{A_j} (A_j - B_j) + sum_j e^{A_j})``.

    Returns ``(value [n], Grad)``.
    """
    idx, B, B_tail = other
    A = logp_s.gather(-1, idx)
    if convention == "tail":
        A_tail = _outside_lse(logp_s, idx)
        P = torch.cat([A, A_tail.unsqueeze(-1)], dim=-1)
        Q = torch.cat([B, B_tail.unsqueeze(-1)], dim=-1)
        if direction == "fkl":
            value = (Q.exp() * (Q - P)).sum(-1)  # under the other side's buckets
            # exponent D[v] = B_b(v) - A_b(v): the tail's value everywhere, the top-k's at idx
            d_tail = B_tail - A_tail
            D = torch.empty_like(logp_s).copy_(d_tail.unsqueeze(-1).expand_as(logp_s))
            D.scatter_(-1, idx, B - A)
            return value, Grad(torch.ones_like(value), None, None, dense=D)
        value = (P.exp() * (P - Q)).sum(-1)  # under the student's buckets
        c_tail = A_tail - B_tail - value
        c_k = A - B - value.unsqueeze(-1)
        return value, Grad(c_tail, idx, p_s.gather(-1, idx) * (c_k - c_tail.unsqueeze(-1)))
    if convention == "renormalized":
        A_hat, B_hat = F.log_softmax(A, dim=-1), F.log_softmax(B, dim=-1)
        pa, pb = A_hat.exp(), B_hat.exp()
        if direction == "fkl":
            value = (pb * (B_hat - A_hat)).sum(-1)
            return value, Grad(None, idx, pa - pb)
        value = (pa * (A_hat - B_hat)).sum(-1)
        return value, Grad(None, idx, pa * (A_hat - B_hat - value.unsqueeze(-1)))
    if convention == "clamped":
        pa, pb = A.exp(), B.exp()
        if direction == "fkl":
            raw = (pb * (B - A)).sum(-1)
            on = (raw >= 0).to(raw.dtype)
            return raw.clamp(min=0), Grad(on * pb.sum(-1), idx, -pb * on.unsqueeze(-1))
        raw = (pa * (A - B)).sum(-1)
        on = (raw >= 0).to(raw.dtype)
        return raw.clamp(min=0), Grad(-on * (raw + pa.sum(-1)), idx, pa * (A - B + 1) * on.unsqueeze(-1))
    raise ValueError(f"topk_convention must be one of {list(TOPK_CONVENTIONS)}, got {convention!r}")


def importance_weight(s_y_n, q_y_n, cap: float):
    """Truncated importance weight of a token sampled from ``q`` for an expectation under ``p_S``:
    ``w = min(p_S(y) / q(y), cap) = min(exp(log p_S(y) - log q(y)), cap)``, no gradient (TRL GRPO's
    ``vllm_importance_sampling_correction``: rollouts from vLLM are drawn from the engine's numerics, not the
    trainer's ``p_S``). ``E_q[w g] = E_{p_S}[g]`` wherever ``p_S / q <= cap``. A NaN ``log q`` (the sampler gave
    none, e.g. a teacher-mixed rollout) gets weight 1."""
    return torch.nan_to_num((s_y_n.detach() - q_y_n).exp().clamp(max=cap), nan=1.0)


def sampled_term(logp_s, y_n, adv_n):
    """``R = -sg(A) log p_S(y)`` (REINFORCE on the sampled token); ``dR/ds_v = A p_S(v) - A [v = y]``."""
    s_y = logp_s.gather(-1, y_n.unsqueeze(-1)).squeeze(-1)
    return -adv_n * s_y, Grad(adv_n, y_n.unsqueeze(-1), -adv_n.unsqueeze(-1))


def gated_target(logp_t, logp_ref, lam_n):
    """``log softmax(lam z_T + (1 - lam) z_ref)`` from log-probs (log-softmax is shift-invariant per row,
    so ``lam log p_T + (1 - lam) log p_ref`` has the same softmax as the logits' mix)."""
    lam = lam_n.unsqueeze(-1)
    mix = logp_t * lam
    mix.add_(logp_ref * (1 - lam))
    mix -= torch.logsumexp(mix, dim=-1, keepdim=True)
    return mix


def add_grad(g_nV, grad, w_n, logp_s, p_s):
    """``g += w * grad`` for one term's gradient (dense tile or :class:`Grad`); ``g`` may be ``None``
    (then a new tile is returned). Rows with ``w = 0`` add nothing."""
    w = w_n.unsqueeze(-1)
    if isinstance(grad, torch.Tensor):
        contrib = grad.mul_(w)
        return contrib if g_nV is None else g_nV.add_(contrib)
    if g_nV is None:
        g_nV = torch.zeros_like(p_s)
    if grad.a is not None:
        g_nV.addcmul_(p_s, grad.a.unsqueeze(-1) * w)
    if grad.dense is not None:
        g_nV.sub_(torch.exp(grad.dense.add_(logp_s)).mul_(w))
    if grad.idx is not None:
        g_nV.scatter_add_(-1, grad.idx, grad.e * w)
    return g_nV
