"""The trainer's glue for a teacher served by vLLM (``teacher_server_url``): the client, faults, a checkpoint.

Mixin of :class:`sead.training.trainer.OPDTrainer`. The client and its checks are :mod:`sead.engines.teacher_server`; the loss over
the served log-probs is :func:`sead.losses.fused.fused_objective` with a :class:`~sead.losses.fused.SparseTeacher`
(:mod:`sead.training.loss_glue`). What lives here: connecting at start-up, one fault for every rank at once, SG-OPD's
cold-start rollouts from the server, and the checkpoint of the last completed step when the server fails.
"""

from __future__ import annotations

import copy
import os

import torch
from transformers import TrainerCallback

from sead.engines.sampling import trim_completion
from sead.engines.teacher_server import TeacherServer, TeacherServerError
from sead.engines.vllm_server import ServerError, sample_from_server
from sead.training.interrupt import _any_rank

__all__ = ["ServedTeacherGlue", "StepEndSnapshot"]


class StepEndSnapshot(TrainerCallback):
    """With a served teacher: the random states and the method's state at the end of the last optimizer step, so
    that a server fault in the next step saves the checkpoint that step's end would have saved (see
    ``OPDTrainer._checkpoint_after_server_fault``)."""

    def __init__(self, trainer):  # an OPDTrainer
        self.trainer = trainer
        self.snapshot = None

    def on_step_end(self, args, state, control, **kwargs):
        import random

        import numpy as np

        cuda = torch.cuda.random.get_rng_state_all() if torch.cuda.is_available() else None
        self.snapshot = {
            "step": state.global_step,
            "rng": (random.getstate(), np.random.get_state(), torch.random.get_rng_state(), cuda),
            "sead": copy.deepcopy(self.trainer.sead_state()),
        }

    def restore(self) -> bool:
        """Put back the snapshot of the current step; ``False`` if there is none."""
        import random

        import numpy as np

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


def connect_teacher_server(args, vocab: int, tokenizer=None, max_sequence_length: int | None = None) -> TeacherServer:
    """The served teacher's client for ``args`` (an ``OPDConfig`` with ``teacher_server_url``), checked: it answers,
    serves the model, holds ``max_sequence_length`` tokens, returns the ``min(teacher_server_top_k, vocab)``
    log-probs the run needs (``--max-logprobs``) and tokenizes like ``tokenizer``. Raises
    :class:`TeacherServerError` naming what to change. The built-in task calls it before its difficulty pre-pass,
    the trainer again before step 0."""
    server = TeacherServer(
        args.teacher_server_url,
        args.teacher_server_model,
        timeout=args.teacher_server_timeout,
        max_retries=args.teacher_server_max_retries,
        backoff=args.teacher_server_backoff,
        vocab_size=vocab,
    )
    server.wait_until_ready(args.teacher_server_startup_timeout)
    server.check(min(args.teacher_server_top_k, vocab), tokenizer=tokenizer, max_sequence_length=max_sequence_length)
    return server


class ServedTeacherGlue:
    """Mixin of :class:`sead.training.trainer.OPDTrainer` for ``teacher_server_url``."""

    def _connect_teacher_server(self) -> TeacherServer:
        """The served teacher's client, checked before any step (:func:`connect_teacher_server`)."""
        args = self.args
        vocab = int(self.model.config.get_text_config().vocab_size)
        self._served_top_k = min(args.teacher_server_top_k, vocab)
        limit = self.prompt_length_limit()
        return connect_teacher_server(
            args, vocab, self._tokenizer,
            max_sequence_length=None if limit is None else limit + int(self.max_completion_length or 0),
        )

    def _ask_teacher_server(self, fn, *args):
        """``fn(*args)`` (a teacher-server call), every rank learning whether any rank's call failed: then all of
        them raise :class:`TeacherServerError` at the same point, so none hangs in a collective."""
        failure = None
        try:
            result = fn(*args)
        except ServerError as err:  # the rollouts' client raises the generic one: the same fault for the trainer
            failure = err if isinstance(err, TeacherServerError) else TeacherServerError(str(err))
            result = None
        if _any_rank(failure is not None, self.accelerator.device):
            raise failure or TeacherServerError(
                f"the teacher server at {self.teacher_server.url} failed on another process (see its message)."
            )
        return result

    def _served_teacher_rollouts(self, prompt_ids, prompt_mask, G: int, seed: int) -> list[list[int]]:
        """SG-OPD's cold-start rollouts sampled by the served teacher: ``G`` per prompt, prompt-major, each cut
        after its first EOS; seeded from ``(seed, step, rank)`` so a resumed run draws the same."""
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        args = self.args
        top_p, top_k = args.teacher_sampling_filters()
        sampled = self._ask_teacher_server(
            lambda: sample_from_server(
                self.teacher_server.url, self.teacher_server.model, prompts, G, args.teacher_temperature,
                self.max_completion_length, seed, top_p=top_p, top_k=top_k, timeout=args.teacher_server_timeout,
                retries=args.teacher_server_max_retries, backoff=args.teacher_server_backoff,
                stop_token_ids=self.eos_token_ids, error=TeacherServerError,
            )
        )  # fmt: skip
        return [trim_completion(c, self.eos_token_ids, self._tokenizer.pad_token_id) for c in sampled]

    def _checkpoint_after_server_fault(self, err: TeacherServerError) -> TeacherServerError:
        """After the served teacher failed mid-step (on every rank at once, see ``_ask_teacher_server``): save the
        checkpoint of the last completed step, as its end would have saved it (weights, optimizer, schedule, the
        random states and method state of that moment: the failed step's partial work is dropped), and return the
        error to raise, naming the checkpoint. Nothing is saved when no step completed in this run."""
        step = int(self.state.global_step)
        if self._step_end_snapshot is None or not self._step_end_snapshot.restore():
            if step == 0:
                return TeacherServerError(f"{err} No optimizer step had completed: nothing was saved.")
            return TeacherServerError(
                f"{err} No step completed since this run resumed at step {step}: resume from that checkpoint again."
            )
        self._save_checkpoint(self.model_wrapped, trial=None)
        path = os.path.join(self._get_output_dir(trial=None), f"checkpoint-{step}")
        out = TeacherServerError(
            f"{err} Training stopped at step {step}; a checkpoint of that step was saved in {path}. Resume with "
            f"--resume_from_checkpoint {path} once the server answers."
        )
        out.checkpoint = path
        return out
