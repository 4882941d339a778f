"""Batched sampling with Hugging Face ``generate``: one helper for eval, the difficulty pre-pass,
teacher rollouts and the demo. (vLLM paths live with their callers and fall back to this.)"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm


@torch.no_grad()
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
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    jobs = [(i, p) for i, p in enumerate(prompts) for _ in range(num_samples)]
    out: list[list[str]] = [[] for _ in prompts]
    gen_kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    bar = tqdm(
        total=len(jobs),
        desc=progress if isinstance(progress, str) else "generating",
        disable=not progress,
        unit="seq",
    )
    try:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            enc = tokenizer(
                [p for _, p in chunk], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            ids_BL = model.generate(**enc, **gen_kwargs)
            completions = tokenizer.batch_decode(
                ids_BL[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
            for (i, _), text in zip(chunk, completions):
                out[i].append(text)
            bar.update(len(chunk))
    finally:
        bar.close()
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return out
