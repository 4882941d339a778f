"""SG-OPD's per-token sign-consistency gate (METHODS.md 2a)."""

from __future__ import annotations

import torch

__all__ = ["consensus", "gate_lambda", "sign_gate_lambda", "sign_gated_advantage"]


def _check(teacher_logp, student_logp, correct, lambda_consensus, lambda_conflict, ref_logp=None):
    if teacher_logp.shape != student_logp.shape:
        raise ValueError(
            f"teacher_logp shape {tuple(teacher_logp.shape)} != student_logp shape {tuple(student_logp.shape)}"
        )
    if ref_logp is not None and ref_logp.shape != teacher_logp.shape:
        raise ValueError(
            f"ref_logp shape {tuple(ref_logp.shape)} != teacher_logp shape {tuple(teacher_logp.shape)}"
        )
    if correct.dim() != 1 or correct.shape[0] != teacher_logp.shape[0]:
        raise ValueError(
            f"correct must be a bool tensor [B] with B = {teacher_logp.shape[0]}, got shape {tuple(correct.shape)}"
        )
    for name, lam in (("lambda_consensus", lambda_consensus), ("lambda_conflict", lambda_conflict)):
        if not lam > 0:
            raise ValueError(f"{name} must be > 0, got {lam}")


def consensus(d: torch.Tensor, verdict_sign: torch.Tensor) -> torch.Tensor:
    """Where the teacher's direction sides with the verifier: ``d_t * v > 0`` (``d_t = 0`` is a conflict), with
    ``d_t = log pi_T(y_t) - log pi_S(y_t)`` and ``v`` +1 for an accepted rollout, -1 otherwise, broadcast against ``d``."""
    return d * verdict_sign > 0


def gate_lambda(
    d: torch.Tensor, verdict_sign: torch.Tensor, lambda_consensus: float, lambda_conflict: float
) -> torch.Tensor:
    """The gate's rule, per token: ``lambda_t = lambda_consensus`` where ``d_t * v > 0``, else ``lambda_conflict``
    (``d_t = 0`` is a conflict). ``d_t = log pi_T(y_t) - log pi_S(y_t)``; ``v`` is +1 for an accepted rollout and -1
    otherwise, broadcast against ``d``. No checks: :func:`sign_gate_lambda` is the checked form over ``[B, T]``."""
    return torch.full_like(d, lambda_conflict).masked_fill_(consensus(d, verdict_sign), lambda_consensus)


def sign_gate_lambda(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    correct: torch.Tensor,
    lambda_consensus: float = 1.8,
    lambda_conflict: float = 1.0,
) -> torch.Tensor:
    """Per-token gate ``lambda_t``.

    ``d_t = log pi_T(y_t) - log pi_S(y_t)`` (> 0: the teacher wants the sampled token more likely);
    ``v = +1`` if the verifier accepts the rollout, else ``-1``. Consensus iff ``d_t * v > 0``:
    ``lambda_t = lambda_consensus`` (extrapolate), else ``lambda_conflict`` (interpolate; ``d_t = 0``
    counts as conflict). Shapes: logps ``[B, T]``, ``correct`` bool ``[B]``.
    """
    _check(teacher_logp, student_logp, correct, lambda_consensus, lambda_conflict)
    d_BT = teacher_logp - student_logp
    v_B1 = torch.where(correct.bool(), 1.0, -1.0).to(d_BT.dtype).unsqueeze(-1)
    return gate_lambda(d_BT, v_B1, lambda_consensus, lambda_conflict)


def sign_gated_advantage(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    correct: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    lambda_consensus: float = 1.8,
    lambda_conflict: float = 1.0,
) -> torch.Tensor:
    """Per-token advantage for the sampled estimator (G-OPD / ExOPD reward scaling).

    With the frozen initial student as reference: ``A_t = d_t + (lambda_t - 1) * (log pi_T(y_t) - log pi_ref(y_t))``.
    Without a reference: ``A_t = lambda_t * d_t``. Always per token, never a trajectory sum of ``d_t``.
    """
    _check(teacher_logp, student_logp, correct, lambda_consensus, lambda_conflict, ref_logp)
    lam_BT = sign_gate_lambda(teacher_logp, student_logp, correct, lambda_consensus, lambda_conflict)
    d_BT = teacher_logp - student_logp
    if ref_logp is None:
        return lam_BT * d_BT
    return d_BT + (lam_BT - 1.0) * (teacher_logp - ref_logp)
