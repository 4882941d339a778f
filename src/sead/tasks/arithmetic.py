"""Built-in synthetic arithmetic task: verifiable problems, a character tokenizer, tiny models.

Everything the demo needs without a download:

- **Problems** at difficulty levels 1..4 (see :data:`LEVEL_DESCRIPTIONS`), asked as plain text
  (``"Q: 47+38=? A:"``, no chat template). The gold completion is a short column-by-column
  scratchpad, least significant digit first, then the boxed answer, then EOS:
  ``" 7+8=15 4+3+1=8 \\boxed{85}"`` (at most 23 tokens with EOS). The scratchpad turns every step
  into a one-digit fact, which tiny models learn in a few hundred steps and which generalizes to
  held-out problems; answering directly (``" \\boxed{85}"``) takes them several times longer.
  Train and test problems are disjoint: a problem's split is a hash of its question text.
  :func:`make_dataset` returns a :class:`datasets.Dataset` of them.
- **A tokenizer** (:func:`build_tokenizer`): one token per character, plus ``\\boxed{`` as a single
  token, wrapped as a left-padding :class:`transformers.PreTrainedTokenizerFast`.
- **A teacher and a smaller student** (Qwen2 architecture, about 0.4M and 0.1M parameters), trained here by supervised fine-tuning on gold completions so that the
  teacher is clearly stronger than the student. :func:`prepare_models` trains them once and caches
  them (``save_pretrained``) under ``$SEAD_CACHE_DIR`` (default ``~/.cache/sead``), keyed by a hash
  of everything that determines the result.
- :func:`evaluate_accuracy`: greedy accuracy with the project's one grader, :func:`sead.verify.grade`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from sead.errors import SeadError
from sead.generation import generate_responses
from sead.tasks.charset import SPECIAL_TOKENS

__all__ = [
    "LEVELS",
    "LEVEL_DESCRIPTIONS",
    "PROMPT_TEMPLATE",
    "MAX_NEW_TOKENS",
    "TEST_FRACTION",
    "TASK_VERSION",
    "QUICK_LEVELS",
    "EVAL_SEED",
    "Problem",
    "ModelSpec",
    "SFTSettings",
    "Recipe",
    "PreparedModels",
    "format_prompt",
    "format_completion",
    "problem_split",
    "level_problems",
    "sample_problems",
    "make_dataset",
    "build_tokenizer",
    "build_model",
    "train_sft",
    "teacher_forced_accuracy",
    "evaluate_accuracy",
    "recipes",
    "default_cache_dir",
    "prepare_models",
]

#: Bump when anything that changes the data, tokenizer or training code changes: old cache
#: entries are then never reused.
TASK_VERSION = "1"

#: Difficulty levels, easiest first.
LEVELS: tuple[int, ...] = (1, 2, 3, 4)

LEVEL_DESCRIPTIONS: dict[int, str] = {
    1: "one-digit addition (3+5)",
    2: "two-digit addition (47+38)",
    3: "two-digit subtraction with a non-negative result (47-38)",
    4: "two-digit times one-digit multiplication (47*8)",
}

#: Plain-text prompt; ``{question}`` is e.g. ``47+38``.
PROMPT_TEMPLATE = "Q: {question}=? A:"

#: Generation budget: the longest gold completion is 23 tokens with EOS
#: (`` 7*8=56 9*8+5=77 \boxed{776}``); a few more are slack for a student that rambles, kept small
#: because the student generates on a CPU during on-policy training.
MAX_NEW_TOKENS = 28

#: Fraction of each level's problems held out for testing (decided by a hash of the question).
TEST_FRACTION = 0.2

SPLITS = ("train", "test")

_SPLIT_SALT = "sead-arithmetic-split-v1"

# ----------------------------------------------------------------------------------------------
# Problems
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem ``a <op> b`` of a difficulty ``level``; ``op`` is ``"+"``, ``"-"`` or ``"*"``."""

    a: int
    op: str
    b: int
    level: int

    @property
    def question(self) -> str:
        return f"{self.a}{self.op}{self.b}"

    @property
    def answer(self) -> int:
        return _OPERATIONS[self.op](self.a, self.b)

    @property
    def prompt(self) -> str:
        return format_prompt(self.question)

    @property
    def completion(self) -> str:
        return format_completion(self)


_OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def format_prompt(question: str) -> str:
    """The prompt for ``question`` (``"47+38"`` -> ``"Q: 47+38=? A:"``)."""
    return PROMPT_TEMPLATE.format(question=question)


def _digits(n: int) -> list[int]:
    """Decimal digits of ``n >= 0``, least significant first."""
    return [int(c) for c in reversed(str(n))]


def _addition_steps(a: int, b: int) -> list[str]:
    steps, carry = [], 0
    da, db = _digits(a), _digits(b)
    for i in range(max(len(da), len(db))):
        terms = [d[i] for d in (da, db) if i < len(d)] + ([carry] if carry else [])
        total = sum(terms)
        steps.append("+".join(map(str, terms)) + f"={total}")
        carry = total // 10
    return steps


def _subtraction_steps(a: int, b: int) -> list[str]:
    if a < b:
        raise ValueError(f"subtraction scratchpad needs a >= b, got {a}-{b}")
    steps, borrow = [], 0
    da, db = _digits(a), _digits(b)
    for i, digit in enumerate(da):
        sub = db[i] if i < len(db) else 0
        lhs = f"{digit}" + (f"-{borrow}" if borrow else "") + f"-{sub}"
        value = digit - borrow - sub
        borrow = int(value < 0)
        if borrow:
            lhs = "1" + lhs
            value += 10
        steps.append(f"{lhs}={value}")
    return steps


def _multiplication_steps(a: int, b: int) -> list[str]:
    if not 0 <= b <= 9:
        raise ValueError(f"multiplication scratchpad needs a one-digit b, got {a}*{b}")
    steps, carry = [], 0
    for digit in _digits(a):
        value = digit * b + carry
        steps.append(f"{digit}*{b}" + (f"+{carry}" if carry else "") + f"={value}")
        carry = value // 10
    return steps


_SCRATCHPADS = {"+": _addition_steps, "-": _subtraction_steps, "*": _multiplication_steps}


def format_completion(problem: Problem) -> str:
    """The gold completion for ``problem``, without EOS: a column-by-column scratchpad, least
    significant digit first, then the boxed answer.

    ``47+38`` -> ``" 7+8=15 4+3+1=8 \\boxed{85}"``; ``47-38`` -> ``" 17-8=9 4-1-3=0 \\boxed{9}"``;
    ``47*8`` -> ``" 7*8=56 4*8+5=37 \\boxed{376}"``.
    """
    steps = _SCRATCHPADS[problem.op](problem.a, problem.b)
    return "".join(f" {step}" for step in steps) + f" \\boxed{{{problem.answer}}}"


def _check_level(level: int) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")


def _enumerate_level(level: int) -> Iterator[Problem]:
    two_digit = range(10, 100)
    if level == 1:
        yield from (Problem(a, "+", b, 1) for a in range(10) for b in range(10))
    elif level == 2:
        yield from (Problem(a, "+", b, 2) for a in two_digit for b in two_digit)
    elif level == 3:
        yield from (Problem(a, "-", b, 3) for a in two_digit for b in two_digit if a >= b)
    elif level == 4:
        yield from (Problem(a, "*", b, 4) for a in two_digit for b in range(2, 10))
    else:  # pragma: no cover - guarded by _check_level
        raise ValueError(f"unknown level {level}")


def problem_split(question: str) -> str:
    """``"train"`` or ``"test"``: a fixed hash of the question text, so splits never overlap."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{question}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


@cache
def _level_split_problems(level: int, split: str) -> tuple[Problem, ...]:
    return tuple(p for p in _enumerate_level(level) if problem_split(p.question) == split)


def level_problems(level: int, split: str | None = None) -> list[Problem]:
    """All problems of ``level`` in ``split`` (``"train"``, ``"test"``, or ``None`` for both)."""
    _check_level(level)
    if split is None:
        return list(_enumerate_level(level))
    _check_split(split)
    return list(_level_split_problems(level, split))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must name at least one level")
    for level in levels:
        _check_level(level)
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must not repeat, got {levels}")
    return levels


def _per_level_counts(n: int, num_levels: int) -> list[int]:
    return [n // num_levels + (1 if i < n % num_levels else 0) for i in range(num_levels)]


def sample_problems(
    n: int, levels: Sequence[int] = LEVELS, seed: int = 0, split: str = "train"
) -> list[Problem]:
    """``n`` problems spread evenly over ``levels`` (in shuffled order), deterministic in ``seed``.

    Within a level, problems are drawn without replacement; only when a level's pool is smaller
    than its share of ``n`` does a problem repeat (each at most ``ceil(share / pool)`` times).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = _check_levels(levels)
    _check_split(split)
    out: list[Problem] = []
    for level, count in zip(levels, _per_level_counts(n, len(levels))):
        pool = list(_level_split_problems(level, split))
        rng = random.Random(f"{seed}:{split}:{level}")
        while count > 0:
            rng.shuffle(pool)
            out.extend(pool[:count])
            count -= min(count, len(pool))
    random.Random(f"{seed}:{split}:order").shuffle(out)
    return out


