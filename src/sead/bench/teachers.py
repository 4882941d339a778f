"""Two teachers on sums, each trained only on some levels, and a student distilled from both (``sead bench
teachers``; issue 30's demonstration of several teachers).

The task's teacher recipe is trained twice more, once on levels 1-2 only (``low``) and once on levels 3-4 only
(``high``); each is weak where it never trained. The prepared student is then distilled with vanilla OPD, from the
same start, the same prompts and the same steps: from ``low`` alone, from ``high`` alone, and from both, each prompt
routed by its level to the teacher of its levels (``teachers`` + ``teacher_column``). Held-out greedy accuracy,
overall and per level.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from sead.bench.common import machine_facts

__all__ = ["LEVEL_SPLIT", "bench_teachers", "partial_teacher", "plot_teachers", "teachers_markdown"]

#: Which levels each partial teacher is trained on (the built-in sums task has levels 1-4).
LEVEL_SPLIT = {"low": (1, 2), "high": (3, 4)}


def partial_teacher(task, levels: tuple[int, ...], cache: Path, progress: bool) -> tuple[Path, dict]:
    """The task's teacher recipe trained on ``levels`` only (cached like every prepared model; no accuracy target:
    it is meant to be weak elsewhere). Returns its directory and its held-out metrics over every level."""
    teacher_recipe, _ = task.recipes(False)
    recipe = dataclasses.replace(
        teacher_recipe, sft=dataclasses.replace(teacher_recipe.sft, levels=tuple(levels), level_weights=None),
        eval_levels=task.levels, target=None,
    )  # fmt: skip
    path, metrics, _ = task.prepare_one(recipe, task.build_tokenizer(), 0, cache, progress)
    return path, metrics


def bench_teachers(steps: int | None = None, seed: int = 0, cache_dir: str | None = None, progress: bool = True,
                   method: str = "opd", threads: int = 1) -> dict[str, Any]:
    """Train the two partial teachers (or load them), then distil the prepared student from each alone and from
    both; returns every run's held-out accuracy (overall and by level) and the teachers' own. ``threads``: torch
    threads (models this small thrash on more than one)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sead.experiments.runs import run_variant
    from sead.experiments.seeds import prepare_demo
    from sead.experiments.settings import bench_size
    from sead.tasks import get_task
    from sead.tasks.prepare import default_cache_dir
    from sead.training.trainer import OPDTrainer

    torch.set_num_threads(threads)
    task = get_task("sums")
    size = bench_size("sums", False, steps)
    steps = size["steps"]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    t0 = time.perf_counter()
    teachers = {name: partial_teacher(task, levels, cache, progress) for name, levels in LEVEL_SPLIT.items()}
    data = prepare_demo(size, seed, False, str(cache), progress)
    route = {level: name for name, levels in LEVEL_SPLIT.items() for level in levels}
    data.train = data.train.add_column("teacher", [route[int(lv)] for lv in data.train["level"]])

    def trainer_for(names):
        def build(student, _teacher, cfg, train, tokenizer, callbacks):
            models = {n: AutoModelForCausalLM.from_pretrained(teachers[n][0]).eval() for n in names}
            teacher = models if len(models) > 1 else next(iter(models.values()))
            return OPDTrainer(student, teacher, args=cfg, train_dataset=train, processing_class=tokenizer,
                              callbacks=callbacks)  # fmt: skip

        return build

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, names in (("low alone", ["low"]), ("high alone", ["high"]), ("both", ["low", "high"])):
            res = run_variant(f"{method} from {label}", data, size, Path(tmp) / label.replace(" ", "-"), seed, steps,
                              overrides={"method": method}, trainer_cls=trainer_for(names), progress=progress)  # fmt: skip
            res.pop("log_history", None)
            runs[label] = res
    from sead.tasks import scoring

    start = scoring.evaluate_accuracy(data.prepared.load_student(), data.prepared.tokenizer, data.test, batch_size=512,
                                      max_new_tokens=task.max_new_tokens)  # fmt: skip
    start = {"accuracy": start["accuracy"], "accuracy_by_level": {str(k): v for k, v in start["accuracy_by_level"].items()}}
    return {
        "benchmark": "teachers",
        "task": "sums",
        "machine": machine_facts(),
        "method": method,
        "steps": steps,
        "seed": seed,
        "level_split": {k: list(v) for k, v in LEVEL_SPLIT.items()},
        "teachers": {name: {k: m[k] for k in ("accuracy", "accuracy_by_level") if k in m}
                     for name, (_, m) in teachers.items()},  # fmt: skip
        "student_start": start,
        "runs": {label: {k: r.get(k) for k in ("accuracy", "accuracy_by_level", "avg_at_k", "train_seconds", "curve")}
                 for label, r in runs.items()},  # fmt: skip
        "wall_seconds": time.perf_counter() - t0,
    }


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def plot_teachers(res: dict[str, Any], path: str | Path) -> Path:
    """Held-out greedy accuracy per level: each teacher, the student before, and after each run (a PNG)."""
    from sead.experiments.plots import plot_grouped_bars

    groups = {f"teacher {n}": m for n, m in res["teachers"].items()}
    if res.get("student_start"):
        groups["student before"] = res["student_start"]
    groups.update({f"student from {label}": m for label, m in res["runs"].items()})
    levels = sorted({lv for m in groups.values() for lv in (m.get("accuracy_by_level") or {})}, key=int)
    bars = {label: {f"level {lv}": 100 * v for lv, v in (m.get("accuracy_by_level") or {}).items()}
            for label, m in groups.items()}  # fmt: skip
    return plot_grouped_bars(bars, path, title="Several teachers on sums: held-out greedy accuracy by level",
                             ylabel="accuracy (%)", categories=[f"level {lv}" for lv in levels])  # fmt: skip


