"""Teacher rollouts for SG-OPD's phased sampling (METHODS.md 2b): vLLM when available, HF otherwise.

The teacher is frozen, so a vLLM engine for it never needs a weight sync: it can be built once (in
the training process, or as a separate ``vllm serve`` whose client is passed in) and reused for the
whole cold-start phase. :func:`generate_with_vllm_or_hf` takes prompt token ids (as the trainer holds
them) and returns completion token ids, ``num_samples`` per prompt in prompt-major order (the order of
``prompt_ids.repeat_interleave(num_samples, 0)``), each cut after its first EOS token.

``OPDTrainer`` builds the engine once (``teacher_generation_backend``: ``"auto"`` takes vLLM when it is
installed and CUDA is available, see :func:`use_vllm_for_teacher`) and calls
:func:`generate_with_vllm_or_hf` from ``_mix_teacher_rollouts``; without an engine the HF path runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["generate_with_vllm_or_hf", "make_teacher_llm", "use_vllm_for_teacher", "vllm_available"]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def use_vllm_for_teacher(backend: str, *, installed: bool | None = None, cuda: bool | None = None) -> bool:
    """Whether the teacher's rollouts go through vLLM: ``"vllm"`` always (an ``ImportError`` with advice when it
    is missing), ``"hf"`` never, ``"auto"`` when vLLM is installed and CUDA is available."""
    from .errors import SeadError

    if backend not in ("auto", "vllm", "hf"):
        raise SeadError(f"teacher_generation_backend must be 'auto', 'vllm' or 'hf'; got {backend!r}.")
    installed = vllm_available() if installed is None else installed
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if backend == "vllm" and not installed:
        raise SeadError(
            "teacher_generation_backend='vllm' but vLLM is not installed: `pip install vllm` (GPU machines), "
            "or set `teacher_generation_backend: hf`."
        )
    return backend == "vllm" or (backend == "auto" and installed and cuda)


def make_teacher_llm(
    model_name_or_path: str,
    *,
    gpu_memory_utilization: float = 0.3,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    dtype: str = "bfloat16",
    seed: int = 0,
    **kwargs: Any,
):
    """A ``vllm.LLM`` for the frozen teacher (raises ``ImportError`` without vLLM)."""
    import vllm

    return vllm.LLM(
        model=model_name_or_path,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        dtype=dtype,
        seed=seed,
        **kwargs,
    )


def _trim(ids: Sequence[int], eos_token_ids: Sequence[int], pad_token_id: int | None) -> list[int]:
    """Cut after the first EOS (kept); without one, drop padding (unless padding is an EOS id)."""
    eos = set(eos_token_ids)
    for pos, tok in enumerate(ids):
        if tok in eos:
            return list(ids[: pos + 1])
    if pad_token_id is not None and pad_token_id not in eos:
        return [t for t in ids if t != pad_token_id]
    return list(ids)


def _vllm_generate(
    llm,
    prompt_ids: Sequence[Sequence[int]],
    num_samples: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    seed: int | None,
    sampling_params_cls=None,
) -> list[list[int]]:
    if sampling_params_cls is None:
        from vllm import SamplingParams as sampling_params_cls
    params = sampling_params_cls(
        n=num_samples,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k if top_k and top_k > 0 else -1,
        max_tokens=max_new_tokens,
        seed=seed,
    )
    outputs = llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params, use_tqdm=False)
    out: list[list[int]] = []
    for request in outputs:
        choices = list(request.outputs)
        if len(choices) != num_samples:
            raise RuntimeError(f"vLLM returned {len(choices)} completions for a prompt; expected {num_samples}")
        out.extend(list(c.token_ids) for c in choices)
    return out


@torch.no_grad()
def _hf_generate(
    model,
    prompt_ids: Sequence[Sequence[int]],
    num_samples: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    batch_size: int | None,
) -> list[list[int]]:
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        pad_token_id=pad_token_id,
        eos_token_id=list(eos_token_ids),
    )
    rows = [list(ids) for ids in prompt_ids for _ in range(num_samples)]
    step = batch_size or len(rows)
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):  # left padding, as the trainer's prompts
                ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
                mask[i, width - len(r) :] = 1
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
            out.extend(seqs[:, width:].tolist())
    finally:
        model.train(was_training)
    return out


def generate_with_vllm_or_hf(
    model,
    prompt_ids: Sequence[Sequence[int]] | torch.Tensor,
    *,
    num_samples: int,
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_ids: Sequence[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    prompt_mask: torch.Tensor | None = None,
    llm=None,
    backend: str = "auto",
    seed: int | None = None,
    batch_size: int | None = None,
    sampling_params_cls=None,
) -> list[list[int]]:
    """``num_samples`` sampled completions (token ids) per prompt, prompt-major, each cut after its
    first EOS.

    Args:
        model: the teacher as a Hugging Face model (used by the HF path; may be ``None`` with ``llm``).
        prompt_ids: one list of token ids per prompt, or a left-padded ``[B, L]`` tensor with ``prompt_mask``.
        llm: a vLLM engine for the teacher (``vllm.LLM`` or anything with its ``generate`` signature).
        backend: ``"vllm"`` (needs ``llm``), ``"hf"``, or ``"auto"``: vLLM when ``llm`` is given, else HF.
        sampling_params_cls: vLLM's ``SamplingParams`` by default (injectable for tests).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if backend not in ("auto", "vllm", "hf"):
        raise ValueError(f"backend must be 'auto', 'vllm' or 'hf', got {backend!r}")
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_mask is None:
            prompt_mask = torch.ones_like(prompt_ids)
        prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
    prompt_ids = [list(map(int, ids)) for ids in prompt_ids]
    if not prompt_ids:
        return []
    use_vllm = backend == "vllm" or (backend == "auto" and llm is not None)
    if use_vllm:
        if llm is None:
            raise ValueError("backend='vllm' needs an engine: pass llm=make_teacher_llm(...)")
        seqs = _vllm_generate(
            llm, prompt_ids, num_samples, temperature, top_p, top_k, max_new_tokens, seed, sampling_params_cls
        )
    else:
        if model is None:
            raise ValueError("the HF path needs the teacher model")
        if seed is not None:
            torch.manual_seed(seed)
        seqs = _hf_generate(
            model, prompt_ids, num_samples, temperature, top_p, top_k, max_new_tokens, pad_token_id, eos_token_ids,
            batch_size,
        )  # fmt: skip
    return [_trim(s, eos_token_ids, pad_token_id) for s in seqs]