def make_dataset(n: int, levels: Sequence[int] = LEVELS, seed: int = 0, split: str = "train") -> Dataset:
    """A dataset of ``n`` problems with columns ``prompt``, ``completion``, ``answer``, ``level``.

    ``answer`` is the gold number as a string (``"9"``), ``completion`` the gold target text for
    supervised training (``" 17-8=9 4-1-3=0 \\boxed{9}"``, without EOS). Rows are spread evenly over ``levels``;
    ``split="test"`` draws only held-out problems, disjoint from ``split="train"``.
    """
    problems = sample_problems(n, levels=levels, seed=seed, split=split)
    return Dataset.from_dict(
        {
            "prompt": [p.prompt for p in problems],
            "completion": [p.completion for p in problems],
            "answer": [str(p.answer) for p in problems],
            "level": [p.level for p in problems],
        }
    )


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = SPECIAL_TOKENS
BOXED_TOKEN = "\\boxed{"
#: Every character the prompts and completions use, each one token.
CHARACTERS = "0123456789+-*=?: QA}"


def build_tokenizer():
    """The task's tokenizer: one token per character of :data:`CHARACTERS`, ``\\boxed{`` as one.

    Ids 0-3 are ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``, 4 is ``\\boxed{``, then the characters in
    order. Byte-level (:func:`sead.tasks.charset.build_char_tokenizer`), so a saved model folder reloads
    with the same ids through ``AutoTokenizer.from_pretrained`` (as vLLM loads it). Nothing is added
    around the text when encoding (no BOS); ``padding_side="left"``.
    """
    from .charset import build_char_tokenizer

    return build_char_tokenizer(CHARACTERS, markers=(BOXED_TOKEN,), model_max_length=64)


# ----------------------------------------------------------------------------------------------
# Models and supervised training
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Size of a tiny Qwen2 decoder."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    num_kv_heads: int | None = None  # None: same as num_heads

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
            max_position_embeddings=64,
            tie_word_embeddings=False,
            **kwargs,
        )


@dataclass(frozen=True)
class SFTSettings:
    """Supervised fine-tuning on gold completions: AdamW, linear warmup then cosine decay."""

    steps: int
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    levels: tuple[int, ...] = LEVELS
    #: Relative sampling weight of each of ``levels``; ``None``: all equal.
    level_weights: tuple[float, ...] | None = None
    #: Stop early once the probe accuracy reaches this (``None``: always run ``steps``). The probe
    #: is ``probe_size`` training problems spread evenly over ``levels``, checked every
    #: ``check_every`` steps; a problem counts as solved when every completion token is the
    #: argmax under teacher forcing, i.e. greedy decoding would reproduce the gold completion.
    #: Used to stop the student at a target starting accuracy however fast a seed learns.
    stop_at_accuracy: float | None = None
    check_every: int = 10
    probe_size: int = 256


