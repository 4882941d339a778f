"""What every training process must agree on: one flag over all ranks, every rank's rows."""

from __future__ import annotations

__all__ = ["any_rank", "exit_after_distributed_run", "gather_rows"]


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


def exit_after_distributed_run(code: int = 0) -> None:
    """Leave a finished process of a multi-process run without the interpreter's C++ teardown.

    Call it last, once every output is written and the process group destroyed. Left to the normal exit, a rank
    of a finished gloo run sometimes aborts ("terminate called without an active exception": a worker thread still
    joinable when its static object is destroyed), and the launcher then reports the whole run as failed. This
    flushes Python's streams and log handlers and ends the process with ``code`` (``os._exit``). One process: a
    no-op, so in-process callers (tests, notebooks) keep their interpreter."""
    import logging
    import os
    import sys

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        world = max(world, dist.get_world_size())
    if world <= 1:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