def teachers_markdown(res: dict[str, Any], plot: str | None = None) -> str:
    """The demonstration's section of BENCHMARKS.md: each teacher's and each run's held-out greedy accuracy, overall
    and per level, with the command and the machine; ``plot``: the PNG's file name, shown under the table."""
    levels = sorted({lv for r in res["runs"].values() for lv in (r.get("accuracy_by_level") or {})}, key=int)
    head = "| | accuracy | " + " | ".join(f"level {lv}" for lv in levels) + " | training (s) |"
    rows = [head, "|" + "---|" * (len(levels) + 3)]

    def row(label, m):
        by, t = m.get("accuracy_by_level") or {}, m.get("train_seconds")
        return (f"| {label} | {_pct(m.get('accuracy'))} | " + " | ".join(_pct(by.get(lv)) for lv in levels)
                + f" | {'-' if t is None else f'{t:.0f}'} |")  # fmt: skip

    for name, m in res["teachers"].items():
        rows.append(row(f"teacher `{name}` (trained on levels {', '.join(map(str, res['level_split'][name]))})", m))
    if res.get("student_start"):
        rows.append(row("student before distillation", res["student_start"]))
    for label, m in res["runs"].items():
        rows.append(row(f"student after {res['method']} from {label}", m))
    machine = res.get("machine") or {}
    runs = res["runs"]
    alone = {k: v["accuracy"] for k, v in runs.items() if k != "both" and v.get("accuracy") is not None}
    verdict = []
    if alone and runs.get("both", {}).get("accuracy") is not None:
        best = max(alone, key=alone.get)
        diff = 100 * (runs["both"]["accuracy"] - alone[best])
        verdict = ["", f"Distilled from both teachers, the student reaches {_pct(runs['both']['accuracy'])}% against "
                   f"{_pct(alone[best])}% from the better one alone ({best}): {diff:+.1f} points. A teacher alone also "
                   "teaches its blind levels: the student falls toward the teacher's 0% on the levels it never learned."]
    return "\n".join([
        "## Several teachers: two partial teachers on sums",
        "",
        f"`{res.get('command', 'sead bench teachers')}` ({res['steps']} steps, seed {res['seed']}, "
        f"{machine.get('cpu', 'this machine')}; {res.get('wall_seconds', 0) / 60:.0f} minutes, the teachers' own "
        "training not counted when they were cached). Two teachers trained only on some levels of sums; the "
        "prepared student distilled from each alone and from both (each prompt routed by its level to the teacher "
        "of its levels: `teachers` + `teacher_column`). Held-out greedy accuracy (%), one seed; the training times "
        "were taken beside other work and say nothing about speed:",
        "",
        *rows,
        *verdict,
        *(["", f"![several teachers]({plot})"] if plot else []),
        "",
    ])
