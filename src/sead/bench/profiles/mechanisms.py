"""Measure a built-in task's mechanisms on the prepared student's rollouts:
``python -m sead.bench.profiles.mechanisms [--task sums] [--quick] [--prompts N] [--json FILE] [--png FILE]``.

Prepares (or loads from the cache) the task's teacher and student, samples one student rollout
(temperature 1) per training prompt, and prints :func:`sead.experiments.mechanisms.format_summary`: the teacher's
entropy at forks and forced tokens, the zones' contents and disagreements, the teacher's entropy on
failed vs passed rollouts, and the SG-OPD gate against the oracle. ``--teacher/--student DIR`` score
other checkpoints (e.g. while designing a task).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str]) -> int:
    from sead.experiments.mechanisms import format_summary, measure
    from sead.tasks import DEFAULT_TASK, get_task

    p = argparse.ArgumentParser(prog="python -m sead.bench.profiles.mechanisms")
    p.add_argument("--task", default=DEFAULT_TASK)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--prompts", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", default=None, help="checkpoint directory (default: the prepared teacher)")
    p.add_argument("--student", default=None, help="checkpoint directory (default: the prepared student)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--png", type=Path, default=None, help="teacher-entropy histogram")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    task = get_task(a.task)
    from transformers import AutoModelForCausalLM

    if a.teacher and a.student:
        teacher = AutoModelForCausalLM.from_pretrained(a.teacher).eval()
        student = AutoModelForCausalLM.from_pretrained(a.student).eval()
        levels = None
    else:
        prepared = task.prepare_models(quick=a.quick, progress=True)
        teacher = AutoModelForCausalLM.from_pretrained(a.teacher).eval() if a.teacher else prepared.load_teacher()
        student = AutoModelForCausalLM.from_pretrained(a.student).eval() if a.student else prepared.load_student()
        levels = prepared.levels
        print(f"teacher {100 * prepared.teacher_accuracy:.1f}% {prepared.teacher_accuracy_by_level}; "
              f"student {100 * prepared.student_accuracy:.1f}% {prepared.student_accuracy_by_level}")
    res = measure(task, teacher, student, task.build_tokenizer(), a.prompts, a.seed, levels)
    print(format_summary(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    if a.png:
        from sead.experiments.plots import plot_entropy_histogram

        plot_entropy_histogram(res["h_t_histogram"], a.png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
