"""``sead difficulty``: the curriculum's difficulty pre-pass at scale (METHODS.md 1c).

``difficulty = 1 - pass rate`` of the initial student over K rollouts per prompt (default 8 at
temperature 0.7), graded by the project's verifier against the gold answer. Writes the dataset with
a ``difficulty`` column (``.parquet`` or ``.jsonl``), ready for a recipe's ``dataset_name``::

    sead difficulty --model allenai/Olmo-3-7B-Think-SFT --dataset open-r1/DAPO-Math-17k-Processed \\
        --dataset-config all --answer-column solution --chat-template \\
        --num-rollouts 8 --temperature 0.7 --max-new-tokens 16384 --out data/dapo.difficulty.parquet

or, reading model, dataset columns, chat template and length from a recipe::

    sead difficulty --config recipes/olmo3-7b-32b-sead.yaml --dataset open-r1/DAPO-Math-17k-Processed \\
        --dataset-config all --out data/dapo17k.olmo3-7b-think-sft.difficulty.parquet

Resumable: finished prompts are appended to ``OUT.partial.jsonl`` as each chunk completes (same
format as :func:`sead.data.difficulty.estimate_difficulty`); a rerun with the same settings generates only
the prompts not there yet. Generation uses vLLM when it is installed and a GPU is present
(``--backend auto``), Hugging Face ``generate`` otherwise, or a running vLLM server (``--backend server
--server-url URL``); a progress bar shows prompts done and the ETA. The work is :mod:`sead.data.difficulty`'s
(:func:`~sead.data.difficulty.run_prepass`) over a sampler of :mod:`sead.engines.sampling`; this module reads the
settings and prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sead.commands.engine_args import add_engine_arguments, vllm_kwargs
from sead.utils.errors import SeadError

OUTPUT_SUFFIXES = (".parquet", ".jsonl", ".json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="a recipe: model, prompt/answer columns, chat template, max_completion_length and "
        "difficulty_column are read from it (flags override it)",
    )
    parser.add_argument("--model", default=None, help="the initial student: hub id or save_pretrained directory")
    parser.add_argument(
        "--gguf-file", default=None,
        help="a GGUF file in --model's directory (or a full path): converted once into the cache, then sampled "
        "(default: the recipe's model_init_kwargs.gguf_file)",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", default=None, help="hub dataset id, .jsonl/.json/.parquet/.csv file or save_to_disk directory"
    )
    parser.add_argument("--dataset-config", default=None, help="dataset configuration name (hub datasets)")
    parser.add_argument("--split", default=None, help="split (default train)")
    parser.add_argument("--prompt-column", default=None, help="column with the prompts (default prompt)")
    parser.add_argument("--answer-column", default=None, help="column with the gold answers (default answer)")
    parser.add_argument(
        "--answer-column-source",
        default=None,
        help="read the gold answers from this column instead; a dotted path reads a nested field "
        "(e.g. reward_model.ground_truth)",
    )
    parser.add_argument("--num-rollouts", type=int, default=None, help="K rollouts per prompt (default 8)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default 1.0)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="generation length limit (default: the recipe's max_completion_length, else 1024)",
    )
    parser.add_argument("--out", required=True, help="output file: .parquet or .jsonl")
    parser.add_argument(
        "--partial", default=None, help="partial-results file for resuming (default OUT.partial.jsonl)"
    )
    add_engine_arguments(
        parser, backends=("auto", "hf", "vllm", "server"), default="auto",
        help="generation engine; auto: vLLM when installed and a GPU is present, else Hugging Face generate; "
        "server: a running vLLM server (--server-url)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=64, help="sequences per HF generate call (default 64)"
    )
    parser.add_argument(
        "--prompts-per-chunk",
        type=int,
        default=None,
        help="prompts generated, graded and saved together (default: one HF batch; 256 with vLLM)",
    )
    chat = parser.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat-template",
        dest="chat_template",
        action="store_true",
        default=None,
        help="wrap plain-string prompts as a user turn in the tokenizer's chat template "
        "(match `apply_chat_template: true` in the recipe)",
    )
    chat.add_argument(
        "--no-chat-template",
        dest="chat_template",
        action="store_false",
        help="use plain-string prompts as they are (default, as `sead train` does without apply_chat_template)",
    )
    parser.add_argument(
        "--chat-template-kwargs",
        default=None,
        help='JSON passed to apply_chat_template, e.g. \'{"enable_thinking": false}\' (default: the recipe\'s)',
    )
    parser.add_argument("--difficulty-column", default=None, help="name of the output column (default difficulty)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds allowed per grade (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------------
# Settings: flags > recipe > defaults
# ----------------------------------------------------------------------------------------------


def _recipe_values(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    if not os.path.isfile(path):
        raise SeadError(f"--config {path}: no such file")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SeadError(f"--config {path}: not readable as YAML ({err})") from err
    if not isinstance(values, dict):
        raise SeadError(f"--config {path}: a recipe is a YAML mapping of field: value")
    return values


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pre-pass settings, from the flags first, then the recipe (``--config``), then defaults."""
    recipe = _recipe_values(args.config)
    if recipe.get("builtin_task"):
        raise SeadError(
            "--config: a built-in task recipe computes its own difficulty column at `sead train` time; "
            "`sead difficulty` is for real models and datasets."
        )

    def pick(flag, key, default=None):
        return flag if flag is not None else recipe.get(key, default) if key else default

    kwargs = args.chat_template_kwargs
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as err:
            raise SeadError(f"--chat-template-kwargs must be a JSON object: {err}") from err
    kwargs = pick(kwargs, "chat_template_kwargs", {}) or {}
    if not isinstance(kwargs, dict):
        raise SeadError("--chat-template-kwargs must be a JSON object")
    chat = args.chat_template
    if chat is None and "apply_chat_template" in recipe:
        chat = bool(recipe["apply_chat_template"])
    settings = {
        "model": pick(args.model, "model_name_or_path"),
        "dataset": pick(args.dataset, "dataset_name"),
        "dataset_config": pick(args.dataset_config, "dataset_config"),
        "split": pick(args.split, "dataset_train_split", "train"),
        "prompt_column": pick(args.prompt_column, "prompt_column", "prompt"),
        "answer_column": pick(args.answer_column, "answer_column", "answer"),
        "answer_column_source": pick(args.answer_column_source, "answer_column_source"),
        "num_rollouts": pick(args.num_rollouts, "difficulty_num_rollouts", 8),
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": pick(args.max_new_tokens, "max_completion_length", 1024),
        "chat_template": chat,
        "chat_template_kwargs": kwargs,
        "difficulty_column": pick(args.difficulty_column, "difficulty_column", "difficulty"),
        "seed": args.seed,
        "limit": args.limit,
    }
    if not settings["model"]:
        raise SeadError("--model is required (or a --config recipe with model_name_or_path)")
    gguf = args.gguf_file or (recipe.get("model_init_kwargs") or {}).get("gguf_file")
    if gguf:  # the converted directory stands for the GGUF file from here on, as in `sead train` and `sead eval`
        from sead.checkpoints.gguf import resolve_gguf

        settings["model"] = resolve_gguf(str(settings["model"]), gguf)
    if not settings["dataset"]:
        raise SeadError("--dataset is required (or a --config recipe with dataset_name)")
    if settings["num_rollouts"] < 1:
        raise SeadError(f"--num-rollouts must be >= 1; got {settings['num_rollouts']}")
    if not settings["temperature"] > 0:
        raise SeadError(f"--temperature must be > 0 (K samples at temperature 0 would all be the same); got {args.temperature}")
    if settings["max_new_tokens"] < 1:
        raise SeadError(f"--max-new-tokens must be >= 1; got {settings['max_new_tokens']}")
    if args.batch_size < 1:
        raise SeadError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise SeadError(f"--limit must be >= 1; got {args.limit}")
    return settings


