"""What a loss call computes, as one typed value: :class:`LossSpec`, with SEAD's zones (:class:`ZoneSpec`) and
SG-OPD's gate (:class:`GateSpec`) as optional parts.

Built once (``OPDConfig.loss_spec()`` in training, :meth:`LossSpec.from_options` for the readable functions'
keywords), validated once, in ``__post_init__``; each optimizer step then takes its current schedule values and
zone cuts with :meth:`LossSpec.at_step`. Both objectives, the fused one (:func:`sead.losses.fused.fused_objective`)
and the full-logits one (:func:`sead.losses.objective.logits_objective`), take a spec with the tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from sead.method.divergences import TOPK_CONVENTIONS
from sead.method.zones import ZONE_COMPOSITIONS, ZoneThresholds, zone_weights

__all__ = [
    "ENTROPY_SUPPORTS",
    "ESTIMATORS",
    "NORMALIZATIONS",
    "ZONE_PRECISIONS",
    "GateSpec",
    "LossSpec",
    "ZoneSpec",
]

ESTIMATORS = ("full", "topk", "sampled")
NORMALIZATIONS = ("kept", "all")
ENTROPY_SUPPORTS = ("teacher", "own")
#: How the zone-deciding pass projects (``"auto"``: bf16 where bf16 matmuls are native, see the fused loss).
ZONE_PRECISIONS = ("auto", "bf16", "exact")


def _unit(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _choice(name: str, value, allowed) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class ZoneSpec:
    """SEAD's token zones (METHODS.md 1a) and how each zone mixes the two directions (1b).

    Attributes:
        teacher_quantile: the FKL zone is ``H_T >= quantile(H_T, teacher_quantile)`` (*assumed* 0.9).
        skip_fraction: of the other tokens, this fraction of all valid ones, lowest ``H_S`` first, is skipped
            (*assumed* 0.5).
        composition: how the zones compose with the anneal (:func:`sead.method.zones.zone_weights`): ``"paper"``
            (FKL zone ``fkl_zone_alpha * fkl_zone_lambda`` forward KL, RKL zone pure reverse KL; METHODS.md 1b) or
            ``"mix"`` (FKL zone forward KL, RKL zone the annealed mix; our earlier reading).
        fkl_zone_lambda: the FKL zone's weight ``lambda`` of the paper's composition (*value not given*, 1.0).
        fkl_zone_alpha: this step's forward-KL factor of the FKL zone: with ``"paper"`` the anneal's ``alpha(t)`` (1
            without the anneal); with ``"mix"`` 1 (its reverse-KL weight is ``1 - fkl_zone_alpha``), or the
            ``fkl_zone_anneal`` ablation's cosine.
        cuts: cuts decided over a wider scope (:func:`sead.method.zones.zone_thresholds`, e.g. an optimizer step),
            applied instead of this call's percentiles; ``None``: percentiles over the call's own tokens.
    """

    teacher_quantile: float = 0.9
    skip_fraction: float = 0.5
    fkl_zone_alpha: float = 1.0
    cuts: ZoneThresholds | None = None
    composition: str = "paper"
    fkl_zone_lambda: float = 1.0

    def __post_init__(self):
        _unit("teacher_quantile", self.teacher_quantile)
        _unit("skip_fraction", self.skip_fraction)
        _unit("fkl_zone_alpha", self.fkl_zone_alpha)
        _choice("zone_composition", self.composition, ZONE_COMPOSITIONS)
        if not float(self.fkl_zone_lambda) >= 0.0:
            raise ValueError(f"fkl_zone_lambda must be >= 0, got {self.fkl_zone_lambda}")
        if self.cuts is not None and not isinstance(self.cuts, ZoneThresholds):
            raise ValueError(f"zone_thresholds must be a sead.method.zones.ZoneThresholds, got {type(self.cuts).__name__}")


@dataclass(frozen=True)
class GateSpec:
    """SG-OPD's per-token sign gate (METHODS.md 2a): ``lambda_t = lambda_consensus`` where the teacher's direction
    agrees with the verifier, ``lambda_conflict`` elsewhere (:func:`sead.method.gates.gate_lambda`)."""

    lambda_consensus: float = 1.8
    lambda_conflict: float = 1.0

    def __post_init__(self):
        for name in ("lambda_consensus", "lambda_conflict"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class LossSpec:
    """Everything a loss call computes, except its tensors.

    Attributes:
        estimator: ``"full"`` (whole vocabulary), ``"topk"`` (the other side's top-``estimator_top_k`` ids, in
            ``topk_convention``) or ``"sampled"`` (``-sg(A_t) log pi_S(y_t)``; the forward-KL parts stay exact).
        estimator_top_k: k of ``"topk"``.
        topk_convention: ``"tail"``, ``"renormalized"`` (NeMo-RL) or ``"clamped"`` (verl).
        temperature: ``p = softmax(z / temperature)`` for every model.
        alpha: the annealed forward-KL weight of the RKL zone (of every token without zones), this step's value.
        zones: SEAD's zones, or ``None`` (every valid token in the RKL zone).
        entropy_top_k: the zone entropies over k ids renormalised; ``None``: the full vocabulary. The entropies are
            measured (and logged) with or without zones.
        entropy_support: ``"teacher"`` (both over the teacher's top-k ids) or ``"own"`` (each model's own).
        zone_precision: ``"exact"``, ``"bf16"`` or ``"auto"``: how the fused loss's zone-deciding pass projects.
        gate: SG-OPD's sign gate, or ``None``.
        normalize: the loss's denominator without a global count: ``"kept"`` tokens or ``"all"`` valid ones.
        importance_cap: cap of the sampled estimator's truncated importance weights (with sampler log-probs).
        chunk_size: rows per chunk of the fused loss; ``None``: about 4M logits per tile.
    """

    estimator: str = "full"
    estimator_top_k: int = 64
    topk_convention: str = "tail"
    temperature: float = 1.0
    alpha: float = 0.0
    zones: ZoneSpec | None = None
    entropy_top_k: int | None = None
    entropy_support: str = "teacher"
    zone_precision: str = "exact"
    gate: GateSpec | None = None
    normalize: str = "kept"
    importance_cap: float = 3.0
    chunk_size: int | None = None

    def __post_init__(self):
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("topk_convention", self.topk_convention, TOPK_CONVENTIONS)
        if self.estimator_top_k is None or self.estimator_top_k < 1:
            raise ValueError(f"estimator_top_k must be >= 1, got {self.estimator_top_k}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        _unit("alpha", self.alpha)
        if self.entropy_top_k is not None and self.entropy_top_k < 1:
            raise ValueError(f"entropy_top_k must be >= 1 (or None for the full vocabulary), got {self.entropy_top_k}")
        _choice("entropy_support", self.entropy_support, ENTROPY_SUPPORTS)
        _choice("zone_precision", self.zone_precision, ZONE_PRECISIONS)
        _choice("normalize", self.normalize, NORMALIZATIONS)
        if not self.importance_cap > 0:
            raise ValueError(f"importance_cap must be > 0, got {self.importance_cap}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        for name, part, kind in (("zones", self.zones, ZoneSpec), ("gate", self.gate, GateSpec)):
            if part is not None and not isinstance(part, kind):
                raise ValueError(f"{name} must be a {kind.__name__} or None, got {type(part).__name__}")

    @classmethod
    def from_options(
        cls,
        *,
        zones: bool = False,
        teacher_quantile: float = 0.9,
        skip_fraction: float = 0.5,
        fkl_zone_alpha: float | None = None,
        zone_thresholds: ZoneThresholds | None = None,
        zone_composition: str = "paper",
        fkl_zone_lambda: float = 1.0,
        sign_gate: bool = False,
        lambda_consensus: float = 1.8,
        lambda_conflict: float = 1.0,
        **options,
    ) -> LossSpec:
        """A spec from flat keyword options (the readable functions' keywords and the config's field names):
        ``zones=True`` with ``teacher_quantile``, ``skip_fraction``, ``fkl_zone_alpha``, ``zone_thresholds``,
        ``zone_composition``, ``fkl_zone_lambda`` (``fkl_zone_alpha`` ``None``: the step's ``alpha`` in the paper's
        composition, where the anneal weighs the FKL zone, 1 in ``"mix"``);
        ``sign_gate=True`` with ``lambda_consensus``, ``lambda_conflict``; the rest are :class:`LossSpec`'s fields.
        The parts a switch leaves off are not built (their options are then unused)."""
        zone_spec = None
        if fkl_zone_alpha is None:
            fkl_zone_alpha = options.get("alpha", 0.0) if zone_composition == "paper" else 1.0
        if zones:
            zone_spec = ZoneSpec(teacher_quantile, skip_fraction, fkl_zone_alpha, zone_thresholds, zone_composition,
                                 fkl_zone_lambda)  # fmt: skip
        gate = GateSpec(lambda_consensus, lambda_conflict) if sign_gate else None
        return cls(zones=zone_spec, gate=gate, **options)

    def at_step(
        self, *, alpha: float, fkl_zone_alpha: float | None = None, cuts: ZoneThresholds | None = None
    ) -> LossSpec:
        """This spec with one step's values: the anneal weight ``alpha``, the FKL zone's factor (``None``: ``alpha``
        in the paper's composition, 1 in ``"mix"``) and the zone cuts (both ignored without zones)."""
        zones = self.zones
        if zones is not None:
            if fkl_zone_alpha is None:
                fkl_zone_alpha = alpha if zones.composition == "paper" else 1.0
            zones = dataclasses.replace(zones, fkl_zone_alpha=fkl_zone_alpha, cuts=cuts)
        return dataclasses.replace(self, alpha=alpha, zones=zones)

    def zone_weights(self, zones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w_fkl, w_rkl)`` per position of a zone map (:func:`sead.method.zones.zone_weights`) at this spec's step
        values; without zones every valid position is in the RKL zone of the ``"mix"`` composition (the anneal
        alone: ``alpha * FKL + (1 - alpha) * RKL``)."""
        z = self.zones
        if z is None:
            return zone_weights(zones, self.alpha, composition="mix")
        if z.composition == "paper":
            return zone_weights(zones, z.fkl_zone_alpha, z.fkl_zone_lambda, "paper")
        return zone_weights(zones, self.alpha, composition="mix", fkl_zone_alpha=z.fkl_zone_alpha)

    def normaliser(self, num_valid: float | torch.Tensor | None) -> float | torch.Tensor | None:
        """The loss's global denominator from the global count of valid tokens: that count, or, with zones and
        ``normalize="kept"``, the expected count of kept ones, ``num_valid * (1 - skip_fraction)`` (floored at
        ``1e-6`` of it). ``None`` stays ``None`` (each call then counts its own tokens)."""
        if num_valid is None:
            return None
        if self.zones is not None and self.normalize == "kept":
            return num_valid * max(1.0 - self.zones.skip_fraction, 1e-6)
        return num_valid

    @property
    def needs_token_ids(self) -> bool:
        """The sampled estimator and the sign gate read the sampled tokens ``y_t``."""
        return self.estimator == "sampled" or self.gate is not None

