"""Shared helpers of the real-model tests (SmolLM2-135M-Instruct and a depth-pruned copy; the ``smollm2`` fixture of
conftest.py): chat prompts from the project's own problems, a config small enough for a 2-core CPU, a naive
full-logits loss.

A prompt is a conversation (TRL applies the tokenizer's chat template): one worked example whose answer ends in
``\\boxed{...}``, then the question (sead.data.additions, the prompts of recipes/smollm2-prune-distill.yaml).
SmolLM2-135M-Instruct follows the example's format: greedy, it answers an addition with
"7 + 8 = 15. The answer is \\boxed{15}." and its own EOS (``<|im_end|>``).

Benchmark texts stay out of the repository: the prompts here need no file, so a clone with nothing beside it runs
the real-model tests. :data:`GSM8K` is where the project's CI keeps GSM8K (``../shared``); a test that reads it
skips, naming that path, where it is absent (as tests/test_benchmarks.py does).
"""

from __future__ import annotations

from pathlib import Path

import torch

from _tiny import FAST
from sead.data.additions import EXAMPLE

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / ".." / "shared" / "data" / "math" / "gsm8k.jsonl"

#: The worked example: "What is 2 + 2?" -> "2 + 2 = 4. The answer is \\boxed{4}." (sead.data.additions).
SHOT = EXAMPLE

#: Addition questions and their sums; SmolLM2-135M-Instruct gets all but 12 + 30 right, greedy.
ADDITIONS = [("What is 7 + 8?", "15"), ("What is 12 + 30?", "42"), ("What is 9 + 3?", "12"), ("What is 4 + 4?", "8")]


def chat(question: str) -> list[dict[str, str]]:
    return [*SHOT, {"role": "user", "content": question}]


def chat_rows(n: int) -> list[dict]:
    """``n`` chat prompts (columns ``prompt``, ``answer``, ``difficulty``) asking the built-in arithmetic task's
    problems (sead.tasks.arithmetic's train split, spread over its four levels: one- and two-digit addition, two-digit
    subtraction, two-digit times one-digit) as sead.data.additions asks a real instruct model: the worked example,
    then "What is 47 - 38?". One- and two-digit operands give prompts of different lengths (left padding in a
    batch); ``difficulty`` is the level's (0, 0.25, 0.5, 0.75)."""
    from sead.tasks.arithmetic import sample_problems

    return [{"prompt": chat(f"What is {p.a} {p.op} {p.b}?"), "answer": str(p.answer), "difficulty": (p.level - 1) / 4}
            for p in sample_problems(n, seed=0, split="train")]  # fmt: skip


def chat_dataset(n: int):
    from datasets import Dataset

    return Dataset.from_list(chat_rows(n))


#: One trainer step of the real pair in seconds, not minutes: the tiny models' settings (``_tiny.FAST``) with 2
#: rollouts of a few tokens per step and a real model's learning rate.
REAL = dict(FAST, per_device_train_batch_size=2, learning_rate=1e-4, teacher_num_generations=1, competence_window=4)


def real_config(output_dir, **overrides):
    from sead.training.config import OPDConfig

    return OPDConfig(output_dir=str(output_dir), **{**REAL, **overrides})


def naive_reverse_kl(student, teacher, inputs, rows: int | None = None) -> torch.Tensor:
    """Vanilla OPD's loss from each model's own forward (``model(ids).logits``, the full ``[B, T, V]``), no sead code:
    ``sum_t mask_t KL(p_S,t || p_T,t) / sum_t mask_t``, the KL under the student's distribution
    ``sum_v p_S(v) (log p_S(v) - log p_T(v))``. ``rows``: compare over the first ``rows`` ids only (renormalised)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    T = inputs["completion_ids"].shape[1]
    z_s = student(input_ids=ids, attention_mask=attn).logits[:, -T - 1 : -1].float()
    with torch.no_grad():
        z_t = teacher(input_ids=ids, attention_mask=attn).logits[:, -T - 1 : -1].float()
    if rows is not None:
        z_s, z_t = z_s[..., :rows], z_t[..., :rows]
    logp_s, logp_t = torch.log_softmax(z_s, -1), torch.log_softmax(z_t, -1)
    kl_BT = (logp_s.exp() * (logp_s - logp_t)).sum(-1)
    mask = inputs["completion_mask"].float()
    return (kl_BT * mask).sum() / mask.sum()
