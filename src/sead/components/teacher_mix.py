"""SG-OPD's phased teacher sampling (METHODS.md 2b): at the cold start, for a fraction ``rho`` of the prompts the
teacher samples ``G`` rollouts, and the first one the verifier accepts replaces the student's rollout.

Which prompts (:func:`teacher_mix_picks`) and the rollouts' seed (:func:`step_seed`) are pure functions of
``(seed, step, rank)``, so every rank makes the same teacher calls (a sharded teacher gathers its parameters
collectively) and a resumed run mixes exactly what the uninterrupted one did. How many prompts (``rho``) is
:meth:`sead.method.schedules.StepSchedules.rho`; who samples (a local HF teacher, a vLLM engine, a served
teacher) is the ``sample`` callable the trainer gives :class:`TeacherMix`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.utils import pad

from sead.components.teachers import TEACHER_INDEX_KEY

__all__ = ["MixResult", "TeacherMix", "replace_logged", "splice_rollouts", "step_seed", "teacher_mix_picks"]

#: ``sample(prompt_ids, prompt_mask, seed)``: ``G`` teacher rollouts per prompt, prompt-major, as token-id lists.
Sample = Callable[[torch.Tensor, torch.Tensor, int], list[list[int]]]
#: ``grade(rows, texts)``: the verifier's verdict per rollout (``rows``: the dataset rows, one per text).
Grade = Callable[[list[dict[str, Any]], list[str]], list[bool]]


def replace_logged(logged, texts: list[str]) -> None:
    """``log_completions``: TRL logged the student's rollouts before teacher mixing; replace the step's entries of
    its ``logged`` deque with ``texts``, this rank's mixed rollouts (every rank's are gathered, in rank order: call
    it on every rank), those trained on."""
    from accelerate.utils import gather_object

    texts = gather_object(texts)
    k = min(len(texts), len(logged))  # TRL's deque may hold fewer than a step's rollouts
    for _ in range(k):
        logged.pop()
    logged.extend(texts[len(texts) - k :])


def step_seed(seed: int, step: int) -> int:
    """The seed of one optimizer step's draws, ``seed * 7919 + step * 131``: the picks' count is drawn from it,
    their rows and the teacher's rollouts from it plus the rank."""
    return seed * 7919 + step * 131


def teacher_mix_picks(rho: float, n: int, *, seed: int, step: int, rank: int) -> list[int]:
    """Rows of a rank's ``n`` prompts offered teacher rollouts at ``step``: ``k = floor(rho * n + u)`` of them
    (``E[k] = rho * n``), chosen by a permutation.

    ``u ~ U[0, 1)`` is drawn from ``(seed, step)`` alone, so every rank (each with the same ``n``, TRL's generation
    batch) picks the same number ``k`` and all ranks make the same teacher ``generate`` calls or none: a sharded
    teacher (ZeRO-3, FSDP2) gathers its parameters collectively, and a rank that skipped generation would leave the
    others waiting. Which rows is drawn from ``(seed, step, rank)``. A pure function of its arguments, so a resumed run
    picks the same."""
    u = torch.rand((), generator=torch.Generator().manual_seed(step_seed(seed, step))).item()
    k = min(int(math.floor(rho * n + u)), n)
    if k <= 0:
        return []
    g = torch.Generator().manual_seed(step_seed(seed, step) + rank + 1_000_003)
    return torch.randperm(n, generator=g)[:k].tolist()