def run(args: argparse.Namespace) -> int:
    from sead.data import difficulty as prepass
    from sead.engines.backends import load_text_sampler
    from sead.engines.hf import load_tokenizer
    from sead.engines.vllm_engine import choose_backend

    out = Path(args.out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise SeadError(f"--out must end in {', '.join(OUTPUT_SUFFIXES)}; got {out}")
    settings = resolve_settings(args)
    if Path(str(settings["dataset"])).resolve() == out.resolve():
        raise SeadError(
            f"the dataset to read is the output file {out} (a recipe's dataset_name is usually this pre-pass's "
            "output): give the source dataset with --dataset."
        )
    partial = Path(args.partial) if args.partial else out.with_name(out.name + ".partial.jsonl")
    ds, raw_prompts, answers = prepass.load_rows(settings)
    tokenizer = load_tokenizer(settings["model"])
    prompts = prepass.format_prompts(raw_prompts, tokenizer, settings["chat_template"], settings["chat_template_kwargs"])
    backend = "server" if args.backend == "server" else choose_backend(args.backend)
    if backend == "server" and not args.server_url:
        raise SeadError("--backend server needs --server-url (the vLLM server's address, e.g. http://127.0.0.1:8000)")
    meta = {
        key: settings[key]
        for key in (
            "model", "dataset", "dataset_config", "split", "prompt_column", "answer_column", "answer_column_source",
            "num_rollouts", "temperature", "top_p", "max_new_tokens", "chat_template", "chat_template_kwargs", "seed",
        )
    }  # fmt: skip
    meta["num_prompts"] = len(prompts)
    meta["grade_mode"] = "strict"  # partial results graded otherwise (before strict grading) are not reused
    prepass.check_partial_settings(partial, meta)
    chunk = args.prompts_per_chunk or (256 if backend != "hf" else max(1, args.batch_size // settings["num_rollouts"]))
    if chunk < 1:
        raise SeadError(f"--prompts-per-chunk must be >= 1; got {chunk}")
    remaining = len(prompts) - sum(1 for i in prepass.read_partial(partial) if 0 <= i < len(prompts))
    print(
        f"sead difficulty: {len(prompts)} prompts ({len(prompts) - remaining} already in {partial}), "
        f"K={settings['num_rollouts']} at temperature {settings['temperature']:g}, up to "
        f"{settings['max_new_tokens']} new tokens, backend {backend}",
        file=sys.stderr,
    )
    generate = None
    if remaining:
        sampler, _ = load_text_sampler(
            backend, settings["model"], tokenizer=tokenizer, dtype=args.dtype, seed=settings["seed"],
            batch_size=args.batch_size, vllm_kwargs=vllm_kwargs(args), server_url=args.server_url,
            server_model=args.server_model,
        )  # fmt: skip
        generate = prepass.text_generator(
            sampler, tokenizer, temperature=settings["temperature"], top_p=settings["top_p"],
            max_new_tokens=settings["max_new_tokens"],
        )  # fmt: skip
    counts = prepass.run_prepass(
        generate,
        prompts,
        answers,
        num_rollouts=settings["num_rollouts"],
        prompts_per_chunk=chunk,
        partial_path=partial,
        seed=settings["seed"],
        timeout_seconds=args.timeout,
        progress=not args.no_progress,
    )
    column = settings["difficulty_column"]
    if column in ds.column_names:
        ds = ds.remove_columns(column)
    ds = ds.add_column(column, [1.0 - c / k for c, k in counts])
    prepass.write_output(ds, out)
    print(f"sead difficulty: {prepass.summarize(counts)}; wrote {out} (column `{column}`)")
    return 0
