"""One seed's data for the quality experiment: the prepared models, training prompts with their difficulty,
held-out problems; the prepared models' scores on them; saving and loading it for a worker process.

:func:`prepare_demo` builds it in this process (``sead demo``); :func:`prepare_seed` builds and saves it in a
worker process (``sead bench quality``); :func:`load_data` reads it back where a variant is trained.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sead.experiments.settings import bench_size, task_of

__all__ = ["DemoData", "evaluate_final", "validation_dataset", "load_data", "prepare_demo", "prepare_seed", "save_data"]


@dataclass
class DemoData:
    prepared: Any
    train: Any
    test: Any
    curve: Any
    validation: Any = None


def validation_dataset(task, n: int, levels, train):
    """``n`` problems (spread evenly over ``levels``) from the task's *training* split that are not among ``train``'s
    prompts: a validation set that shares no problem with the test split (disjoint by construction) nor with the
    prompts trained on. A level with fewer unused problems than its share gives what it has."""
    drawn = task.make_dataset(3 * n, levels=levels, seed=task.eval_seed + 1, split="train")
    used, per_level, keep = set(train["prompt"]), {}, []
    quota = -(-n // len(levels))
    for i, (prompt, level) in enumerate(zip(drawn["prompt"], drawn["level"])):
        if prompt in used or per_level.get(level, 0) >= quota:
            continue
        used.add(prompt)
        per_level[level] = per_level.get(level, 0) + 1
        keep.append(i)
    return drawn.select(keep[:n])


def prepare_demo(
    size: dict[str, Any], seed: int, quick: bool, cache_dir: str | None, progress: bool
) -> DemoData:
    """Models (cached), training prompts with their difficulty (student pass rate), held-out problems (and, when
    ``size["num_validation"]``, a :func:`validation_dataset` for choosing settings such as the learning rate).

    When the teacher is not cached yet, it trains in a second process while this one trains the student
    and runs the difficulty pre-pass (two cores: the student's work is hidden behind the teacher's)."""
    from pathlib import Path as _Path

    from sead.data.difficulty import estimate_difficulty
    from sead.tasks.prepare import (
        default_cache_dir,
        join_background,
        lend_core,
        prepare_in_background,
        read_metrics,
    )

    task = task_of(size)
    cache = _Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    teacher_recipe, student_recipe = task.recipes(quick)
    child = None
    if read_metrics(task.entry_dir(teacher_recipe, 0, cache), task.metrics_file) is None:
        if progress:
            print(f"[sead demo] training the {task.name} teacher in a second process (a few minutes) ...", flush=True)
        child = prepare_in_background(task, "teacher", quick, 0, cache)
    tokenizer = task.build_tokenizer()
    student_dir, _, _ = task.prepare_one(student_recipe, tokenizer, 0, cache, progress)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    levels = task.eval_levels(teacher_recipe)
    train = task.make_dataset(size["num_prompts"], levels=levels, seed=seed, split="train")
    difficulty = estimate_difficulty(
        student,
        tokenizer,
        train["prompt"],
        train["answer"],
        num_rollouts=size["difficulty_rollouts"],
        max_new_tokens=task.max_new_tokens,
        batch_size=512,
        prompts_per_chunk=512,
        progress=progress,
        seed=seed,
    )
    train = train.add_column("difficulty", difficulty)
    test = task.make_dataset(size["num_test"], levels=levels, seed=task.eval_seed, split="test")
    validation = validation_dataset(task, size["num_validation"], levels, train) if size.get("num_validation") else None
    curve = test.select(range(min(size["num_curve"], len(test))))
    if child is not None:
        lend_core(child)  # this process only waits from here: the teacher's SFT takes a second thread
        join_background(child, f"{task.name} teacher")
    prepared = task.prepare_models(cache_dir=cache, quick=quick, seed=0, progress=progress)
    return DemoData(prepared, train, test, curve, validation)


def evaluate_final(model, tokenizer, data: DemoData, size: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Greedy accuracy on the held-out problems and, when ``size["sample_k"]``, avg@k / pass@k of sampled
    answers on the first ``num_sample`` of them."""
    from sead.tasks import scoring

    task = task_of(size)
    final = scoring.evaluate_accuracy(model, tokenizer, data.test, batch_size=512, max_new_tokens=task.max_new_tokens)
    out = {
        "accuracy": final["accuracy"],
        "accuracy_by_level": {str(k): v for k, v in final["accuracy_by_level"].items()},
    }
    if data.validation is not None:  # greedy, on problems neither trained on nor in the test split
        out["validation_accuracy"] = scoring.evaluate_accuracy(
            model, tokenizer, data.validation, batch_size=512, max_new_tokens=task.max_new_tokens
        )["accuracy"]
    k = size.get("sample_k", 0)
    if k:
        subset = data.test.select(range(min(size["num_sample"], len(data.test))))
        sampled = scoring.evaluate_sampled(
            model, tokenizer, subset, k=k, temperature=size["sample_temperature"], max_new_tokens=task.max_new_tokens,
            seed=seed,
        )
        out.update(
            avg_at_k=sampled["avg_at_k"],
            pass_at_k=sampled["pass_at_k"],
            avg_at_k_by_level={str(lv): v for lv, v in sampled["avg_at_k_by_level"].items()},
            pass_at_k_by_level={str(lv): v for lv, v in sampled["pass_at_k_by_level"].items()},
            sample_k=k,
        )
    return out


