"""Fused, chunked OPD / SEAD / SG-OPD objective over hidden states and lm_head weights.

Never materialises the ``[N, V]`` logits of any model: rows are projected through the heads (student,
teacher, optional reference) a chunk of tokens at a time (full vocabulary per row, so each row's softmax
is exact in one pass), in fp32 whatever the input dtype (fp64 stays fp64). Semantics are exactly those of
:func:`sead.losses.objective.logits_objective` on the projected logits ``T(h W^T + b)`` (``T``: each model's
output transform, :mod:`sead.method.logit_transforms`): every estimator (``full``, ``topk`` in each
``topk_convention``, ``sampled``), zones and anneal on or off, and the SG-OPD sign gate. With
``zone_precision="bf16"``: exactly those given the zones it returns, which may differ from the exact zones
at near-ties. The teacher may also be a served one, known only by its top-k log-probs (:class:`SparseTeacher`).

Work per call, in units of one ``[N, V] x H`` matmul (N valid tokens, K kept):

- zones off (vanilla OPD, SG-OPD, or the annealed mix everywhere): one pass; each chunk is projected once
  (2 units: student + teacher; +1 for a reference head) and its gradient formed on the spot (2 units).
- zones on, gradient wanted: pass A computes every valid row's ``H_T`` and ``H_S`` and nothing else;
  the zones follow; pass B re-projects only the K kept rows for their terms and gradient (4K).
  Skipped rows weigh 0 and are never projected again. What pass A costs depends on the entropies'
  support (``entropy_support``):

  - ``"teacher"`` (default; METHODS.md: "computed over the teacher's top-k renormalised"): the teacher
    is projected (N units) for its top-k ids, and the student needs only its k logits at those ids
    per row (``N k H`` multiply-adds, ~1/500 of a unit at k = 64, V = 32768). With the default 50%
    skip (K = N/2): N + 4K = **3N, 0.75x vanilla OPD's 4N**. A served teacher costs nothing here.
  - ``"own"`` (each model's own top-k) or the full vocabulary: both heads are projected (2N):
    2N + 4K = 4N, the same matmul count as vanilla OPD.
  - with the sign gate, pass A also projects the student (N units) for ``d_t`` of every valid token,
    which ``consensus_frac`` counts (the skipped tokens' gate shapes nothing else).
- ``zone_precision="bf16"``: pass A only *ranks* tokens (the loss value and gradient of the kept rows
  come from pass B), so its vocabulary projections run on bfloat16 copies of the hidden states and
  weights. A bf16 matmul costs about a quarter to a third of an fp32 one on CPUs with bf16 matmul
  units (AVX512-BF16 / AMX) and on GPU tensor cores (~2.3N in total with the teacher support). On a
  CPU without them torch emulates bf16 and it is *slower* than fp32 (2.5x measured on an AVX2-only
  CPU); ``"auto"`` picks bf16 only where :func:`fast_bf16_matmul` says it is native.
- zones on, no gradient (evaluation): one exact pass (2N) gives every row's entropies and terms.

Nothing is computed for gradients when no input needs one or grad mode is off (evaluation, ``torch.no_grad()``).
"""

from __future__ import annotations

import torch

from sead.losses.heads import Head, LMHead, SparseTeacher
from sead.losses.output import SeadLossOutput, zone_stats
from sead.losses.passes import ZONE_PRECISIONS, FusedLossFunction, FusedObjective, Problem
from sead.losses.terms import TOPK_CONVENTIONS, sparse_tail_floor
from sead.method.divergences import _check_finite, _check_temperature, _check_top_k
from sead.method.logit_transforms import IDENTITY, LogitTransform
from sead.method.zones import MASKED, ZoneThresholds

__all__ = [
    "LMHead",
    "SparseTeacher",
    "ZONE_PRECISIONS",
    "TOPK_CONVENTIONS",
    "auto_chunk_size",
    "fast_bf16_matmul",
    "fused_objective",
    "fused_sead_loss",
    "fused_zone_entropies",
]

