"""Shared helpers of the real-model tests (SmolLM2-135M-Instruct and a depth-pruned copy; the ``smollm2`` fixture of
conftest.py): GSM8K-style chat prompts, a config small enough for a 2-core CPU, a naive full-logits loss.

A prompt is a conversation (TRL applies the tokenizer's chat template): one worked example whose answer ends in
``\\boxed{...}``, then the question. SmolLM2-135M-Instruct follows the example's format: greedy, it answers an
addition with "7 + 8 = 15. The answer is \\boxed{15}." and its own EOS (``<|im_end|>``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from _tiny import FAST

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / ".." / "shared" / "data" / "math" / "gsm8k.jsonl"

SHOT = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4. The answer is \\boxed{4}."},
]

#: Addition questions and their sums; SmolLM2-135M-Instruct gets all but 12 + 30 right, greedy.
ADDITIONS = [("What is 7 + 8?", "15"), ("What is 12 + 30?", "42"), ("What is 9 + 3?", "12"), ("What is 4 + 4?", "8")]


def chat(question: str) -> list[dict[str, str]]:
    return [*SHOT, {"role": "user", "content": question}]


def gsm8k_rows(n: int) -> list[dict]:
    """The first ``n`` GSM8K test questions as chat prompts (columns ``prompt``, ``answer``, ``difficulty``)."""
    rows = []
    with open(GSM8K) as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            row = json.loads(line)
            answer = row["answer"].split("####")[-1].strip().replace(",", "")
            rows.append({"prompt": chat(row["question"]), "answer": answer, "difficulty": (i % 4) / 4})
    return rows


def gsm8k_dataset(n: int):
    from datasets import Dataset

    return Dataset.from_list(gsm8k_rows(n))


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
