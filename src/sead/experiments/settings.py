"""What the quality experiment runs: each task's two sizes, the variants, and the ``OPDConfig`` of one run.

Shared by ``sead demo`` (:mod:`sead.experiments.demo`) and ``sead bench quality`` (:mod:`sead.bench.suite`), so
both train the same configurations from the same start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sead.utils.errors import SeadError

__all__ = [
    "DEFAULT_VARIANTS",
    "QUICK_VARIANTS",
    "SIZES",
    "TASK_SIZES",
    "VARIANTS",
    "demo_config",
    "task_of",
    "task_size",
]

# Two sizes of the same pipeline per task. "quick" finishes in about a minute or two on 2 cores including
# model preparation. ``sample_k`` answers per prompt at ``sample_temperature`` on the first ``num_sample``
# held-out problems give avg@k and pass@k (0: not measured); ``mechanism_prompts`` student rollouts are
# scored for the mechanism figures (0: not measured).
TASK_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "sums": {
        "full": {
            "num_prompts": 1024,
            "num_test": 1000,
            "num_curve": 300,
            "steps": 250,
            "batch": 64,
            # OPD's learning rate for every variant: a warm-up of 25 steps, then a cosine to 0 (docs/task.md, "Why
            # distillation moved the student so little": 1.5e-3 and more dip below the start first).
            "lr": 1e-3,
            "warmup_steps": 25,
            "lr_scheduler": "cosine",
            "eval_every": 50,
            "difficulty_rollouts": 8,
            "sample_k": 8,
            "sample_temperature": 1.0,
            "num_sample": 200,
            "mechanism_prompts": 512,
            # `sead bench quality`: twice the demo's steps (OPD closes half the gap to the teacher there: docs/task.md),
            # and enough held-out problems for a standard error under a point (4,000 greedy: 0.8 points at most;
            # 1,000 sampled 8 times each for avg@8 / pass@8).
            "bench_steps": 500,
            "bench_num_test": 4000,
            "bench_num_curve": 1000,
            "bench_num_sample": 1000,
            # a validation set (training-split problems not trained on) that `sead bench lr` chooses rates on
            "bench_num_validation": 1000,
        },
        "quick": {
            "num_prompts": 256,
            "num_test": 150,
            "num_curve": 90,
            "steps": 30,
            "batch": 32,
            "lr": 5e-4,
            "eval_every": 15,
            "difficulty_rollouts": 2,
            "sample_k": 4,
            "sample_temperature": 1.0,
            "num_sample": 60,
            "mechanism_prompts": 128,
        },
    },
    "arithmetic": {
        "full": {
            "num_prompts": 2048,
            "num_test": 400,
            "num_curve": 150,
            "steps": 150,
            "batch": 64,
            "lr": 5e-4,
            "eval_every": 25,
            "difficulty_rollouts": 4,
            "sample_k": 8,
            "sample_temperature": 1.0,
            "num_sample": 200,
            "mechanism_prompts": 512,
        },
        "quick": {
            "num_prompts": 512,
            "num_test": 150,
            "num_curve": 90,
            "steps": 40,
            "batch": 64,
            "lr": 5e-4,
            "eval_every": 20,
            "difficulty_rollouts": 2,
            "sample_k": 4,
            "sample_temperature": 1.0,
            "num_sample": 60,
            "mechanism_prompts": 128,
        },
    },
}
#: The default task's sizes.
SIZES = TASK_SIZES["sums"]


#: A size key ``bench_<key>`` holds the quality benchmark's own value of ``<key>`` (:func:`bench_size`).
BENCH_PREFIX = "bench_"


def task_size(task: str, quick: bool) -> dict[str, Any]:
    """A copy of the ``quick`` or ``full`` size of ``task`` as the demo runs it, with the task's name in it."""
    from sead.tasks import TASKS

    if task not in TASKS:
        raise SeadError(f"unknown built-in task {task!r}; choose from {', '.join(TASKS)}")
    size = TASK_SIZES[task]["quick" if quick else "full"]
    return {**{k: v for k, v in size.items() if not k.startswith(BENCH_PREFIX)}, "task": task}