# Elements per [rows, V] tile (16 MB in fp32).
_TILE_ELEMENTS = 1 << 22
# Rows per chunk never drop below this: the lm_head weight is re-read once per chunk, so fewer rows
# would make the projection memory-bound on a large vocabulary.
_MIN_ROWS = 128
ESTIMATORS = ("full", "topk", "sampled")
SPARSE_FULL_ERROR = "a served teacher gives top-k log-probs only; use estimator topk or sampled"


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


# ---- validation ---------------------------------------------------------------------------------------
def _check_head(name: str, head: LMHead, mask: torch.Tensor, vocab: int | None) -> None:
    if not isinstance(head, LMHead):
        raise ValueError(f"{name} must be a sead.losses.fused.LMHead(hidden, weight, bias, transform), got {type(head).__name__}")
    if head.weight.dim() != 2:
        raise ValueError(f"{name}_weight must be [V, H], got shape {tuple(head.weight.shape)}")
    if vocab is not None and head.weight.shape[0] != vocab:
        raise ValueError(
            f"{name}_weight has vocabulary size {head.weight.shape[0]} but student_weight has {vocab}: distillation "
            "needs one shared vocabulary."
        )
    if head.hidden.shape[-1] != head.weight.shape[1]:
        raise ValueError(f"{name}_hidden width {head.hidden.shape[-1]} != {name}_weight width {head.weight.shape[1]}")
    if head.hidden.shape[:-1] != mask.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the hidden states' leading shape: {name}_hidden is "
            f"{tuple(head.hidden.shape)}"
        )
    if head.bias is not None and head.bias.shape != (head.weight.shape[0],):
        raise ValueError(f"{name}_bias must have shape ({head.weight.shape[0]},), got {tuple(head.bias.shape)}")
    if not isinstance(head.transform, LogitTransform):
        raise ValueError(f"{name}_transform must be a sead.method.logit_transforms.LogitTransform")


def _check_heads(student: LMHead, teacher: LMHead | SparseTeacher, mask: torch.Tensor, zone_precision: str):
    """Check the student head and a dense teacher's against ``mask`` and each other; resolve ``zone_precision:
    auto`` for the student's device. Returns ``(zone_precision, vocab, sparse)`` (sparse: a served teacher)."""
    if zone_precision == "auto":
        zone_precision = "bf16" if fast_bf16_matmul(student.weight.device) else "exact"
    _check_head("student", student, mask, None)
    vocab = student.weight.shape[0]
    sparse = isinstance(teacher, SparseTeacher)
    if not sparse:
        _check_head("teacher", teacher, mask, vocab)
    return zone_precision, vocab, sparse


