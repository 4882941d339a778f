"""The fused objective's passes over chunks of valid rows, and the autograd function that runs them.

- zones off (or no gradient wanted): one pass; each chunk's terms (and, zones off, its gradient) on the spot.
- zones on, gradient wanted: pass A (entropies only, in ``zone_precision``; plus ``d_t`` when the sign gate
  is on, for ``consensus_frac`` over every valid token), the zones, then pass B over the kept rows only.

The gradient is computed eagerly inside ``forward`` (as Liger's fused linear cross-entropy does):
``backward`` only scales it by the incoming scalar gradient.
"""

from __future__ import annotations

import torch

from sead.losses.heads import Head, entropy_of, rowdot
from sead.losses.problem import Problem
from sead.losses.terms import (
    add_grad,
    dense_buckets,
    full_fkl,
    full_rkl,
    gated_target,
    importance_weight,
    sampled_term,
    sparse_buckets,
    topk_term,
)
from sead.method.gates import gate_lambda
from sead.method.zones import RKL, loss_normalizer, sead_zones, zones_from_thresholds

__all__ = ["FusedLossFunction", "FusedObjective", "PROJECTION_DTYPES", "run_objective"]

# How pass A projects when it only decides zones (a resolved ``zone_precision``, see ``fused_objective``).
PROJECTION_DTYPES = {"exact": None, "bf16": torch.bfloat16}


def _topk_entropy(z_nV, top_k):
    """Entropy of ``softmax`` over each row's ``top_k`` largest logits; ``None`` when ``top_k`` is unset
    or covers the vocabulary (the full entropy is then wanted)."""
    if top_k is None or top_k >= z_nV.shape[-1]:
        return None
    return entropy_of(z_nV.topk(top_k, dim=-1).values)


def _normalise_(z_nV):
    """``log softmax`` in place; returns ``(logp, lse)``."""
    lse = torch.logsumexp(z_nV, dim=-1, keepdim=True)
    return z_nV.sub_(lse), lse.squeeze(-1)


def _full_entropy(logp_nV):
    return -rowdot(logp_nV.exp(), logp_nV)


