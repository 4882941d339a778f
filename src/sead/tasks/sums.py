"""Built-in task ``sums``: add a list of one-digit numbers, in any order (the default of ``sead demo``).

Why this task, and what each of its parts is for: ``docs/task.md``. In short, it is built so that the
mechanisms SEAD and SG-OPD rely on exist in it:

- **Forks.** ``"Q: 3+7+2+9=? A:"`` is solved by a scratchpad of running totals,
  ``" 3+7=10 +9+2=21 \\boxed{21}"``, in which the order of the numbers and how many are added per
  step are free: several continuations are correct at every such position. The training text takes
  each branch with a fixed probability (:class:`Style`): the next number is the remaining one at prompt
  position ``i`` with probability proportional to ``order_decay ** i``, and a step takes a second (third
  in the first step) number with probability ``group_first`` / ``group_later``. A model trained on it is
  uncertain exactly there.
- **Mastered tokens.** Everything else (spaces, ``+``, ``=``, the digits of a total, the boxed answer)
  is forced by the prefix.
- **Long dependencies.** Which numbers remain depends on every earlier step, and a total on the one
  before: a slip (a number dropped, repeated or mis-added) leaves the rest of the text on no correct path.
- **Levels** by list length (:data:`LEVEL_LENGTHS`): the longest lists are hard for the teacher too.

:class:`SumWalk` is the task's exact oracle: for any prefix of a completion it gives the distribution the
training text draws the next token from (``None`` once the prefix has left every correct path), so forks,
valid continuations and errors are known exactly. The final answer is unique, so the project's grader
(:func:`sead.grading.verifier.grade`, the last ``\\boxed{}``) accepts every correct path.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from datasets import Dataset

from sead.tasks.charset import SPECIAL_TOKENS
from sead.tasks.prepare import BuiltinTask, Recipe
from sead.tasks.sft import ModelSpec, SFTSettings, check_levels

__all__ = [
    "LEVELS",
    "LEVEL_LENGTHS",
    "LEVEL_DESCRIPTIONS",
    "QUICK_LEVELS",
    "MAX_NEW_TOKENS",
    "TEST_FRACTION",
    "Style",
    "STYLE",
    "Problem",
    "SumWalk",
    "EOS",
    "BOXED",
    "format_prompt",
    "problem_split",
    "sample_completion",
    "completion_tokens",
    "walk_distributions",
    "grammar_choices",
    "is_correct_path",
    "sample_problems",
    "make_dataset",
    "build_tokenizer",
    "SumsTask",
    "TASK",
]

#: Number of summands per level, easiest first.
LEVEL_LENGTHS: dict[int, int] = {1: 3, 2: 4, 3: 6, 4: 8}
LEVELS: tuple[int, ...] = tuple(LEVEL_LENGTHS)
LEVEL_DESCRIPTIONS: dict[int, str] = {lv: f"{n} one-digit numbers (3+7+2...)" for lv, n in LEVEL_LENGTHS.items()}
QUICK_LEVELS: tuple[int, ...] = (1, 2, 3)

#: Plain-text prompt; ``{question}`` is e.g. ``3+7+2``.
PROMPT_TEMPLATE = "Q: {question}=? A:"
#: Fraction of each level's problems held out for testing (decided by a hash of the question).
TEST_FRACTION = 0.2
SPLITS = ("train", "test")
_SPLIT_SALT = "sead-sums-split-v1"

BOXED = "\\boxed{"
EOS = SPECIAL_TOKENS[2]
#: Every character the prompts and completions use, each one token (``\\boxed{`` is one more).
CHARACTERS = "0123456789+=?: QA}"


@dataclass(frozen=True)
class Style:
    """Branch probabilities of the training text at its forks.

    Attributes:
        order_decay: the next number is the remaining one at prompt position ``i`` (0-based) with
            probability proportional to ``order_decay ** i`` (1: uniform; smaller: closer to reading order).
        group_first: after the first step's second number, probability of adding a third before ``=``.
        group_later: in a later step, probability of adding a second number before ``=``.
        max_first / max_later: most numbers per step (first step at least 2, later steps at least 1).
    """

    order_decay: float = 0.7
    group_first: float = 0.3
    group_later: float = 0.45
    max_first: int = 3
    max_later: int = 2


STYLE = Style()


@dataclass(frozen=True)
class Problem:
    """The sum of ``items`` (one-digit numbers 1-9) at difficulty ``level``."""

    items: tuple[int, ...]
    level: int

    @property
    def question(self) -> str:
        return "+".join(map(str, self.items))

    @property
    def prompt(self) -> str:
        return format_prompt(self.question)

    @property
    def answer(self) -> int:
        return sum(self.items)


def format_prompt(question: str) -> str:
    """The prompt for ``question`` (``"3+7+2"`` -> ``"Q: 3+7+2=? A:"``)."""
    return PROMPT_TEMPLATE.format(question=question)


# ----------------------------------------------------------------------------------------------
# The oracle: the training text's next-token distribution after any prefix
# ----------------------------------------------------------------------------------------------


class SumWalk:
    """A walk along one completion of ``items``: :meth:`distribution` is the training text's next-token
    distribution, :meth:`advance` consumes a token (``False``, and the walk is dead, when that token has
    probability 0: the prefix then lies on no correct path).

    Tokens are strings: one character, :data:`BOXED` or :data:`EOS`. Grammar of a completion:
    ``" " a "+" b ["+" c] "=" S (" +" x ["+" y] "=" S)* " " BOXED S "}" EOS``, with the numbers taken
    from the remaining ones (a number written stands for its leftmost remaining occurrence) and each
    ``S`` the running total.
    """

    def __init__(self, items: Sequence[int], style: Style = STYLE):
        self.items = tuple(int(x) for x in items)
        if len(self.items) < 2 or not all(1 <= x <= 9 for x in self.items):
            raise ValueError(f"items must be two or more one-digit numbers 1-9, got {items!r}")
        self.style = style
        self.remaining = list(range(len(self.items)))  # prompt positions not yet added
        self.total = 0
        self.in_step = 0  # numbers added in the current step
        self.first = True  # in the first step
        self.phase = "start"
        self.pending = ""  # digits still to write (a total)
        self.alive = True

    def _item_distribution(self) -> dict[str, float]:
        weights: dict[str, float] = {}
        for pos in self.remaining:
            d = str(self.items[pos])
            weights[d] = weights.get(d, 0.0) + self.style.order_decay**pos
        total = sum(weights.values())
        return {d: w / total for d, w in weights.items()}

    def distribution(self) -> dict[str, float] | None:
        """``{token: probability}`` of the next token (``None`` once the walk is dead, ``{}`` when done)."""
        if not self.alive:
            return None
        s = self.style
        phase = self.phase
        if phase == "start":
            return {" ": 1.0}
        if phase == "item":
            return self._item_distribution()
        if phase == "after_item":
            if not self.remaining:
                return {"=": 1.0}
            least, most, group = (2, s.max_first, s.group_first) if self.first else (1, s.max_later, s.group_later)
            if self.in_step < least:
                return {"+": 1.0}
            if self.in_step >= most:
                return {"=": 1.0}
            return {"+": group, "=": 1.0 - group}
        if phase in ("total", "boxed_total"):
            return {self.pending[0]: 1.0}
        if phase == "after_total":
            return {" ": 1.0}
        if phase == "next":
            return {"+": 1.0} if self.remaining else {BOXED: 1.0}
        if phase == "close":
            return {"}": 1.0}
        if phase == "eos":
            return {EOS: 1.0}
        return {}  # done

    def advance(self, token: str) -> bool:
        dist = self.distribution()
        if not dist or dist.get(token, 0.0) <= 0.0:
            self.alive = False
            return False
        phase = self.phase
        if phase == "start":
            self.phase = "item"
        elif phase == "item":
            pos = next(p for p in self.remaining if str(self.items[p]) == token)
            self.remaining.remove(pos)
            self.total += self.items[pos]
            self.in_step += 1
            self.phase = "after_item"
        elif phase == "after_item":
            if token == "+":
                self.phase = "item"
            else:
                self.phase, self.pending = "total", str(self.total)
        elif phase in ("total", "boxed_total"):
            self.pending = self.pending[1:]
            if not self.pending:
                self.phase = "after_total" if phase == "total" else "close"
        elif phase == "after_total":
            self.phase = "next"
        elif phase == "next":
            if token == "+":
                self.phase, self.in_step, self.first = "item", 0, False
            else:
                self.phase, self.pending = "boxed_total", str(self.total)
        elif phase == "close":
            self.phase = "eos"
        elif phase == "eos":
            self.phase = "done"
        return True

    @property
    def done(self) -> bool:
        return self.alive and self.phase == "done"


def sample_completion(items: Sequence[int], rng: random.Random, style: Style = STYLE) -> str:
    """One completion (without EOS) drawn from the training text's branch probabilities."""
    walk = SumWalk(items, style)
    out = []
    while True:
        dist = walk.distribution()
        tokens, probs = zip(*dist.items())
        token = tokens[0] if len(tokens) == 1 else rng.choices(tokens, weights=probs)[0]
        walk.advance(token)
        if token == EOS:
            return "".join(out)
        out.append(token)


