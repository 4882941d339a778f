"""Step schedules: SEAD's FKL->RKL cosine anneal (METHODS.md 1b), SG-OPD's teacher-mix decay (2b)."""

from __future__ import annotations

import math

__all__ = ["cosine_anneal", "teacher_mix_ratio"]


def cosine_anneal(step: int, total_steps: int, start: float = 0.8, end: float = 0.0) -> float:
    """Forward-KL weight ``alpha(t) = end + (start - end) * 0.5 * (1 + cos(pi * t / T))``.

    ``t = clamp(step, 0, T)``, ``T = total_steps``. ``alpha = start`` at step 0 and ``end`` at ``T``;
    the divergence is ``alpha * FKL + (1 - alpha) * RKL``. ``T == 0`` returns ``end``.
    """
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if total_steps == 0:
        return float(end)
    t = min(max(step, 0), total_steps)
    return float(end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t / total_steps)))


def teacher_mix_ratio(step: int, total_steps: int, rho0: float = 0.5, phase_fraction: float = 0.2) -> float:
    """Fraction ``rho`` of a batch's prompts offered a verifier-endorsed teacher rollout (cold start).

    Linear decay *(assumed shape)*: ``rho(t) = rho0 * max(0, 1 - t / (phase_fraction * T))``, so
    ``rho0`` at step 0 and 0 from the end of the cold-start phase on. ``phase_fraction == 0``: always 0.
    """
    if not 0.0 <= rho0 <= 1.0:
        raise ValueError(f"rho0 must be in [0, 1], got {rho0}")
    if not 0.0 <= phase_fraction <= 1.0:
        raise ValueError(f"phase_fraction must be in [0, 1], got {phase_fraction}")
    phase_steps = phase_fraction * total_steps
    if phase_steps <= 0:
        return 0.0
    return float(rho0 * max(0.0, 1.0 - max(step, 0) / phase_steps))
