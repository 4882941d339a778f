"""SEAD token zones (METHODS.md 1a): where the skip / reverse-KL / forward-KL zones are decided."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SKIP",
    "RKL",
    "FKL",
    "MASKED",
    "ZONE_COMPOSITIONS",
    "ZoneThresholds",
    "sead_zones",
    "zone_fractions",
    "zone_thresholds",
    "zones_from_thresholds",
    "zone_weights",
]

SKIP, RKL, FKL, MASKED = 0, 1, 2, -1


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def sead_zones(
    teacher_entropy: torch.Tensor,
    student_entropy: torch.Tensor,
    mask: torch.Tensor,
    teacher_quantile: float = 0.9,
    skip_fraction: float = 0.5,
) -> torch.Tensor:
    """Split valid positions into zones from joint teacher/student entropy.

    With ``N`` valid positions (``mask != 0``):

    - FKL (2): ``H_T >= quantile(H_T[valid], teacher_quantile)``: the teacher is uncertain, several
      continuations are fine: mass-covering forward KL.
    - skip (0): among the other valid positions, the ``floor(skip_fraction * N)`` with the lowest
      ``H_S`` (all of them if fewer remain): both models confident, zero gradient.
    - RKL (1): the rest: teacher confident, student unsure: mode-seeking reverse KL.
    - -1 where ``mask == 0``.

    Ties in ``H_S`` are broken by position (stable sort), so the result is deterministic.
    Returns a LongTensor shaped like ``mask``.
    """
    _check_fraction("teacher_quantile", teacher_quantile)
    _check_fraction("skip_fraction", skip_fraction)
    if teacher_entropy.shape != mask.shape or student_entropy.shape != mask.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must match teacher_entropy {tuple(teacher_entropy.shape)} "
            f"and student_entropy {tuple(student_entropy.shape)}"
        )
    for name, h in (("teacher_entropy", teacher_entropy), ("student_entropy", student_entropy)):
        if not torch.isfinite(h[mask != 0]).all():
            raise ValueError(f"{name} contains NaN or inf at valid positions")

    valid_M = (mask != 0).reshape(-1)
    zones_M = torch.full(valid_M.shape, MASKED, dtype=torch.long, device=mask.device)
    n_valid = int(valid_M.sum())
    if n_valid == 0:
        return zones_M.view(mask.shape)

    h_t_N = teacher_entropy.reshape(-1)[valid_M].detach().double()
    h_s_N = student_entropy.reshape(-1)[valid_M].detach().double()
    threshold = torch.quantile(h_t_N, teacher_quantile)
    zone_N = torch.full((n_valid,), RKL, dtype=torch.long, device=mask.device)
    is_fkl_N = h_t_N >= threshold
    zone_N[is_fkl_N] = FKL

    rest_R = (~is_fkl_N).nonzero().squeeze(-1)
    n_skip = min(int(skip_fraction * n_valid), rest_R.numel())
    if n_skip > 0:
        order_R = torch.sort(h_s_N[rest_R], stable=True).indices
        zone_N[rest_R[order_R[:n_skip]]] = SKIP

    zones_M[valid_M] = zone_N
    return zones_M.view(mask.shape)


@dataclass(frozen=True)
class ZoneThresholds:
    """Zone cuts decided once over a wider scope (e.g. every valid token of an optimizer step, :func:`zone_thresholds`)
    and applied to each micro-batch (:func:`zones_from_thresholds`).

    ``teacher_entropy``: FKL zone iff ``H_T >= teacher_entropy``. ``student_entropy_cut``: of the other
    tokens, skip iff ``H_S <= student_entropy_cut`` (``-inf``: none skipped)."""

    teacher_entropy: float
    student_entropy_cut: float


def _valid_entropies(teacher_entropy, student_entropy, mask):
    if teacher_entropy.shape != student_entropy.shape:
        raise ValueError(
            f"teacher_entropy shape {tuple(teacher_entropy.shape)} != student_entropy shape {tuple(student_entropy.shape)}"
        )
    if mask is not None and mask.shape != teacher_entropy.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must match the entropies' {tuple(teacher_entropy.shape)}")
    h_t, h_s = teacher_entropy.detach().reshape(-1).double(), student_entropy.detach().reshape(-1).double()
    if mask is not None:
        keep = mask.reshape(-1) != 0
        h_t, h_s = h_t[keep], h_s[keep]
    for name, h in (("teacher_entropy", h_t), ("student_entropy", h_s)):
        if not torch.isfinite(h).all():
            raise ValueError(f"{name} contains NaN or inf at valid positions")
    return h_t, h_s


def _between(below: torch.Tensor, above: torch.Tensor) -> float:
    """A cut strictly above ``below`` and at most ``above`` (``below < above``): their midpoint, or ``above``
    itself when the two are adjacent floats."""
    lo, hi = float(below), float(above)
    mid = lo + (hi - lo) / 2
    return mid if lo < mid <= hi else hi


def zone_thresholds(
    teacher_entropy: torch.Tensor,
    student_entropy: torch.Tensor,
    mask: torch.Tensor | None = None,
    teacher_quantile: float = 0.9,
    skip_fraction: float = 0.5,
) -> ZoneThresholds:
    """The cuts that make :func:`zones_from_thresholds` reproduce :func:`sead_zones` on these (pooled) tokens.

    Over the ``N`` valid tokens (``mask != 0``; all of them without a mask), exactly as ``sead_zones``:

    - FKL zone: the tokens with ``H_T >= quantile(H_T, teacher_quantile)`` (linear interpolation);
    - skip zone: of the others, the ``n_skip = min(floor(skip_fraction * N), #others)`` with the lowest ``H_S``.

    Each cut lies midway between the last token in and the first token out (``teacher_entropy`` between the
    largest ``H_T`` below the FKL zone and the smallest in it, ``-inf`` when every token is in it;
    ``student_entropy_cut`` between the ``n_skip``-th and the ``(n_skip + 1)``-th smallest ``H_S`` of the others,
    ``-inf`` when ``n_skip = 0``, ``+inf`` when all of them are skipped), so that the same tokens are selected
    when a micro-batch's entropies differ from the pooled ones by rounding (a pre-pass that chunks rows
    differently changes the matmul's last bits).

    Applied to each micro-batch of the pool, exactly ``n_skip`` tokens are skipped over the pool, i.e. the
    fraction ``floor(skip_fraction * N) / N`` of its valid tokens (capped by the non-FKL count), unless other
    non-FKL tokens have an ``H_S`` exactly equal to the ``n_skip``-th: ties at the cut are all skipped
    (``sead_zones`` breaks them by position within its batch). Empty pool: ``(inf, -inf)``, which puts no
    token in the FKL or skip zone.
    """
    _check_fraction("teacher_quantile", teacher_quantile)
    _check_fraction("skip_fraction", skip_fraction)
    h_t, h_s = _valid_entropies(teacher_entropy, student_entropy, mask)
    n = h_t.numel()
    if n == 0:
        return ZoneThresholds(math.inf, -math.inf)
    threshold = torch.quantile(h_t, teacher_quantile)
    is_fkl = h_t >= threshold
    below = h_t[~is_fkl]
    t_cut = -math.inf if below.numel() == 0 else _between(below.max(), h_t[is_fkl].min())
    rest = torch.sort(h_s[~is_fkl]).values
    n_skip = min(int(skip_fraction * n), rest.numel())
    if n_skip == 0:
        s_cut = -math.inf
    elif n_skip == rest.numel():
        s_cut = math.inf
    elif rest[n_skip - 1] == rest[n_skip]:
        s_cut = float(rest[n_skip - 1])  # a tie at the cut: all tied tokens are skipped
    else:
        s_cut = _between(rest[n_skip - 1], rest[n_skip])
        if s_cut >= float(rest[n_skip]):  # adjacent floats: keep the first one out
            s_cut = float(rest[n_skip - 1])
    return ZoneThresholds(t_cut, s_cut)


def zones_from_thresholds(
    teacher_entropy: torch.Tensor, student_entropy: torch.Tensor, mask: torch.Tensor, thresholds: ZoneThresholds
) -> torch.Tensor:
    """Zones from precomputed cuts (:func:`zone_thresholds`): FKL (2) iff ``H_T >= teacher_entropy``; else
    skip (0) iff ``H_S <= student_entropy_cut``; else RKL (1); -1 where ``mask == 0``."""
    if teacher_entropy.shape != mask.shape or student_entropy.shape != mask.shape:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must match teacher_entropy {tuple(teacher_entropy.shape)} "
            f"and student_entropy {tuple(student_entropy.shape)}"
        )
    if not isinstance(thresholds, ZoneThresholds):
        raise ValueError(f"zone_thresholds must be a sead.method.zones.ZoneThresholds, got {type(thresholds).__name__}")
    valid = mask != 0
    _valid_entropies(teacher_entropy, student_entropy, mask)
    h_t, h_s = teacher_entropy.detach().double(), student_entropy.detach().double()
    is_fkl = h_t >= thresholds.teacher_entropy
    zones = torch.where(is_fkl, FKL, torch.where(h_s <= thresholds.student_entropy_cut, SKIP, RKL))
    return torch.where(valid, zones, MASKED).long()


def zone_fractions(zones: torch.Tensor) -> dict[str, float]:
    """Fractions of valid positions in each zone (0 when there is no valid position)."""
    n = max(int((zones != MASKED).sum()), 1)
    return {
        "skip": float((zones == SKIP).sum()) / n,
        "rkl": float((zones == RKL).sum()) / n,
        "fkl": float((zones == FKL).sum()) / n,
    }


#: How the zones compose with the anneal (METHODS.md 1b): ``"paper"`` (the paper's loss, the default) or ``"mix"``
#: (our earlier reading, which the 2026-12-03 benchmarks ran).
ZONE_COMPOSITIONS = ("paper", "mix")


def zone_weights(
    zones: torch.Tensor,
    alpha: float,
    lam: float = 1.0,
    composition: str = "paper",
    fkl_zone_alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """How each zone weighs the two directions (METHODS.md 1b).

    Returns per-position weights ``(w_fkl, w_rkl)``; the token loss is ``w_fkl * KL(p_T || p_S) + w_rkl *
    KL(p_S || p_T)``. With ``composition="paper"`` (the paper's loss,
    ``1/|B u C| * (sum_B RKL_t + alpha * lam * sum_C FKL_t)``):

    - FKL zone ``(alpha * lam, 0)``: forward KL weighted by the annealed ``alpha`` (fading to 0) and ``lam``;
    - RKL zone ``(0, 1)``: pure reverse KL all along;
    - skip and masked ``(0, 0)``.

    With ``composition="mix"`` (our earlier reading): FKL zone ``(fkl_zone_alpha, 1 - fkl_zone_alpha)`` (forward
    KL at weight 1 unless the ``fkl_zone_anneal`` ablation anneals it), RKL zone ``(alpha, 1 - alpha)``, the
    annealed mix; ``lam`` is unused. Every token of a run without zones is in the RKL zone of the ``"mix"``
    composition (the anneal alone: ``alpha * FKL + (1 - alpha) * RKL``).
    """
    if composition not in ZONE_COMPOSITIONS:
        raise ValueError(f"composition must be one of {list(ZONE_COMPOSITIONS)}, got {composition!r}")
    for name, value in (("alpha", alpha), ("fkl_zone_alpha", fkl_zone_alpha)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if not float(lam) >= 0.0:
        raise ValueError(f"fkl_zone_lambda must be >= 0, got {lam}")
    is_fkl, is_rkl = (zones == FKL).double(), (zones == RKL).double()
    if composition == "paper":
        return float(alpha) * float(lam) * is_fkl, is_rkl
    w_fkl = fkl_zone_alpha * is_fkl + alpha * is_rkl
    w_rkl = (1.0 - fkl_zone_alpha) * is_fkl + (1.0 - alpha) * is_rkl
    return w_fkl, w_rkl


def loss_normalizer(
    zones: torch.Tensor, normalize: str, num_items: float | torch.Tensor | None
) -> torch.Tensor:
    """Denominator of the loss: ``num_items`` when given (the caller's global token count), otherwise
    the local count of kept positions (``normalize="kept"``, default, *assumed*) or of all valid
    positions (``"all"``), at least 1."""
    if normalize not in ("kept", "all"):
        raise ValueError(f"normalize must be 'kept' or 'all', got {normalize!r}")
    if num_items is not None:
        n = torch.as_tensor(num_items, dtype=torch.float64)
        if not n > 0:
            raise ValueError(f"num_items must be > 0, got {float(n)}")
        return n
    counted = (zones > SKIP) if normalize == "kept" else (zones != MASKED)
    return counted.sum().double().clamp(min=1.0)
