"""What every built-in task shares: the :class:`BuiltinTask` interface, recipes, and the cached
preparation of its teacher and student (:meth:`BuiltinTask.prepare_models`).

A task subclasses :class:`BuiltinTask` with its data (``make_dataset``, ``draw_example``), its tokenizer
and its recipes; preparation trains each model by :func:`sead.tasks.sft.train_sft`, scores it on held-out
problems (greedy) and saves it with its tokenizer and a metrics file under the cache directory, in a
directory named by a hash of the recipe, the seed, the task version and a fingerprint of the task's data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sead.tasks import scoring, sft
from sead.tasks.sft import ModelSpec, SFTSettings
from sead.utils.cache import default_cache_dir
from sead.utils.errors import SeadError

__all__ = [
    "BuiltinTask",
    "PreparedModels",
    "Recipe",
    "check_target",
    "default_cache_dir",
    "lend_core",
    "prepare_in_background",
    "save_atomically",
]


@dataclass(frozen=True)
class Recipe:
    """How one model (teacher or student) of a task is made: its size, its training, its evaluation."""

    role: str
    model: ModelSpec
    sft: SFTSettings
    #: Levels of the held-out evaluation; ``None``: the SFT levels (or all of the task's levels).
    eval_levels: tuple[int, ...] | None = None
    eval_size: int = 400
    #: ``(low, high)``: the held-out greedy accuracy the prepared model must have. Checked after training: a model
    #: outside it is refused (not cached), so two machines that prepare the task get models of one quality, whatever
    #: the rounding of their CPUs did to the steps (training itself stops at the probe target ``sft.stop_at_accuracy``,
    #: not at a fixed step). ``None``: not checked.
    target: tuple[float, float] | None = None

    def payload(self) -> dict:
        return dataclasses.asdict(self)


def check_target(recipe: Recipe, metrics: dict) -> None:
    """Refuse a prepared model whose held-out accuracy is outside its recipe's ``target`` band."""
    if recipe.target is None:
        return
    low, high = recipe.target
    acc = metrics["accuracy"]
    if not low <= acc <= high:
        stop = recipe.sft.stop_at_accuracy
        raise SeadError(
            f"the prepared {metrics['task']} {recipe.role} has held-out greedy accuracy {100 * acc:.1f}% after "
            f"{metrics['steps_run']} of at most {recipe.sft.steps} SFT steps, outside its target "
            f"{100 * low:.0f}-{100 * high:.0f}%"
            + (f" (training stops at a probe accuracy of {100 * stop:.0f}%)" if stop is not None else "")
            + ". Nothing was cached. This should not happen on an x86 CPU; please report it with this message and "
            "`python -c 'import torch; print(torch.__config__.show())'`."
        )


