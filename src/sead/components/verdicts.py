"""What one step's verdicts add up to, over every process: :class:`StepVerdicts`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["StepVerdicts"]


@dataclass(frozen=True)
class StepVerdicts:
    """Counts of one step's rollouts (one process's, or summed over every process with :meth:`summed`).

    Attributes:
        passed: the student's own rollouts the verifier accepted (the pass rate's and the curriculum's numerator).
        own: the student's own rollouts (rows a teacher's rollout replaced are not the student's).
        mixed: rows whose rollout is a teacher's (SG-OPD's cold start).
        rows: every row of the batch (the mixed fraction's denominator).
        grader_timeouts, grader_errors: grades that timed out or raised (the rollout counts as wrong).
        dtype: what the counts were summed in; the ratios are taken in it too.
    """

    passed: float
    own: float
    mixed: float
    rows: float
    grader_timeouts: float
    grader_errors: float
    dtype: torch.dtype = field(default=torch.float64, compare=False)

    COUNTS = ("passed", "own", "mixed", "rows", "grader_timeouts", "grader_errors")

    @classmethod
    def of(cls, correct: Sequence[bool], mixed: Sequence[bool], timeouts: float, errors: float) -> StepVerdicts:
        own = [c for c, m in zip(correct, mixed) if not m]  # student rollouts only: competence and pass rate
        return cls(float(sum(own)), float(len(own)), float(sum(mixed)), float(len(mixed)), timeouts, errors)

    def summed(self, device, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> StepVerdicts:
        """The counts summed over every process (``reduce``: a sum over processes; ``None``: one process). Counted
        in float64 on a CPU (exact integers), float32 on an accelerator (what its collectives reduce)."""
        dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32
        counts = torch.tensor([float(getattr(self, name)) for name in self.COUNTS], dtype=dtype, device=device)
        if reduce is not None:
            counts = reduce(counts)
        return StepVerdicts(*counts.tolist(), dtype=dtype)

    def _ratio(self, num: float, den: float) -> float:
        return (torch.tensor(num, dtype=self.dtype) / torch.tensor(den, dtype=self.dtype)).item()

    @property
    def pass_rate(self) -> float | None:
        """Accepted share of the student's own rollouts; ``None`` without any."""
        return self._ratio(self.passed, self.own) if self.own > 0 else None

    @property
    def mixed_fraction(self) -> float:
        """Share of the rows whose rollout is a teacher's."""
        return self._ratio(self.mixed, max(self.rows, 1.0))
