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

from sead.losses.heads import TILE_ELEMENTS, LMHead, SparseTeacher
from sead.losses.output import SeadLossOutput, zone_stats
from sead.losses.passes import FusedLossFunction, FusedObjective
from sead.losses.problem import build_problem
from sead.losses.spec import LossSpec
from sead.method.logit_transforms import IDENTITY, LogitTransform
from sead.method.zones import MASKED, ZoneThresholds

__all__ = [
    "LMHead",
    "SparseTeacher",
    "auto_chunk_size",
    "fast_bf16_matmul",
    "fused_objective",
    "fused_sead_loss",
    "fused_zone_entropies",
]

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
    return max(_MIN_ROWS, TILE_ELEMENTS // max(vocab_size, 1))


def _resolved(spec: LossSpec, student: LMHead) -> tuple[int, str]:
    """``(chunk_size, zone_precision)`` of a call: ``None`` -> :func:`auto_chunk_size`, ``"auto"`` -> ``"bf16"`` where
    :func:`fast_bf16_matmul` says bf16 is native on the student's device, else ``"exact"``."""
    if not isinstance(student, LMHead):
        raise ValueError(f"student must be a sead.losses.fused.LMHead(hidden, weight, bias, transform), got {type(student).__name__}")
    precision = spec.zone_precision
    if precision == "auto":
        precision = "bf16" if fast_bf16_matmul(student.weight.device) else "exact"
    vocab = student.weight.shape[0] if student.weight.dim() == 2 else 1
    return spec.chunk_size or auto_chunk_size(vocab), precision


def _scatter(values_N, valid_idx, mask, fill):
    full = torch.full((mask.numel(),), fill, dtype=values_N.dtype, device=mask.device)
    full[valid_idx] = values_N
    return full.view(mask.shape)


def fused_objective(
    spec: LossSpec,
    student: LMHead,
    teacher: LMHead | SparseTeacher,
    mask: torch.Tensor,
    completion_ids: torch.Tensor | None = None,
    *,
    correct: torch.Tensor | None = None,
    reference: LMHead | None = None,
    sampler_logprobs: torch.Tensor | None = None,
    num_items: float | torch.Tensor | None = None,
    zone_entropies: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SeadLossOutput:
    """The training objective of :func:`sead.losses.objective.logits_objective`, fused and chunked from hidden states.

    Per valid token ``t`` with zone weights ``(w_fkl, w_rkl)`` (:func:`sead.method.zones.zone_weights`)::

        loss = sum_t [w_fkl(t) F_t + w_rkl(t) R_t] / normaliser

    ``F_t``: forward KL to the teacher (full vocabulary; ``topk``: over the teacher's top-k in
    ``topk_convention``; a served teacher: over its top-k); ``R_t``: reverse KL to the target (``full``,
    ``topk``) or ``-sg(A_t) log pi_S(y_t)`` (``sampled``). With the spec's gate, ``lambda_t`` from
    ``d_t = log pi_T(y_t) - log pi_S(y_t)`` and the verdict: target ``softmax(lambda_t z_T + (1 - lambda_t) z_ref)``
    (``z_ref``: ``reference``, else the detached student) or ``A_t = d_t + (lambda_t - 1)(log pi_T(y_t) -
    log pi_ref(y_t))`` (``lambda_t d_t`` without reference). Zones are decided on the real teacher's entropy.

    Args:
        spec: what to compute (:class:`sead.losses.spec.LossSpec`): estimator, zones and their cuts, the step's
            anneal weights, the gate, the normalisation, ``chunk_size`` (``None``: ``auto_chunk_size(V)``, a ~16 MB
            fp32 tile) and ``zone_precision`` (see the module docstring and :func:`fused_sead_loss`).
        student: :class:`LMHead` of the student (gradients flow to its hidden states, weight and bias).
        teacher: :class:`LMHead` of the teacher (its width may differ; V must match), or a
            :class:`SparseTeacher` (top-k log-probs of a served teacher, temperature 1; estimators
            ``topk`` and ``sampled``; the sign gate with ``sampled`` only).
        mask: ``[N]`` or ``[B, T]``; nonzero marks positions that count.
        completion_ids: the sampled tokens, shaped like the mask (``sampled`` estimator, sign gate).
        correct: the verifier's verdict, ``[B]`` per rollout (``[B, T]`` mask) or shaped like the mask (sign gate).
        reference: the frozen initial student's :class:`LMHead` (sign gate only; ``None``: the detached student).
        sampler_logprobs: shaped like the mask, ``log q(y_t)`` of the sampled tokens under the rollout sampler
            (``sampled`` estimator): ``A_t`` is multiplied by ``min(p_S(y_t) / q(y_t), importance_cap)``
            (:func:`sead.losses.terms.importance_weight`), so a vLLM engine's rollouts give the gradient under
            the trainer's ``p_S``. NaN entries (no sampler log-prob) get weight 1. ``None``: the rollouts are
            taken to be drawn from ``p_S`` itself.
        num_items: the global denominator (:func:`sead.method.zones.loss_normalizer`); ``None``: this call's count.
        zone_entropies: ``(H_T, H_S)`` shaped like the mask, as :func:`fused_zone_entropies` gave them for these
            same heads (the step's zone pass): with zones and a gradient, they replace pass A (no sign gate: its
            pass A also measures ``consensus_frac``), so only the kept rows are projected. ``None``: pass A runs.

    Returns:
        :class:`SeadLossOutput`; ``per_token`` is detached; ``stats`` as ``logits_objective``'s (with
        ``consensus_frac`` under the sign gate).
    """
    chunk_size, zone_precision = _resolved(spec, student)
    pb = build_problem(spec, student, teacher, mask, completion_ids=completion_ids, reference=reference,
                       correct=correct, sampler_logprobs=sampler_logprobs, num_items=num_items,
                       chunk_size=chunk_size, zone_precision=zone_precision, zone_entropies=zone_entropies)  # fmt: skip
    h_s = student.hidden.reshape(-1, student.hidden.shape[-1])
    loss, zones_N, per_token_N, h_t_N, h_s_N, lam_N = FusedLossFunction.apply(h_s, student.weight, student.bias, pb)

    valid_idx = pb.rows_N
    zones_full = _scatter(zones_N, valid_idx, mask, MASKED)
    per_token = _scatter(per_token_N, valid_idx, mask, 0.0)
    stats = zone_stats(zones_full, _scatter(h_t_N, valid_idx, mask, 0.0), _scatter(h_s_N, valid_idx, mask, 0.0),
                       per_token)  # fmt: skip
    if spec.gate is not None:
        n = lam_N.numel()
        stats["consensus_frac"] = float((lam_N == spec.gate.lambda_consensus).double().mean()) if n else 0.0
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
    zone_composition: str = "paper",
    fkl_zone_lambda: float = 1.0,
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
    spec = LossSpec.from_options(
        alpha=alpha, zones=zones, teacher_quantile=teacher_quantile, skip_fraction=skip_fraction,
        zone_thresholds=zone_thresholds, entropy_top_k=entropy_top_k, entropy_support=entropy_support,
        temperature=temperature, normalize=normalize, chunk_size=chunk_size, zone_precision=zone_precision,
        zone_composition=zone_composition, fkl_zone_lambda=fkl_zone_lambda,
    )  # fmt: skip
    return fused_objective(
        spec,
        LMHead(student_hidden, student_weight, student_bias, student_transform),
        LMHead(teacher_hidden, teacher_weight, teacher_bias, teacher_transform),
        mask,
        num_items=num_items,
    )


@torch.no_grad()
def fused_zone_entropies(
    spec: LossSpec, student: LMHead, teacher: LMHead | SparseTeacher, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H_T, H_S)`` per position, shaped like ``mask`` (0 where masked): the zone entropies of
    :func:`fused_objective` (its pass A), nothing else; no gradient. Of ``spec``, it reads how the entropies are
    taken: ``entropy_top_k``, ``entropy_support``, ``temperature``, ``chunk_size`` and ``zone_precision``.

    For a pre-pass over an optimizer step's micro-batches (``zone_scope: step``): pool the valid entropies,
    take :func:`sead.method.zones.zone_thresholds`, and pass them as the spec's zone cuts to each micro-batch's
    loss (:class:`sead.components.zone_cuts.StepZoneCuts`). Costs one teacher projection per token with
    ``entropy_support="teacher"`` (nothing for a served teacher), both heads otherwise; ``zone_precision`` as in
    pass A (``"bf16"`` changes the entropies only by the matmul's rounding)."""
    chunk_size, zone_precision = _resolved(spec, student)
    pb = build_problem(spec, student, teacher, mask, chunk_size=chunk_size, zone_precision=zone_precision,
                       entropies_only=True)
    h_s_N, h_t_N, _ = FusedObjective(pb).zone_entropies(gate_stats=False)
    valid_idx = pb.rows_N
    return _scatter(h_t_N, valid_idx, mask, 0.0), _scatter(h_s_N, valid_idx, mask, 0.0)
