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
format as :func:`sead.difficulty.estimate_difficulty`); a rerun with the same settings generates only
the prompts not there yet. Generation uses vLLM when it is installed and a GPU is present
(``--backend auto``), Hugging Face ``generate`` otherwise; a progress bar shows prompts done and the ETA.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import SeadError

#: ``generate(prompts, num_samples, seed) -> one list of completions per prompt``
Generate = Callable[[list[str], int, int], list[list[str]]]

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
    parser.add_argument(
        "--backend",
        choices=("auto", "hf", "vllm"),
        default="auto",
        help="generation engine; auto: vLLM when installed and a GPU is present, else Hugging Face generate",
    )
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
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument(
        "--vllm-gpu-memory-utilization", type=float, default=0.9, help="vLLM backend (default 0.9)"
    )
    parser.add_argument("--vllm-tensor-parallel-size", type=int, default=1, help="vLLM backend (default 1)")
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


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _nested(value, path: Sequence[str]):
    for key in path:
        value = value[key]
    return value


def load_rows(settings: dict[str, Any]):
    """``(dataset, prompts, answers)``: the dataset as loaded (columns untouched), its prompt values
    (strings or message lists) and gold answers (strings)."""
    from ..run import load_train_dataset

    ds = load_train_dataset(settings["dataset"], settings["dataset_config"], settings["split"], "prompt")
    if settings["limit"] is not None:
        ds = ds.select(range(min(settings["limit"], len(ds))))
    if len(ds) == 0:
        raise SeadError(f"dataset {settings['dataset']} has no rows")
    column = settings["prompt_column"]
    if column not in ds.column_names:
        raise SeadError(f"dataset has no column `{column}` (--prompt-column); columns: {ds.column_names}")
    source = settings["answer_column_source"] or settings["answer_column"]
    path = source.split(".")
    if path[0] not in ds.column_names:
        raise SeadError(
            f"dataset has no column `{path[0]}` for the gold answers (--answer-column / --answer-column-source); "
            f"columns: {ds.column_names}"
        )
    try:
        answers = [str(_nested(v, path[1:])) for v in ds[path[0]]]
    except (KeyError, TypeError, IndexError) as err:
        raise SeadError(f"gold answers `{source}`: a row has no such field ({err!r})") from err
    return ds, list(ds[column]), answers


