"""The fused loss's inputs and per-chunk projections: one model's head over the valid rows, a chunk at a time.

A chunk's logits are ``z = T(h W^T + b) / tau`` (:class:`sead.method.logit_transforms.LogitTransform` ``T``),
``[n, V]`` in the compute dtype (fp32; fp64 for fp64 inputs), never more rows than one chunk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sead.method.logit_transforms import IDENTITY, LogitTransform

__all__ = ["LMHead", "SparseTeacher", "Head", "entropy_of", "rowdot", "TILE_ELEMENTS"]

# Elements per [rows, V] tile (16 MB in fp32).
TILE_ELEMENTS = 1 << 22


@dataclass
class LMHead:
    """One model at the completion positions: last hidden states and its output head.

    ``hidden``: ``[N, H]`` or ``[B, T, H]`` (before ``lm_head``); ``weight``: ``[V, H]``; ``bias``: ``[V]`` or
    ``None``; ``transform``: what the model's forward applies after ``lm_head`` (:func:`logit_transform_of`).
    Only the student's gets gradients."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    transform: LogitTransform = IDENTITY

    def full_logits(self) -> torch.Tensor:
        """The model's own logits ``T(h W^T + b)`` at every position, in fp32 (``[..., V]``): what the readable
        full-logits objective takes. The hidden states are cast to the weight's dtype first (bf16 hidden states of
        an autocast forward meet an fp32 weight)."""
        z = self.hidden.to(self.weight.dtype) @ self.weight.T
        if self.bias is not None:
            z = z + self.bias
        return self.transform(z.float())


@dataclass
class SparseTeacher:
    """A teacher known only by its top-k per position (a teacher served by vLLM), at temperature 1.

    ``token_ids``: ``[..., k]`` long, the teacher's top-k ids; ``logprobs``: ``[..., k]``, their log-probs,
    already log-softmaxed over the full vocabulary (``-inf`` allowed: probability 0);
    ``sampled_logprobs``: ``[...]``, the teacher's log-prob of the sampled token ``y_t`` (needed by the
    ``sampled`` estimator and the sign gate). ``...`` is the mask's shape."""

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    sampled_logprobs: torch.Tensor | None = None


def rowdot(a_nV: torch.Tensor, b_nV: torch.Tensor) -> torch.Tensor:
    """``sum_v a[n, v] b[n, v]`` per row, without an ``[n, V]`` temporary."""
    return torch.bmm(a_nV.unsqueeze(1), b_nV.unsqueeze(2)).view(-1)


def entropy_of(z_nK: torch.Tensor) -> torch.Tensor:
    """``H = -sum_k q log q`` with ``q = softmax(z)`` over the last dimension (already restricted)."""
    logq_nK = F.log_softmax(z_nK, dim=-1)
    return -(logq_nK.exp() * logq_nK).sum(-1)


class Head:
    """One model's head over the flattened positions, cast once to the compute dtype.

    ``hidden_MH`` is indexed by row ids (positions of the flattened mask); ``inv_t = 1 / tau``."""

    def __init__(self, hidden_MH, weight_VH, bias_V, transform: LogitTransform, inv_t: float, dtype):
        self.hidden = hidden_MH.to(dtype)
        self.weight = weight_VH.to(dtype)
        self.bias = None if bias_V is None else bias_V.to(dtype)
        self.transform = transform
        self.inv_t = inv_t
        self.dtype = dtype

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    def cast(self, proj_dtype):
        """This head with hidden states and weight cast once to ``proj_dtype`` for the projections; the
        ``[n, V]`` products are upcast to the compute dtype before the bias and everything else, so only
        the matmul's output rounding differs. ``None`` (or the compute dtype) returns ``self``."""
        if proj_dtype is None or proj_dtype == self.dtype:
            return self
        low = copy.copy(self)
        low.hidden, low.weight = self.hidden.to(proj_dtype), self.weight.to(proj_dtype)
        return low

    def _finish(self, z):
        """``z <- T(z) / tau`` in place (``z`` already holds ``h W^T + b``)."""
        self.transform.apply_(z)
        if self.inv_t != 1.0:
            z.mul_(self.inv_t)
        return z

    def logits(self, rows, want_jacobian: bool = False):
        """``z = T(h W^T + b) / tau`` for ``rows`` (``[n, V]``, compute dtype), and, with ``want_jacobian``,
        ``dz / d(h W^T + b)``: a float, or an ``[n, V]`` tile when the transform has a softcap."""
        z = (self.hidden[rows] @ self.weight.T).to(self.dtype)
        if self.bias is not None:
            z += self.bias
        self._finish(z)
        if not want_jacobian:
            return z, None
        if self.transform.softcap is None:
            return z, self.transform.scale * self.inv_t
        # T(.) = z * tau; T' = s (1 - (T / c)^2); dz/draw = T' / tau
        jac = self.transform.derivative_from_output(z / self.inv_t if self.inv_t != 1.0 else z)
        return z, jac.mul_(self.inv_t) if self.inv_t != 1.0 else jac

    def gathered(self, rows, idx_nK):
        """``z[n, j] = T(h[n] . W[idx[n, j]] + b[idx[n, j]]) / tau``: k logits per row without the ``[n, V]``
        projection (``n k H`` multiply-adds instead of ``n V H``), the gathered ``[m, k, H]`` weight rows
        bounded to about one tile per step."""
        hidden = self.hidden[rows]
        n, k = idx_nK.shape
        z = torch.empty((n, k), dtype=self.dtype, device=hidden.device)
        step = max(1, TILE_ELEMENTS // max(k * self.weight.shape[1], 1))
        for i in range(0, n, step):
            w_mKH = self.weight[idx_nK[i : i + step]]
            z[i : i + step] = torch.bmm(w_mKH, hidden[i : i + step].unsqueeze(-1)).squeeze(-1).to(self.dtype)
        if self.bias is not None:
            z += self.bias[idx_nK]
        return self._finish(z)

    def backprop(self, grads, rows, g_nV):
        """Chain rule through ``raw = h W^T + b`` for one chunk: ``g`` is ``dL / d raw`` (``[n, V]``);
        adds to the gradient buffers ``(d h, d W, d b)`` (``None`` where not wanted)."""
        grad_h, grad_w, grad_b = grads
        if grad_h is not None:
            grad_h[rows] = g_nV @ self.weight
        if grad_w is not None:
            grad_w.addmm_(g_nV.T, self.hidden[rows])
        if grad_b is not None:
            grad_b += g_nV.sum(0)
