"""SEAD's zone cuts over a whole optimizer step (``zone_scope: step``): every micro-batch, every process.

The zones are percentiles of the step's tokens (METHODS.md 1a: "batch percentiles over valid tokens", the batch of
one optimizer step), but the loss runs one micro-batch at a time. So, when the step's rollouts are ready, an
entropies-only pass (:func:`sead.losses.fused.fused_zone_entropies`) measures every micro-batch's valid tokens
(the student does not change within a step, so these are the entropies its loss will see); the pool of every
process gives the cuts (:func:`sead.method.zones.zone_thresholds`), the same on every process; each micro-batch's
loss applies them (:meth:`sead.losses.spec.LossSpec.at_step`). Then the micro-batch losses, each normalised by
the step's count, add up to the loss of the pooled batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sead.losses.fused import LMHead, SparseTeacher, fused_zone_entropies
from sead.losses.spec import LossSpec
from sead.method.zones import SKIP, ZoneThresholds, zone_thresholds, zones_from_thresholds
from sead.utils.errors import is_nonfinite

__all__ = ["ZONE_ENTROPIES_KEY", "StepCuts", "StepZoneCuts", "kept_zone_entropies"]

#: Key of the zone pass's ``(H_T, H_S)`` per completion position (``[B, T, 2]``), kept in TRL's generation batch so
#: that each micro-batch's loss takes its zones from them instead of measuring them again (its pass A).
ZONE_ENTROPIES_KEY = "zone_entropies"


def kept_zone_entropies(inputs: dict, device=None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(H_T, H_S)`` of a micro-batch as the step's zone pass measured them (each ``[B, T]``), or ``None``."""
    kept_BT2 = inputs.get(ZONE_ENTROPIES_KEY)
    return None if kept_BT2 is None else tuple(kept_BT2.to(device).unbind(-1))


@dataclass(frozen=True)
class StepCuts:
    """One step's cuts, and what they do to the pooled tokens: how many there are, the fraction skipped."""

    cuts: ZoneThresholds
    tokens: int
    frac_skip: float


class StepZoneCuts:
    """The zone cuts of the current optimizer step.

    Per step: :meth:`start` with the optimizer step's number, :meth:`add` for each of this process's micro-batches
    (its heads and loss mask), :meth:`finish` with a ``gather`` of every process's rows (rank order).
    :meth:`cuts_at` then gives the cuts to the losses of that step, and to no other step's. :meth:`finish` can
    also keep every position's entropies in the step's batch (:data:`ZONE_ENTROPIES_KEY`): the losses then read
    their zones' entropies instead of measuring them again."""

    def __init__(self, spec: LossSpec):
        if spec.zones is None:
            raise ValueError("zone cuts need a spec with zones")
        self.spec = spec
        self.cuts: ZoneThresholds | None = None
        self.step: int | None = None
        self._h_t: list[torch.Tensor] = []
        self._h_s: list[torch.Tensor] = []
        self._parts: list[torch.Tensor | None] = []  # each micro-batch's [b, T, 2] entropies (None: not measured)

    def start(self, step: int) -> None:
        self.cuts, self.step, self._h_t, self._h_s, self._parts = None, int(step), [], [], []

    def cuts_at(self, step: int) -> ZoneThresholds | None:
        """The cuts of optimizer step ``step``, or ``None`` when they were not taken for it (the loss then takes its
        micro-batch's own percentiles)."""
        return self.cuts if self.step == int(step) else None

    def add(self, student: LMHead, teacher: LMHead | SparseTeacher, mask_BT: torch.Tensor) -> bool:
        """Measure one micro-batch's valid tokens. ``False``: its hidden states hold NaN or inf, so it adds nothing
        (its own loss then refuses them and the step is dropped)."""
        try:
            h_t, h_s = fused_zone_entropies(self.spec, student, teacher, mask_BT)
        except ValueError as err:
            if not is_nonfinite(err):
                raise
            self._parts.append(None)
            return False
        self._parts.append(torch.stack([h_t, h_s], dim=-1))
        valid = mask_BT.bool()
        self._h_t.append(h_t[valid].float())
        self._h_s.append(h_s[valid].float())
        return True

    def finish(self, device=None, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
               keep_in: dict | None = None) -> StepCuts:
        """The step's cuts from every process's pooled ``(H_T, H_S)`` rows (``gather``: every process's ``[n, 2]``
        rows in rank order; ``None``: this process alone), kept in :attr:`cuts`. ``keep_in``: the step's batch
        (the micro-batches added in row order), given every position's entropies under :data:`ZONE_ENTROPIES_KEY`
        when every micro-batch was measured."""
        if keep_in is not None and self._parts and all(p is not None for p in self._parts):
            keep_in[ZONE_ENTROPIES_KEY] = torch.cat(self._parts, dim=0)
        self._parts = []
        # one collective for both entropies: the rows (H_T, H_S) of every valid token
        pooled_N2 = torch.stack([torch.cat(self._h_t) if self._h_t else torch.zeros(0),
                                 torch.cat(self._h_s) if self._h_s else torch.zeros(0)], dim=-1).to(device)
        if gather is not None:
            pooled_N2 = gather(pooled_N2)
        h_t_N, h_s_N = pooled_N2.unbind(dim=-1)
        zones = self.spec.zones
        self.cuts = zone_thresholds(h_t_N, h_s_N, None, zones.teacher_quantile, zones.skip_fraction)
        self._h_t, self._h_s = [], []
        n, frac_skip = h_t_N.numel(), 0.0
        if n:
            zone_N = zones_from_thresholds(h_t_N, h_s_N, torch.ones(n), self.cuts)
            frac_skip = float((zone_N == SKIP).double().mean())
        return StepCuts(self.cuts, n, frac_skip)
