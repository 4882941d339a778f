"""Sampling K completions per prompt from any engine: what to draw, and running a sampler.

The one place where sead samples rollouts outside TRL's own generation. Its callers: SG-OPD's teacher rollouts in
the trainer (token ids in and out, ``n = G``), the difficulty pre-pass (:mod:`sead.data.difficulty`), evaluation
(``sead eval``) and the built-in tasks (text in and out).

- :class:`Sampling`: what to draw (``n`` per prompt, temperature (0: greedy), top-p, top-k, length, seed).
- A :class:`Sampler` turns prompt token ids into completion token ids, ``n`` per prompt, prompt-major (the order
  of ``prompt_ids.repeat_interleave(n, 0)``): :class:`sead.engines.hf.HFSampler` (``model.generate``),
  :class:`sead.engines.vllm_engine.VLLMSampler` (a ``vllm.LLM``) and
  :class:`sead.engines.vllm_server.ServerSampler` (``/v1/completions`` of an OpenAI-compatible vLLM server).
- :func:`sample_ids` (token ids, as the trainer holds them; each completion cut after its first EOS) and
  :func:`sample_texts` (strings, decoded without special tokens) run any sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["Sampler", "Sampling", "eos_ids", "sample_ids", "sample_texts", "trim_completion"]

@dataclass(frozen=True)
class Sampling:
    """What to draw for each prompt.

    Args:
        n: completions per prompt (>= 1).
        max_new_tokens: generation length limit (>= 1).
        temperature: 0 is greedy decoding (argmax); otherwise softmax(logits / temperature).
        top_p: nucleus sampling, in (0, 1]; 1 is off.
        top_k: keep the k most likely tokens; 0 is off.
        seed: seeds the draw (HF: ``torch.manual_seed`` before generating; vLLM: the request's own generator).
            ``None`` leaves the random state alone (HF: torch's global stream).
    """

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n (samples per prompt) must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler(Protocol):
    """Anything that turns prompts (token ids) into ``sampling.n`` completions each, prompt-major, as token ids
    (not yet cut after EOS: :func:`sample_ids` does that)."""

    def sample_ids(
        self, prompt_ids: list[list[int]], sampling: Sampling, progress: bool | str = False
    ) -> list[list[int]]: ...


def trim_completion(ids: Sequence[int], eos_token_ids: Sequence[int], pad_token_id: int | None = None) -> list[int]:
    """Cut after the first EOS (kept); without one, drop padding (unless padding is an EOS id)."""
    eos = set(eos_token_ids)
    for pos, tok in enumerate(ids):
        if tok in eos:
            return list(ids[: pos + 1])
    if pad_token_id is not None and pad_token_id not in eos:
        return [t for t in ids if t != pad_token_id]
    return list(ids)


def sample_ids(
    sampler: Sampler,
    prompt_ids: Sequence[Sequence[int]] | torch.Tensor,
    sampling: Sampling,
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int | None = None,
    prompt_mask: torch.Tensor | None = None,
    progress: bool | str = False,
) -> list[list[int]]:
    """``sampling.n`` completions (token ids) per prompt, prompt-major, each cut after its first EOS.

    ``prompt_ids``: one list of token ids per prompt, or a left-padded ``[B, L]`` tensor with its
    ``prompt_mask`` (the padding is dropped before sampling).
    """
    if isinstance(prompt_ids, torch.Tensor):
        mask = torch.ones_like(prompt_ids) if prompt_mask is None else prompt_mask
        prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), mask.cpu())]
    prompts = [[int(t) for t in ids] for ids in prompt_ids]
    if not prompts:
        return []
    seqs = sampler.sample_ids(prompts, sampling, progress)
    if len(seqs) != len(prompts) * sampling.n:
        raise RuntimeError(f"the sampler returned {len(seqs)} completions; expected {len(prompts)} x {sampling.n}")
    return [trim_completion(s, eos_token_ids, pad_token_id) for s in seqs]


def eos_ids(tokenizer, model=None) -> list[int]:
    """The tokenizer's EOS id and those of the model's ``generation_config`` (chat models often stop on
    several), in that order, without repeats."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for t in [config_eos] if isinstance(config_eos, int) else list(config_eos or []):
        if int(t) not in ids:
            ids.append(int(t))
    return ids


def sample_texts(
    sampler: Sampler,
    tokenizer,
    prompts: Sequence[str],
    sampling: Sampling,
    *,
    eos_token_ids: Sequence[int] | None = None,
    progress: bool | str = False,
) -> list[list[str]]:
    """``sampling.n`` decoded completions (special tokens removed) per prompt, in prompt order.

    Prompts are tokenized as they are (``add_special_tokens=False``: a chat template or a BOS is already in
    the text when it should be), so every backend sees the same token ids. ``eos_token_ids``: the sampler's
    own (an :class:`HFSampler`'s), else the tokenizer's EOS.
    """
    if eos_token_ids is None:
        eos_token_ids = getattr(sampler, "eos_token_ids", None) or eos_ids(tokenizer)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id
    seqs = sample_ids(sampler, ids, sampling, eos_token_ids=eos_token_ids, pad_token_id=pad, progress=progress)
    texts = tokenizer.batch_decode(seqs, skip_special_tokens=True) if seqs else []
    return [texts[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompts))]
