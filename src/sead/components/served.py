"""A teacher served by vLLM (``teacher_server_url``), as the trainer uses it: connected and checked at start-up,
asked for a micro-batch's (or a step's) top-k log-probs, asked for SG-OPD's cold-start rollouts, and failing on
every process at once.

The client and its checks are :mod:`sead.engines.teacher_server`; the loss over the served log-probs is
:func:`sead.losses.fused.fused_objective` with a :class:`~sead.losses.fused.SparseTeacher`. A server fault is raised
as :class:`~sead.engines.teacher_server.TeacherServerError` on every process at the same point (none waits in a
collective); the trainer then saves the checkpoint of the last completed step (:mod:`sead.training.run_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from sead.engines.sampling import trim_completion
from sead.engines.teacher_server import TeacherServer, TeacherServerError
from sead.engines.vllm_server import ServerError, sample_from_server
from sead.losses.fused import SparseTeacher
from sead.utils.distributed import any_rank
from sead.utils.tensors import to_width

__all__ = ["SERVED_KEYS", "ServedTeacher", "connect_teacher_server", "served_from_batch", "served_rows"]

#: Keys of a served teacher's answers kept in TRL's generation batch (per row, so TRL's split keeps each row's).
SERVED_KEYS = ("served_topk_ids", "served_topk_logprobs", "served_sampled_logprobs")


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


def served_rows(answers: SparseTeacher, start: int, stop: int, width: int) -> SparseTeacher:
    """Rows ``start:stop`` of a whole batch's served answers, zero-padded to ``width`` positions (a micro-batch
    without completion tokens has one masked column; the zeros are never read)."""

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else to_width(t[start:stop], width)

    return SparseTeacher(rows(answers.token_ids), rows(answers.logprobs), rows(answers.sampled_logprobs))


def served_from_batch(inputs: dict[str, Any]) -> SparseTeacher | None:
    """The served answers a batch holds (fetched with the step's zone pass), or ``None``."""
    if all(key in inputs for key in SERVED_KEYS):
        return SparseTeacher(*(inputs[key] for key in SERVED_KEYS))
    return None


class ServedTeacher:
    """The trainer's served teacher: ``server`` (checked), ``top_k`` log-probs per position, ``device``: where the
    processes agree on faults; ``eos_token_ids`` / ``pad_token_id`` cut its rollouts."""

    def __init__(self, server: TeacherServer, top_k: int, *, device=None, eos_token_ids: Sequence[int] = (),
                 pad_token_id: int | None = None, timeout: float, retries: int, backoff: float, prefetch: bool = True):
        self.server, self.top_k, self.device, self.prefetching = server, int(top_k), device, bool(prefetch)
        self.eos_token_ids, self.pad_token_id = list(eos_token_ids), pad_token_id
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._pool, self._pending = None, None  # prefetch: one background request at a time

    @classmethod
    def connect(cls, args, vocab: int, tokenizer, max_sequence_length: int | None, *, device=None,
                eos_token_ids: Sequence[int] = ()) -> ServedTeacher:
        """The trainer's served teacher for ``args`` (an ``OPDConfig``), checked before any step
        (:func:`connect_teacher_server`), asking for ``min(teacher_server_top_k, vocab)`` log-probs per position."""
        server = connect_teacher_server(args, vocab, tokenizer, max_sequence_length=max_sequence_length)
        prefetch = args.teacher_server_prefetch
        if prefetch is None:  # on a GPU the server computes on its own hardware; on a CPU it shares the cores
            prefetch = device is not None and torch.device(device).type == "cuda"
        return cls(server, min(args.teacher_server_top_k, vocab), device=device, eos_token_ids=eos_token_ids,
                   pad_token_id=tokenizer.pad_token_id, timeout=args.teacher_server_timeout,
                   retries=args.teacher_server_max_retries, backoff=args.teacher_server_backoff,
                   prefetch=prefetch)  # fmt: skip

    def agreed(self, fn: Callable[..., Any], *args):
        """``fn(*args)`` (a call to the server), every process learning whether any process's call failed: then all
        of them raise :class:`TeacherServerError` at the same point, so none hangs in a collective."""
        failure = None
        try:
            result = fn(*args)
        except ServerError as err:  # the rollouts' client raises the generic one: the same fault for the trainer
            failure = err if isinstance(err, TeacherServerError) else TeacherServerError(str(err))
            result = None
        if any_rank(failure is not None, self.device):
            raise failure or TeacherServerError(
                f"the teacher server at {self.server.url} failed on another process (see its message)."
            )
        return result

    def sparse(self, inputs: dict[str, Any]) -> SparseTeacher:
        """One request for a micro-batch's (or a step's) served log-probs, shaped ``[B, T, k]`` / ``[B, T]``."""
        return self.agreed(
            self.server.sparse_teacher,
            inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"],
            self.top_k,
        )  # fmt: skip

    def prefetch(self, batch: dict[str, Any]) -> None:
        """Send the request for a whole generation batch's log-probs now, from a background thread, so that the
        server scores the step's rollouts while the trainer grades them and runs the student's zone-pass forward;
        :meth:`prefetched` collects the answers. The thread only talks HTTP: the processes agree on a fault when
        the answers are collected, on the main thread (call both on every process, at the same points). Nothing
        happens when prefetching is off (``teacher_server_prefetch``): the zone pass then asks per micro-batch."""
        from concurrent.futures import ThreadPoolExecutor

        if not self.prefetching:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sead-served-prefetch")
        tensors = [batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
        self._pending = self._pool.submit(self.server.sparse_teacher, *tensors, self.top_k)

    def prefetched(self) -> SparseTeacher | None:
        """The answers :meth:`prefetch` asked for (``[B, T, k]`` / ``[B, T]``), once every process has them (a fault
        on any raises :class:`TeacherServerError` on all), or ``None`` when nothing was prefetched."""
        pending, self._pending = self._pending, None
        return None if pending is None else self.agreed(pending.result)

    def rollouts(self, prompt_ids, prompt_mask, seed: int, *, n: int, temperature: float, max_tokens: int,
                 top_p: float = 1.0, top_k: int = 0) -> list[list[int]]:
        """SG-OPD's cold-start rollouts: ``n`` per prompt, prompt-major, each cut after its first EOS; seeded from
        ``(seed, step, rank)`` so a resumed run draws the same."""
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        sampled = self.agreed(
            lambda: sample_from_server(
                self.server.url, self.server.model, prompts, n, temperature, max_tokens, seed,
                top_p=top_p, top_k=top_k, timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                stop_token_ids=self.eos_token_ids, error=TeacherServerError,
            )
        )  # fmt: skip
        return [trim_completion(c, self.eos_token_ids, self.pad_token_id) for c in sampled]

    @staticmethod
    def keep(output: dict[str, Any], parts: list[SparseTeacher]) -> None:
        """Micro-batches' served answers as whole-batch tensors in ``output`` (rows padded to the widest), so the
        loss asks the server nothing more this step."""
        width = output["completion_ids"].shape[1]

        def cat(tensors, fill):
            return torch.cat([to_width(t, width, fill) for t in tensors])

        output[SERVED_KEYS[0]] = cat([s.token_ids for s in parts], 0)
        output[SERVED_KEYS[1]] = cat([s.logprobs for s in parts], 0.0)
        output[SERVED_KEYS[2]] = cat([s.sampled_logprobs for s in parts], 0.0)