class FusedObjective:
    """Per-chunk computations of the objective (see :func:`sead.losses.fused.fused_objective`)."""

    def __init__(self, pb: Problem):
        self.pb = pb
        spec = pb.spec
        self.estimator, self.k_est, self.conv = spec.estimator, spec.estimator_top_k, spec.topk_convention
        self.top_k, self.support = spec.entropy_top_k, spec.entropy_support
        self.gate = spec.gate is not None
        self.lc = self.lf = None
        if spec.gate is not None:
            self.lc, self.lf = spec.gate.lambda_consensus, spec.gate.lambda_conflict

    # ---- zone entropies -----------------------------------------------------------------------
    def on_teacher_topk(self) -> bool:
        """Entropies over the teacher's top-k ids (a served teacher always has them)."""
        if self.pb.sparse:
            return self.support == "teacher"
        return self.top_k is not None and self.support == "teacher" and self.top_k < self.pb.teacher.vocab_size

    def student_projected_in_pass_a(self, gate_stats: bool) -> bool:
        """Whether pass A projects the student over the vocabulary: for the gate's ``d_t`` (``gate_stats``), or
        for entropies not taken over the teacher's top-k ids."""
        return gate_stats or not self.on_teacher_topk()

    def zone_entropies(self, gate_stats: bool):
        """Pass A over every valid row, a chunk at a time: ``(H_S, H_T, lam)`` per row (``[N]``; ``lam`` only with
        ``gate_stats``, else ``None``), projected in the problem's ``zone_precision`` (the low-precision copies, if
        any, are freed when it returns)."""
        pb = self.pb
        n, dtype, dev = pb.rows_N.numel(), pb.student.dtype, pb.rows_N.device
        proj = PROJECTION_DTYPES[pb.zone_precision]
        student_a = pb.student.cast(proj) if self.student_projected_in_pass_a(gate_stats) else pb.student
        teacher_a = None if pb.sparse else pb.teacher.cast(proj)
        h_s_N, h_t_N = (torch.zeros(n, dtype=dtype, device=dev) for _ in range(2))
        lam_N = torch.zeros(n, dtype=dtype, device=dev) if gate_stats else None
        for sel in _chunks(torch.arange(n, device=dev), pb.chunk_size):
            h_s_N[sel], h_t_N[sel], lam = self.pass_a(sel, student_a, teacher_a, gate_stats)
            if lam is not None:
                lam_N[sel] = lam
        return h_s_N, h_t_N, lam_N

    def pass_a(self, sel, student_a: Head, teacher_a: Head | None, gate_stats: bool):
        """``(H_S, H_T, lam)`` of one chunk: only what the zones (and ``consensus_frac``) need."""
        pb, rows = self.pb, self.pb.rows_N[sel]
        z_s = student_a.logits(rows)[0] if (gate_stats or not self.on_teacher_topk()) else None
        lam = None
        if pb.sparse:
            ids, lp = pb.served.ids_NK[sel, : self.top_k], pb.served.lp_NK[sel, : self.top_k]
            h_t = entropy_of(lp.clamp(min=torch.finfo(lp.dtype).min))
            if self.support == "teacher":
                h_s = entropy_of(pb.student.gathered(rows, ids))
            else:
                h_s = _topk_entropy(z_s, self.top_k)
                h_s = h_s if h_s is not None else _full_entropy(_normalise_(z_s.clone())[0])
            if gate_stats:
                s_y = z_s.gather(-1, pb.y_N[sel, None]).squeeze(-1) - torch.logsumexp(z_s, dim=-1)
                lam = gate_lambda(pb.served.t_y_N[sel] - s_y, pb.verdict_N[sel], self.lc, self.lf)
            return h_s, h_t, lam
        z_t = teacher_a.logits(rows)[0]
        if self.on_teacher_topk():
            top_t = z_t.topk(self.top_k, dim=-1)
            h_t = entropy_of(top_t.values)
            h_s = entropy_of(pb.student.gathered(rows, top_t.indices))
        else:
            h_s, h_t = _topk_entropy(z_s, self.top_k), _topk_entropy(z_t, self.top_k)
        if gate_stats:
            y = pb.y_N[sel, None]
            s_y = z_s.gather(-1, y).squeeze(-1) - torch.logsumexp(z_s, dim=-1)
            t_y = z_t.gather(-1, y).squeeze(-1) - torch.logsumexp(z_t, dim=-1)
            lam = gate_lambda(t_y - s_y, pb.verdict_N[sel], self.lc, self.lf)
        if h_s is None:  # full-vocabulary entropies
            h_s, h_t = _full_entropy(_normalise_(z_s)[0]), _full_entropy(_normalise_(z_t)[0])
        return h_s, h_t, lam

    # ---- loss terms ---------------------------------------------------------------------------
    def terms(self, sel, weights, grads, entropies: bool):
        """One chunk's ``(H_S, H_T, FKL, RKL, lam)`` per row (entropies ``None`` unless asked; ``lam`` ``None``
        without the gate); with ``grads``, adds ``sum_rows w_fkl dFKL + w_rkl dRKL`` (``weights`` already
        divided by the normaliser) to the student's gradient buffers.

        ``weights=None`` (zones undecided, no gradient): both terms are computed for every row."""
        pb, rows = self.pb, self.pb.rows_N[sel]
        want_grad = grads is not None
        z_s, jac = pb.student.logits(rows, want_jacobian=want_grad)
        on_teacher = self.on_teacher_topk()
        own_k = None if on_teacher else self.top_k
        h_s = h_t = None
        if entropies:
            h_s = _topk_entropy(z_s, own_k)
        logp_s, _ = _normalise_(z_s)
        p_s = logp_s.exp()
        y = None if pb.y_N is None else pb.y_N[sel]

        if pb.sparse:
            ids, lp = pb.served.ids_NK[sel], pb.served.lp_NK[sel]
            t_y = None if pb.served.t_y_N is None else pb.served.t_y_N[sel]
            logp_t = None
            if entropies:
                h_t = entropy_of(lp[:, : self.top_k].clamp(min=torch.finfo(lp.dtype).min))
                if on_teacher:
                    h_s = entropy_of(logp_s.gather(-1, ids[:, : self.top_k]))
        else:
            z_t, _ = pb.teacher.logits(rows)
            if entropies:
                h_t = _topk_entropy(z_t, own_k)
            logp_t, _ = _normalise_(z_t)
            if entropies and on_teacher:
                idx = logp_t.topk(self.top_k, dim=-1).indices
                h_s, h_t = entropy_of(logp_s.gather(-1, idx)), entropy_of(logp_t.gather(-1, idx))
            t_y = None if y is None else logp_t.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        if entropies and h_s is None:
            h_s = -rowdot(p_s, logp_s)
        if entropies and h_t is None:
            h_t = _full_entropy(logp_t)

        lam = None
        s_y = None if y is None else logp_s.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        if self.gate:
            lam = gate_lambda(t_y - s_y, pb.verdict_N[sel], self.lc, self.lf)

        w_f = w_r = None
        need_f = need_r = True
        if weights is not None:
            w_f, w_r = weights[0][sel], weights[1][sel]
            need_f, need_r = bool((w_f != 0).any()), bool((w_r != 0).any())
        zero = torch.zeros(rows.numel(), dtype=logp_s.dtype, device=logp_s.device)

        if not pb.sparse and self.estimator == "full" and not self.gate:
            fkl, rkl, g = self._full_plain(logp_s, p_s, logp_t, w_f, w_r, want_grad)
        else:
            # the teacher's buckets (topk, or any served teacher), shared by both terms when the target is the teacher
            teacher_b = None
            if pb.sparse:
                teacher_b = sparse_buckets(ids, lp, self.k_est, pb.served.tail_floor)
            elif self.estimator == "topk":
                teacher_b = dense_buckets(logp_t, self.k_est)
            fkl, g_f = self._fkl(logp_s, p_s, logp_t, teacher_b) if need_f else (zero, None)
            rkl, g_r = self._rkl(logp_s, p_s, logp_t, teacher_b, y, s_y, t_y, lam, rows, sel) if need_r else (zero, None)
            g = None
            if want_grad:
                if g_f is not None:
                    g = add_grad(g, g_f, w_f, logp_s, p_s)
                if g_r is not None:
                    g = add_grad(g, g_r, w_r, logp_s, p_s)
        if want_grad and g is not None:
            g = g.mul_(jac) if isinstance(jac, torch.Tensor) or jac != 1.0 else g
            pb.student.backprop(grads, rows, g)
        return h_s, h_t, fkl, rkl, lam

    def _full_plain(self, logp_s, p_s, logp_t, w_f, w_r, want_grad):
        """Full estimator without the gate, on as few tiles as possible (the vanilla OPD / SEAD path):
        ``diff = log p_S - log p_T``; ``FKL = -sum p_T diff``, ``RKL = sum p_S diff``;
        ``dL/ds = w_fkl (p_S - p_T) + w_rkl p_S (diff - RKL)``."""
        p_t = logp_t.exp()
        diff = logp_s.sub_(logp_t)  # reuses the student's buffer
        del logp_t
        rkl = rowdot(p_s, diff)  # under the student
        fkl = -rowdot(p_t, diff)  # under the teacher
        if not want_grad:
            return fkl, rkl, None
        g = diff.sub_(rkl.unsqueeze(-1)).mul_(p_s).mul_(w_r.unsqueeze(-1))
        g -= p_t.sub_(p_s).mul_(w_f.unsqueeze(-1))
        return fkl, rkl, g

    def _fkl(self, logp_s, p_s, logp_t, teacher_b):
        """Forward-KL term against the real teacher: top-k in ``topk_convention`` over the teacher's buckets
        (``topk``; a served teacher's FKL is always over its top-k), else over the full vocabulary."""
        if teacher_b is not None:
            return topk_term(logp_s, p_s, teacher_b, self.conv, "fkl")
        return full_fkl(logp_s, p_s, logp_t, logp_t.exp())

    def _rkl(self, logp_s, p_s, logp_t, teacher_b, y, s_y, t_y, lam, rows, sel):
        """Reverse-KL term: against the (gated) target for ``full`` / ``topk``; REINFORCE on ``y`` for ``sampled``
        (with the sampler's log-probs: ``A_t`` times the truncated importance weight ``min(p_S(y) / q(y), cap)``)."""
        pb = self.pb
        if self.estimator == "sampled":
            adv = t_y - s_y
            if self.gate:
                if pb.reference is None:
                    adv = lam * adv
                else:
                    z_r, _ = pb.reference.logits(rows)
                    r_y = z_r.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z_r, dim=-1)
                    del z_r
                    adv = adv + (lam - 1.0) * (t_y - r_y)
            if pb.q_y_N is not None:
                adv = adv * importance_weight(s_y, pb.q_y_N[sel], pb.spec.importance_cap)
            return sampled_term(logp_s, y, adv)
        if not self.gate:
            if teacher_b is not None:  # topk against the teacher's buckets (a served teacher: no gate, checked up front)
                return topk_term(logp_s, p_s, teacher_b, self.conv, "rkl")
            return full_rkl(logp_s, p_s, logp_t)
        logp_ref = logp_s if pb.reference is None else _normalise_(pb.reference.logits(rows)[0])[0]
        logq = gated_target(logp_t, logp_ref, lam)
        if self.estimator == "topk":
            return topk_term(logp_s, p_s, dense_buckets(logq, self.k_est), self.conv, "rkl")
        return full_rkl(logp_s, p_s, logq)


