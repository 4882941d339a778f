"""``generate_responses``: decoded samples from a Hugging Face model, kept for the built-in task and the demo.

A thin front of :mod:`sead.sampling` (where all of sead's generation lives): an :class:`~sead.sampling.HFSampler`
run through :func:`~sead.sampling.sample_texts`.
"""

from __future__ import annotations

from collections.abc import Sequence

from .sampling import Sampling, hf_sampler, sample_texts

__all__ = ["generate_responses"]


def generate_responses(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    progress: bool | str = False,
    seed: int | None = None,
) -> list[list[str]]:
    """Sample ``num_samples`` completions per prompt; ``temperature == 0`` means greedy.

    Returns one list of decoded completions (special tokens removed) per prompt, in prompt order.
    Prompts are left-padded in batches of ``batch_size`` (prompt x sample pairs). ``progress``
    shows a tqdm bar (a string is used as its description).
    """
    sampling = Sampling(
        n=num_samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    return sample_texts(hf_sampler(model, tokenizer, batch_size), tokenizer, prompts, sampling, progress=progress)