@dataclass(frozen=True)
class Recipe:
    """How one model (teacher or student) is made: its size, its training, its evaluation."""

    role: str
    model: ModelSpec
    sft: SFTSettings
    eval_levels: tuple[int, ...] = LEVELS
    eval_size: int = 400

    def cache_key(self, seed: int) -> str:
        """Hash of everything that determines the trained model (and the task version)."""
        payload = {
            "task_version": TASK_VERSION,
            "recipe": dataclasses.asdict(self),
            "seed": seed,
            "test_fraction": TEST_FRACTION,
            "split_salt": _SPLIT_SALT,
            "data_fingerprint": _data_fingerprint(),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@cache
def _data_fingerprint() -> str:
    """Hash of the tokenizer's vocabulary and of sample prompts and gold completions of every
    level, so that a change of format invalidates cached models even if nobody bumps
    :data:`TASK_VERSION`."""
    samples = [p.prompt + p.completion for level in LEVELS for p in level_problems(level, "train")[:5]]
    blob = json.dumps({"vocab": build_tokenizer().get_vocab(), "samples": samples}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_model(spec: ModelSpec, tokenizer, seed: int = 0):
    """A freshly initialised :class:`transformers.Qwen2ForCausalLM` of size ``spec``."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(spec.to_config(len(tokenizer), tokenizer))


def _encode_example(tokenizer, prompt: str, completion: str) -> tuple[list[int], int]:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return prompt_ids + completion_ids + [tokenizer.eos_token_id], len(prompt_ids)


def _collate(examples: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
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


def train_sft(
    model, tokenizer, settings: SFTSettings, seed: int = 0, progress: bool | str = True
) -> list[float]:
    """Supervised fine-tuning of ``model`` on gold completions of training problems, in place.

    Each step draws ``batch_size`` problems with replacement from the train split, a level of
    ``settings.levels`` at a time with probability ``settings.level_weights`` (equal by default),
    then a problem of that level uniformly; the loss is the mean cross-entropy over completion tokens
    (EOS included). Returns the per-step losses.
    """
    levels = _check_levels(settings.levels)
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
    pools = [
        [_encode_example(tokenizer, p.prompt, p.completion) for p in _level_split_problems(level, "train")]
        for level in levels
    ]
    probe = None
    if settings.stop_at_accuracy is not None:
        probe_problems = sample_problems(settings.probe_size, levels=levels, seed=seed + 1, split="train")
        probe = _collate(
            [_encode_example(tokenizer, p.prompt, p.completion) for p in probe_problems],
            tokenizer.pad_token_id,
        )
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )
    model.train()
    losses: list[float] = []
    bar = tqdm(
        range(settings.steps),
        desc=progress if isinstance(progress, str) else "sft",
        disable=not progress,
        unit="step",
    )
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _lr_factor(step, settings)
        chosen = rng.choices(pools, weights=weights, k=settings.batch_size)
        batch = _collate([rng.choice(pool) for pool in chosen], tokenizer.pad_token_id)
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
        if probe is not None and (step + 1) % settings.check_every == 0:
            accuracy = teacher_forced_accuracy(model, probe)
            model.train()
            if accuracy >= settings.stop_at_accuracy:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}", probe=f"{accuracy:.2f}")
                break
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def teacher_forced_accuracy(model, batch: dict[str, torch.Tensor]) -> float:
    """Fraction of rows of a :func:`_collate` batch whose every labelled token is the model's argmax
    given the gold prefix: exactly the rows that greedy decoding would answer with the gold text."""
    model.eval()
    logits_BTV = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    predicted_BT = logits_BTV[:, :-1].argmax(-1)
    target_BT = batch["labels"][:, 1:]
    solved_B = ((predicted_BT == target_BT) | (target_BT == -100)).all(dim=-1)
    return solved_B.float().mean().item()


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_accuracy(
    model,
    tokenizer,
    dataset,
    batch_size: int = 256,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool | str = False,
) -> dict:
    """Greedy accuracy of ``model`` on ``dataset`` (columns ``prompt``, ``answer``, ``level``).

    Responses are generated with :func:`sead.generation.generate_responses` and graded with
    :func:`sead.verify.grade`. Returns ``{"accuracy": float, "accuracy_by_level": {level: float},
    "n": int}``.
    """
    from sead.verify import grade

    for column in ("prompt", "answer", "level"):
        if column not in dataset.column_names:
            raise ValueError(f"dataset needs a {column!r} column, has {dataset.column_names}")
    if len(dataset) == 0:
        raise ValueError("dataset is empty")
    responses = generate_responses(
        model,
        tokenizer,
        list(dataset["prompt"]),
        temperature=0.0,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    by_level: dict[int, list[bool]] = {}
    for (response,), gold, level in zip(responses, dataset["answer"], dataset["level"]):
        by_level.setdefault(int(level), []).append(bool(grade(response, str(gold)).correct))
    total = [c for flags in by_level.values() for c in flags]
    return {
        "accuracy": sum(total) / len(total),
        "accuracy_by_level": {level: sum(f) / len(f) for level, f in sorted(by_level.items())},
        "n": len(total),
    }


# ----------------------------------------------------------------------------------------------
# Recipes and cached preparation
# ----------------------------------------------------------------------------------------------

# Sizes and steps were tuned on a 2-core CPU (one torch thread) so that the teacher is clearly
# stronger and the student is well-formed (>= 99% of its answers boxed, greedy or sampled), good at
# easy levels, weak at hard ones, and far from its capacity (the same student size reaches ~85%
# with longer SFT): room for distillation to show. The student's SFT stops at a probe accuracy
# rather than a step count: its learning curve is steep, and a fixed count gave 21-61% across
# seeds; the stop gives 33-43%. Held-out greedy accuracy, seed 0 (400 problems; quick: 300):
#   full:  teacher 94.3% (levels 1-3 100%, level 4 77%: its carry steps are often combinations
#          unseen in training), student 42.7% (96 / 55 / 19 / 1%); 127 s on a quiet machine.
#   quick: teacher 93.0% (100 / 93 / 86%), student 42.7% (86 / 41 / 1%); 33 s.
#: The student's SFT stops when it solves this fraction of a probe of training problems.
_STUDENT_TARGET = 0.4
_FULL_TEACHER = Recipe(
    role="teacher",
    model=ModelSpec(hidden_size=96, num_layers=3, num_heads=4, intermediate_size=288),
    sft=SFTSettings(steps=850, batch_size=64, lr=3e-3, level_weights=(1, 2, 2, 3)),
)
_FULL_STUDENT = Recipe(
    role="student",
    model=ModelSpec(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=192),
    sft=SFTSettings(
        steps=400, batch_size=64, lr=3e-3, level_weights=(4, 3, 2, 1), stop_at_accuracy=_STUDENT_TARGET
    ),
)
#: Levels of the quick preparation (and so of ``sead demo --quick``).
QUICK_LEVELS: tuple[int, ...] = (1, 2, 3)
_QUICK_TEACHER = Recipe(
    role="teacher",
    model=ModelSpec(hidden_size=96, num_layers=2, num_heads=4, intermediate_size=288),
    sft=SFTSettings(steps=480, batch_size=32, lr=3e-3, levels=QUICK_LEVELS),
    eval_levels=QUICK_LEVELS,
    eval_size=300,
)
_QUICK_STUDENT = Recipe(
    role="student",
    model=ModelSpec(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=192),
    sft=SFTSettings(
        steps=400,
        batch_size=32,
        lr=3e-3,
        levels=QUICK_LEVELS,
        level_weights=(4, 2, 1),
        stop_at_accuracy=_STUDENT_TARGET,
    ),
    eval_levels=QUICK_LEVELS,
    eval_size=300,
)

#: Seed of the held-out problems on which prepared models are scored.
EVAL_SEED = 1234


def recipes(quick: bool = False) -> tuple[Recipe, Recipe]:
    """The (teacher, student) recipes :func:`prepare_models` uses."""
    return (_QUICK_TEACHER, _QUICK_STUDENT) if quick else (_FULL_TEACHER, _FULL_STUDENT)


def default_cache_dir() -> Path:
    """``$SEAD_CACHE_DIR`` if set, else ``~/.cache/sead``."""
    env = os.environ.get("SEAD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sead"


@dataclass
class PreparedModels:
    """Trained teacher and student checkpoints of the arithmetic task (each a ``save_pretrained``
    directory holding model and tokenizer), and their measured held-out greedy accuracy."""

    teacher_dir: Path
    student_dir: Path
    tokenizer: Any
    teacher_accuracy: float
    student_accuracy: float
    teacher_accuracy_by_level: dict[int, float]
    student_accuracy_by_level: dict[int, float]
    levels: tuple[int, ...]
    quick: bool
    #: True when nothing was trained: both models came from the cache.
    cached: bool = False
    #: Seconds spent training and evaluating in this call (0.0 on a cache hit).
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)

    def load_teacher(self):
        """A fresh copy of the teacher, in eval mode."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.teacher_dir).eval()

    def load_student(self):
        """A fresh copy of the (initial) student, in eval mode."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.student_dir).eval()


METRICS_FILE = "sead_arithmetic.json"


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _read_metrics(directory: Path) -> dict | None:
    path = directory / METRICS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _train_and_save(recipe: Recipe, tokenizer, seed: int, target: Path, progress: bool) -> dict:
    """Train ``recipe``, score it, and publish the checkpoint at ``target``; returns its metrics."""
    start = time.perf_counter()
    model = build_model(recipe.model, tokenizer, seed=seed)
    losses = train_sft(
        model, tokenizer, recipe.sft, seed=seed, progress=f"SFT {recipe.role}" if progress else False
    )
    train_seconds = time.perf_counter() - start
    eval_set = make_dataset(recipe.eval_size, levels=recipe.eval_levels, seed=EVAL_SEED, split="test")
    scores = evaluate_accuracy(
        model, tokenizer, eval_set, progress=f"eval {recipe.role}" if progress else False
    )
    metrics = {
        "role": recipe.role,
        "task_version": TASK_VERSION,
        "seed": seed,
        "recipe": dataclasses.asdict(recipe),
        "accuracy": scores["accuracy"],
        "accuracy_by_level": {str(k): v for k, v in scores["accuracy_by_level"].items()},
        "eval_size": scores["n"],
        "eval_seed": EVAL_SEED,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "steps_run": len(losses),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    return _save_atomically(model, tokenizer, metrics, target, progress)


def _save_atomically(model, tokenizer, metrics: dict, target: Path, progress: bool) -> dict:
    """Write model, tokenizer and metrics to a temporary sibling of ``target``, then rename it.

    A crash leaves at most a ``.tmp-*`` directory, never a half-written entry. If another process
    published ``target`` first, its entry is kept and its metrics are returned.
    """
    from transformers.utils import logging as hf_logging

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a cache entry is a normal directory
        if not progress:
            hf_logging.disable_progress_bar()
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            published = _read_metrics(target)
            if published is None:
                raise
            return published
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return metrics


def _prepare_one(
    recipe: Recipe, tokenizer, seed: int, cache_dir: Path, progress: bool
) -> tuple[Path, dict, bool]:
    target = cache_dir / f"arithmetic-{recipe.role}-{recipe.cache_key(seed)}"
    metrics = _read_metrics(target)
    if metrics is not None:
        return target, metrics, True
    if target.exists():
        raise SeadError(
            f"{target} exists but has no readable {METRICS_FILE}; it is not a finished cache entry. "
            "Delete it and run again."
        )
    return target, _train_and_save(recipe, tokenizer, seed, target, progress), False


def prepare_models(
    cache_dir: str | os.PathLike | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    *,
    num_threads: int | None = 1,
) -> PreparedModels:
    """Trained teacher and student for the arithmetic task, from the cache or trained now.

    Each model is trained by :func:`train_sft` per its recipe (:func:`recipes`), scored on held-out
    problems (greedy) and saved with its tokenizer and a ``sead_arithmetic.json`` of metrics under
    ``cache_dir`` (default :func:`default_cache_dir`), in a directory named by a hash of the recipe,
    the seed and :data:`TASK_VERSION`. A later call with the same settings returns at once. An entry
    appears only when complete (written to a temporary directory, then renamed).

    ``quick=True`` trains smaller models on :data:`QUICK_LEVELS` in about half a minute (2 CPU
    cores); the full preparation takes a few minutes. ``num_threads`` is the torch thread count
    while training (restored afterwards; ``None`` leaves it alone). One thread is the default:
    these models are too small for intra-op parallelism to pay, and on a machine whose cores are
    shared a second thread made steps up to ten times slower in our measurements.
    """
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    teacher_recipe, student_recipe = recipes(quick)
    tokenizer = build_tokenizer()
    start = time.perf_counter()
    threads = contextlib.nullcontext() if num_threads is None else _torch_threads(num_threads)
    with threads:
        teacher_dir, teacher_metrics, teacher_hit = _prepare_one(
            teacher_recipe, tokenizer, seed, cache_dir, progress
        )
        student_dir, student_metrics, student_hit = _prepare_one(
            student_recipe, tokenizer, seed, cache_dir, progress
        )
    cached = teacher_hit and student_hit
    return PreparedModels(
        teacher_dir=teacher_dir,
        student_dir=student_dir,
        tokenizer=tokenizer,
        teacher_accuracy=teacher_metrics["accuracy"],
        student_accuracy=student_metrics["accuracy"],
        teacher_accuracy_by_level={int(k): v for k, v in teacher_metrics["accuracy_by_level"].items()},
        student_accuracy_by_level={int(k): v for k, v in student_metrics["accuracy_by_level"].items()},
        levels=tuple(teacher_recipe.eval_levels),
        quick=quick,
        cached=cached,
        seconds=0.0 if cached else time.perf_counter() - start,
        metrics={"teacher": teacher_metrics, "student": student_metrics},
    )