def splice_rollouts(output: dict[str, Any], completions: Sequence[Sequence[int]], mixed: Sequence[bool], *,
                    pad_token_id: int, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
    """``output`` (TRL's generation batch) with its completions replaced by ``completions`` (token-id lists, one per
    row; ``mixed``: the rows that are a teacher's), re-padded on the right. A teacher's row trains on every token
    (``tool_mask`` 1) and has no student-sampler log-probs (NaN: importance weight 1); other rows keep theirs."""
    device = output["completion_ids"].device
    ids = [torch.tensor(c, dtype=torch.long) for c in completions]
    output["completion_ids"] = pad(ids, padding_value=pad_token_id, padding_side="right",
                                   pad_to_multiple_of=pad_to_multiple_of).to(device)  # fmt: skip
    output["completion_mask"] = pad([torch.ones_like(c) for c in ids], padding_value=0, padding_side="right",
                                    pad_to_multiple_of=pad_to_multiple_of).to(device)  # fmt: skip
    if output.get("tool_mask") is not None:
        rows = [torch.ones(len(c), dtype=torch.long) if m else t[: len(c)].cpu()
                for c, m, t in zip(completions, mixed, output["tool_mask"])]  # fmt: skip
        output["tool_mask"] = pad(rows, padding_value=1, padding_side="right").to(device)
    if output.get("sampler_logprobs") is not None:
        width = output["completion_ids"].shape[1]
        q_BT = torch.full((len(ids), width), float("nan"), device=device)
        for i, (m, q) in enumerate(zip(mixed, output["sampler_logprobs"])):
            if not m:
                n = min(width, q.shape[0])
                q_BT[i, :n] = q[:n]
        output["sampler_logprobs"] = q_BT
    return output


@dataclass
class MixResult:
    """A step's batch after mixing: ``output`` (TRL's generation batch), ``correct`` (the verdict per row),
    ``mixed`` (the rows whose rollout is now a teacher's) and ``picks`` (the rows offered teacher rollouts: the
    same number on every rank)."""

    output: dict[str, Any]
    correct: list[bool]
    mixed: list[bool]
    picks: list[int]


class TeacherMix:
    """SG-OPD's cold start, for one rank. ``sample`` draws the teacher's rollouts, ``grade`` checks them,
    ``decode`` turns token ids into text; ``num_generations`` is ``G``."""

    def __init__(self, sample: Sample, grade: Grade, decode: Callable[[list[list[int]]], list[str]], *,
                 num_generations: int, seed: int, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.sample, self.grade, self.decode = sample, grade, decode
        self.num_generations, self.seed = int(num_generations), int(seed)
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    @torch.no_grad()
    def mix(self, inputs: list[dict[str, Any]], output: dict[str, Any], correct: list[bool], *, rho: float,
            step: int, rank: int) -> MixResult:
        """For the rows :func:`teacher_mix_picks` offers, ``G`` teacher rollouts each; the first one the verifier
        accepts replaces the student's rollout. No endorsed rollout: the student's stays."""
        n, G = len(inputs), self.num_generations
        picks = teacher_mix_picks(rho, n, seed=self.seed, step=step, rank=rank)
        mixed = [False] * n
        if not picks:  # the same on every rank (teacher_mix_picks): no rank generates alone
            return MixResult(output, correct, mixed, picks)
        prompt_ids, prompt_mask = output["prompt_ids"][picks], output["prompt_mask"][picks]
        routes = output.get(TEACHER_INDEX_KEY)  # several teachers: each prompt's own samples its rollouts
        seed = step_seed(self.seed, step) + rank
        candidates = (self.sample(prompt_ids, prompt_mask, seed) if routes is None
                      else self.sample(prompt_ids, prompt_mask, seed, routes=routes[picks]))  # fmt: skip
        verdicts = self.grade([inputs[i] for i in picks for _ in range(G)], self.decode(candidates))
        completions = [ids[m.bool()].tolist() for ids, m in zip(output["completion_ids"], output["completion_mask"])]
        for j, i in enumerate(picks):
            for k in range(G):
                if verdicts[j * G + k]:
                    completions[i] = candidates[j * G + k]
                    correct[i], mixed[i] = True, True
                    break
        if any(mixed):
            output = splice_rollouts(output, completions, mixed, pad_token_id=self.pad_token_id,
                                     pad_to_multiple_of=self.pad_to_multiple_of)  # fmt: skip
        return MixResult(output, correct, mixed, picks)