def _chunks(index: torch.Tensor, size: int):
    """``index`` in consecutive chunks of ``size`` rows."""
    for start in range(0, index.numel(), size):
        yield index[start : start + size]


def _zero_grads(tensors, needs, dtype):
    """Gradient buffers (``d h_S``, ``d W_S``, ``d b_S``) in the compute dtype; ``None`` where not wanted."""
    return tuple(
        torch.zeros(x.shape, dtype=dtype, device=x.device) if need else None for x, need in zip(tensors, needs)
    )


def _zone_map(pb: Problem, h_t_N, h_s_N) -> torch.Tensor:
    """SEAD's zones of the N valid rows: the spec's cuts (the step's), else this call's percentiles."""
    zones = pb.spec.zones
    ones_N = torch.ones(h_t_N.numel(), dtype=torch.long, device=h_t_N.device)
    if zones.cuts is not None:
        return zones_from_thresholds(h_t_N, h_s_N, ones_N, zones.cuts)
    return sead_zones(h_t_N, h_s_N, ones_N, zones.teacher_quantile, zones.skip_fraction)


def _scaled_weights(pb: Problem, zones_N, dtype):
    """``((w_fkl, w_rkl) / normaliser, 1 / normaliser)`` per row (:func:`sead.method.zones.zone_weights`)."""
    spec = pb.spec
    w_fkl_N, w_rkl_N = spec.zone_weights(zones_N)
    scale = 1.0 / float(loss_normalizer(zones_N, spec.normalize, pb.num_items))
    return (w_fkl_N, w_rkl_N), ((w_fkl_N * scale).to(dtype), (w_rkl_N * scale).to(dtype)), scale


