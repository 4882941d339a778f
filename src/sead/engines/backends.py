"""A sampler and tokenizer from a model name, on the engine a command asks for (``--backend``).

For the text callers (``sead eval``, ``sead difficulty``): ``hf`` (:mod:`sead.engines.hf`), ``vllm``
(:mod:`sead.engines.vllm_engine`), ``auto`` (:func:`~sead.engines.vllm_engine.choose_backend`) or ``server``
(:mod:`sead.engines.vllm_server`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sead.engines.hf import hf_sampler, load_hf_model, load_tokenizer
from sead.engines.sampling import Sampler
from sead.engines.vllm_engine import VLLMSampler, choose_backend, vllm_engine
from sead.utils.errors import SeadError

__all__ = ["load_text_sampler"]


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
    or ``"server"`` (:class:`sead.engines.vllm_server.ServerSampler` at ``server_url``, serving ``server_model``, by
    default the first it lists; ``model`` then only names the tokenizer). ``tokenizer``: already loaded.
    """
    if backend == "server":
        from sead.engines.vllm_server import ServerSampler

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
