"""What a resumed run needs beyond the Trainer's own checkpoint, so that it continues exactly.

The Trainer saves weights, optimizer, scheduler, random states and the step. The rest is either a pure function of
``(seed, global_step)`` (curriculum draws, teacher-mix picks, the schedules) or saved here: the method's own state
(the curriculum's gate and window, the counters) as ``sead_state.json`` in every checkpoint; the dataloader's
order per epoch (:class:`EpochSeededRepeatSampler`); and, with a served teacher, the state at the end of the last
completed step (:class:`StepEndSnapshot`), which a server fault in the next step saves as that step's checkpoint
(:func:`checkpoint_after_server_fault`).
"""

from __future__ import annotations

import copy
import json
import os
import random
import warnings
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl.trainer.utils import RepeatSampler

from sead.engines.teacher_server import TeacherServerError
from sead.utils.errors import SeadError

__all__ = [
    "STATE_FILE",
    "EpochSeededRepeatSampler",
    "StepEndSnapshot",
    "checkpoint_after_server_fault",
    "read_state",
    "resume_point",
    "write_state",
]

STATE_FILE = "sead_state.json"


def write_state(checkpoint: str, state: dict[str, Any]) -> None:
    """The method's state into a checkpoint folder."""
    with open(os.path.join(checkpoint, STATE_FILE), "w") as f:
        json.dump(state, f)


def read_state(checkpoint: str) -> dict[str, Any] | None:
    """The method's state saved in a checkpoint folder; ``None`` when it has none. A folder that is not there, or a
    state that cannot be read, is refused naming it."""
    if not os.path.isdir(checkpoint):
        raise SeadError(f"resume_from_checkpoint: {checkpoint} is not a directory")
    path = os.path.join(checkpoint, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise SeadError(f"{path} could not be read ({err}); the checkpoint is damaged.") from err


def resume_point(resume_from_checkpoint, output_dir: str, trainer) -> str | bool | None:
    """The checkpoint a run resumes from (``True``: the last one in ``output_dir``), with the method's state loaded
    into ``trainer`` (``load_sead_state``). A checkpoint without that state warns when the run has a curriculum (it
    restarts from its first bucket; everything else is restored)."""
    if resume_from_checkpoint is True:
        resume_from_checkpoint = get_last_checkpoint(output_dir)
        if resume_from_checkpoint is None:
            raise SeadError(f"no checkpoint to resume from in {output_dir}")
    if isinstance(resume_from_checkpoint, str):
        state = read_state(resume_from_checkpoint)
        if state is not None:
            trainer.load_sead_state(state)
        elif trainer.curriculum is not None:
            warnings.warn(
                f"sead: {resume_from_checkpoint} has no {STATE_FILE}: the curriculum restarts from its first bucket "
                "(the rest of the training state is restored).",
                stacklevel=3,
            )
    return resume_from_checkpoint


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose shuffle order is a pure function of ``(seed, epoch)``.

    TRL's sampler draws each epoch's permutation from one generator seeded once, so a run resumed in
    epoch ``e > 0`` (a fresh sampler) would replay epoch 0's order instead of epoch ``e``'s. The
    Trainer calls ``set_epoch`` before each epoch (also on resume), which reseeds here: an interrupted
    and resumed run sees exactly the batches of the uninterrupted one.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle:
            self.generator = torch.Generator().manual_seed(int(self.seed or 0) * 1_000_003 + self.epoch)
        return super().__iter__()


class StepEndSnapshot(TrainerCallback):
    """With a served teacher: the random states and the method's state at the end of the last optimizer step, so
    that a server fault in the next step saves the checkpoint that step's end would have saved
    (:func:`checkpoint_after_server_fault`)."""

    def __init__(self, trainer):  # an OPDTrainer: its sead_state() / load_sead_state() and its step
        self.trainer = trainer
        self.snapshot = None

    def on_step_end(self, args, state, control, **kwargs):
        cuda = torch.cuda.random.get_rng_state_all() if torch.cuda.is_available() else None
        self.snapshot = {
            "step": state.global_step,
            "rng": (random.getstate(), np.random.get_state(), torch.random.get_rng_state(), cuda),
            "sead": copy.deepcopy(self.trainer.sead_state()),
        }

    def restore(self) -> bool:
        """Put back the snapshot of the current step; ``False`` if there is none."""
        snap = self.snapshot
        if snap is None or snap["step"] != self.trainer.state.global_step:
            return False
        py, npy, cpu, cuda = snap["rng"]
        random.setstate(py)
        np.random.set_state(npy)
        torch.random.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.random.set_rng_state_all(cuda)
        self.trainer.load_sead_state(snap["sead"])
        return True


def checkpoint_after_server_fault(trainer, snapshot: StepEndSnapshot | None, err: TeacherServerError):
    """After the served teacher failed mid-step (on every rank at once): save the checkpoint of the last completed
    step, as its end would have saved it (weights, optimizer, schedule, the random states and method state of that
    moment: the failed step's partial work is dropped), and return the error to raise, naming the checkpoint.
    Nothing is saved when no step completed in this run."""
    step = int(trainer.state.global_step)
    if snapshot is None or not snapshot.restore():
        if step == 0:
            return TeacherServerError(f"{err} No optimizer step had completed: nothing was saved.")
        return TeacherServerError(
            f"{err} No step completed since this run resumed at step {step}: resume from that checkpoint again."
        )
    trainer._save_checkpoint(trainer.model_wrapped, trial=None)
    path = os.path.join(trainer._get_output_dir(trial=None), f"checkpoint-{step}")
    out = TeacherServerError(
        f"{err} Training stopped at step {step}; a checkpoint of that step was saved in {path}. Resume with "
        f"--resume_from_checkpoint {path} once the server answers."
    )
    out.checkpoint = path
    return out