def _check_options(estimator, estimator_top_k, topk_convention, alpha, teacher_quantile, skip_fraction, normalize,
                   zone_precision, entropy_support, chunk_size, entropy_top_k, temperature):
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be 'full', 'topk' or 'sampled', got {estimator!r}")
    if topk_convention not in TOPK_CONVENTIONS:
        raise ValueError(f"topk_convention must be one of {list(TOPK_CONVENTIONS)}, got {topk_convention!r}")
    if estimator_top_k is None or estimator_top_k < 1:
        raise ValueError(f"estimator_top_k must be >= 1, got {estimator_top_k}")
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
    if entropy_support not in ("teacher", "own"):
        raise ValueError(f"entropy_support must be 'teacher' or 'own', got {entropy_support!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _per_position(name, x, mask, valid_idx):
    """A per-position input (``[B]`` per rollout with a ``[B, T]`` mask, or shaped like the mask) at the valid rows."""
    x = x.to(valid_idx.device)
    if x.shape == mask.shape:
        return x.reshape(-1)[valid_idx]
    if mask.dim() == 2 and x.shape == (mask.shape[0],):
        return x.unsqueeze(-1).expand(mask.shape).reshape(-1)[valid_idx]
    raise ValueError(f"{name} must be shaped [B] (per rollout) or like the mask {tuple(mask.shape)}, got {tuple(x.shape)}")


def _sparse_rows(teacher: SparseTeacher, mask, valid_idx, vocab, estimator, estimator_top_k, entropy_top_k,
                 temperature, needs_sampled):
    """The served teacher's rows at the valid positions, top-k sorted by log-prob (descending); validated."""
    if estimator == "full":
        raise ValueError(SPARSE_FULL_ERROR)
    if temperature != 1.0:
        raise ValueError(
            f"temperature is {temperature}, but a served teacher's log-probs are at temperature 1: the loss "
            "temperature must be 1 with a served teacher"
        )
    ids, lp = teacher.token_ids, teacher.logprobs
    if ids.shape != lp.shape or ids.shape[:-1] != mask.shape:
        raise ValueError(
            f"SparseTeacher.token_ids {tuple(ids.shape)} and .logprobs {tuple(lp.shape)} must both be shaped "
            f"{(*mask.shape, 'k')} (the mask's shape plus k)"
        )
    k = ids.shape[-1]
    if estimator_top_k > k:
        raise ValueError(f"estimator_top_k is {estimator_top_k} but the served teacher gives only its top-{k}")
    if entropy_top_k is None or entropy_top_k > k:
        raise ValueError(
            f"entropy_top_k is {entropy_top_k}, but a served teacher gives only its top-{k}: the zone entropies "
            f"are over the teacher's top-k ids, so set entropy_top_k <= {k}"
        )
    flat = ids.shape[:-1].numel()
    ids_NK = ids.to(valid_idx.device).reshape(flat, k)[valid_idx].long()
    lp_NK = lp.to(valid_idx.device).reshape(flat, k)[valid_idx]
    if ids_NK.numel() and (int(ids_NK.min()) < 0 or int(ids_NK.max()) >= vocab):
        raise ValueError(f"SparseTeacher.token_ids must be in [0, {vocab}) at valid positions")
    if k > 1 and bool((ids_NK.sort(-1).values.diff(dim=-1) == 0).any()):
        raise ValueError("SparseTeacher.token_ids repeat an id within a position: top-k ids must be distinct")
    if bool(torch.isnan(lp_NK).any()) or bool((lp_NK > 1e-4).any()):
        raise ValueError("SparseTeacher.logprobs must be log-probabilities (<= 0, -inf allowed, no NaN) at valid positions")
    order = lp_NK.argsort(dim=-1, descending=True, stable=True)
    ids_NK, lp_NK = ids_NK.gather(-1, order), lp_NK.gather(-1, order).clamp(max=0.0)
    t_y = None
    if needs_sampled:
        if teacher.sampled_logprobs is None:
            raise ValueError("SparseTeacher.sampled_logprobs is needed by the sampled estimator and the sign gate")
        if teacher.sampled_logprobs.shape != mask.shape:
            raise ValueError(
                f"SparseTeacher.sampled_logprobs must be shaped like the mask {tuple(mask.shape)}, got "
                f"{tuple(teacher.sampled_logprobs.shape)}"
            )
        t_y = teacher.sampled_logprobs.to(valid_idx.device).reshape(-1)[valid_idx]
        if bool(torch.isnan(t_y).any()) or bool((t_y > 1e-4).any()):
            raise ValueError("SparseTeacher.sampled_logprobs must be log-probabilities (<= 0, no NaN) at valid positions")
    return ids_NK, lp_NK, t_y


def _head(lm: LMHead, valid_idx, name, dtype, inv_t, detach) -> Head:
    hidden = lm.hidden.reshape(-1, lm.hidden.shape[-1])
    weight, bias = lm.weight, lm.bias
    if detach:
        hidden, weight = hidden.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    _check_finite(f"{name}_hidden", hidden[valid_idx].detach())
    _check_finite(f"{name}_weight", weight.detach())
    return Head(hidden, weight, bias, lm.transform, inv_t, dtype)


def fused_objective(
    student: LMHead,
    teacher: LMHead | SparseTeacher,
    mask: torch.Tensor,
    completion_ids: torch.Tensor | None = None,
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
    reference: LMHead | None = None,
    lambda_consensus: float = 1.8,
    lambda_conflict: float = 1.0,
    chunk_size: int | None = None,
    zone_precision: str = "exact",
    sampler_logprobs: torch.Tensor | None = None,
    importance_cap: float = 3.0,
    fkl_zone_alpha: float = 1.0,
) -> SeadLossOutput:
    """The training objective of :func:`sead.losses.objective.logits_objective`, fused and chunked from hidden states.

    Per valid token ``t`` with zone weights ``(w_fkl, w_rkl)`` (:func:`sead.method.zones.zone_weights`)::

        loss = sum_t [w_fkl(t) F_t + w_rkl(t) R_t] / normaliser

    ``F_t``: forward KL to the teacher (full vocabulary; ``topk``: over the teacher's top-k in
    ``topk_convention``; a served teacher: over its top-k); ``R_t``: reverse KL to the target (``full``,
    ``topk``) or ``-sg(A_t) log pi_S(y_t)`` (``sampled``). With ``sign_gate``, ``lambda_t`` from
    ``d_t = log pi_T(y_t) - log pi_S(y_t)`` and the verdict: target ``softmax(lambda_t z_T + (1 - lambda_t) z_ref)``
    (``z_ref``: ``reference``, else the detached student) or ``A_t = d_t + (lambda_t - 1)(log pi_T(y_t) -
    log pi_ref(y_t))`` (``lambda_t d_t`` without reference). Zones are decided on the real teacher's entropy.

    Args:
        student: :class:`LMHead` of the student (gradients flow to its hidden states, weight and bias).
        teacher: :class:`LMHead` of the teacher (its width may differ; V must match), or a
            :class:`SparseTeacher` (top-k log-probs of a served teacher, temperature 1; estimators
            ``topk`` and ``sampled``; the sign gate with ``sampled`` only).
        mask: ``[N]`` or ``[B, T]``; nonzero marks positions that count.
        completion_ids: the sampled tokens, shaped like the mask (``sampled`` estimator, sign gate).
        correct: the verifier's verdict, ``[B]`` per rollout (``[B, T]`` mask) or shaped like the mask (sign gate).
        reference: the frozen initial student's :class:`LMHead` (sign gate only; ``None``: the detached student).
        zone_thresholds: precomputed cuts (:func:`sead.method.zones.zone_thresholds`, e.g. over an optimizer step)
            used instead of this call's percentiles (``teacher_quantile``, ``skip_fraction`` are then unused).
        chunk_size: rows per chunk; ``None`` picks ``auto_chunk_size(V)`` (a ~16 MB fp32 tile).
        zone_precision: ``"exact"`` (default), ``"bf16"`` or ``"auto"``: see the module docstring and
            :func:`fused_sead_loss`.
        sampler_logprobs: shaped like the mask, ``log q(y_t)`` of the sampled tokens under the rollout sampler
            (``sampled`` estimator): ``A_t`` is multiplied by ``min(p_S(y_t) / q(y_t), importance_cap)``
            (:func:`sead.losses.terms.importance_weight`), so a vLLM engine's rollouts give the gradient under
            the trainer's ``p_S``. NaN entries (no sampler log-prob) get weight 1. ``None``: the rollouts are
            taken to be drawn from ``p_S`` itself.
        fkl_zone_alpha: forward-KL weight of the FKL zone (its reverse-KL weight is ``1 - fkl_zone_alpha``); 1
            (default): the FKL zone is forward KL, as METHODS.md's composition.
        Other arguments: as in :func:`sead.losses.objective.logits_objective`.

    Returns:
        :class:`SeadLossOutput`; ``per_token`` is detached; ``stats`` as ``logits_objective``'s (with
        ``consensus_frac`` under the sign gate).
    """
    _check_options(estimator, estimator_top_k, topk_convention, alpha, teacher_quantile, skip_fraction, normalize,
                   zone_precision, entropy_support, chunk_size, entropy_top_k, temperature)
    zone_precision, vocab, sparse = _check_heads(student, teacher, mask, zone_precision)
    if sign_gate and reference is not None:
        _check_head("reference", reference, mask, vocab)
    needs_ids = estimator == "sampled" or sign_gate
    if needs_ids and completion_ids is None:
        raise ValueError("the sampled estimator and the sign gate need `completion_ids`: the sampled tokens")
    if sign_gate and correct is None:
        raise ValueError("sign_gate needs `correct`: the verifier's verdict per rollout")
    if sparse and sign_gate and estimator != "sampled":
        raise ValueError(
            "a served teacher with the sign gate needs estimator sampled: the gated target "
            "softmax(lambda z_T + (1 - lambda) z_ref) of topk needs the teacher's full logits"
        )
    if not 0.0 <= float(fkl_zone_alpha) <= 1.0:
        raise ValueError(f"fkl_zone_alpha must be in [0, 1], got {fkl_zone_alpha}")
    if zone_thresholds is not None and not isinstance(zone_thresholds, ZoneThresholds):
        raise ValueError(f"zone_thresholds must be a sead.method.zones.ZoneThresholds, got {type(zone_thresholds).__name__}")

    mask_M = mask.reshape(-1)
    valid_idx = (mask_M != 0).nonzero().squeeze(-1)
    dtype = torch.float64 if student.hidden.dtype == torch.float64 else torch.float32
    inv_t = 1.0 / float(temperature)
    h_s = student.hidden.reshape(-1, student.hidden.shape[-1])
    _check_finite("student_hidden", h_s[valid_idx].detach())
    _check_finite("student_weight", student.weight.detach())
    s_head = Head(h_s, student.weight, student.bias, student.transform, inv_t, dtype)
    t_head = None if sparse else _head(teacher, valid_idx, "teacher", dtype, inv_t, detach=True)
    r_head = _head(reference, valid_idx, "reference", dtype, inv_t, detach=True) if sign_gate and reference else None

    y_N = verdict_N = None
    if needs_ids:
        if completion_ids.shape != mask.shape:
            raise ValueError(f"completion_ids shape {tuple(completion_ids.shape)} must equal the mask's {tuple(mask.shape)}")
        y_N = completion_ids.to(valid_idx.device).reshape(-1)[valid_idx].long()
        if y_N.numel() and (int(y_N.min()) < 0 or int(y_N.max()) >= vocab):
            raise ValueError(f"completion_ids must be token ids in [0, {vocab}) at valid positions")
    if sign_gate:
        verdict_N = torch.where(_per_position("correct", correct, mask, valid_idx).bool(), 1.0, -1.0).to(dtype)
    ids_NK = lp_NK = t_y_N = None
    if sparse:
        ids_NK, lp_NK, t_y_N = _sparse_rows(teacher, mask, valid_idx, vocab, estimator, estimator_top_k,
                                            entropy_top_k, temperature, needs_ids)
        lp_NK, t_y_N = lp_NK.to(dtype), None if t_y_N is None else t_y_N.to(dtype)

    opts = {
        "estimator": estimator,
        "estimator_top_k": int(estimator_top_k),
        "topk_convention": topk_convention,
        "alpha": float(alpha),
        "fkl_zone_alpha": float(fkl_zone_alpha),
        "zones": bool(zones),
        "teacher_quantile": teacher_quantile,
        "skip_fraction": skip_fraction,
        "zone_thresholds": zone_thresholds,
        "entropy_top_k": entropy_top_k,
        "entropy_support": entropy_support,
        "normalize": normalize,
        "num_items": num_items,
        "sign_gate": bool(sign_gate),
        "lambda_consensus": float(lambda_consensus),
        "lambda_conflict": float(lambda_conflict),
        "chunk_size": chunk_size or auto_chunk_size(vocab),
        "zone_precision": zone_precision,
        "grad_enabled": torch.is_grad_enabled(),
        # the served log-probs' own dtype bounds the tail mass they resolve
        "sparse_tail_min": sparse_tail_floor(estimator_top_k, teacher.logprobs.dtype) if sparse else None,
    }
    if sign_gate:
        for name, lam in (("lambda_consensus", lambda_consensus), ("lambda_conflict", lambda_conflict)):
            if not lam > 0:
                raise ValueError(f"{name} must be > 0, got {lam}")
    q_y_N = None
    if sampler_logprobs is not None and estimator == "sampled":
        if sampler_logprobs.shape != mask.shape:
            raise ValueError(f"sampler_logprobs shape {tuple(sampler_logprobs.shape)} must equal the mask's {tuple(mask.shape)}")
        if not importance_cap > 0:
            raise ValueError(f"importance_cap must be > 0, got {importance_cap}")
        q_y_N = sampler_logprobs.detach().to(valid_idx.device).reshape(-1)[valid_idx].to(dtype)
        if bool((q_y_N > 1e-4).any()) or bool(torch.isinf(q_y_N).any()):
            raise ValueError("sampler_logprobs must be finite log-probabilities (<= 0; NaN: no weight) at valid positions")
        opts["is_cap"] = float(importance_cap)
    pb = Problem(s_head, t_head, r_head, valid_idx, y_N, verdict_N, ids_NK, lp_NK, t_y_N, opts, q_y_N)
    loss, zones_N, per_token_N, h_t_N, h_s_N, lam_N = FusedLossFunction.apply(h_s, student.weight, student.bias, pb)

    def scatter(values_N, fill):
        full = torch.full(mask_M.shape, fill, dtype=values_N.dtype, device=mask.device)
        full[valid_idx] = values_N
        return full.view(mask.shape)

    zones_full = scatter(zones_N, MASKED)
    per_token = scatter(per_token_N, 0.0)
    stats = zone_stats(zones_full, scatter(h_t_N, 0.0), scatter(h_s_N, 0.0), per_token)
    if sign_gate:
        n = lam_N.numel()
        stats["consensus_frac"] = float((lam_N == lambda_consensus).double().mean()) if n else 0.0
    return SeadLossOutput(loss=loss, zones=zones_full, per_token=per_token, stats=stats)


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
    student_transform: LogitTransform = IDENTITY,
    teacher_transform: LogitTransform = IDENTITY,
    zone_thresholds: ZoneThresholds | None = None,
) -> SeadLossOutput:
    """SEAD loss (or vanilla OPD with ``zones=False, alpha=0``) from hidden states, fused and chunked: the
    ``full`` estimator of :func:`fused_objective`, without the sign gate.

    Equal in value and gradient to ``sead_loss(T_S(h_S W_S^T + b_S), T_T(h_T W_T^T + b_T), mask, ...)``:
    ``loss = sum_t [w_fkl(t) KL(p_T || p_S) + w_rkl(t) KL(p_S || p_T)] / normaliser`` with the zone
    weights of :func:`sead.method.zones.zone_weights`.

    Args:
        student_hidden: ``[N, H_S]`` or ``[B, T, H_S]``, the student's last hidden states at the
            completion positions (before the ``lm_head``).
        student_weight: ``[V, H_S]`` student ``lm_head`` weight. Gradients flow to the student only.
        teacher_hidden, teacher_weight: the same for the teacher (its width may differ; V must match).
        mask: ``[N]`` or ``[B, T]``; nonzero marks positions that count.
        student_transform, teacher_transform: each model's output transform (:func:`logit_transform_of`).
        chunk_size: rows per chunk; ``None`` picks ``auto_chunk_size(V)`` (a ~16 MB fp32 tile).
        entropy_support: ids the zone entropies are taken over when ``entropy_top_k`` is set:
            ``"teacher"`` (default): ``H_T`` over the teacher's top-k logits renormalised and ``H_S``
            over the student's logits at the same ids; ``"own"``: each model over its own top-k.
            The teacher support makes pass A skip the student's vocabulary projection (see above).
        zone_precision: how the zone-deciding pass A projects when zones are on and a gradient is
            wanted. ``"auto"``: ``"bf16"`` where :func:`fast_bf16_matmul` says bf16 matmuls are
            native on the weights' device, ``"exact"`` elsewhere. ``"exact"`` (default): in the compute
            dtype (fp32, fp64 for fp64 inputs), so the zones are exactly those of ``sead_loss``. ``"bf16"``:
            ``H_T``, ``H_S`` come from ``log_softmax(T(bf16(h) @ bf16(W)^T -> compute dtype + b) / tau)``:
            hidden states and weights are cast to bfloat16 once per call, the ``[n, V]`` product is upcast
            before the bias, transform, temperature, softmax and entropies, so only the matmul's output
            rounding is approximate. The zones can then differ from the exact ones only for tokens whose bf16
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
    return fused_objective(
        LMHead(student_hidden, student_weight, student_bias, student_transform),
        LMHead(teacher_hidden, teacher_weight, teacher_bias, teacher_transform),
        mask,
        alpha=alpha,
        zones=zones,
        teacher_quantile=teacher_quantile,
        skip_fraction=skip_fraction,
        zone_thresholds=zone_thresholds,
        entropy_top_k=entropy_top_k,
        entropy_support=entropy_support,
        temperature=temperature,
        normalize=normalize,
        num_items=num_items,
        chunk_size=chunk_size,
        zone_precision=zone_precision,
    )


@torch.no_grad()
def fused_zone_entropies(
    student: LMHead,
    teacher: LMHead | SparseTeacher,
    mask: torch.Tensor,
    *,
    entropy_top_k: int | None = None,
    entropy_support: str = "teacher",
    temperature: float = 1.0,
    chunk_size: int | None = None,
    zone_precision: str = "exact",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H_T, H_S)`` per position, shaped like ``mask`` (0 where masked): the zone entropies of
    :func:`fused_objective` (its pass A), nothing else; no gradient.

    For a pre-pass over an optimizer step's micro-batches (``zone_scope: step``): pool the valid entropies,
    take :func:`sead.method.zones.zone_thresholds`, and pass them as ``zone_thresholds`` to each micro-batch's loss.
    Costs one teacher projection per token with ``entropy_support="teacher"`` (nothing for a served
    teacher), both heads otherwise; ``zone_precision`` as in pass A (``"bf16"`` changes the entropies only
    by the matmul's rounding)."""
    _check_options("topk", 1, "tail", 0.0, 0.5, 0.5, "kept", zone_precision, entropy_support, chunk_size,
                   entropy_top_k, temperature)
    zone_precision, vocab, sparse = _check_heads(student, teacher, mask, zone_precision)
    mask_M = mask.reshape(-1)
    valid_idx = (mask_M != 0).nonzero().squeeze(-1)
    dtype = torch.float64 if student.hidden.dtype == torch.float64 else torch.float32
    inv_t = 1.0 / float(temperature)
    s_head = _head(student, valid_idx, "student", dtype, inv_t, detach=True)
    t_head = None if sparse else _head(teacher, valid_idx, "teacher", dtype, inv_t, detach=True)
    ids_NK = lp_NK = None
    if sparse:
        ids_NK, lp_NK, _ = _sparse_rows(teacher, mask, valid_idx, vocab, "topk", 1, entropy_top_k, temperature, False)
        lp_NK = lp_NK.to(dtype)
    opts = {"estimator": "topk", "estimator_top_k": 1, "topk_convention": "tail", "entropy_top_k": entropy_top_k,
            "entropy_support": entropy_support, "sign_gate": False, "lambda_consensus": 1.0, "lambda_conflict": 1.0}
    obj = FusedObjective(Problem(s_head, t_head, None, valid_idx, None, None, ids_NK, lp_NK, None, opts))
    proj = ZONE_PRECISIONS[zone_precision]
    student_a = s_head.cast(proj) if obj.student_projected_in_pass_a() else s_head
    teacher_a = None if sparse else t_head.cast(proj)
    n = valid_idx.numel()
    h_t_N, h_s_N = (torch.zeros(n, dtype=dtype, device=mask.device) for _ in range(2))
    chunk = chunk_size or auto_chunk_size(vocab)
    for start in range(0, n, chunk):
        sel = torch.arange(start, min(start + chunk, n), device=mask.device)
        h_s_N[sel], h_t_N[sel], _ = obj.pass_a(sel, student_a, teacher_a, False)
    out_t, out_s = (torch.zeros(mask_M.shape, dtype=dtype, device=mask.device) for _ in range(2))
    out_t[valid_idx], out_s[valid_idx] = h_t_N, h_s_N
    return out_t.view(mask.shape), out_s.view(mask.shape)
