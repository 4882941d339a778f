"""Step schedules: SEAD's FKL->RKL cosine anneal (METHODS.md 1b), SG-OPD's teacher-mix decay (2b)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["StepSchedules", "cosine_anneal", "teacher_mix_ratio"]


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


@dataclass(frozen=True)
class StepSchedules:
    """A run's step schedules, read at ``(step, total_steps)``: SEAD's anneal weight, the FKL zone's weight and
    SG-OPD's teacher-mix ratio. A schedule whose component is off holds its constant: ``alpha`` 0 (pure reverse
    KL), the FKL zone's weight 1 (forward KL), ``rho`` 0 (no teacher rollouts).

    Attributes:
        anneal: SEAD's cosine from forward to reverse KL (``alpha_start`` -> ``alpha_end``).
        zone_composition: how the zones compose with the anneal (:func:`sead.method.zones.zone_weights`): with
            ``"paper"`` the anneal's ``alpha(t)`` weighs the FKL zone (1 without the anneal); with ``"mix"`` the FKL
            zone's forward-KL weight is 1.
        fkl_zone_anneal: the ``"mix"`` composition's ablation that anneals the FKL zone too (cosine from 1 to
            ``alpha_end``); only with zones and the anneal (the caller resolves that).
        teacher_mixing: SG-OPD's cold start (``rho0`` decaying to 0 over ``phase_fraction`` of training).
    """

    anneal: bool = False
    alpha_start: float = 0.8
    alpha_end: float = 0.0
    fkl_zone_anneal: bool = False
    zone_composition: str = "paper"
    teacher_mixing: bool = False
    rho0: float = 0.5
    phase_fraction: float = 0.2

    def __post_init__(self):
        for name in ("alpha_start", "alpha_end", "rho0", "phase_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.zone_composition not in ("paper", "mix"):
            raise ValueError(f"zone_composition must be one of ['paper', 'mix'], got {self.zone_composition!r}")
        if self.fkl_zone_anneal and self.zone_composition != "mix":
            raise ValueError(
                "fkl_zone_anneal is an ablation of zone_composition 'mix'; in 'paper' the anneal already weighs the FKL zone"
            )

    def alpha(self, step: int, total_steps: int) -> float:
        """The forward-KL weight of the annealed mix (:func:`cosine_anneal`), 0 without the anneal."""
        if not self.anneal:
            return 0.0
        return cosine_anneal(step, total_steps, self.alpha_start, self.alpha_end)

    def fkl_zone_alpha(self, step: int, total_steps: int) -> float:
        """The FKL zone's forward-KL factor: ``"paper"``: the anneal's ``alpha(t)`` (1 without the anneal);
        ``"mix"``: 1, or with ``fkl_zone_anneal`` a cosine from 1 to ``alpha_end``."""
        if self.zone_composition == "paper":
            return self.alpha(step, total_steps) if self.anneal else 1.0
        if not self.fkl_zone_anneal:
            return 1.0
        return cosine_anneal(step, total_steps, 1.0, self.alpha_end)

    def rho(self, step: int, total_steps: int) -> float:
        """The fraction of prompts offered teacher rollouts (:func:`teacher_mix_ratio`), 0 without teacher mixing."""
        if not self.teacher_mixing:
            return 0.0
        return teacher_mix_ratio(step, total_steps, self.rho0, self.phase_fraction)