def run_objective(pb: Problem, needs, tensors):
    """All passes of one call. Returns ``(loss, zones_N, per_token_N, h_t_N, h_s_N, lam_N, grads)``."""
    obj = FusedObjective(pb)
    dtype, dev = pb.student.dtype, pb.rows_N.device
    n = pb.rows_N.numel()
    want_grad = any(needs)
    h_t_N, h_s_N, fkl_N, rkl_N = (torch.zeros(n, dtype=dtype, device=dev) for _ in range(4))
    lam_N = torch.zeros(n, dtype=dtype, device=dev) if obj.gate else None
    use_zones = pb.spec.zones is not None
    grads = (None, None, None)

    all_N = torch.arange(n, device=dev)
    if not use_zones:
        zones_N = torch.full((n,), RKL, dtype=torch.long, device=dev)
        (w_fkl_N, w_rkl_N), weights, scale = _scaled_weights(pb, zones_N, dtype)
        grads = _zero_grads(tensors, needs, dtype) if want_grad else grads
    if use_zones and want_grad and pb.zone_entropies_N is not None and not obj.gate:
        # The step's zone pass measured these rows' entropies already (the same heads): no pass A.
        h_t_N, h_s_N = pb.zone_entropies_N
    elif use_zones and want_grad:
        # Pass A only ranks tokens (pass B follows): entropies only, projected in ``zone_precision``.
        h_s_N, h_t_N, lam_a = obj.zone_entropies(obj.gate)
        lam_N = lam_a if lam_a is not None else lam_N
    else:
        # One exact pass: every row's statistics, and (zones off) its gradient on the spot.
        for sel in _chunks(all_N, pb.chunk_size):
            h_s_N[sel], h_t_N[sel], fkl_N[sel], rkl_N[sel], lam = obj.terms(
                sel, weights if not use_zones else None, grads if not use_zones and want_grad else None, True
            )
            if lam is not None:
                lam_N[sel] = lam

    if use_zones:
        zones_N = _zone_map(pb, h_t_N, h_s_N)
        (w_fkl_N, w_rkl_N), weights, scale = _scaled_weights(pb, zones_N, dtype)
        if want_grad:
            # Pass B: only kept rows are projected again (in the compute dtype) for their terms and gradient;
            # skipped rows get no work at all. The loss value comes from the same tiles as the gradient.
            grads = _zero_grads(tensors, needs, dtype)
            kept_K = (zones_N > 0).nonzero().squeeze(-1)
            for sel in _chunks(kept_K, pb.chunk_size):
                _, _, fkl_N[sel], rkl_N[sel], lam = obj.terms(sel, weights, grads, False)
                if lam is not None:
                    lam_N[sel] = lam  # exact where it shapes the loss

    per_token_N = (w_fkl_N * fkl_N.double() + w_rkl_N * rkl_N.double()).to(dtype)
    per_token_N = torch.where(zones_N > 0, per_token_N, torch.zeros_like(per_token_N))
    loss = per_token_N.double().sum() * scale
    return loss, zones_N, per_token_N, h_t_N, h_s_N, lam_N, grads


class FusedLossFunction(torch.autograd.Function):
    """Autograd wrapper: the student's ``(hidden, weight, bias)`` are the differentiable inputs; the gradient is
    formed in ``forward`` and scaled in ``backward``."""

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, pb):
        # ``needs_input_grad`` stays True under ``torch.no_grad()``: grad mode is read at the call site.
        need_h, need_w, need_b = (need and pb.grad_enabled for need in ctx.needs_input_grad[:3])
        needs = (need_h, need_w, need_b and b_s is not None)
        loss, zones_N, per_token_N, h_t_N, h_s_N, lam_N, grads = run_objective(pb, needs, (h_s, w_s, b_s))
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.has = tuple(g is not None for g in grads)
        ctx.in_dtypes = (h_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        if lam_N is None:
            lam_N = torch.empty(0)
        outs = (zones_N, per_token_N, h_t_N, h_s_N, lam_N)
        ctx.mark_non_differentiable(*outs)
        return (loss.to(torch.promote_types(h_s.dtype, torch.float32)), *outs)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        out = []
        for g, has, dt in zip(ctx.saved_tensors, ctx.has, ctx.in_dtypes):
            out.append((g * grad_loss.to(g.dtype)).to(dt) if has else None)
        return (*out, None)
