"""What every training process must agree on: one flag over all ranks, every rank's rows."""

from __future__ import annotations

__all__ = ["any_rank", "gather_rows"]


def any_rank(flag: bool, device=None) -> bool:
    """True on every rank when it is True on any (one process: ``flag`` itself). All ranks then take the same
    branch at the same point: save and stop, raise a served teacher's fault, and so on.

    ``device``: where the collective runs (the training device: NCCL cannot reduce CPU tensors)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def gather_rows(accelerator, rows_NC):
    """Every process's rows ``[n, C]``, concatenated in rank order (ranks may hold different numbers of rows; a row
    is never NaN in its first column). One process: the rows themselves."""
    import torch

    if accelerator.num_processes <= 1:
        return rows_NC
    padded = accelerator.pad_across_processes(rows_NC, dim=0, pad_index=float("nan"))
    gathered = accelerator.gather(padded)
    return gathered[~torch.isnan(gathered[:, 0])]