_TOKEN_RE = re.compile(re.escape(BOXED) + r"|.", re.S)


def completion_tokens(text: str, eos: bool = True) -> list[str]:
    """``text`` split into the task's tokens (one character each, :data:`BOXED` as one), plus :data:`EOS`."""
    return _TOKEN_RE.findall(text) + ([EOS] if eos else [])


def walk_distributions(items: Sequence[int], tokens: Iterable[str], style: Style = STYLE) -> list[dict[str, float] | None]:
    """The oracle before each of ``tokens``: entry ``t`` is the next-token distribution given ``tokens[:t]``,
    ``None`` from the first position after a token that left every correct path."""
    walk = SumWalk(items, style)
    out = []
    for token in tokens:
        out.append(walk.distribution())
        walk.advance(token)
    return out


def is_correct_path(items: Sequence[int], text: str, style: Style = STYLE) -> bool:
    """Whether ``text`` (a completion without EOS) is one of the task's correct paths."""
    walk = SumWalk(items, style)
    return all(walk.advance(t) for t in completion_tokens(text)) and walk.done


def grammar_choices(tokens: Sequence[str], style: Style = STYLE) -> list[bool]:
    """Per token: whether the grammar alone leaves a choice before it, whatever the numbers: which number
    comes next (after the opening space or a ``+``), and whether a step goes on (``+``) or ends (``=``) after
    a number (where the step's size allows both). Totals, spaces, ``\\boxed{``, the answer, ``}`` and EOS
    are determined by the text before them. Follows the tokens actually written, also after an error."""
    out, state, first, count = [], "open", True, 0
    for tok in tokens:
        if state == "pick":
            choice = True
        elif state == "after_pick":
            least, most = (2, style.max_first) if first else (1, style.max_later)
            choice = least <= count < most
        else:
            choice = False
        out.append(choice)
        if tok == "+":
            if state == "after_space":
                first, count = False, 0
            state = "pick"
        elif tok == "=":
            state = "total"
        elif tok == BOXED:
            state = "boxed"
        elif tok == " ":
            state = "pick" if state == "open" else "after_space"
        elif tok.isdigit() and state == "pick":
            count += 1
            state = "after_pick"
        elif not tok.isdigit():
            state = "end"
    return out