# The methods, the SEAD factorial (components added to vanilla OPD; all three = SEAD, in the paper's composition of
# zones and anneal, METHODS.md 1b) and TRL's trainer.
VARIANTS: dict[str, dict[str, Any]] = {
    "trl": {"method": "opd"},
    "opd": {"method": "opd"},
    "sgopd": {"method": "sgopd"},
    "zones": {"method": "opd", "zones": True},
    "anneal": {"method": "opd", "anneal": True},
    "curriculum": {"method": "opd", "curriculum": True},
    "zones+anneal": {"method": "opd", "zones": True, "anneal": True},
    "zones+curriculum": {"method": "opd", "zones": True, "curriculum": True},
    "anneal+curriculum": {"method": "opd", "anneal": True, "curriculum": True},
    "sead": {"method": "sead"},
    # Our earlier composition of zones and anneal (`zone_composition: mix`, what the 2026-12-03 benchmarks ran).
    "sead/mix": {"method": "sead", "zone_composition": "mix"},
    "zones+anneal/mix": {"method": "opd", "zones": True, "anneal": True, "zone_composition": "mix"},
    # Ablations of the "mix" composition (BENCHMARKS.md of 2026-12-03): without the skip zone, normalised over every
    # token, and with the FKL zone annealed too (`fkl_zone_anneal`).
    "zones+anneal/mix/no-skip": {"method": "opd", "zones": True, "anneal": True, "zone_composition": "mix",
                                 "skip_fraction": 0.0},
    "zones+anneal/mix/all-tokens": {"method": "opd", "zones": True, "anneal": True, "zone_composition": "mix",
                                    "loss_normalization": "all"},
    "zones+anneal/mix/fkl-annealed": {"method": "opd", "zones": True, "anneal": True, "zone_composition": "mix",
                                      "fkl_zone_anneal": True},
    # The curriculum's pacing (docs/methods.md): a threshold relative to the open pool's starting pass rate, a floor
    # that opens every prompt by 40% of training, and difficulty re-estimated online from the rollouts' verdicts.
    "curriculum/relative": {"method": "opd", "curriculum": True, "competence_threshold_mode": "relative"},
    "curriculum/floor-0.4": {"method": "opd", "curriculum": True, "curriculum_full_open_fraction": 0.4},
    "curriculum/online": {"method": "opd", "curriculum": True, "curriculum_online_difficulty": True},
    # SG-OPD taken apart: the sign gate alone, the teacher rollouts alone, and a damped conflict side.
    "gate": {"method": "opd", "sign_gate": True},
    "teacher-rollouts": {"method": "opd", "teacher_mixing": True},
    "sgopd/conflict-0.5": {"method": "sgopd", "lambda_conflict": 0.5},
    # ... and 8 rollouts per prompt at the same 64 rollouts a step (a secondary source's SG-OPD setting).
    "sgopd/8-generations": {"method": "sgopd", "num_generations": 8},
}
#: What `sead bench quality` runs by default: the methods, SEAD in both compositions and its single components (the
#: power design of docs/evaluation.md); `--variants` runs the others.
DEFAULT_VARIANTS = ("opd", "sead", "sead/mix", "sgopd", "zones", "anneal", "curriculum")
QUICK_VARIANTS = ("trl", "opd", "sead", "sgopd")


def task_of(size: dict[str, Any]):
    """The built-in task a size belongs to."""
    from sead.tasks import get_task

    return get_task(size.get("task", "sums"))


def bench_size(task: str, quick: bool, steps: int | None = None) -> dict[str, Any]:
    """The size ``sead bench quality`` runs: :func:`task_size` with the size's ``bench_<key>`` values in place of
    ``<key>`` (more held-out problems, its own number of steps), and ``steps`` (when given) as its number of steps."""
    size = task_size(task, quick)
    raw = TASK_SIZES[task]["quick" if quick else "full"]
    size.update({k[len(BENCH_PREFIX) :]: v for k, v in raw.items() if k.startswith(BENCH_PREFIX)})
    if steps:
        size["steps"] = steps
    return size


def demo_config(method: str, size: dict[str, Any], out_dir: Path, seed: int, steps: int, **overrides):
    """The ``OPDConfig`` of one demo run (``recipes/demo.yaml`` holds the same values for ``sums``)."""
    from sead.training.config import OPDConfig

    fields = {
        "output_dir": str(out_dir),
        "method": method,
        "max_steps": steps,
        "per_device_train_batch_size": size["batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": size["lr"],
        "lr_scheduler_type": size.get("lr_scheduler", "constant"),
        "warmup_steps": size.get("warmup_steps", 0),
        "max_completion_length": task_of(size).max_new_tokens,
        "temperature": 1.0,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "bf16": False,
        "activation_checkpointing": False,
        "use_cpu": True,
        "seed": seed,
        "disable_tqdm": True,
        "competence_window": 2 * size["batch"],
        "teacher_num_generations": 4,
        "dataloader_num_workers": 0,
    }
    fields.update(overrides)
    return OPDConfig(**fields)
