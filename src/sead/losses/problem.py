"""One call of the fused loss, checked and gathered: :class:`Problem` (what the passes read) and
:func:`build_problem` (every input check of the fused loss, in one place).

The valid rows are the positions of the flattened mask that count (``N`` of them); per-row data is indexed
0..N-1 in that order. The spec (:class:`sead.losses.spec.LossSpec`) was validated when it was made; what is
checked here are the tensors: shapes, vocabularies, finite values, token ids, a served teacher's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from sead.losses.heads import Head, LMHead, SparseTeacher
from sead.losses.spec import LossSpec
from sead.losses.terms import sparse_tail_floor
from sead.method.divergences import check_finite
from sead.method.logit_transforms import LogitTransform

__all__ = ["SPARSE_FULL_ERROR", "Problem", "ServedRows", "build_problem", "compute_dtype", "valid_rows"]

SPARSE_FULL_ERROR = "a served teacher gives top-k log-probs only; use estimator topk or sampled"


class ServedRows(NamedTuple):
    """A served teacher at the valid rows: its top-k ids and log-probs ``[N, k]`` sorted by log-prob (descending),
    the sampled token's log-prob ``[N]`` (``None`` when nothing reads it), and the smallest tail mass its k
    log-probs resolve (:func:`sead.losses.terms.sparse_tail_floor`)."""

    ids_NK: torch.Tensor
    lp_NK: torch.Tensor
    t_y_N: torch.Tensor | None
    tail_floor: float


@dataclass
class Problem:
    """One call's inputs over the N valid rows (``rows_N``: their positions in the flattened hidden states).

    ``teacher`` is ``None`` for a served teacher (then ``served`` holds its rows); ``reference`` is the frozen
    initial student's head (sign gate), or ``None``. ``y_N``: the sampled tokens (sampled estimator, gate);
    ``verdict_N``: +1 / -1 per row from the verifier (gate); ``q_y_N``: the rollout sampler's log-probs of the
    sampled tokens (the sampled estimator's importance weights); ``num_items``: the global denominator, or ``None``
    (:func:`sead.method.zones.loss_normalizer`). ``zone_precision`` is resolved (``"exact"`` or
    ``"bf16"``); ``grad_enabled``: grad mode at the call site; ``zone_entropies_N``: each valid row's ``(H_T, H_S)``
    from the step's zone pass, which then replace pass A (or ``None``)."""

    spec: LossSpec
    student: Head
    teacher: Head | None
    rows_N: torch.Tensor
    chunk_size: int
    zone_precision: str = "exact"
    grad_enabled: bool = False
    reference: Head | None = None
    y_N: torch.Tensor | None = None
    verdict_N: torch.Tensor | None = None
    served: ServedRows | None = None
    q_y_N: torch.Tensor | None = None
    num_items: float | torch.Tensor | None = None
    zone_entropies_N: tuple[torch.Tensor, torch.Tensor] | None = None  # (H_T, H_S) per valid row, measured before

    @property
    def sparse(self) -> bool:
        return self.teacher is None


def compute_dtype(student: LMHead) -> torch.dtype:
    """fp32 for every input dtype, fp64 for fp64 hidden states."""
    return torch.float64 if student.hidden.dtype == torch.float64 else torch.float32


def valid_rows(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the flattened mask that count."""
    return (mask.reshape(-1) != 0).nonzero().squeeze(-1)


def check_head(name: str, head: LMHead, mask: torch.Tensor, vocab: int | None) -> None:
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


def compute_head(lm: LMHead, valid_idx, name, dtype, inv_t, detach) -> Head:
    """``lm`` over the flattened positions in the compute dtype, its valid hidden states and weight checked finite."""
    hidden = lm.hidden.reshape(-1, lm.hidden.shape[-1])
    weight, bias = lm.weight, lm.bias
    if detach:
        hidden, weight = hidden.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    check_finite(f"{name}_hidden", hidden[valid_idx].detach())
    check_finite(f"{name}_weight", weight.detach())
    return Head(hidden, weight, bias, lm.transform, inv_t, dtype)


def _per_position(name, x, mask, valid_idx):
    """A per-position input (``[B]`` per rollout with a ``[B, T]`` mask, or shaped like the mask) at the valid rows."""
    x = x.to(valid_idx.device)
    if x.shape == mask.shape:
        return x.reshape(-1)[valid_idx]
    if mask.dim() == 2 and x.shape == (mask.shape[0],):
        return x.unsqueeze(-1).expand(mask.shape).reshape(-1)[valid_idx]
    raise ValueError(f"{name} must be shaped [B] (per rollout) or like the mask {tuple(mask.shape)}, got {tuple(x.shape)}")


def served_rows(teacher: SparseTeacher, mask, valid_idx, vocab: int, spec: LossSpec, needs_sampled: bool,
                dtype: torch.dtype) -> ServedRows:
    """The served teacher's rows at the valid positions, top-k sorted by log-prob (descending); validated against
    the zone entropies' ``entropy_top_k`` and the temperature (a served teacher's log-probs are at temperature 1)."""
    if spec.temperature != 1.0:
        raise ValueError(
            f"temperature is {spec.temperature}, but a served teacher's log-probs are at temperature 1: the loss "
            "temperature must be 1 with a served teacher"
        )
    ids, lp = teacher.token_ids, teacher.logprobs
    if ids.shape != lp.shape or ids.shape[:-1] != mask.shape:
        raise ValueError(
            f"SparseTeacher.token_ids {tuple(ids.shape)} and .logprobs {tuple(lp.shape)} must both be shaped "
            f"{(*mask.shape, 'k')} (the mask's shape plus k)"
        )
    k = ids.shape[-1]
    if spec.entropy_top_k is None or spec.entropy_top_k > k:
        raise ValueError(
            f"entropy_top_k is {spec.entropy_top_k}, but a served teacher gives only its top-{k}: the zone entropies "
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
        t_y = t_y.to(dtype)
    # the served log-probs' own dtype bounds the tail mass they resolve
    return ServedRows(ids_NK, lp_NK.to(dtype), t_y, sparse_tail_floor(spec.estimator_top_k, lp.dtype))


def _check_served_estimator(spec: LossSpec, teacher: SparseTeacher) -> None:
    """What a served teacher's top-k cannot give: the full estimator, the gated top-k target, a larger k."""
    if spec.estimator == "full":
        raise ValueError(SPARSE_FULL_ERROR)
    if spec.gate is not None and spec.estimator != "sampled":
        raise ValueError(
            "a served teacher with the sign gate needs estimator sampled: the gated target "
            "softmax(lambda z_T + (1 - lambda) z_ref) of topk needs the teacher's full logits"
        )
    k = teacher.token_ids.shape[-1]
    if spec.estimator_top_k > k:
        raise ValueError(f"estimator_top_k is {spec.estimator_top_k} but the served teacher gives only its top-{k}")


def _token_inputs(spec, mask, valid_idx, vocab, completion_ids, correct, dtype):
    """``(y_N, verdict_N)``: the sampled tokens and the +1 / -1 verdicts at the valid rows, where the spec reads them."""
    if spec.needs_token_ids and completion_ids is None:
        raise ValueError("the sampled estimator and the sign gate need `completion_ids`: the sampled tokens")
    if spec.gate is not None and correct is None:
        raise ValueError("sign_gate needs `correct`: the verifier's verdict per rollout")
    y_N = verdict_N = None
    if spec.needs_token_ids:
        if completion_ids.shape != mask.shape:
            raise ValueError(f"completion_ids shape {tuple(completion_ids.shape)} must equal the mask's {tuple(mask.shape)}")
        y_N = completion_ids.to(valid_idx.device).reshape(-1)[valid_idx].long()
        if y_N.numel() and (int(y_N.min()) < 0 or int(y_N.max()) >= vocab):
            raise ValueError(f"completion_ids must be token ids in [0, {vocab}) at valid positions")
    if spec.gate is not None:
        verdict_N = torch.where(_per_position("correct", correct, mask, valid_idx).bool(), 1.0, -1.0).to(dtype)
    return y_N, verdict_N


def _sampler_rows(spec, sampler_logprobs, mask, valid_idx, dtype):
    """The rollout sampler's log-probs of the sampled tokens at the valid rows (sampled estimator only)."""
    if sampler_logprobs is None or spec.estimator != "sampled":
        return None
    if sampler_logprobs.shape != mask.shape:
        raise ValueError(f"sampler_logprobs shape {tuple(sampler_logprobs.shape)} must equal the mask's {tuple(mask.shape)}")
    q_y_N = sampler_logprobs.detach().to(valid_idx.device).reshape(-1)[valid_idx].to(dtype)
    if bool((q_y_N > 1e-4).any()) or bool(torch.isinf(q_y_N).any()):
        raise ValueError("sampler_logprobs must be finite log-probabilities (<= 0; NaN: no weight) at valid positions")
    return q_y_N


def build_problem(spec: LossSpec, student: LMHead, teacher: LMHead | SparseTeacher, mask: torch.Tensor, *,
                  completion_ids=None, reference: LMHead | None = None, correct=None, sampler_logprobs=None,
                  num_items=None, chunk_size: int, zone_precision: str, entropies_only: bool = False,
                  zone_entropies=None) -> Problem:
    """Check every tensor input of one fused-loss call against ``spec`` and gather the valid rows.

    ``entropies_only``: for the zone entropies alone (:func:`sead.losses.fused.fused_zone_entropies`): the student
    is detached, and what only the loss terms read (the estimator's needs, the sampled tokens, verdicts, sampler
    log-probs) is neither checked nor gathered. ``zone_entropies``: ``(H_T, H_S)``, each shaped like ``mask``, measured
    by the step's zone pass (:func:`sead.losses.fused.fused_zone_entropies` on the same heads), or ``None``."""
    check_head("student", student, mask, None)
    vocab = student.weight.shape[0]
    sparse = isinstance(teacher, SparseTeacher)
    if not sparse:
        check_head("teacher", teacher, mask, vocab)
    if spec.gate is not None and reference is not None:
        check_head("reference", reference, mask, vocab)
    if sparse and not entropies_only:
        _check_served_estimator(spec, teacher)
    valid_idx = valid_rows(mask)
    dtype, inv_t = compute_dtype(student), 1.0 / float(spec.temperature)
    y_N = verdict_N = q_y_N = None
    if not entropies_only:
        y_N, verdict_N = _token_inputs(spec, mask, valid_idx, vocab, completion_ids, correct, dtype)
        q_y_N = _sampler_rows(spec, sampler_logprobs, mask, valid_idx, dtype)
    needs_sampled = spec.needs_token_ids and not entropies_only
    served = served_rows(teacher, mask, valid_idx, vocab, spec, needs_sampled, dtype) if sparse else None
    given = None
    if zone_entropies is not None and spec.zones is not None and not entropies_only:
        h_t, h_s = zone_entropies
        if tuple(h_t.shape) != tuple(mask.shape) or tuple(h_s.shape) != tuple(mask.shape):
            raise ValueError(
                f"zone_entropies must be (H_T, H_S) shaped like the mask {tuple(mask.shape)}; got "
                f"{tuple(h_t.shape)} and {tuple(h_s.shape)}"
            )
        given = tuple(h.reshape(-1).to(valid_idx.device, dtype)[valid_idx] for h in (h_t, h_s))  # new tensors
    return Problem(
        spec=spec,
        student=compute_head(student, valid_idx, "student", dtype, inv_t, detach=entropies_only),
        teacher=None if sparse else compute_head(teacher, valid_idx, "teacher", dtype, inv_t, detach=True),
        reference=(compute_head(reference, valid_idx, "reference", dtype, inv_t, detach=True)
                   if spec.gate is not None and reference is not None and not entropies_only else None),
        rows_N=valid_idx,
        chunk_size=chunk_size,
        zone_precision=zone_precision,
        grad_enabled=torch.is_grad_enabled(),
        y_N=y_N,
        verdict_N=verdict_N,
        served=served,
        q_y_N=q_y_N,
        num_items=num_items,
        zone_entropies_N=given,
    )