# ----------------------------------------------------------------------------------------------
# Problems and datasets
# ----------------------------------------------------------------------------------------------


def problem_split(question: str) -> str:
    """``"train"`` or ``"test"``: a fixed hash of the question text, so splits never overlap."""
    digest = hashlib.sha256(f"{_SPLIT_SALT}:{question}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < TEST_FRACTION else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


#: Levels with at most this many distinct problems are enumerated; larger ones are sampled.
_ENUMERATE_MAX = 10_000


@cache
def _enumerated(level: int, split: str) -> tuple[Problem, ...]:
    n = LEVEL_LENGTHS[level]
    problems = (Problem(items, level) for items in itertools.product(range(1, 10), repeat=n))
    return tuple(p for p in problems if problem_split(p.question) == split)


def _random_problem(level: int, split: str, rng: random.Random) -> Problem:
    n = LEVEL_LENGTHS[level]
    while True:
        problem = Problem(tuple(rng.randint(1, 9) for _ in range(n)), level)
        if problem_split(problem.question) == split:
            return problem


def _level_sample(level: int, split: str, count: int, rng: random.Random) -> list[Problem]:
    """``count`` distinct problems of ``level`` (repeating only when the level has fewer)."""
    if 9 ** LEVEL_LENGTHS[level] <= _ENUMERATE_MAX:
        pool, out = list(_enumerated(level, split)), []
        while count > 0:
            rng.shuffle(pool)
            out.extend(pool[:count])
            count -= min(count, len(pool))
        return out
    seen: dict[str, Problem] = {}
    while len(seen) < count:
        p = _random_problem(level, split, rng)
        seen.setdefault(p.question, p)
    return list(seen.values())


def _per_level_counts(n: int, num_levels: int) -> list[int]:
    return [n // num_levels + (1 if i < n % num_levels else 0) for i in range(num_levels)]


def sample_problems(n: int, levels: Sequence[int] = LEVELS, seed: int = 0, split: str = "train") -> list[Problem]:
    """``n`` problems spread evenly over ``levels`` (in shuffled order), deterministic in ``seed``;
    distinct within a level unless the level's split has fewer problems than its share."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels = check_levels(levels, LEVELS)
    _check_split(split)
    out: list[Problem] = []
    for level, count in zip(levels, _per_level_counts(n, len(levels))):
        out.extend(_level_sample(level, split, count, random.Random(f"{seed}:{split}:{level}")))
    random.Random(f"{seed}:{split}:order").shuffle(out)
    return out


def make_dataset(n: int, levels: Sequence[int] = LEVELS, seed: int = 0, split: str = "train") -> Dataset:
    """A dataset of ``n`` problems with columns ``prompt``, ``completion``, ``answer``, ``level``, ``items``.

    ``completion`` is one correct path (drawn from the training text's branch probabilities, seeded),
    ``answer`` the sum as a string, ``items`` the summands (for the oracle, :class:`SumWalk`).
    """
    problems = sample_problems(n, levels=levels, seed=seed, split=split)
    rng = random.Random(f"{seed}:{split}:completions")
    return Dataset.from_dict(
        {
            "prompt": [p.prompt for p in problems],
            "completion": [sample_completion(p.items, rng) for p in problems],
            "answer": [str(p.answer) for p in problems],
            "level": [p.level for p in problems],
            "items": [list(p.items) for p in problems],
        }
    )


def build_tokenizer():
    """One token per character of :data:`CHARACTERS`, ``\\boxed{`` as one (ids: 4 specials, ``\\boxed{``,
    then the characters in order); byte-level, so a saved model folder reloads with the same ids through
    ``AutoTokenizer.from_pretrained`` (:func:`sead.tasks.charset.build_char_tokenizer`)."""
    from sead.tasks.charset import build_char_tokenizer

    return build_char_tokenizer(CHARACTERS, markers=(BOXED,), model_max_length=128)


# ----------------------------------------------------------------------------------------------
# Generation budget, recipes, the task object
# ----------------------------------------------------------------------------------------------


def _longest_completion(n: int, style: Style = STYLE) -> int:
    """Tokens (EOS included) of the longest correct path for ``n`` summands of 9: one number per step."""
    walk_tokens = 1 + 3 + 1 + 2  # " a+b=S" with a two-digit S
    walk_tokens += (n - 2) * (1 + 1 + 1 + 1 + 2)  # " +x=S"
    return walk_tokens + 1 + 1 + 2 + 1 + 1  # " " BOXED S "}" EOS


#: Generation budget: the longest correct path of the hardest level (one number per step, two-digit totals).
MAX_NEW_TOKENS = _longest_completion(max(LEVEL_LENGTHS.values()))

_BOXED_INT = re.compile(re.escape(BOXED) + r"(\d+)\}")


def boxed_int(text: str) -> int | None:
    """The last ``\\boxed{N}`` integer of ``text`` (the probe's fast grader; evaluation uses :func:`sead.grading.verifier.grade`)."""
    found = _BOXED_INT.findall(text)
    return int(found[-1]) if found else None


def greedy_probe(tokenizer, levels: tuple[int, ...], size: int, seed: int, max_new_tokens: int = MAX_NEW_TOKENS):
    """SFT's early-stop probe: greedy accuracy on ``size`` training problems spread over ``levels``.

    Teacher forcing cannot score a task with several correct paths (the argmax at a fork follows one of
    them, the reference another), so the probe generates and checks the boxed sum."""
    from sead.engines.hf import generate_responses

    problems = sample_problems(size, levels=levels, seed=10_000 + seed, split="train")

    def probe(model) -> float:
        responses = generate_responses(
            model, tokenizer, [p.prompt for p in problems], max_new_tokens=max_new_tokens, batch_size=len(problems)
        )
        return sum(boxed_int(r[0]) == p.answer for r, p in zip(responses, problems)) / len(problems)

    return probe


# Both models are trained to a probe target, not for a fixed number of steps, and their held-out accuracy is checked
# against a band (``Recipe.target``): a fixed step count made the teacher 96.5% on one x86 CPU and 87.2% on another
# (its accuracy climbs steeply near the end of training, and the CPUs' rounding moves that point). The probe is
# greedy accuracy on 512 training problems of every level (``greedy_probe``); held-out numbers: docs/task.md.
#
# The teacher (0.37M parameters) stops once it solves 95% of the probe (about 1,100 of its 1,600-step schedule):
# right at most, wrong on a part of the hardest level (the fallible teacher SG-OPD's gate needs).
_TEACHER = Recipe(
    role="teacher",
    model=ModelSpec(hidden_size=96, num_layers=3, num_heads=3, intermediate_size=288, max_position_embeddings=128),
    sft=SFTSettings(
        steps=1600, batch_size=64, lr=3e-3, level_weights=(1, 2, 3, 4), stop_at_accuracy=0.95, check_every=50,
        check_after=800, probe_size=512,
    ),
    eval_size=1000,
    target=(0.92, 0.99),
)
#: The student's SFT stops when it solves this fraction of the probe.
_STUDENT_TARGET = 0.3
# The student (0.11M parameters) is trained on every level, as the teacher, and stopped early, at 30% of the probe
# (about 750 of a 3,000-step schedule): a student that is behind, not one that cannot learn the task (the same
# recipe trained to its end reaches 97%: docs/task.md), so that distillation has a gap it can close.
_STUDENT = Recipe(
    role="student",
    model=ModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192, max_position_embeddings=128),
    sft=SFTSettings(
        steps=3000, batch_size=64, lr=3e-3, level_weights=(1, 2, 3, 4), stop_at_accuracy=_STUDENT_TARGET,
        check_every=25, probe_size=512,
    ),
    eval_levels=LEVELS,
    eval_size=1000,
    target=(0.22, 0.42),
)
_QUICK_TEACHER = Recipe(
    role="teacher",
    model=ModelSpec(hidden_size=96, num_layers=3, num_heads=3, intermediate_size=288, max_position_embeddings=128),
    sft=SFTSettings(steps=600, batch_size=32, lr=3e-3, levels=QUICK_LEVELS),
    eval_size=300,
)
_QUICK_STUDENT = Recipe(
    role="student",
    model=ModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192, max_position_embeddings=128),
    sft=SFTSettings(
        steps=1200, batch_size=32, lr=3e-3, levels=QUICK_LEVELS, level_weights=(1, 2, 3), stop_at_accuracy=_STUDENT_TARGET,
        check_every=20, probe_size=128,
    ),
    eval_levels=QUICK_LEVELS,
    eval_size=300,
)


class SumsTask(BuiltinTask):
    """The ``sums`` task as a :class:`sead.tasks.prepare.BuiltinTask`."""

    name = "sums"
    version = "2"
    levels = LEVELS
    quick_levels = QUICK_LEVELS
    level_descriptions = LEVEL_DESCRIPTIONS
    max_new_tokens = MAX_NEW_TOKENS
    eval_seed = 1234

    def build_tokenizer(self):
        return build_tokenizer()

    def make_dataset(self, n, levels=None, seed=0, split="train"):
        return make_dataset(n, levels=levels or LEVELS, seed=seed, split=split)

    def draw_example(self, level, rng):
        problem = _random_problem(level, "train", rng)
        return problem.prompt, sample_completion(problem.items, rng)

    def data_fingerprint(self):
        return _data_fingerprint()

    def recipes(self, quick=False):
        return (_QUICK_TEACHER, _QUICK_STUDENT) if quick else (_TEACHER, _STUDENT)

    def probe(self, tokenizer, levels, size, seed):
        return greedy_probe(tokenizer, levels, size, seed)

    def oracle_distributions(self, row, tokens):
        return walk_distributions(row["items"], tokens)

    def choice_positions(self, tokens):
        return grammar_choices(tokens)


@cache
def _data_fingerprint() -> str:
    rng = random.Random(0)
    samples = [TASK.draw_example(level, rng) for level in LEVELS for _ in range(3)]
    blob = json.dumps(
        {
            "vocab": build_tokenizer().get_vocab(),
            "samples": samples,
            "levels": LEVEL_LENGTHS,
            "style": STYLE.__dict__,
            "test_fraction": TEST_FRACTION,
            "salt": _SPLIT_SALT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


TASK = SumsTask()
