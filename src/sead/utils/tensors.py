"""Shaping per-position tensors of a batch (``[B, T, ...]``) to the batch's number of positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["to_width"]


def to_width(t_BT: torch.Tensor, width: int, value: float = 0.0) -> torch.Tensor:
    """``t_BT`` (``[B, T, ...]``) with exactly ``width`` positions along dim 1: cut on the right, or padded on the
    right with ``value``. Unchanged when it has ``width`` already."""
    n = t_BT.shape[1]
    if n == width:
        return t_BT
    if n > width:
        return t_BT[:, :width]
    return F.pad(t_BT, (0, 0) * (t_BT.dim() - 2) + (0, width - n), value=value)