def save_data(data, out: Path, curve_start: float) -> None:
    """Save a :class:`DemoData`'s datasets (and the student's accuracy on the curve subset) for
    :func:`load_data` in another process."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test", "curve", "validation"):
        if getattr(data, name) is not None:
            getattr(data, name).save_to_disk(str(out / name))
    (out / "curve_start.json").write_text(json.dumps({"curve_start": curve_start}))


def load_data(task: str, quick: bool, data_dir: Path, cache_dir: str | None = None) -> tuple[DemoData, float]:
    """A :class:`DemoData` saved by :func:`save_data` (models from the task's cache), and its ``curve_start``."""
    from datasets import load_from_disk

    from sead.tasks import get_task

    prepared = get_task(task).prepare_models(cache_dir=cache_dir, quick=quick, seed=0, progress=False)
    data = DemoData(prepared, *(load_from_disk(str(data_dir / name)) for name in ("train", "test", "curve")))
    if (data_dir / "validation").exists():
        data.validation = load_from_disk(str(data_dir / "validation"))
    return data, json.loads((data_dir / "curve_start.json").read_text())["curve_start"]


def prepare_seed(task: str, quick: bool, seed: int, out: Path, cache_dir: str | None = None) -> dict[str, Any]:
    """Save seed ``seed``'s data under ``out`` and return the starting scores (student, and teacher)."""
    from sead.tasks import get_task, scoring

    size = bench_size(task, quick, None)
    t0 = time.perf_counter()
    data = prepare_demo(size, seed, quick, cache_dir, progress=False)
    tok, t = data.prepared.tokenizer, get_task(task)
    student = data.prepared.load_student()
    start = evaluate_final(student, tok, data, size, seed=seed)
    curve_start = scoring.evaluate_accuracy(student, tok, data.curve, batch_size=512, max_new_tokens=t.max_new_tokens)["accuracy"]
    save_data(data, out, curve_start)
    difficulty = [float(d) for d in data.train["difficulty"]]
    res = {
        "seed": seed,
        "num_validation": 0 if data.validation is None else len(data.validation),
        "student_start": start,
        "curve_start": curve_start,
        "difficulty_values": sorted({round(d, 4) for d in difficulty}),
        "difficulty_share_solved": sum(d == 0 for d in difficulty) / len(difficulty),
        "difficulty_share_unsolved": sum(d == 1 for d in difficulty) / len(difficulty),
        "seconds": time.perf_counter() - t0,
    }
    if seed == 0:
        res["teacher"] = evaluate_final(data.prepared.load_teacher(), tok, data, size, seed=seed)
    (out / "start.json").write_text(json.dumps(res))
    return res
