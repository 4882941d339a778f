"""Graceful SIGTERM / SIGINT: finish the current step, save a checkpoint, stop. A preempted run loses
at most the step in flight; the caller exits with a documented status (``sead train``: 3)."""

from __future__ import annotations

import contextlib
import signal

from transformers import TrainerCallback

from sead.utils.distributed import any_rank

__all__ = ["GracefulInterrupt"]


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
        if any_rank(self.received is not None, getattr(args, "device", None)):
            control.should_save = True
            control.should_training_stop = True
        return control
