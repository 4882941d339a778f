"""Difficulty pre-pass for the curriculum (METHODS.md 1c): ``d_i = 1 - pass rate`` of the initial
student over K rollouts per prompt, judged by the project's grader in strict mode (only an explicit final
answer counts, as in training: :data:`sead.grading.answers.TRAINING_MODE`).

:func:`estimate_difficulty` runs it on a loaded model (the built-in task, the demo);
``sead difficulty`` (:mod:`sead.commands.difficulty`) on a model name and a dataset, with any backend of
:mod:`sead.engines.sampling`. Both go through :func:`run_prepass`: resumable with a partial-results file, where
finished prompts are appended as they complete (``{"index": i, "correct": c, "n": K}``) and a rerun skips
every index already there.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sead.engines.hf import hf_sampler
from sead.engines.sampling import Sampler, Sampling, sample_texts
from sead.grading.answers import TRAINING_MODE
from sead.grading.verifier import grade_many
from sead.utils.errors import SeadError
from sead.utils.progress import progress_bar

__all__ = [
    "Generate",
    "check_partial_settings",
    "estimate_difficulty",
    "format_prompts",
    "load_rows",
    "read_partial",
    "run_prepass",
    "summarize",
    "text_generator",
    "write_output",
]

#: ``generate(prompts, num_samples, seed) -> one list of completions per prompt``
Generate = Callable[[list[str], int, int], list[list[str]]]


def read_partial(path: str | Path | None) -> dict[int, tuple[int, int]]:
    """``{index: (num_correct, num_rollouts)}`` from a partial-results jsonl (missing file: empty)."""
    done: dict[int, tuple[int, int]] = {}
    if path is None or not Path(path).exists():
        return done
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption: that prompt is simply redone
            done[int(row["index"])] = (int(row["correct"]), int(row["n"]))
    return done


def text_generator(
    sampler: Sampler, tokenizer, *, temperature: float, max_new_tokens: int, top_p: float = 1.0
) -> Generate:
    """The pre-pass's ``generate`` over any sampler of :mod:`sead.engines.sampling`."""

    def generate(prompts: list[str], num_samples: int, seed: int) -> list[list[str]]:
        sampling = Sampling(
            n=num_samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        return sample_texts(sampler, tokenizer, prompts, sampling)

    return generate


def estimate_difficulty(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    num_rollouts: int = 8,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    prompts_per_chunk: int = 64,
    partial_path: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    timeout_seconds: float = 5.0,
) -> list[float]:
    """One difficulty in [0, 1] per prompt: ``1 - (correct rollouts) / num_rollouts``.

    ``model``: a Hugging Face model (sampled with ``generate`` in batches of ``batch_size`` rows), or any
    sampler of :mod:`sead.engines.sampling` (a vLLM engine's :class:`~sead.engines.vllm_engine.VLLMSampler`, a server's).
    ``max_new_tokens``: required, the training run's ``max_completion_length`` (what ``sead difficulty`` takes
    from the recipe): a pre-pass with shorter rollouts than training would count long correct solutions as
    failures (strict verdicts need the final answer).
    """
    if max_new_tokens is None:
        raise ValueError(
            "estimate_difficulty needs max_new_tokens: pass the training run's max_completion_length, so the initial "
            "student's rollouts are judged at the length training will sample (`sead difficulty` takes it from the recipe)."
        )
    if num_rollouts < 1:
        raise ValueError(f"num_rollouts must be >= 1, got {num_rollouts}")
    sampler = model if callable(getattr(model, "sample_ids", None)) else hf_sampler(model, tokenizer, batch_size)
    generate = text_generator(sampler, tokenizer, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    counts = run_prepass(
        generate, prompts, answers, num_rollouts=num_rollouts, prompts_per_chunk=prompts_per_chunk,
        partial_path=partial_path, seed=seed, timeout_seconds=timeout_seconds, progress=progress,
    )  # fmt: skip
    return [1.0 - c / k for c, k in counts]


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_rows(settings: dict[str, Any]):
    """``(dataset, prompts, answers)``: the dataset as loaded (columns untouched), its prompt values
    (strings or message lists) and gold answers (strings)."""
    from sead.data.datasets import answers_from_column, load_train_dataset

    ds = load_train_dataset(settings["dataset"], settings["dataset_config"], settings["split"], "prompt")
    if settings["limit"] is not None:
        ds = ds.select(range(min(settings["limit"], len(ds))))
    if len(ds) == 0:
        raise SeadError(f"dataset {settings['dataset']} has no rows")
    column = settings["prompt_column"]
    if column not in ds.column_names:
        raise SeadError(f"dataset has no column `{column}` (--prompt-column); columns: {ds.column_names}")
    option = "--answer-column-source" if settings["answer_column_source"] else "--answer-column"
    answers = answers_from_column(ds, settings["answer_column_source"] or settings["answer_column"], option)
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


def check_partial_settings(partial: Path, meta: dict[str, Any]) -> None:
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
    partial_path: str | Path | None,
    seed: int = 0,
    timeout_seconds: float = 5.0,
    progress: bool = True,
) -> list[tuple[int, int]]:
    """``(correct, rollouts)`` per prompt. ``generate(prompts, num_samples, seed)`` returns ``num_samples``
    completions per prompt; a chunk starting at prompt ``i`` is drawn with seed ``seed + i`` (a resumed run
    draws what the uninterrupted one would). Prompts already in ``partial_path`` are not generated again;
    each finished chunk is appended to it (``{"index", "correct", "n"}`` lines, fsynced) before the next
    starts. ``partial_path=None``: nothing is written."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    done = {i: v for i, v in read_partial(partial_path).items() if 0 <= i < len(prompts)}
    todo = [i for i in range(len(prompts)) if i not in done]
    bar = progress_bar(
        total=len(prompts), initial=len(done), desc="difficulty", unit="prompt", disable=not progress, smoothing=0.1
    )
    sink = open(partial_path, "a") if partial_path is not None else None  # noqa: SIM115
    try:
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
                if sink is not None:
                    sink.write(json.dumps({"index": i, "correct": c, "n": num_rollouts}) + "\n")
            if sink is not None:
                sink.flush()
                os.fsync(sink.fileno())
            bar.update(len(chunk))
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return [done[i] for i in range(len(prompts))]


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
