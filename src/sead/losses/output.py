"""The result object shared by the full-logits and the fused losses, and what of it a trainer logs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sead.method.zones import FKL, MASKED, RKL, SKIP


@dataclass
class SeadLossOutput:
    """``loss``: scalar (differentiable w.r.t. the student). ``zones``: LongTensor like the mask
    (0 skip, 1 RKL, 2 FKL, -1 masked). ``per_token``: loss per position before normalisation
    (0 where masked or skipped). ``stats``: floats for logging (zone fractions, mean entropies,
    mean loss per zone, number of valid and kept positions)."""

    loss: torch.Tensor
    zones: torch.Tensor
    per_token: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


def zone_stats(
    zones: torch.Tensor, h_t: torch.Tensor, h_s: torch.Tensor, per_token: torch.Tensor
) -> dict[str, float]:
    """Logging summary. Entropies and per-token losses are given at every position of ``zones``."""
    valid = zones != MASKED
    n_valid = int(valid.sum())
    stats: dict[str, float] = {"num_valid": float(n_valid), "num_kept": float((zones > SKIP).sum())}
    denom = max(n_valid, 1)
    stats["mean_h_t"] = float(h_t.detach()[valid].double().sum()) / denom
    stats["mean_h_s"] = float(h_s.detach()[valid].double().sum()) / denom
    for name, code in (("skip", SKIP), ("rkl", RKL), ("fkl", FKL)):
        in_zone = zones == code
        count = int(in_zone.sum())
        stats[f"frac_{name}"] = count / denom
        stats[f"loss_{name}"] = float(per_token.detach()[in_zone].double().sum()) / max(count, 1)
    return stats


def loss_metrics(stats: dict[str, float], *, zones: bool, alpha: float | None = None) -> dict[str, float]:
    """The logged values of one loss call: mean entropies, zone fractions and per-zone losses (with zones; the RKL
    zone's loss otherwise), the anneal weight ``alpha`` when given, SG-OPD's consensus fraction when present."""
    out = {} if alpha is None else {"sead/alpha": alpha}
    out["sead/mean_h_t"], out["sead/mean_h_s"] = stats["mean_h_t"], stats["mean_h_s"]
    if zones:
        out.update({f"sead/frac_{zone}": stats[f"frac_{zone}"] for zone in ("skip", "rkl", "fkl")})
    out.update({f"sead/loss_{zone}": stats[f"loss_{zone}"] for zone in (("rkl", "fkl") if zones else ("rkl",))})
    if "consensus_frac" in stats:
        out["sgopd/consensus_frac"] = stats["consensus_frac"]
    return out
