"""``sead eval``: evaluate a model on math benchmarks (greedy pass@1, avg@k, pass@k).

Example (the paper-style table; see docs/evaluation.md)::

    sead eval --model PATH --benchmarks math500,minerva_math,olympiadbench,amc23,aime24,aime25 \\
        --k paper --temperature 0.7 --max-new-tokens 16384 --out runs/eval/PATH
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from sead.commands.engine_args import add_engine_arguments, add_mode_argument, vllm_kwargs
from sead.evaluation.benchmarks import DATA_DIR_ENV, benchmark_names
from sead.grading.verifier import DEFAULT_TIMEOUT_SECONDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (save_pretrained) or hub name")
    parser.add_argument(
        "--gguf-file", default=None,
        help="a GGUF file in --model's directory (or a full path): converted once into the cache, then evaluated",
    )  # fmt: skip
    parser.add_argument(
        "--benchmarks",
        default="math500",
        help=f"comma-separated benchmarks, NAME or NAME=FILE_OR_HUB_NAME; one of: {', '.join(benchmark_names())}",
    )
    parser.add_argument(
        "--k",
        default="paper",
        help="samples per question for avg@k / pass@k: a number (0: greedy only), 'paper' "
        "(32 on amc23/aime24/aime25, 0 elsewhere), or a default plus NAME=K overrides, e.g. '8,aime24=32' "
        "(default: paper)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.7, help="sampling temperature for the k samples"
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling for the k samples")
    parser.add_argument(
        "--max-new-tokens", type=int, default=4096, help="generation length limit (default 4096)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="evaluate only the first N questions of each set"
    )
    parser.add_argument("--out", default=None, help="output dir for results.json and per-benchmark jsonl")
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"folder with the benchmark jsonl files (default: ${DATA_DIR_ENV}, else ../shared/data/math, "
        "else the Hugging Face hub)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per generate call (hf backend)")
    add_engine_arguments(
        parser, backends=("hf", "vllm", "server"), default="hf",
        help="generation backend: Hugging Face generate, a vLLM engine, or a running vLLM server (--server-url)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy pass@1 run")
    parser.add_argument(
        "--no-chat-template", action="store_true", help="do not wrap prompts in the chat template"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS, help="seconds allowed per grade (default 5)"
    )
    parser.add_argument("--grade-workers", type=int, default=None, help="parallel grading processes")
    add_mode_argument(parser)


def default_out_dir(model: str) -> Path:
    """``eval/<model name>``: the last path component of the model, made filesystem-safe."""
    name = Path(model.rstrip("/")).name or "model"
    return Path("eval") / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def run(args: argparse.Namespace) -> int:
    from sead.evaluation.evaluate import EvalConfig, evaluate_model

    if args.gguf_file:
        from sead.checkpoints.gguf import resolve_gguf

        out = args.out or default_out_dir(args.gguf_file.removesuffix(".gguf"))
        args.model, args.out = resolve_gguf(args.model, args.gguf_file), out
    config = EvalConfig(
        model=args.model,
        benchmarks=args.benchmarks,
        k=args.k,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        batch_size=args.batch_size,
        backend=args.backend,
        server_url=args.server_url,
        server_model=args.server_model,
        vllm_kwargs=vllm_kwargs(args),
        seed=args.seed,
        greedy=not args.no_greedy,
        data_dir=args.data_dir,
        timeout_seconds=args.timeout,
        grade_workers=args.grade_workers,
        grade_mode=args.mode,
        chat_template=not args.no_chat_template,
        dtype=args.dtype,
    )
    out_dir = Path(args.out) if args.out else default_out_dir(args.model)
    evaluate_model(config, out_dir=out_dir)
    print(f"results: {out_dir / 'results.json'}")
    return 0
