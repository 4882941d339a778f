"""Command-line arguments shared by the commands that generate (``sead difficulty``, ``sead eval``) or grade
(``sead grade``): the generation engine (HF, a vLLM engine, a vLLM server) and the answer-extraction mode."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sead.grading.answers import EXTRACTION_MODES
from sead.utils.errors import SeadError

__all__ = ["add_engine_arguments", "add_mode_argument", "vllm_kwargs"]


def add_engine_arguments(parser: argparse.ArgumentParser, *, backends: tuple[str, ...], default: str, help: str):
    """``--backend`` (``backends``), ``--server-url``, ``--server-model``, ``--dtype`` and the ``--vllm-*`` flags."""
    parser.add_argument("--backend", choices=backends, default=default, help=help)
    parser.add_argument(
        "--server-url", default=None, help="--backend server: the server's address, e.g. http://127.0.0.1:8000"
    )
    parser.add_argument(
        "--server-model", default=None, help="--backend server: the served model's id (default: the first served)"
    )
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument(
        "--vllm-gpu-memory-utilization", type=float, default=0.9, help="vLLM backend (default 0.9)"
    )
    parser.add_argument("--vllm-tensor-parallel-size", type=int, default=1, help="vLLM backend (default 1)")
    parser.add_argument(
        "--vllm-kwargs",
        default=None,
        help='vLLM backend: JSON of more vllm.LLM arguments, e.g. \'{"enforce_eager": true, "max_model_len": 8192}\'',
    )


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    """``--mode``: how final answers are extracted before grading (docs/evaluation.md)."""
    parser.add_argument(
        "--mode",
        default="auto",
        choices=EXTRACTION_MODES,
        help="answer extraction: auto (default; falls back to the last number), strict (explicit final answers "
        "only, as in training), or one marker alone (see docs/evaluation.md)",
    )


def vllm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``vllm.LLM`` arguments from the ``--vllm-*`` flags."""
    extra = {}
    if getattr(args, "vllm_kwargs", None):
        try:
            extra = json.loads(args.vllm_kwargs)
        except json.JSONDecodeError as err:
            raise SeadError(f"--vllm-kwargs must be a JSON object: {err}") from err
        if not isinstance(extra, dict):
            raise SeadError("--vllm-kwargs must be a JSON object")
    return {
        "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
        "tensor_parallel_size": args.vllm_tensor_parallel_size,
        **extra,
    }