@dataclass
class PreparedModels:
    """Trained teacher and student checkpoints of a built-in task (each a ``save_pretrained`` directory
    holding model and tokenizer), and their measured held-out greedy accuracy."""

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
    #: Name of the task (``"arithmetic"``, ``"sums"``).
    task: str = "arithmetic"

    def load_teacher(self):
        """A fresh copy of the teacher, in eval mode."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.teacher_dir).eval()

    def load_student(self):
        """A fresh copy of the (initial) student, in eval mode."""
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.student_dir).eval()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def read_metrics(directory: Path, name: str) -> dict | None:
    path = directory / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def save_atomically(model, tokenizer, metrics: dict, target: Path, progress: bool, metrics_file: str) -> dict:
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
        (tmp / metrics_file).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            published = read_metrics(target, metrics_file)
            if published is None:
                raise
            return published
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return metrics


def _prepare_role(task_module: str, role: str, quick: bool, seed: int, cache_dir: str, num_threads: int, spare_core) -> None:
    """Child process of :func:`prepare_in_background`: train and cache one model of the task that ``task_module``
    defines (its ``TASK``); from the step after ``spare_core`` (an event) is set, with one more torch thread."""
    import importlib

    torch.set_num_threads(num_threads)
    task = importlib.import_module(task_module).TASK
    recipe = dict(zip(("teacher", "student"), task.recipes(quick)))[role]

    def take_spare_core(step: int) -> None:
        if spare_core.is_set() and torch.get_num_threads() == num_threads:
            torch.set_num_threads(num_threads + 1)

    task.prepare_one(recipe, task.build_tokenizer(), seed, Path(cache_dir), progress=False, on_step=take_spare_core)


def prepare_in_background(task: BuiltinTask, role: str, quick: bool, seed: int, cache_dir: Path, num_threads: int = 1):
    """Train and cache the ``role`` model (``"teacher"`` or ``"student"``) of ``task`` in a second process;
    returns the started :class:`multiprocessing.Process` (``join`` it, then check ``exitcode``). Once this process
    has nothing else to do but wait, :func:`lend_core` gives the child one more thread (the sums teacher's SFT steps
    take 0.19 s instead of 0.29 s with two threads on this project's 2-core CPU)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    spare_core = ctx.Event()
    args = (type(task).__module__, role, quick, seed, str(cache_dir), num_threads, spare_core)
    child = ctx.Process(target=_prepare_role, args=args, daemon=True)
    child.start()
    child.spare_core = spare_core
    return child


def lend_core(child) -> None:
    """Tell a :func:`prepare_in_background` process that this one is idle: it takes one more torch thread."""
    child.spare_core.set()


def join_background(child, what: str) -> None:
    """Wait for a :func:`prepare_in_background` process; a clear error when it failed."""
    child.join()
    if child.exitcode != 0:
        raise SeadError(
            f"training the {what} in a second process failed (exit code {child.exitcode}); run "
            "`python -m sead.bench.profiles.mechanisms` or prepare_models(parallel=False) to see the error here"
        )


class BuiltinTask:
    """A verifiable synthetic task with its tokenizer, a teacher and a student recipe.

    Subclasses set the class attributes and implement :meth:`build_tokenizer`, :meth:`make_dataset`,
    :meth:`draw_example`, :meth:`data_fingerprint` and :meth:`recipes`.
    """

    #: Registry name (``sead demo --task NAME``).
    name: str = ""
    #: Bump when anything that changes the data, tokenizer or training code changes: old cache entries
    #: are then never reused.
    version: str = "1"
    levels: tuple[int, ...] = ()
    quick_levels: tuple[int, ...] = ()
    level_descriptions: dict[int, str] = {}
    #: Generation budget of a response (tokens, EOS included).
    max_new_tokens: int = 32
    #: Seed of the held-out problems on which prepared models are scored.
    eval_seed: int = 1234

    # ---- what a task provides -------------------------------------------------------------------
    def build_tokenizer(self):
        raise NotImplementedError

    def make_dataset(self, n: int, levels: Sequence[int] | None = None, seed: int = 0, split: str = "train"):
        """``n`` problems (columns ``prompt``, ``completion``, ``answer``, ``level``) spread evenly over ``levels``."""
        raise NotImplementedError

    def draw_example(self, level: int, rng: random.Random) -> tuple[str, str]:
        """One training example ``(prompt, completion)`` of ``level`` from the train split."""
        raise NotImplementedError

    def data_fingerprint(self) -> str:
        """Hash of the tokenizer's vocabulary and of sample text, so that a change of format invalidates
        cached models even if nobody bumps :attr:`version`."""
        raise NotImplementedError

    def recipes(self, quick: bool = False) -> tuple[Recipe, Recipe]:
        """The (teacher, student) recipes :meth:`prepare_models` uses."""
        raise NotImplementedError

    def probe(self, tokenizer, levels: tuple[int, ...], size: int, seed: int) -> Callable | None:
        """The accuracy probe of SFT's early stop (``None``: :func:`sead.tasks.sft.teacher_forced_probe`)."""
        return None

    def oracle_distributions(self, row: dict, tokens: Sequence[str]) -> list[dict[str, float] | None]:
        """The distribution of the training text's next token before each of ``tokens`` (a completion as
        token strings, EOS included), given the prefix; ``None`` from the first position after a token that
        left every correct path. Default: the task has one correct path per problem, ``row["completion"]``."""
        tok = self.build_tokenizer()
        ids = tok(row["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        gold = [tok.decode([i]) for i in ids]
        out: list[dict[str, float] | None] = []
        alive = True
        for t, token in enumerate(tokens):
            out.append({gold[t]: 1.0} if alive and t < len(gold) else None)
            alive = alive and t < len(gold) and token == gold[t]
        return out

    def choice_positions(self, tokens: Sequence[str]) -> list[bool]:
        """Per token of a completion: whether the task's *grammar* leaves a choice there whatever the numbers
        (so that positions after an error, where the oracle says nothing, can still be told apart into free
        choices and positions the text's form determines). Default: no choices (one correct path)."""
        return [False] * len(tokens)

    # ---- shared -----------------------------------------------------------------------------------
    @property
    def metrics_file(self) -> str:
        return f"sead_{self.name}.json"

    def sft_levels(self, recipe: Recipe) -> tuple[int, ...]:
        return sft.check_levels(recipe.sft.levels or self.levels, self.levels)

    def eval_levels(self, recipe: Recipe) -> tuple[int, ...]:
        return tuple(recipe.eval_levels or self.sft_levels(recipe))

    def cache_key(self, recipe: Recipe, seed: int) -> str:
        """Hash of everything that determines the trained model (and the task version)."""
        payload = {
            "task": self.name,
            "task_version": self.version,
            "recipe": recipe.payload(),
            "seed": seed,
            "data_fingerprint": self.data_fingerprint(),
        }
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def entry_dir(self, recipe: Recipe, seed: int, cache_dir: Path) -> Path:
        return cache_dir / f"{self.name}-{recipe.role}-{self.cache_key(recipe, seed)}"

    def train(self, recipe: Recipe, tokenizer, seed: int, progress: bool | str = False, on_step=None):
        """A model trained per ``recipe`` (not saved) and its per-step SFT losses (``on_step``: see
        :func:`sead.tasks.sft.train_sft`)."""
        levels = self.sft_levels(recipe)
        model = sft.build_model(recipe.model, tokenizer, seed=seed)
        probe = None
        if recipe.sft.stop_at_accuracy is not None:
            probe = self.probe(tokenizer, levels, recipe.sft.probe_size, seed + 1)
        losses = sft.train_sft(
            model, tokenizer, recipe.sft, self.draw_example, levels, seed=seed, progress=progress, probe=probe,
            on_step=on_step,
        )
        return model, losses

    def _train_and_save(self, recipe: Recipe, tokenizer, seed: int, target: Path, progress: bool, on_step=None) -> dict:
        start = time.perf_counter()
        model, losses = self.train(
            recipe, tokenizer, seed, progress=f"SFT {recipe.role}" if progress else False, on_step=on_step
        )
        train_seconds = time.perf_counter() - start
        eval_set = self.make_dataset(recipe.eval_size, levels=self.eval_levels(recipe), seed=self.eval_seed, split="test")
        scores = scoring.evaluate_accuracy(
            model,
            tokenizer,
            eval_set,
            max_new_tokens=self.max_new_tokens,
            progress=f"eval {recipe.role}" if progress else False,
        )
        metrics = {
            "task": self.name,
            "role": recipe.role,
            "task_version": self.version,
            "seed": seed,
            "recipe": recipe.payload(),
            "accuracy": scores["accuracy"],
            "accuracy_by_level": {str(k): v for k, v in scores["accuracy_by_level"].items()},
            "eval_size": scores["n"],
            "eval_seed": self.eval_seed,
            "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "steps_run": len(losses),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - start,
        }
        check_target(recipe, metrics)
        return save_atomically(model, tokenizer, metrics, target, progress, self.metrics_file)

    def prepare_one(
        self, recipe: Recipe, tokenizer, seed: int, cache_dir: Path, progress: bool, on_step=None
    ) -> tuple[Path, dict, bool]:
        """``(entry directory, metrics, cache hit)`` for one model, training it when it is not cached (``on_step``:
        see :func:`sead.tasks.sft.train_sft`)."""
        target = self.entry_dir(recipe, seed, cache_dir)
        metrics = read_metrics(target, self.metrics_file)
        if metrics is not None:
            return target, metrics, True
        if target.exists():
            raise SeadError(
                f"{target} exists but has no readable {self.metrics_file}; it is not a finished cache entry. "
                "Delete it and run again."
            )
        return target, self._train_and_save(recipe, tokenizer, seed, target, progress, on_step), False

    def prepare_models(
        self,
        cache_dir: str | os.PathLike | None = None,
        quick: bool = False,
        seed: int = 0,
        progress: bool = True,
        *,
        num_threads: int | None = 1,
        parallel: bool = True,
    ) -> PreparedModels:
        """Trained teacher and student of this task, from the cache or trained now.

        Each model is trained per its recipe (:meth:`recipes`), scored on held-out problems (greedy) and
        saved with its tokenizer and a metrics file under ``cache_dir`` (default :func:`default_cache_dir`).
        A later call with the same settings returns at once. An entry appears only when complete (written
        to a temporary directory, then renamed). ``num_threads`` is the torch thread count while training
        (restored afterwards; ``None`` leaves it alone). One thread is the default: these models are too
        small for intra-op parallelism to pay, and on a machine whose cores are shared a second thread
        made steps up to ten times slower in our measurements. With ``parallel`` (the default) and neither
        model cached, the student trains in a second process while the teacher trains in this one (two cores:
        about the student's training time saved; the models are the same either way).
        """
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {num_threads}")
        cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        teacher_recipe, student_recipe = self.recipes(quick)
        tokenizer = self.build_tokenizer()
        start = time.perf_counter()
        threads = contextlib.nullcontext() if num_threads is None else _torch_threads(num_threads)
        child = None
        if parallel and read_metrics(self.entry_dir(teacher_recipe, seed, cache_dir), self.metrics_file) is None:
            if read_metrics(self.entry_dir(student_recipe, seed, cache_dir), self.metrics_file) is None:
                child = prepare_in_background(self, "student", quick, seed, cache_dir, num_threads or 1)
        with threads:
            teacher_dir, teacher_metrics, teacher_hit = self.prepare_one(teacher_recipe, tokenizer, seed, cache_dir, progress)
            if child is not None:
                join_background(child, f"{self.name} student")
            student_dir, student_metrics, student_hit = self.prepare_one(student_recipe, tokenizer, seed, cache_dir, progress)
            student_hit = student_hit and child is None
        cached = teacher_hit and student_hit
        return PreparedModels(
            teacher_dir=teacher_dir,
            student_dir=student_dir,
            tokenizer=tokenizer,
            teacher_accuracy=teacher_metrics["accuracy"],
            student_accuracy=student_metrics["accuracy"],
            teacher_accuracy_by_level={int(k): v for k, v in teacher_metrics["accuracy_by_level"].items()},
            student_accuracy_by_level={int(k): v for k, v in student_metrics["accuracy_by_level"].items()},
            levels=self.eval_levels(teacher_recipe),
            quick=quick,
            cached=cached,
            seconds=0.0 if cached else time.perf_counter() - start,
            metrics={"teacher": teacher_metrics, "student": student_metrics},
            task=self.name,
        )
