"""Shared helpers of the trainer-level reliability tests: tiny random models, data, configs, recipes.

Everything here is small enough for a 2-core CPU: a 1-layer Qwen2 with hidden size 32 over the
arithmetic task's 25-token character vocabulary trains a step in a few hundredths of a second with
one torch thread (several threads thrash on tensors this small: always ``torch.set_num_threads(1)``
in-process and ``OMP_NUM_THREADS=1`` in subprocesses, see :func:`subprocess_env`).
"""

from __future__ import annotations

import json
import os
import random
import sys
from functools import lru_cache
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def tokenizer():
    from sead.tasks.arithmetic import build_tokenizer

    return build_tokenizer()


#: hidden size 32 over 1 head: head dimension 32, the smallest vLLM's CPU attention runs
VLLM_HEADS = 1


def tiny_model(
    seed: int = 0, vocab_size: int | None = None, max_position_embeddings: int = 64, num_attention_heads: int = 2
):
    """A 1-layer Qwen2 with random weights (no dropout), initialised from ``seed``; hidden size 32 over
    ``num_attention_heads`` heads (2: head dimension 16; :data:`VLLM_HEADS` for models vLLM runs)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size or len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    return Qwen2ForCausalLM(config)


def tiny_dataset(n: int = 16, difficulty: bool = True, seed: int = 0):
    """``n`` arithmetic prompts (columns prompt/answer/level/completion), plus a ``difficulty`` in [0, 1]."""
    from sead.tasks.arithmetic import make_dataset

    ds = make_dataset(n, seed=seed)
    if difficulty:
        rng = random.Random(seed)
        ds = ds.add_column("difficulty", [round(rng.random(), 3) for _ in range(len(ds))])
    return ds


# Settings that make a trainer step take a few hundredths of a second on a CPU.
FAST = dict(
    use_cpu=True,
    bf16=False,
    activation_checkpointing=False,
    report_to=[],
    max_completion_length=8,
    per_device_train_batch_size=4,
    disable_tqdm=True,
    logging_steps=1,
    save_strategy="no",
    learning_rate=1e-2,
    lr_scheduler_type="constant",
    seed=0,
)


def tiny_config(output_dir, **overrides):
    from sead.training.config import OPDConfig

    return OPDConfig(output_dir=str(output_dir), **{**FAST, **overrides})


def tiny_trainer(output_dir, *, n: int = 16, dataset=None, student_seed: int = 0, teacher_seed: int = 1,
                 reward_funcs=None, callbacks=None, **overrides):
    from sead.training.trainer import OPDTrainer

    return OPDTrainer(
        tiny_model(student_seed),
        tiny_model(teacher_seed),
        args=tiny_config(output_dir, **overrides),
        train_dataset=tiny_dataset(n) if dataset is None else dataset,
        processing_class=tokenizer(),
        reward_funcs=reward_funcs,
        callbacks=callbacks,
    )


def parity_reward(prompts, completions, **columns):
    """A deterministic stand-in verifier: a rollout is correct when its text has an even length. Random
    models pass about half the time, so the curriculum gate moves and teacher rollouts get endorsed."""
    return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]


def swapped_tokenizer(extra: int = 0):
    """The task tokenizer with "3" and "7" swapping ids, and ``extra`` more tokens: another tokenizer."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tokenizer().get_vocab()
    swapped = {t: (vocab["7"] if t == "3" else vocab["3"] if t == "7" else i) for t, i in vocab.items()}
    for j in range(extra):
        swapped[f"<extra{j}>"] = len(swapped)
    backend = Tokenizer(models.WordLevel(vocab=swapped, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")  # fmt: skip


def save_models(
    root: Path,
    *,
    teacher_vocab_size: int | None = None,
    teacher_tokenizer=None,
    student_max_positions: int = 64,
    teacher_max_positions: int = 64,
    num_attention_heads: int = 2,
):
    """Save a tiny student and teacher (each with the task tokenizer, byte-level: it reloads through
    ``AutoTokenizer`` as vLLM loads it) under ``root``; return their paths."""
    tok = tokenizer()
    paths = []
    for name, seed, vocab, ctx in (
        ("student", 0, None, student_max_positions),
        ("teacher", 1, teacher_vocab_size, teacher_max_positions),
    ):
        path = root / name
        model = tiny_model(seed, vocab_size=vocab, max_position_embeddings=ctx, num_attention_heads=num_attention_heads)
        model.save_pretrained(path)
        (teacher_tokenizer if name == "teacher" and teacher_tokenizer is not None else tok).save_pretrained(path)
        paths.append(str(path))
    return tuple(paths)


def write_jsonl(rows, path: Path) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def write_recipe(path: Path, **fields) -> str:
    """A YAML recipe with the fast settings plus ``fields``."""
    recipe = {**FAST, "report_to": "none", **fields}
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f)
    return str(path)


def standard_recipe(tmp_path: Path, **fields) -> str:
    """Models, a 16-row jsonl dataset (with difficulty) and a recipe naming them, all under ``tmp_path``."""
    student, teacher = save_models(tmp_path)
    data = write_jsonl(tiny_dataset(16).to_list(), tmp_path / "train.jsonl")
    base = dict(
        model_name_or_path=student,
        teacher_model_name_or_path=teacher,
        dataset_name=data,
        output_dir=str(tmp_path / "out"),
        method="opd",
    )
    return write_recipe(tmp_path / "recipe.yaml", **{**base, **fields})


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
    )
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def vllm_env() -> dict[str, str]:
    """:func:`subprocess_env` for a process that starts vLLM engines on a CPU: 1 GiB of KV cache per engine
    (the default share of the NUMA node does not fit two engines next to training), the engine core in the
    calling process (no second interpreter to start), and vLLM's own CPU-CI setting: dynamo + eager instead
    of compiling kernels with inductor at every start (``VLLM_CPU_CI_ENV``, vllm/platforms/cpu.py)."""
    env = subprocess_env()
    env.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_CI_ENV="1")
    return env


def sead_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sead.cli", *args]


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def fixed_batch(seed: int = 0, B: int = 4, P: int = 5, C: int = 6) -> dict[str, torch.Tensor]:
    """A fixed generation batch: random prompt / completion ids over the task vocabulary, a ragged completion mask
    (row ``b`` keeps ``C - b`` tokens), its token count and alternating verdicts."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer())
    mask = torch.ones(B, C, dtype=torch.long)
    for b in range(B):
        mask[b, max(C - b, 1) :] = 0
    return {
        "prompt_ids": torch.randint(5, vocab, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(5, vocab, (B, C), generator=g),
        "completion_mask": mask,
        "num_items_in_batch": mask.sum(),
        "correct": torch.tensor([b % 2 == 0 for b in range(B)]),
    }


def completion_logits(model, inputs) -> torch.Tensor:
    """A model's own forward (``model(**inputs).logits``) at the completion positions (the naive reference of every
    loss test)."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    T = inputs["completion_ids"].shape[1]
    return model(input_ids=ids, attention_mask=attn).logits[:, -T - 1 : -1].float()
