"""Graceful SIGTERM / SIGINT: finish the current step, save a checkpoint, stop. A preempted run loses
at most the step in flight; the caller exits with a documented status (``sead train``: 3)."""

from __future__ import annotations

import contextlib
import signal

from transformers import TrainerCallback

__all__ = ["GracefulInterrupt"]


def _any_rank(flag: bool, device=None) -> bool:
    """True on every rank when it is True on any: all ranks must save and stop at the same step.

    ``device``: where the collective runs (the training device: NCCL cannot reduce CPU tensors)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


class GracefulInterrupt(TrainerCallback):
    """Trainer callback: after a signal, the next step end asks the Trainer to save and stop.

    A second signal while saving is ignored (the save completes); use SIGKILL to abort hard.
    """

    def __init__(self):
        self.received: int | None = None

    def _handler(self, signum, frame):
        if self.received is None:
            self.received = signum

    @contextlib.contextmanager
    def installed(self, signals=(signal.SIGTERM, signal.SIGINT)):
        previous = {s: signal.signal(s, self._handler) for s in signals}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.received is not None, getattr(args, "device", None)):
            control.should_save = True
            control.should_training_stop = True
        return control
