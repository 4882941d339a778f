"""Hugging Face ``generate`` as a sampler, and loading a model and tokenizer for it.

:class:`HFSampler` draws exactly what a :class:`~sead.engines.sampling.Sampling` asks (a fresh
``GenerationConfig``), so it and the vLLM engine draw from one distribution. :func:`generate_responses` is the
short form the built-in tasks and the demo use: decoded samples from a loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sead.engines.sampling import Sampling, eos_ids, sample_texts
from sead.utils.errors import SeadError

__all__ = ["HFSampler", "generate_responses", "hf_sampler", "load_hf_model", "load_tokenizer"]


class HFSampler:
    """Hugging Face ``generate`` on left-padded batches of ``batch_size`` (prompt x sample) rows.

    The generation settings are exactly those of the :class:`Sampling` (a fresh ``GenerationConfig``: nothing
    from the model's own ``generation_config`` but what is passed here), so the HF and vLLM backends draw from
    the same distribution.
    """

    def __init__(
        self, model, *, pad_token_id: int, eos_token_ids: Sequence[int], batch_size: int | None = None,
        vocab_rows: int | None = None,
    ):  # fmt: skip
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.batch_size = batch_size
        #: ids at or above this are never sampled (a padded embedding matrix's rows past the shared vocabulary)
        self.vocab_rows = vocab_rows

    def generation_config(self, sampling: Sampling):
        from transformers import GenerationConfig

        kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_new_tokens, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_ids
        )
        head = self.model.get_output_embeddings() if self.vocab_rows is not None else None
        if head is not None and head.weight.shape[0] > self.vocab_rows:
            kwargs.update(suppress_tokens=list(range(self.vocab_rows, head.weight.shape[0])))
        if sampling.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        return GenerationConfig(**kwargs)

    @torch.no_grad()
    def sample_ids(self, prompt_ids, sampling, progress=False):
        from sead.utils.progress import progress_bar

        gen = self.generation_config(sampling)
        rows = [list(ids) for ids in prompt_ids for _ in range(sampling.n)]
        step = self.batch_size or max(len(rows), 1)
        device = next(self.model.parameters()).device
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out: list[list[int]] = []
        was_training = self.model.training
        self.model.eval()
        bar = progress_bar(
            total=len(rows), desc=progress if isinstance(progress, str) else "generating", disable=not progress,
            unit="seq",
        )  # fmt: skip
        try:
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                width = max(len(r) for r in chunk)
                ids_BL = torch.full((len(chunk), width), self.pad_token_id, dtype=torch.long)
                mask_BL = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, r in enumerate(chunk):  # left padding, as the trainer's prompts
                    ids_BL[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                    mask_BL[i, width - len(r) :] = 1
                seqs = self.model.generate(
                    input_ids=ids_BL.to(device), attention_mask=mask_BL.to(device), generation_config=gen
                )
                out.extend(seqs[:, width:].tolist())
                bar.update(len(chunk))
        finally:
            bar.close()
            self.model.train(was_training)
        return out


def _torch_dtype(name: str):
    if name == "auto":
        return "auto"
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise SeadError(f"--dtype must be auto, float32, bfloat16 or float16, got {name!r}.") from None


def load_tokenizer(model: str):
    """The model's tokenizer (pad = EOS when it has no pad token)."""
    from transformers import AutoTokenizer

    local = Path(model).expanduser()
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else model)
    except (OSError, ValueError) as err:
        raise SeadError(f"--model {model!r}: could not load its tokenizer ({str(err)[:300]})") from err
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_hf_model(model: str, dtype: str = "auto"):
    """``(model, tokenizer)`` from a local dir or hub name, on the GPU when there is one."""
    from transformers import AutoModelForCausalLM

    local = Path(model).expanduser()
    name = str(local) if local.exists() else model
    try:
        tokenizer = load_tokenizer(model)
        hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=_torch_dtype(dtype))
    except (OSError, ValueError) as err:
        if isinstance(err, SeadError):
            raise
        raise SeadError(
            f"--model {model!r}: could not load a causal LM and its tokenizer ({str(err)[:300]}). "
            "Give a directory written by save_pretrained, or a hub model name."
        ) from err
    if torch.cuda.is_available():
        hf_model = hf_model.to("cuda")
    return hf_model, tokenizer


def hf_sampler(model, tokenizer, batch_size: int | None = None) -> HFSampler:
    """An :class:`HFSampler` for a model and its tokenizer (pad: the tokenizer's, else EOS)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return HFSampler(model, pad_token_id=pad, eos_token_ids=eos_ids(tokenizer, model), batch_size=batch_size)


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
