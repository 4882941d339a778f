"""Chat prompts for a real instruct model: one-digit additions, one worked example, the answer in ``\\boxed{}``.

The real-model tests use them (tests/_real.py, tests/_vllm_real.py); the prune-then-distill recipe trained on
them until 2026-12-07 and now uses :mod:`sead.data.phrasings` (more surface variety, held-out phrasings). Each
prompt is a conversation (the trainer applies the tokenizer's chat template): the worked example "What is 2 + 2?" -> "2 + 2 = 4. The answer
is \\boxed{4}.", then the question "What is a + b?" (``a, b`` in 1..9). SmolLM2-135M-Instruct follows the example's
format and answers all 64 test prompts right, greedy (BENCHMARKS.md, "Real checkpoints"); a copy keeping every third
of its layers answers none. Of the 81 pairs ``(a, b)``, :data:`HELD_OUT` (16, drawn once with a fixed seed) are never in the
training split: the test split asks only those.

``python -m sead.data.additions DIR`` writes ``DIR/additions-train.jsonl`` (512 rows) and ``additions-test.jsonl``
(64 rows), the files recipes/data/ holds.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

__all__ = ["EXAMPLE", "HELD_OUT", "addition_rows", "chat_prompt", "write_files"]

EXAMPLE = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4. The answer is \\boxed{4}."},
]

_PAIRS = [(a, b) for a in range(1, 10) for b in range(1, 10)]
HELD_OUT = frozenset(random.Random(23).sample(_PAIRS, 16))


def chat_prompt(a: int, b: int) -> list[dict[str, str]]:
    """The conversation asking ``a + b``, after the worked example."""
    return [*EXAMPLE, {"role": "user", "content": f"What is {a} + {b}?"}]


def addition_rows(split: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows (``prompt``: the conversation, ``answer``: the sum) of the ``"train"`` pairs (the 65 not held out)
    or the ``"test"`` pairs (:data:`HELD_OUT`), drawn with replacement from ``seed``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    pairs = sorted(p for p in _PAIRS if (p in HELD_OUT) == (split == "test"))
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(pairs)
        rows.append({"prompt": chat_prompt(a, b), "answer": str(a + b)})
    return rows


def write_files(directory: str | Path) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n, seed in (("train", 512, 0), ("test", 64, 1)):
        path = out / f"additions-{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in addition_rows(split, n, seed)))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_files(sys.argv[1] if len(sys.argv) > 1 else "recipes/data"):
        print(p)
