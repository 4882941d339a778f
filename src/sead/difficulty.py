"""Difficulty pre-pass for the curriculum (METHODS.md 1c): ``d_i = 1 - pass rate`` of the initial
student over K rollouts per prompt, judged by the project's grader in strict mode (only an explicit final
answer counts, as in training: :data:`sead.verify.TRAINING_MODE`).

Resumable: with ``partial_path``, finished prompts are appended to a jsonl file as they complete
(``{"index": i, "correct": c, "n": K}``), and a rerun skips every index already there.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .generation import generate_responses
from .verify import TRAINING_MODE, grade_many

__all__ = ["estimate_difficulty", "read_partial"]


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


def estimate_difficulty(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    num_rollouts: int = 8,
    temperature: float = 0.7,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    prompts_per_chunk: int = 64,
    partial_path: str | Path | None = None,
    progress: bool = True,
    seed: int = 0,
    timeout_seconds: float = 5.0,
) -> list[float]:
    """One difficulty in [0, 1] per prompt: ``1 - (correct rollouts) / num_rollouts``."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if num_rollouts < 1:
        raise ValueError(f"num_rollouts must be >= 1, got {num_rollouts}")
    done = read_partial(partial_path)
    todo = [i for i in range(len(prompts)) if i not in done]
    bar = tqdm(
        total=len(prompts),
        initial=len(prompts) - len(todo),
        desc="difficulty",
        unit="prompt",
        disable=not progress,
    )
    sink = open(partial_path, "a") if partial_path is not None else None  # noqa: SIM115
    try:
        for start in range(0, len(todo), prompts_per_chunk):
            chunk = todo[start : start + prompts_per_chunk]
            outs = generate_responses(
                model,
                tokenizer,
                [prompts[i] for i in chunk],
                num_samples=num_rollouts,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                seed=seed + start,
            )
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
            bar.update(len(chunk))
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return [1.0 - done[i][0] / done[i][1] for i in range(len(prompts))]
