"""Chat prompts for the real pair: one-digit sums and products in ten phrasings each, with held-out pairs and
held-out phrasings (issue 31; recipes/smollm2-prune-distill.yaml trains on them, ``sead bench real`` tests on them).

Each prompt is a conversation for the tokenizer's chat template: a one-line system message (:data:`SYSTEM`), one
worked example of the operation ("What is 2 + 2?" -> "2 + 2 = 4. The answer is \\boxed{4}."), then the question in
one of :data:`PHRASINGS`. The system message matters for SmolLM2-135M-Instruct: without it (the template then adds
its own default one) the teacher answers most phrasings at length and runs out of tokens before ``\\boxed{}``; with
it the teacher answers each of these twenty phrasings in one line (the phrasings on which it still did not were
dropped; docs/real-checkpoints.md has the measurement).

Split (fixed, :data:`SPLIT_SEED`): per operation :data:`NUM_HELD_PAIRS` of the 81 pairs ``(a, b)``, ``a, b`` in
1..9, and the last :data:`NUM_HELD_PHRASINGS` phrasings are held out. ``train`` is every training pair in every
training phrasing (798 prompts); ``test`` is every other prompt (a held-out pair, a held-out phrasing, or both:
822), shuffled; its first ``num_test`` rows are the test set. No test prompt appears in ``train`` (tested). Each
row: ``prompt`` (the conversation), ``answer`` (the result as text), ``op``, ``phrasing`` (its index), ``a``, ``b``
and ``split`` (``train``, ``pair``, ``phrasing`` or ``both``).

``python -m sead.data.phrasings DIR`` writes ``DIR/phrasings-train.jsonl`` and ``DIR/phrasings-test.jsonl``
(320 rows), the files recipes/data/ holds.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

__all__ = ["EXAMPLES", "NUM_HELD_PAIRS", "NUM_HELD_PHRASINGS", "PHRASINGS", "SYSTEM", "phrasing_rows", "write_files"]

SYSTEM = "Answer in one line, like the example."
EXAMPLES = {
    "+": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "2 + 2 = 4. The answer is \\boxed{4}."},
    ],
    "*": [
        {"role": "user", "content": "What is 2 * 3?"},
        {"role": "assistant", "content": "2 * 3 = 6. The answer is \\boxed{6}."},
    ],
}
#: Ten phrasings per operation; the last :data:`NUM_HELD_PHRASINGS` of each are never trained on.
PHRASINGS = {
    "+": (
        "What is {a} + {b}?",
        "Compute {a} + {b}.",
        "Add {a} and {b}.",
        "What is {a} plus {b}?",
        "Evaluate {a} + {b}.",
        "{a} + {b} = ?",
        "Solve: {a} + {b}",
        "Calculate {a}+{b}.",
        "Work out {a} + {b}.",
        "How much is {a} plus {b}?",
    ),
    "*": (
        "What is {a} * {b}?",
        "Compute {a} * {b}.",
        "Multiply {a} by {b}.",
        "What is {a} times {b}?",
        "Evaluate {a} * {b}.",
        "Solve: {a} * {b}",
        "What is the product of {a} and {b}?",
        "Calculate {a}*{b}.",
        "Work out {a} * {b}.",
        "How much is {a} times {b}?",
    ),
}
NUM_HELD_PHRASINGS = 3
NUM_HELD_PAIRS = 24
SPLIT_SEED = 31
_PAIRS = [(a, b) for a in range(1, 10) for b in range(1, 10)]


def _row(op: str, phrasing: int, a: int, b: int, split: str) -> dict:
    question = PHRASINGS[op][phrasing].format(a=a, b=b)
    prompt = [{"role": "system", "content": SYSTEM}, *EXAMPLES[op], {"role": "user", "content": question}]
    answer = a + b if op == "+" else a * b
    return {"prompt": prompt, "answer": str(answer), "op": op, "phrasing": phrasing, "a": a, "b": b, "split": split}


def phrasing_rows(num_test: int | None = 320) -> tuple[list[dict], list[dict]]:
    """``(train, test)`` rows of the split the module doc describes (``num_test=None``: every test row)."""
    rng = random.Random(SPLIT_SEED)
    train, test = [], []
    for op in ("+", "*"):
        held_pairs = set(rng.sample(_PAIRS, NUM_HELD_PAIRS))
        n = len(PHRASINGS[op])
        for phrasing in range(n):
            held_phrasing = phrasing >= n - NUM_HELD_PHRASINGS
            for a, b in _PAIRS:
                held_pair = (a, b) in held_pairs
                if not (held_pair or held_phrasing):
                    train.append(_row(op, phrasing, a, b, "train"))
                else:
                    split = "both" if held_pair and held_phrasing else ("pair" if held_pair else "phrasing")
                    test.append(_row(op, phrasing, a, b, split))
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test[:num_test] if num_test is not None else test


def write_files(directory: str | Path, num_test: int = 320) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in zip(("train", "test"), phrasing_rows(num_test)):
        path = out / f"phrasings-{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_files(sys.argv[1] if len(sys.argv) > 1 else "recipes/data"):
        print(p)