def is_conversation(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def format_prompts(prompts: Sequence[Any], tokenizer, chat_template: bool | None, chat_kwargs: dict) -> list[str]:
    """Prompt strings as the trainer would see them: conversations always through the chat template,
    plain strings through it only with ``chat_template`` (``None``: as they are, with a notice when the
    tokenizer has a chat template)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    conversational = [is_conversation(p) for p in prompts]
    if any(conversational) and not has_template:
        raise SeadError("the prompts are conversations but the tokenizer has no chat template to format them")
    if chat_template and not has_template:
        raise SeadError("--chat-template: the tokenizer has no chat template")
    if chat_template is None and has_template and not all(conversational):
        print(
            "sead difficulty: the prompts are plain strings and the tokenizer has a chat template; using them as "
            "they are, as `sead train` does without `apply_chat_template: true`. Pass --chat-template to format "
            "them as a user turn (and set apply_chat_template: true in the recipe).",
            file=sys.stderr,
        )
    bos = _bos_prefix(tokenizer)
    out = []
    for prompt, conv in zip(prompts, conversational):
        if conv or chat_template:
            messages = prompt if conv else [{"role": "user", "content": str(prompt)}]
            out.append(
                tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **chat_kwargs)
            )
        else:
            out.append(bos + str(prompt))  # the trainer tokenizes plain prompts with the special tokens
    return out


def _bos_prefix(tokenizer) -> str:
    """The BOS text the tokenizer prepends to plain text (the trainer keeps it; generation here does not
    add special tokens), or ``""``."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or tokenizer.bos_token_id is None:
        return ""
    try:
        ids = tokenizer("x")["input_ids"]
    except Exception:
        return ""
    return bos if ids and ids[0] == tokenizer.bos_token_id else ""


# ----------------------------------------------------------------------------------------------
# The resumable loop
# ----------------------------------------------------------------------------------------------


def _check_meta(partial: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume from a partial file made with other settings (its sidecar ``.meta.json``)."""
    meta_path = partial.with_name(partial.name + ".meta.json")
    if partial.exists() and meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and old != meta:
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            raise SeadError(
                f"{partial} holds results made with other settings ({', '.join(diff)} differ). Delete it "
                "(and its .meta.json) to start over, or pass --partial NEW_FILE."
            )
    partial.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True))


def run_prepass(
    generate: Generate,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    num_rollouts: int,
    prompts_per_chunk: int,
    partial_path: str | Path,
    seed: int = 0,
    timeout_seconds: float = 5.0,
    progress: bool = True,
) -> list[tuple[int, int]]:
    """``(correct, rollouts)`` per prompt. Prompts already in ``partial_path`` are not generated again;
    each finished chunk is appended to it (``{"index", "correct", "n"}`` lines) before the next starts."""
    from tqdm.auto import tqdm

    from ..difficulty import read_partial
    from ..verify import TRAINING_MODE, grade_many

    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    done = {i: v for i, v in read_partial(partial_path).items() if 0 <= i < len(prompts)}
    todo = [i for i in range(len(prompts)) if i not in done]
    bar = tqdm(
        total=len(prompts), initial=len(done), desc="difficulty", unit="prompt", disable=not progress, smoothing=0.1
    )
    try:
        with open(partial_path, "a") as sink:
            for start in range(0, len(todo), prompts_per_chunk):
                chunk = todo[start : start + prompts_per_chunk]
                outs = generate([prompts[i] for i in chunk], num_rollouts, seed + chunk[0])
                if len(outs) != len(chunk) or any(len(o) != num_rollouts for o in outs):
                    raise RuntimeError("the generator returned the wrong number of completions")
                responses = [r for rs in outs for r in rs]
                golds = [str(answers[i]) for i in chunk for _ in range(num_rollouts)]
                verdicts = grade_many(responses, golds, timeout_seconds=timeout_seconds, mode=TRAINING_MODE)
                for j, i in enumerate(chunk):
                    c = sum(v.correct for v in verdicts[j * num_rollouts : (j + 1) * num_rollouts])
                    done[i] = (c, num_rollouts)
                    sink.write(json.dumps({"index": i, "correct": c, "n": num_rollouts}) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                bar.update(len(chunk))
    finally:
        bar.close()
    return [done[i] for i in range(len(prompts))]


# ----------------------------------------------------------------------------------------------
# Engines
# ----------------------------------------------------------------------------------------------


def choose_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as err:
        raise SeadError(f"--model {model!r}: could not load its tokenizer ({str(err)[:300]})") from err
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    return tok


def hf_generator(model_name: str, tokenizer, settings: dict[str, Any], batch_size: int, dtype: str) -> Generate:
    from ..evaluate import load_hf_model
    from ..generation import generate_responses

    model, _ = load_hf_model(model_name, dtype)

    def generate(prompts: list[str], num_samples: int, seed: int) -> list[list[str]]:
        return generate_responses(
            model,
            tokenizer,
            prompts,
            num_samples=num_samples,
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            max_new_tokens=settings["max_new_tokens"],
            batch_size=batch_size,
            seed=seed,
        )

    return generate


def vllm_generator(model_name: str, tokenizer, settings: dict[str, Any], args: argparse.Namespace) -> Generate:
    try:
        import vllm
    except ImportError as err:
        raise SeadError(
            f"--backend vllm needs the vllm package, which is not installed ({err}). Install it "
            "(pip install vllm) or use --backend hf."
        ) from err
    llm = vllm.LLM(
        model=model_name,
        seed=settings["seed"],
        dtype=args.dtype,
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        tensor_parallel_size=args.vllm_tensor_parallel_size,
    )

    def generate(prompts: list[str], num_samples: int, seed: int) -> list[list[str]]:
        params = vllm.SamplingParams(
            n=num_samples,
            temperature=settings["temperature"],
            top_p=settings["top_p"],
            max_tokens=settings["max_new_tokens"],
            seed=seed,
        )
        requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        outputs = llm.generate(requests, params, use_tqdm=False)
        return [[choice.text for choice in out.outputs] for out in outputs]

    return generate


def make_generator(backend: str, model: str, tokenizer, settings: dict[str, Any], args) -> Generate:
    if backend == "vllm":
        return vllm_generator(model, tokenizer, settings, args)
    return hf_generator(model, tokenizer, settings, args.batch_size, args.dtype)


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def write_output(ds, path: Path) -> None:
    """Write atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        ds.to_parquet(str(tmp))
    else:  # row by row: datasets' to_json rounds floats to 10 digits
        with open(tmp, "w") as f:
            for row in ds:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def summarize(counts: Sequence[tuple[int, int]]) -> str:
    n = len(counts)
    difficulty = [1.0 - c / k for c, k in counts]
    never = sum(1 for c, _ in counts if c == 0)
    always = sum(1 for c, k in counts if c == k)
    mean = sum(difficulty) / n if n else float("nan")
    return (
        f"{n} prompts: mean difficulty {mean:.3f}; {never} ({100 * never / max(n, 1):.1f}%) never solved, "
        f"{always} ({100 * always / max(n, 1):.1f}%) always solved"
    )


def run(args: argparse.Namespace) -> int:
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
    ds, raw_prompts, answers = load_rows(settings)
    tokenizer = load_tokenizer(settings["model"])
    prompts = format_prompts(raw_prompts, tokenizer, settings["chat_template"], settings["chat_template_kwargs"])
    backend = choose_backend(args.backend)
    meta = {
        key: settings[key]
        for key in (
            "model", "dataset", "dataset_config", "split", "prompt_column", "answer_column", "answer_column_source",
            "num_rollouts", "temperature", "top_p", "max_new_tokens", "chat_template", "chat_template_kwargs", "seed",
        )
    }  # fmt: skip
    meta["num_prompts"] = len(prompts)
    meta["grade_mode"] = "strict"  # partial results graded otherwise (before strict grading) are not reused
    _check_meta(partial, meta)
    chunk = args.prompts_per_chunk or (256 if backend == "vllm" else max(1, args.batch_size // settings["num_rollouts"]))
    if chunk < 1:
        raise SeadError(f"--prompts-per-chunk must be >= 1; got {chunk}")
    from ..difficulty import read_partial

    remaining = len(prompts) - sum(1 for i in read_partial(partial) if 0 <= i < len(prompts))
    print(
        f"sead difficulty: {len(prompts)} prompts ({len(prompts) - remaining} already in {partial}), "
        f"K={settings['num_rollouts']} at temperature {settings['temperature']:g}, up to "
        f"{settings['max_new_tokens']} new tokens, backend {backend}",
        file=sys.stderr,
    )
    generate = make_generator(backend, settings["model"], tokenizer, settings, args) if remaining else None
    counts = run_prepass(
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
    write_output(ds, out)
    print(f"sead difficulty: {summarize(counts)}; wrote {out} (column `{column}`)")
    return 0
