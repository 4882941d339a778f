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
from dataclasses import dataclass, field

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
    """One step's cuts, and what they do to the pooled tokens: how many there are, the fraction skipped; with
    several teachers, ``by_teacher``: each teacher's ``(tokens, fraction skipped)``."""

    cuts: ZoneThresholds
    tokens: int
    frac_skip: float
    by_teacher: dict[int, tuple[int, float]] = field(default_factory=dict)


class StepZoneCuts:
    """The zone cuts of the current optimizer step.

    Per step: :meth:`start` with the optimizer step's number, :meth:`add` for each of this process's micro-batches
    (its heads and loss mask), :meth:`finish` with a ``gather`` of every process's rows (rank order).
    :meth:`cuts_at` then gives the cuts to the losses of that step, and to no other step's. :meth:`finish` can
    also keep every position's entropies in the step's batch (:data:`ZONE_ENTROPIES_KEY`): the losses then read
    their zones' entropies instead of measuring them again.

    Several teachers (:mod:`sead.components.teachers`): each :meth:`add` names its teacher (``key``) and its rows of
    the step's batch; each teacher's tokens get their own cuts (``cuts_at(step, key)``), from its own pool."""

    def __init__(self, spec: LossSpec):
        if spec.zones is None:
            raise ValueError("zone cuts need a spec with zones")
        self.spec = spec
        self.cuts: ZoneThresholds | None = None  # the first teacher's (the only one's)
        self.cuts_by: dict[int, ZoneThresholds] = {}
        self.step: int | None = None
        self.start(-1)
        self.step = None

    def start(self, step: int) -> None:
        self.cuts, self.cuts_by, self.step = None, {}, int(step)
        self._pools: dict[int, list[torch.Tensor]] = {}  # per teacher: every valid token's [n, 2] (H_T, H_S)
        self._parts: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []  # ([b, T, 2] or None, rows)

    def cuts_at(self, step: int, key: int = 0) -> ZoneThresholds | None:
        """The cuts of optimizer step ``step`` (teacher ``key``'s), or ``None`` when they were not taken for it (the
        loss then takes its micro-batch's own percentiles)."""
        if self.step != int(step):
            return None
        return self.cuts if int(key) == 0 else self.cuts_by.get(int(key))  # the first teacher's: :attr:`cuts`

    def add(self, student: LMHead, teacher: LMHead | SparseTeacher, mask_BT: torch.Tensor, key: int = 0,
            rows: torch.Tensor | None = None) -> bool:
        """Measure one micro-batch's valid tokens (teacher ``key``'s, at batch rows ``rows``; ``None``: the next
        rows in order). ``False``: its hidden states hold NaN or inf, so it adds nothing (its own loss then refuses
        them and the step is dropped)."""
        try:
            h_t, h_s = fused_zone_entropies(self.spec, student, teacher, mask_BT)
        except ValueError as err:
            if not is_nonfinite(err):
                raise
            self._parts.append((None, rows))
            return False
        self._parts.append((torch.stack([h_t, h_s], dim=-1), rows))
        valid = mask_BT.bool()
        self._pools.setdefault(int(key), []).append(torch.stack([h_t[valid].float(), h_s[valid].float()], dim=-1))
        return True

    def _keep(self, keep_in: dict) -> None:
        """Every position's entropies into the step's batch, each part at its rows (or in row order)."""
        parts = [p for p, _ in self._parts]
        if not parts or any(p is None for p in parts):
            return
        if all(r is None for _, r in self._parts):
            keep_in[ZONE_ENTROPIES_KEY] = torch.cat(parts, dim=0)
            return
        kept = parts[0].new_zeros((keep_in["completion_ids"].shape[0], parts[0].shape[1], 2))
        for part, rows in self._parts:
            kept[rows.to(kept.device)] = part
        keep_in[ZONE_ENTROPIES_KEY] = kept

    def finish(self, device=None, gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
               keep_in: dict | None = None, num_teachers: int = 1) -> StepCuts:
        """The step's cuts from every process's pooled ``(H_T, H_S)`` rows (``gather``: every process's ``[n, 2]``
        rows in rank order; ``None``: this process alone), kept in :attr:`cuts` (and, per teacher, in
        :attr:`cuts_by`). ``keep_in``: the step's batch, given every position's entropies under
        :data:`ZONE_ENTROPIES_KEY` when every micro-batch was measured. ``num_teachers``: one gather and one set of
        cuts per teacher, on every process (a process without a teacher's rows gathers nothing for it)."""
        if keep_in is not None:
            self._keep(keep_in)
        self._parts = []
        zones, by_teacher, skipped, total = self.spec.zones, {}, 0.0, 0
        for key in range(num_teachers):
            # one collective for both entropies: the rows (H_T, H_S) of every valid token
            pool = self._pools.get(key, [])
            pooled_N2 = (torch.cat(pool) if pool else torch.zeros(0, 2)).to(device)
            if gather is not None:
                pooled_N2 = gather(pooled_N2)
            h_t_N, h_s_N = pooled_N2.unbind(dim=-1)
            cuts = zone_thresholds(h_t_N, h_s_N, None, zones.teacher_quantile, zones.skip_fraction)
            self.cuts_by[key] = cuts
            n, frac_skip = h_t_N.numel(), 0.0
            if n:
                zone_N = zones_from_thresholds(h_t_N, h_s_N, torch.ones(n), cuts)
                frac_skip = float((zone_N == SKIP).double().mean())
            by_teacher[key] = (n, frac_skip)
            skipped, total = skipped + frac_skip * n, total + n
        self._pools = {}
        self.cuts = self.cuts_by[0]
        return StepCuts(self.cuts, total, skipped / total if total else 0.0, by_teacher if num_teachers > 1 else {})
