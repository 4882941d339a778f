"""Who samples SG-OPD's teacher rollouts: a served teacher, a vLLM engine of the local teacher, or the local
teacher's HF ``generate`` (:class:`TeacherRollouts`, the ``sample`` of :class:`~sead.components.teacher_mix.TeacherMix`).

Seeds: a served teacher and a vLLM engine draw from their own generators, seeded from ``(seed, step, rank)``
(:func:`~sead.components.teacher_mix.step_seed`), so a resumed run draws the same; HF ``generate`` draws from
torch's global stream, which the checkpoint restores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sead.engines.hf import HFSampler
from sead.engines.sampling import Sampling, sample_ids
from sead.engines.vllm_engine import as_sampler, choose_backend, vllm_engine
from sead.utils.errors import SeadError

__all__ = ["RolloutSettings", "TeacherRollouts", "teacher_engine"]


@dataclass(frozen=True)
class RolloutSettings:
    """What the teacher draws for each picked prompt: ``num_generations`` rollouts (G) of at most ``max_tokens``
    tokens, at ``temperature``, with ``top_p`` / ``top_k`` (1.0 / 0: off)."""

    num_generations: int
    temperature: float
    max_tokens: int
    top_p: float = 1.0
    top_k: int = 0


def teacher_engine(source: str | None, backend: str, *, gpu_memory_utilization: float, num_processes: int,
                   max_model_len: int | None, seed: int):
    """A vLLM engine for the frozen teacher's rollouts, or ``None`` (HF ``generate``), as ``backend`` says
    (``teacher_generation_backend``: ``auto`` is vLLM only with CUDA). ``source``: the teacher's hub id or path."""
    if choose_backend(backend, field="teacher_generation_backend") != "vllm":
        return None
    if not source:
        raise SeadError(
            "teacher_generation_backend='vllm' needs the teacher's hub id or local path to build its engine: "
            "pass `teacher_model` as a string (or a model loaded with `from_pretrained`), or set "
            "`teacher_generation_backend: hf`."
        )
    return vllm_engine(
        source,
        dtype="bfloat16",  # the teacher is frozen: no weight sync, so any dtype vLLM runs would do
        gpu_memory_utilization=gpu_memory_utilization,
        # several training processes: each holds an engine of its own, launched by them (as TRL's colocate mode)
        distributed_executor_backend="external_launcher" if num_processes > 1 else None,
        max_model_len=max_model_len,
        seed=seed,
    )


class TeacherRollouts:
    """``rollouts(prompt_ids, prompt_mask, seed)``: ``G`` teacher rollouts per prompt, prompt-major, each cut after
    its first EOS, from the first of: ``served`` (a :class:`~sead.components.served.ServedTeacher`), ``engine`` (a
    vLLM engine or any sampler), ``local_teacher()`` (the unwrapped teacher, for HF ``generate`` in batches of
    ``batch_size`` sequences; ``vocab_rows``: ids it never samples past, a padded embedding matrix)."""

    def __init__(self, settings: RolloutSettings, *, eos_token_ids: Sequence[int], pad_token_id: int, served=None,
                 engine=None, local_teacher: Callable[[], torch.nn.Module] | None = None,
                 batch_size: int | None = None, vocab_rows: int | None = None):
        self.settings, self.eos_token_ids, self.pad_token_id = settings, list(eos_token_ids), pad_token_id
        self.served, self.engine, self.local_teacher = served, engine, local_teacher
        self.batch_size, self.vocab_rows = batch_size, vocab_rows

    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seed: int) -> list[list[int]]:
        s = self.settings
        if self.served is not None:
            return self.served.rollouts(prompt_ids, prompt_mask, seed, n=s.num_generations, temperature=s.temperature,
                                        max_tokens=s.max_tokens, top_p=s.top_p, top_k=s.top_k)  # fmt: skip
        if self.engine is not None:
            sampler = as_sampler(self.engine)
        else:
            sampler = HFSampler(self.local_teacher(), pad_token_id=self.pad_token_id, eos_token_ids=self.eos_token_ids,
                                batch_size=self.batch_size, vocab_rows=self.vocab_rows)  # fmt: skip
            seed = None
        sampling = Sampling(n=s.num_generations, max_new_tokens=s.max_tokens, temperature=s.temperature,
                            top_p=s.top_p, top_k=s.top_k, seed=seed)  # fmt: skip
        return sample_ids(sampler, prompt_ids, sampling, prompt_mask=prompt_mask, eos_token_ids=self.eos_token_ids,
                          pad_token_id=self.pad_token_id)  # fmt: skip
