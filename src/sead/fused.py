"""Fused, chunked SEAD / OPD loss over hidden states and lm_head weights.

Never materialises the ``[N, V]`` logits of a batch: rows are projected through both ``lm_head``
weights a chunk of tokens at a time (full vocabulary per row, so each row's softmax is exact in one
pass, no online log-sum-exp). Semantics are exactly those of :func:`sead.losses.sead_loss` on the
projected logits (with ``zone_precision="bf16"``: exactly those of ``sead_loss`` given the zones it
returns, which may differ from the exact zones at near-ties).

Work per call, in units of one ``[N, V] x H`` matmul (N valid tokens, K kept):

- zones off (vanilla OPD, or the annealed mix everywhere): one pass; each chunk is projected once
  (2 units: student + teacher) and its gradient formed on the spot (2 units: d hidden, d weight).
- zones on, gradient wanted: pass A computes every valid row's ``H_T`` and ``H_S`` and nothing else;
  the zones follow; pass B re-projects only the K kept rows for their FKL, RKL and gradient (4K).
  Skipped rows weigh 0 and are never projected again. What pass A costs depends on the entropies'
  support (``entropy_support``):

  - ``"teacher"`` (default; METHODS.md: "computed over the teacher's top-k renormalised"): the teacher
    is projected (N units) for its top-k ids, and the student needs only its k logits at those ids
    per row (``N k H`` multiply-adds, ~1/500 of a unit at k = 64, V = 32768). With the default 50%
    skip (K = N/2): N + 4K = **3N, 0.75x vanilla OPD's 4N**.
  - ``"own"`` (each model's own top-k) or the full vocabulary: both heads are projected (2N):
    2N + 4K = 4N, the same matmul count as vanilla OPD.
- ``zone_precision="bf16"``: pass A only *ranks* tokens (the loss value and gradient of the kept rows
  come from pass B), so its vocabulary projections run on bfloat16 copies of the hidden states and
  weights. A bf16 matmul costs about a quarter to a third of an fp32 one on CPUs with bf16 matmul
  units (AVX512-BF16 / AMX) and on GPU tensor cores (~2.3N in total with the teacher support). On a
  CPU without them torch emulates bf16 and it is *slower* than fp32 (2.5x measured on an AVX2-only
  CPU); ``"auto"`` picks bf16 only where :func:`fast_bf16_matmul` says it is native.
- zones on, no gradient (evaluation): one exact pass (2N) gives every row's entropies, FKL and RKL.

The gradient is computed eagerly inside ``forward`` (as Liger's fused linear cross-entropy does):
``backward`` only scales it by the incoming scalar gradient. Nothing is computed for gradients when
no input needs one or grad mode is off (evaluation, ``torch.no_grad()``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .divergences import _check_finite, _check_temperature, _check_top_k
from .loss_output import SeadLossOutput, zone_stats
from .zones import MASKED, RKL, loss_normalizer, sead_zones, zone_weights

__all__ = ["fused_sead_loss", "auto_chunk_size", "fast_bf16_matmul", "ZONE_PRECISIONS"]

# How pass A projects when it only decides zones (see ``fused_sead_loss``'s ``zone_precision``).
ZONE_PRECISIONS = {"exact": None, "bf16": torch.bfloat16}

# Elements per [rows, V] tile (16 MB in fp32); a chunk holds four such tiles at once.
_TILE_ELEMENTS = 1 << 22
# Rows per chunk never drop below this: the lm_head weight is re-read once per chunk, so fewer rows
# would make the projection memory-bound on a large vocabulary.
_MIN_ROWS = 128


def fast_bf16_matmul(device: torch.device | str) -> bool:
    """Whether bfloat16 matmuls run on native units on ``device``: a CUDA GPU with bf16 support, or a
    CPU with AVX512-BF16 or AMX. Elsewhere torch emulates them, slower than fp32 (measured 2.5x on an
    AVX2-only CPU: BENCHMARKS.md)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(bool(check()) for check in checks if check is not None)
    return False


