"""Built-in task ``arithmetic`` (``--task arithmetic``): verifiable problems, a character tokenizer, tiny models.

One correct scratchpad per problem, so it has none of the forks SEAD's zones are built for (``docs/task.md``);
the default task is :mod:`sead.tasks.sums`.

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
- **A teacher and a smaller student** (Qwen2 architecture, about 0.4M and 0.1M parameters, head
  dimension 32), trained here by supervised fine-tuning on gold completions so that the teacher is
  clearly stronger than the student. :func:`prepare_models` trains them once and caches them
  (``save_pretrained``) under ``$SEAD_CACHE_DIR`` (default ``~/.cache/sead``), keyed by a hash of
  everything that determines the result (:mod:`sead.tasks.prepare`, shared with the ``sums`` task).
- :func:`evaluate_accuracy`: greedy accuracy with the project's one grader, :func:`sead.grading.verifier.grade`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from datasets import Dataset

from sead.tasks import scoring
from sead.tasks import sft as _sft
from sead.tasks.charset import SPECIAL_TOKENS
from sead.tasks.prepare import BuiltinTask, PreparedModels, Recipe, default_cache_dir
from sead.tasks.sft import ModelSpec, SFTSettings, build_model, teacher_forced_accuracy

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
    "ArithmeticTask",
    "TASK",
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
    from sead.tasks.charset import build_char_tokenizer

    return build_char_tokenizer(CHARACTERS, markers=(BOXED_TOKEN,), model_max_length=64)


# ----------------------------------------------------------------------------------------------
# Models, training and cached preparation (the shared machinery of sead.tasks.sft / prepare)
# ----------------------------------------------------------------------------------------------


def _draw_example(level: int, rng: random.Random) -> tuple[str, str]:
    problem = rng.choice(_level_split_problems(level, "train"))
    return problem.prompt, problem.completion


def train_sft(
    model, tokenizer, settings: SFTSettings, seed: int = 0, progress: bool | str = True
) -> list[float]:
    """Supervised fine-tuning of ``model`` on gold completions of training problems, in place.

    Each step draws ``batch_size`` problems with replacement from the train split, a level of
    ``settings.levels`` at a time with probability ``settings.level_weights`` (equal by default),
    then a problem of that level uniformly (:func:`sead.tasks.sft.train_sft`). Returns the per-step losses.
    """
    levels = _check_levels(settings.levels or LEVELS)
    return _sft.train_sft(model, tokenizer, settings, _draw_example, levels, seed=seed, progress=progress)


def evaluate_accuracy(
    model,
    tokenizer,
    dataset,
    batch_size: int = 256,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool | str = False,
) -> dict:
    """Greedy accuracy of ``model`` on ``dataset`` (:func:`sead.tasks.scoring.evaluate_accuracy`)."""
    return scoring.evaluate_accuracy(
        model, tokenizer, dataset, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
    )


# Sizes and steps were tuned on a 2-core CPU (one torch thread) so that the teacher is clearly
# stronger and the student is well-formed (>= 99% of its answers boxed, greedy or sampled), good at
# easy levels, weak at hard ones, and far from its capacity: room for distillation to show. The
# student's SFT stops at a probe accuracy rather than a step count: its learning curve is steep, and a
# fixed count gave 21-61% across seeds. Head dimension 32 in both (vLLM's CPU attention accepts no
# smaller one). Held-out greedy accuracy, seed 0 (400 problems; quick: 300), 2026-12-01:
#   full:  teacher 94.0% (levels 1-3 100%, level 4 76%), student 36.7% (82 / 46 / 17 / 2%); 127 s.
#   quick: teacher 93.0% (100 / 99 / 80%), student 24.7% (49 / 22 / 3%); 41 s.
#: The student's SFT stops when it solves this fraction of a probe of training problems.
_STUDENT_TARGET = 0.4
_FULL_TEACHER = Recipe(
    role="teacher",
    model=ModelSpec(hidden_size=96, num_layers=3, num_heads=3, intermediate_size=288),
    sft=SFTSettings(steps=850, batch_size=64, lr=3e-3, levels=LEVELS, level_weights=(1, 2, 2, 3)),
    eval_levels=LEVELS,
)
_FULL_STUDENT = Recipe(
    role="student",
    model=ModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192),
    sft=SFTSettings(
        steps=400, batch_size=64, lr=3e-3, levels=LEVELS, level_weights=(4, 3, 2, 1), stop_at_accuracy=_STUDENT_TARGET
    ),
    eval_levels=LEVELS,
)
#: Levels of the quick preparation (and so of ``sead demo --task arithmetic --quick``).
QUICK_LEVELS: tuple[int, ...] = (1, 2, 3)
_QUICK_TEACHER = Recipe(
    role="teacher",
    model=ModelSpec(hidden_size=96, num_layers=2, num_heads=3, intermediate_size=288),
    sft=SFTSettings(steps=480, batch_size=32, lr=3e-3, levels=QUICK_LEVELS),
    eval_levels=QUICK_LEVELS,
    eval_size=300,
)
_QUICK_STUDENT = Recipe(
    role="student",
    model=ModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192),
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

METRICS_FILE = "sead_arithmetic.json"


def recipes(quick: bool = False) -> tuple[Recipe, Recipe]:
    """The (teacher, student) recipes :func:`prepare_models` uses."""
    return (_QUICK_TEACHER, _QUICK_STUDENT) if quick else (_FULL_TEACHER, _FULL_STUDENT)


@cache
def _data_fingerprint() -> str:
    """Hash of the tokenizer's vocabulary, of sample prompts and gold completions of every level and of
    the split rule, so that a change of format invalidates cached models even if nobody bumps
    :data:`TASK_VERSION`."""
    samples = [p.prompt + p.completion for level in LEVELS for p in level_problems(level, "train")[:5]]
    blob = json.dumps(
        {"vocab": build_tokenizer().get_vocab(), "samples": samples, "test_fraction": TEST_FRACTION, "salt": _SPLIT_SALT},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ArithmeticTask(BuiltinTask):
    """The arithmetic task as a :class:`sead.tasks.prepare.BuiltinTask`."""

    name = "arithmetic"
    version = TASK_VERSION
    levels = LEVELS
    quick_levels = QUICK_LEVELS
    level_descriptions = LEVEL_DESCRIPTIONS
    max_new_tokens = MAX_NEW_TOKENS
    eval_seed = EVAL_SEED

    def build_tokenizer(self):
        return build_tokenizer()

    def make_dataset(self, n, levels=None, seed=0, split="train"):
        return make_dataset(n, levels=levels or LEVELS, seed=seed, split=split)

    def draw_example(self, level, rng):
        return _draw_example(level, rng)

    def data_fingerprint(self):
        return _data_fingerprint()

    def recipes(self, quick=False):
        return recipes(quick)


TASK = ArithmeticTask()


def prepare_models(
    cache_dir: str | os.PathLike | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    *,
    num_threads: int | None = 1,
) -> PreparedModels:
    """Trained teacher and student for the arithmetic task, from the cache or trained now
    (:meth:`sead.tasks.prepare.BuiltinTask.prepare_models`).

    ``quick=True`` trains smaller models on :data:`QUICK_LEVELS` in about half a minute (2 CPU
    cores); the full preparation takes a few minutes.
    """
    return TASK.prepare_models(cache_dir=cache_dir, quick=quick, seed=seed, progress=progress, num_threads=num_threads)
