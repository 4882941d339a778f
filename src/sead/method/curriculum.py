"""SEAD's competence-gated curriculum (METHODS.md 1c): prompts open from easy to hard.

Difficulty ``d_i = 1 - p_i`` (``p_i``: pass rate of the initial student over K rollouts), in [0, 1].
The gate ``c(t)`` steps through the difficulty quantiles ``c_k = quantile(d, (k + 1) / B)``,
``k = 0..B-1``: it starts at ``c_0`` and moves to the next quantile when the verifier pass rate of
the student's recent rollouts (a window of ``window`` rollouts) exceeds ``threshold`` *(rule
assumed)*. A floor schedule opens the quantile ``t / (f T)`` at step ``t``, so every prompt is open by
the fraction ``f`` of training. Only prompts with ``d_i <= c(t)`` are sampled.

Pacing knobs beyond that reading (all off by default; docs/methods.md, "The curriculum's pacing"):

- ``threshold_mode="relative"``: the next bucket opens when the window's pass rate exceeds ``s_k + margin``, where
  ``s_k`` is the open pool's starting pass rate: the pass rate of the first full window of rollouts after bucket
  ``k`` opened (the student's own rollouts, at the training temperature), so a pool that starts hard needs a gain,
  not an absolute level;
- ``online=True``: difficulty re-estimated from the rollouts' own verdicts,
  ``d_i <- (1 - ema) * d_i + ema * (1 - correct)`` for each rollout of prompt ``i`` (the paper's stated limit is
  a static difficulty); the quantiles follow the current values.

Draws are a pure function of ``(seed, step)`` and the gate, so every rank draws the same global
batch and a resumed run draws exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import torch

__all__ = ["THRESHOLD_MODES", "CompetenceCurriculum"]

THRESHOLD_MODES = ("absolute", "relative")


class CompetenceCurriculum:
    """Gate state plus a sampler that serves only open prompts.

    Args:
        difficulties: one value in [0, 1] per dataset row.
        threshold: pass rate over the window that opens the next difficulty quantile.
        window: number of recent rollouts in the running pass-rate window.
        num_buckets: number of difficulty quantiles ``B`` the gate steps through.
        full_open_fraction: fraction ``f`` of training by which every prompt is open.
        seed: base seed of the draws.
        threshold_mode: ``"absolute"`` (``threshold``) or ``"relative"`` (``s_k + margin``).
        margin: the gain over the open pool's starting pass rate that opens the next bucket (``"relative"``).
        online: re-estimate each prompt's difficulty from its rollouts' verdicts (an EMA with weight ``ema``).
        ema: weight of the newest verdict in the online estimate.
    """

    def __init__(
        self,
        difficulties: Sequence[float] | torch.Tensor,
        *,
        threshold: float = 0.6,
        window: int = 64,
        num_buckets: int = 4,
        full_open_fraction: float = 0.8,
        seed: int = 0,
        column: str = "difficulty",
        threshold_mode: str = "absolute",
        margin: float = 0.05,
        online: bool = False,
        ema: float = 0.5,
    ):
        if not isinstance(difficulties, torch.Tensor):
            values = list(difficulties)
            for row, value in enumerate(values):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    try:
                        value = float(value)
                    except (TypeError, ValueError):
                        raise ValueError(
                            f"column `{column}` must hold difficulties in [0, 1] (1 - pass rate); row {row} has "
                            f"{value!r}. Recompute it with `sead difficulty`."
                        ) from None
                    values[row] = value
            difficulties = values
        d = torch.as_tensor(difficulties, dtype=torch.float64).reshape(-1)
        if d.numel() == 0:
            raise ValueError(f"the curriculum needs at least one prompt; the `{column}` column is empty")
        bad = (~torch.isfinite(d)) | (d < 0) | (d > 1)
        if bad.any():
            first = int(bad.nonzero()[0])
            raise ValueError(
                f"column `{column}` must hold difficulties in [0, 1] (1 - pass rate); row {first} has {float(d[first])}. "
                "Recompute it with `sead difficulty`."
            )
        if num_buckets < 1 or window < 1:
            raise ValueError("num_buckets and window must be >= 1")
        if threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"competence_threshold_mode must be one of {list(THRESHOLD_MODES)}, got {threshold_mode!r}")
        for name, value in (("competence_margin", margin), ("curriculum_difficulty_ema", ema)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.threshold_mode, self.margin, self.online, self.ema = threshold_mode, float(margin), bool(online), float(ema)
        self.start_rate: float | None = None  # s_k of the relative threshold (None until the first full window)
        self.difficulties = d.clone() if self.online else d  # online updates must not write into the caller's tensor
        self.threshold = float(threshold)
        self.window_size = int(window)
        self.num_buckets = int(num_buckets)
        self.full_open_fraction = float(full_open_fraction)
        self.seed = int(seed)
        self._sorted = torch.sort(d).values
        self.bucket = 0
        self.window: deque[bool] = deque(maxlen=self.window_size)

    # ---- the gate -------------------------------------------------------------------------------
    def _quantile(self, fraction: float) -> float:
        """Smallest difficulty value such that at least ``fraction`` of the prompts are at or below it."""
        n = self._sorted.numel()
        k = min(max(math.ceil(fraction * n) - 1, 0), n - 1)
        return float(self._sorted[k])

    def current_threshold(self) -> float:
        """The pass rate the window must exceed to open the next bucket (``"relative"``: infinite until the open
        pool's starting pass rate is measured)."""
        if self.threshold_mode == "absolute":
            return self.threshold
        return math.inf if self.start_rate is None else self.start_rate + self.margin

    def gate(self, step: int, total_steps: int) -> float:
        """``c(t) = max(c_bucket, floor(t))``; prompts with difficulty ``<= c(t)`` are open."""
        competence_gate = self._quantile((self.bucket + 1) / self.num_buckets)
        horizon = self.full_open_fraction * total_steps
        floor_fraction = 1.0 if horizon <= 0 else min(1.0, max(step, 0) / horizon)
        floor_gate = self._quantile(floor_fraction) if floor_fraction > 0 else -math.inf
        return max(competence_gate, floor_gate)

    def open_indices(self, step: int, total_steps: int) -> torch.Tensor:
        """Indices of the open prompts at ``step`` (never empty: the lowest quantile is always open)."""
        return (self.difficulties <= self.gate(step, total_steps)).nonzero().squeeze(-1)

    def update(self, correct: Sequence[bool], indices: Sequence[int] | None = None) -> bool:
        """Add verifier results of the latest rollouts (of prompts ``indices``, which ``online`` needs); open the
        next quantile when the full window's pass rate exceeds the threshold. Returns whether the gate moved.
        Without ``online`` the indices are not read."""
        correct = [bool(c) for c in correct]
        if self.online:
            if indices is None or len(indices) != len(correct) or any(i is None for i in indices):
                raise ValueError("the online difficulty needs each verdict's prompt index (indices, one per verdict)")
            for i, c in zip(indices, correct):
                self.difficulties[i] = (1.0 - self.ema) * self.difficulties[i] + self.ema * (0.0 if c else 1.0)
            self._sorted = torch.sort(self.difficulties).values
        self.window.extend(correct)
        full = len(self.window) >= self.window_size
        if full and self.start_rate is None and self.threshold_mode == "relative":
            self.start_rate = self.pass_rate  # s_k: the first full window on this pool
            return False
        if full and self.pass_rate > self.current_threshold() and self.bucket < self.num_buckets - 1:
            self.bucket, self.start_rate = self.bucket + 1, None
            self.window.clear()
            return True
        return False

    @property
    def pass_rate(self) -> float:
        return sum(self.window) / len(self.window) if self.window else 0.0

    # ---- the sampler ----------------------------------------------------------------------------
    def draw(self, step: int, total_steps: int, batch_size: int, repeat: int = 1) -> list[int]:
        """A global batch of prompt indices, all open at ``step``: without replacement when the open
        pool is large enough, otherwise every open prompt then repeats. ``repeat``: ``batch_size / repeat``
        prompts, each ``repeat`` times in a row (several rollouts per prompt)."""
        if repeat < 1 or batch_size % repeat:
            raise ValueError(f"repeat ({repeat}) must divide the batch ({batch_size})")
        if repeat > 1:
            return [i for i in self.draw(step, total_steps, batch_size // repeat) for _ in range(repeat)]
        pool = self.open_indices(step, total_steps)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        if pool.numel() >= batch_size:
            picks = pool[torch.randperm(pool.numel(), generator=g)[:batch_size]]
        else:
            reps = math.ceil(batch_size / pool.numel())
            order = torch.cat([torch.randperm(pool.numel(), generator=g) for _ in range(reps)])[:batch_size]
            picks = pool[order]
        return picks.tolist()

    # ---- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"bucket": self.bucket, "window": list(self.window), "start_rate": self.start_rate}
        if self.online:
            state["difficulties"] = self.difficulties.tolist()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.bucket = min(max(int(state["bucket"]), 0), self.num_buckets - 1)
        self.window = deque((bool(x) for x in state["window"]), maxlen=self.window_size)
        self.start_rate = state.get("start_rate")
        if self.online and state.get("difficulties") is not None:
            values = torch.as_tensor(state["difficulties"], dtype=torch.float64)
            if values.shape == self.difficulties.shape:
                self.difficulties = values
                self._sorted = torch.sort(values).values