def auto_chunk_size(vocab_size: int) -> int:
    """Rows per chunk: a ``[rows, V]`` fp32 tile of about 4M elements, and at least 128 rows."""
    return max(_MIN_ROWS, _TILE_ELEMENTS // max(vocab_size, 1))


def _rowdot(a_nV: torch.Tensor, b_nV: torch.Tensor) -> torch.Tensor:
    """``sum_v a[n, v] b[n, v]`` per row, without an ``[n, V]`` temporary."""
    return torch.bmm(a_nV.unsqueeze(1), b_nV.unsqueeze(2)).view(-1)


def _scaled_logits(hidden_nH, weight_VH, bias_V, inv_t, dtype):
    """``(hidden @ weight.T + bias) / tau`` for one chunk of rows, ``[n, V]`` in ``dtype``. A
    lower-precision product (bf16 hidden and weight) is upcast to ``dtype`` before the bias and
    everything else, so only the matmul's output rounding differs from the exact path."""
    z_nV = (hidden_nH @ weight_VH.T).to(dtype)
    if bias_V is not None:
        z_nV += bias_V
    if inv_t != 1.0:
        z_nV *= inv_t
    return z_nV


def _entropy_of(z_nK):
    """``H = -sum_k q log q`` with ``q = softmax(z)`` over the last dimension (already restricted)."""
    logq_nK = F.log_softmax(z_nK, dim=-1)
    return -(logq_nK.exp() * logq_nK).sum(-1)


def _topk_entropy(z_nV, top_k):
    """``H = -sum_k q log q`` with ``q = softmax`` over each row's ``top_k`` largest logits; ``None``
    when ``top_k`` is unset or covers the vocabulary (the full entropy is then wanted)."""
    if top_k is None or top_k >= z_nV.shape[-1]:
        return None
    return _entropy_of(z_nV.topk(top_k, dim=-1).values)


def _gathered_logits(hidden_nH, weight_VH, bias_V, idx_nK, inv_t, dtype):
    """``z[n, j] = (hidden[n] . weight[idx[n, j]] + bias[idx[n, j]]) / tau``: k logits per row without the
    ``[n, V]`` projection (``n k H`` multiply-adds instead of ``n V H``). The gathered ``[m, k, H]``
    weight rows are bounded to about one tile per step."""
    n, k = idx_nK.shape
    z_nK = torch.empty((n, k), dtype=dtype, device=hidden_nH.device)
    step = max(1, _TILE_ELEMENTS // max(k * weight_VH.shape[1], 1))
    for i in range(0, n, step):
        w_mKH = weight_VH[idx_nK[i : i + step]]
        z_nK[i : i + step] = torch.bmm(w_mKH, hidden_nH[i : i + step].unsqueeze(-1)).squeeze(-1).to(dtype)
    if bias_V is not None:
        z_nK += bias_V[idx_nK]
    if inv_t != 1.0:
        z_nK *= inv_t
    return z_nK


def _logprobs(hidden_nH, weight_VH, bias_V, inv_t, top_k, dtype):
    """``log softmax((hidden @ weight.T + bias) / tau)`` for one chunk of rows (``[n, V]`` in ``dtype``,
    computed in place in the projection's buffer), and the top-k entropy of each row when ``top_k`` is
    set."""
    z_nV = _scaled_logits(hidden_nH, weight_VH, bias_V, inv_t, dtype)
    entropy_topk = _topk_entropy(z_nV, top_k)
    z_nV -= torch.logsumexp(z_nV, dim=-1, keepdim=True)
    return z_nV, entropy_topk


def _entropy(hidden_nH, weight_VH, bias_V, inv_t, top_k, dtype):
    """Entropy of each row of one chunk, nothing else: ``H = -sum_v p log p`` with
    ``p = softmax((hidden @ weight.T + bias) / tau)`` (over the top ``top_k`` logits when set)."""
    z_nV = _scaled_logits(hidden_nH, weight_VH, bias_V, inv_t, dtype)
    entropy = _topk_entropy(z_nV, top_k)
    if entropy is not None:
        return entropy
    z_nV -= torch.logsumexp(z_nV, dim=-1, keepdim=True)
    return -_rowdot(z_nV.exp(), z_nV)


class _Heads:
    """Student and teacher heads cast once to the compute dtype (fp32, or fp64 for fp64 inputs)."""

    def __init__(self, h_s, w_s, b_s, h_t, w_t, b_t, dtype, inv_t):
        self.h_s, self.h_t = h_s.to(dtype), h_t.to(dtype)
        self.w_s, self.w_t = w_s.to(dtype), w_t.to(dtype)
        self.b_s = None if b_s is None else b_s.to(dtype)
        self.b_t = None if b_t is None else b_t.to(dtype)
        self.dtype = dtype
        self.inv_t = inv_t

    def projected_in(self, proj_dtype, student=True):
        """These heads with hidden states and weights cast once (per call) to ``proj_dtype`` for the
        projections (the teacher's only with ``student=False``); the ``[n, V]`` products, the biases
        and all statistics stay in the compute dtype. ``proj_dtype=None`` returns ``self``."""
        if proj_dtype is None or proj_dtype == self.dtype:
            return self
        low = copy.copy(self)
        low.h_t, low.w_t = self.h_t.to(proj_dtype), self.w_t.to(proj_dtype)
        if student:
            low.h_s, low.w_s = self.h_s.to(proj_dtype), self.w_s.to(proj_dtype)
        return low

    def on_teacher_topk(self, top_k, support):
        """Whether zone entropies are taken over the teacher's top-k ids (a top-k smaller than the
        vocabulary and ``support="teacher"``); otherwise each model's own top-k or the full vocabulary."""
        return top_k is not None and support == "teacher" and top_k < self.w_t.shape[0]

    def entropies(self, rows, top_k=None, support="teacher"):
        """``(H_S, H_T)`` of one chunk: all the zone decision needs (no log-probabilities kept).

        With ``top_k`` and ``support="teacher"`` the student's entropy is over the teacher's top-k ids,
        so only those k student logits per row are computed (:func:`_gathered_logits`): the student
        is never projected over the vocabulary in this pass."""
        if self.on_teacher_topk(top_k, support):
            z_t = _scaled_logits(self.h_t[rows], self.w_t, self.b_t, self.inv_t, self.dtype)
            top_t = z_t.topk(top_k, dim=-1)
            del z_t
            z_s = _gathered_logits(self.h_s[rows], self.w_s, self.b_s, top_t.indices, self.inv_t, self.dtype)
            return _entropy_of(z_s), _entropy_of(top_t.values)
        return (
            _entropy(self.h_s[rows], self.w_s, self.b_s, self.inv_t, top_k, self.dtype),
            _entropy(self.h_t[rows], self.w_t, self.b_t, self.inv_t, top_k, self.dtype),
        )

    def chunk(self, rows, top_k=None, entropies=True, support="teacher"):
        """Per-row statistics of one chunk, and the tiles the gradient needs.

        Returns ``(H_S, H_T, FKL, RKL, diff, p_S, p_T)`` with ``diff = log p_S - log p_T``;
        ``FKL = KL(p_T || p_S)`` (under the teacher), ``RKL = KL(p_S || p_T)`` (under the student).
        """
        on_teacher = self.on_teacher_topk(top_k, support)
        own_k = None if on_teacher else top_k
        logp_s, ent_s = _logprobs(self.h_s[rows], self.w_s, self.b_s, self.inv_t, own_k, self.dtype)
        logp_t, ent_t = _logprobs(self.h_t[rows], self.w_t, self.b_t, self.inv_t, own_k, self.dtype)
        if entropies and on_teacher:
            # both over the teacher's top-k ids (log-probabilities renormalise like logits)
            idx_nK = logp_t.topk(top_k, dim=-1).indices
            ent_s, ent_t = _entropy_of(logp_s.gather(-1, idx_nK)), _entropy_of(logp_t.gather(-1, idx_nK))
        p_s, p_t = logp_s.exp(), logp_t.exp()
        h_s = h_t = None
        if entropies:
            h_s = ent_s if ent_s is not None else -_rowdot(p_s, logp_s)
            h_t = ent_t if ent_t is not None else -_rowdot(p_t, logp_t)
        diff = logp_s.sub_(logp_t)  # reuses the student's buffer
        del logp_t
        rkl = _rowdot(p_s, diff)  # under the student
        fkl = -_rowdot(p_t, diff)  # under the teacher
        return h_s, h_t, fkl, rkl, diff, p_s, p_t


def _accumulate_grad(grads, heads, rows, diff, p_s, p_t, rkl, w_fkl, w_rkl):
    """Add one chunk's gradient (``w_*`` already divided by the normaliser); consumes the tiles:

    ``dL/dz_S = w_fkl (p_S - p_T) + w_rkl p_S (log p_S - log p_T - RKL)``, then ``/ tau`` and the chain
    rule through ``z_S = h W^T + b``.
    """
    g_nV = diff.sub_(rkl.unsqueeze(-1)).mul_(p_s).mul_(w_rkl.unsqueeze(-1))
    g_nV -= p_t.sub_(p_s).mul_(w_fkl.unsqueeze(-1))
    if heads.inv_t != 1.0:
        g_nV *= heads.inv_t
    grad_h, grad_w, grad_b = grads
    if grad_h is not None:
        grad_h[rows] = g_nV @ heads.w_s
    if grad_w is not None:
        grad_w.addmm_(g_nV.T, heads.h_s[rows])
    if grad_b is not None:
        grad_b += g_nV.sum(0)


def _zero_grads(h_s, w_s, b_s, needs, dtype):
    """Gradient buffers (``d h_S``, ``d W_S``, ``d b_S``) in the compute dtype; ``None`` where not wanted."""
    return tuple(
        torch.zeros(x.shape, dtype=dtype, device=x.device) if need else None
        for x, need in zip((h_s, w_s, b_s), needs)
    )


class _FusedSeadLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, valid_idx, opts):
        dtype = torch.float64 if h_s.dtype == torch.float64 else torch.float32
        dev = h_s.device
        heads = _Heads(h_s, w_s, b_s, h_t, w_t, b_t, dtype, 1.0 / opts["temperature"])
        n = valid_idx.numel()
        chunk = opts["chunk_size"] or auto_chunk_size(w_s.shape[0])
        # ``needs_input_grad`` stays True under ``torch.no_grad()``: grad mode is read at the call site.
        need_h, need_w, need_b = (need and opts["grad_enabled"] for need in ctx.needs_input_grad[:3])
        needs = (need_h, need_w, need_b and b_s is not None)
        want_grad = any(needs)
        h_t_N, h_s_N, fkl_N, rkl_N = (torch.zeros(n, dtype=dtype, device=dev) for _ in range(4))
        use_zones, alpha = opts["zones"], opts["alpha"]

        # Without zones every row's weights are known up front: one pass, gradient on the spot.
        if not use_zones:
            grads = _zero_grads(h_s, w_s, b_s, needs, dtype)
            zones_N = torch.full((n,), RKL, dtype=torch.long, device=dev)
            w_fkl_N, w_rkl_N = zone_weights(zones_N, alpha)
            scale = 1.0 / float(loss_normalizer(zones_N, opts["normalize"], opts["num_items"]))
        top_k, support = opts["entropy_top_k"], opts["entropy_support"]
        if use_zones and want_grad:
            # Pass A only ranks tokens (pass B follows): entropies only, projected in ``zone_precision``.
            # The kept rows' FKL / RKL come from pass B; the skipped rows' weigh 0 and are never needed.
            # Over the teacher's top-k the student needs k logits per row, not a projection.
            student_projected = not heads.on_teacher_topk(top_k, support)
            heads_a = heads.projected_in(ZONE_PRECISIONS[opts["zone_precision"]], student=student_projected)
            for start in range(0, n, chunk):
                sl = slice(start, min(start + chunk, n))
                h_s_N[sl], h_t_N[sl] = heads_a.entropies(valid_idx[sl], top_k, support)
            del heads_a  # frees the low-precision copies, if any, before pass B
        else:
            # One exact pass: every row's statistics, and (zones off) its gradient on the spot.
            for start in range(0, n, chunk):
                sl = slice(start, min(start + chunk, n))
                rows = valid_idx[sl]
                h_s_N[sl], h_t_N[sl], fkl_N[sl], rkl_N[sl], diff, p_s, p_t = heads.chunk(rows, top_k, support=support)
                if want_grad:
                    w_f, w_r = (w_fkl_N[sl] * scale).to(dtype), (w_rkl_N[sl] * scale).to(dtype)
                    _accumulate_grad(grads, heads, rows, diff, p_s, p_t, rkl_N[sl], w_f, w_r)
                del diff, p_s, p_t

        if use_zones:
            ones_N = torch.ones(n, dtype=torch.long, device=dev)
            zones_N = sead_zones(h_t_N, h_s_N, ones_N, opts["teacher_quantile"], opts["skip_fraction"])
            w_fkl_N, w_rkl_N = zone_weights(zones_N, alpha)
            scale = 1.0 / float(loss_normalizer(zones_N, opts["normalize"], opts["num_items"]))
            # Allocated only now, so pass A's peak memory does not hold them.
            grads = _zero_grads(h_s, w_s, b_s, needs, dtype)
            if want_grad:
                # Pass B: only kept rows are projected again (in the compute dtype) for their FKL, RKL
                # and gradient; skipped rows get no work at all. The loss value comes from the same
                # tiles as the gradient (exact even when pass A projected in bf16).
                kept_K = (zones_N > 0).nonzero().squeeze(-1)
                for start in range(0, kept_K.numel(), chunk):
                    sel = kept_K[start : start + chunk]
                    rows = valid_idx[sel]
                    _, _, fkl_N[sel], rkl_N[sel], diff, p_s, p_t = heads.chunk(rows, entropies=False)
                    w_f, w_r = (w_fkl_N[sel] * scale).to(dtype), (w_rkl_N[sel] * scale).to(dtype)
                    _accumulate_grad(grads, heads, rows, diff, p_s, p_t, rkl_N[sel], w_f, w_r)
                    del diff, p_s, p_t

        per_token_N = (w_fkl_N * fkl_N.double() + w_rkl_N * rkl_N.double()).to(dtype)
        loss = per_token_N.double().sum() * scale
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.has = tuple(g is not None for g in grads)
        ctx.in_dtypes = (h_s.dtype, w_s.dtype, None if b_s is None else b_s.dtype)
        outs = (zones_N, per_token_N, h_t_N, h_s_N)
        ctx.mark_non_differentiable(*outs)
        return (loss.to(torch.promote_types(h_s.dtype, torch.float32)), *outs)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        saved = ctx.saved_tensors
        out = []
        for g, has, dt in zip(saved, ctx.has, ctx.in_dtypes):
            out.append((g * grad_loss.to(g.dtype)).to(dt) if has else None)
        grad_h, grad_w, grad_b = out
        return grad_h, grad_w, grad_b, None, None, None, None, None


def fused_sead_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
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
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    chunk_size: int | None = None,
    zone_precision: str = "exact",
    entropy_support: str = "teacher",
) -> SeadLossOutput:
    """SEAD loss (or vanilla OPD with ``zones=False, alpha=0``) from hidden states, fused and chunked.

    Equal in value and gradient to ``sead_loss(h_S W_S^T + b_S, h_T W_T^T + b_T, mask, ...)``:
    ``loss = sum_t [w_fkl(t) KL(p_T || p_S) + w_rkl(t) KL(p_S || p_T)] / normaliser`` with the zone
    weights of :func:`sead.zones.zone_weights`.

    Args:
        student_hidden: ``[N, H_S]`` or ``[B, T, H_S]``, the student's last hidden states at the
            completion positions (before the ``lm_head``).
        student_weight: ``[V, H_S]`` student ``lm_head`` weight. Gradients flow to the student only.
        teacher_hidden, teacher_weight: the same for the teacher (its width may differ; V must match).
        mask: ``[N]`` or ``[B, T]``; nonzero marks positions that count.
        chunk_size: rows per chunk; ``None`` picks ``auto_chunk_size(V)`` (a ~16 MB fp32 tile).
        entropy_support: ids the zone entropies are taken over when ``entropy_top_k`` is set:
            ``"teacher"`` (default): ``H_T`` over the teacher's top-k logits renormalised and ``H_S``
            over the student's logits at the same ids; ``"own"``: each model over its own top-k.
            The teacher support makes pass A skip the student's vocabulary projection (see above).
        zone_precision: how the zone-deciding pass A projects when zones are on and a gradient is
            wanted. ``"auto"``: ``"bf16"`` where :func:`fast_bf16_matmul` says bf16 matmuls are
            native on the weights' device, ``"exact"`` elsewhere. ``"exact"`` (default): in the compute dtype (fp32, fp64 for fp64 inputs), so the
            zones are exactly those of ``sead_loss``. ``"bf16"``: ``H_T``, ``H_S`` come from
            ``log_softmax((bf16(h) @ bf16(W)^T -> compute dtype + b) / tau)``: hidden states and
            weights are cast to bfloat16 once per call, the ``[n, V]`` product is upcast before the
            bias, temperature, softmax and entropies, so only the matmul's output rounding is
            approximate. The zones can then differ from the exact ones only for tokens whose bf16
            entropy lands on the other side of the ``H_T`` quantile threshold or of the ``H_S`` rank
            cut of the skip zone (near-ties). Pass B computes the kept rows' FKL and RKL in the
            compute dtype, so the loss value, ``per_token`` and the gradient are exactly
            ``sead_loss``'s *given the zones returned* (skipped rows contribute 0 either way). What
            stays approximate feeds logging only: the ``H_T``, ``H_S`` behind
            ``stats["mean_h_t"]`` / ``["mean_h_s"]`` (the entropies the zones were decided from).
            Without a gradient (evaluation, ``torch.no_grad()``) or with ``zones=False`` there is no
            pass B and ``"bf16"`` changes nothing (one exact pass). fp64 inputs are treated the same
            way (ranking in bf16, loss and gradient in fp64).
        Other arguments: as in :func:`sead.losses.sead_loss`.

    Returns:
        :class:`SeadLossOutput`; ``per_token`` is detached in this implementation.
    """
    _check_temperature(temperature)
    _check_top_k(entropy_top_k)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for name, q in (("teacher_quantile", teacher_quantile), ("skip_fraction", skip_fraction)):
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {q}")
    if normalize not in ("kept", "all"):
        raise ValueError(f"normalize must be 'kept' or 'all', got {normalize!r}")
    if not isinstance(zone_precision, str) or zone_precision not in (*ZONE_PRECISIONS, "auto"):
        raise ValueError(f"zone_precision must be one of {[*sorted(ZONE_PRECISIONS), 'auto']}, got {zone_precision!r}")
    if zone_precision == "auto":
        zone_precision = "bf16" if fast_bf16_matmul(student_weight.device) else "exact"
    if entropy_support not in ("teacher", "own"):
        raise ValueError(f"entropy_support must be 'teacher' or 'own', got {entropy_support!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"student_weight has vocabulary size {student_weight.shape[0]} but teacher_weight has "
            f"{teacher_weight.shape[0]}: distillation needs one shared vocabulary."
        )
    if student_hidden.shape[-1] != student_weight.shape[1]:
        raise ValueError(
            f"student_hidden width {student_hidden.shape[-1]} != student_weight width {student_weight.shape[1]}"
        )
    if teacher_hidden.shape[-1] != teacher_weight.shape[1]:
        raise ValueError(
            f"teacher_hidden width {teacher_hidden.shape[-1]} != teacher_weight width {teacher_weight.shape[1]}"
        )
    if student_hidden.shape[:-1] != mask.shape or teacher_hidden.shape[:-1] != mask.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the hidden states' leading shape "
            f"{tuple(student_hidden.shape[:-1])} (student) and {tuple(teacher_hidden.shape[:-1])} (teacher)"
        )
    for name, b, v in (
        ("student_bias", student_bias, student_weight),
        ("teacher_bias", teacher_bias, teacher_weight),
    ):
        if b is not None and b.shape != (v.shape[0],):
            raise ValueError(f"{name} must have shape ({v.shape[0]},), got {tuple(b.shape)}")

    mask_M = mask.reshape(-1)
    valid_idx = (mask_M != 0).nonzero().squeeze(-1)
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    for name, x in (
        ("student_hidden", h_s[valid_idx]),
        ("teacher_hidden", h_t[valid_idx]),
        ("student_weight", student_weight),
        ("teacher_weight", teacher_weight),
    ):
        _check_finite(name, x.detach())

    opts = {
        "alpha": float(alpha),
        "zones": zones,
        "teacher_quantile": teacher_quantile,
        "skip_fraction": skip_fraction,
        "entropy_top_k": entropy_top_k,
        "temperature": float(temperature),
        "normalize": normalize,
        "num_items": num_items,
        "chunk_size": chunk_size,
        "zone_precision": zone_precision,
        "entropy_support": entropy_support,
        "grad_enabled": torch.is_grad_enabled(),
    }
    t_bias = None if teacher_bias is None else teacher_bias.detach()
    loss, zones_N, per_token_N, h_t_N, h_s_N = _FusedSeadLoss.apply(
        h_s, student_weight, student_bias, h_t, teacher_weight.detach(), t_bias, valid_idx, opts
    )

    def scatter(values_N, fill):
        full = torch.full(mask_M.shape, fill, dtype=values_N.dtype, device=mask.device)
        full[valid_idx] = values_N
        return full.view(mask.shape)

    zones_full = scatter(zones_N, MASKED)
    per_token = scatter(per_token_N, 0.0)
    stats = zone_stats(zones_full, scatter(h_t_N, 0.0), scatter(h_s_N, 0.0), per_token)
    return SeadLossOutput(loss=loss, zones=zones_full, per_token=per_token, stats=stats)
