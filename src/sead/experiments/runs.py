"""One variant trained on one seed's data, from the prepared student: final greedy accuracy, the accuracy curve and
its AUC, avg@k and pass@k, wall time, and what its logs say about the mechanisms.

:func:`run_variant` trains in this process (``sead demo --jobs 1``); :func:`run_one` is the same unit of work in a
worker process (:mod:`sead.experiments.worker`), from data that :mod:`sead.experiments.seeds` saved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from sead.experiments.seeds import DemoData, evaluate_final, load_data
from sead.experiments.settings import VARIANTS, bench_size, demo_config, task_of
from sead.utils.progress import TrainProgress

__all__ = ["AccuracyCurve", "normalized_auc", "run_one", "run_variant", "series", "training_mechanisms"]


class AccuracyCurve(TrainerCallback):
    """Greedy held-out accuracy every ``every`` optimizer steps (and at the last step), and the training time
    spent until then: wall seconds since training began, the evaluations' own time excluded (``seconds``)."""

    def __init__(self, evaluate, every: int):
        self.evaluate, self.every = evaluate, every
        self.points: list[tuple[int, float]] = []
        self.seconds: list[float] = []
        self.eval_seconds = 0.0
        self._start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            t = time.perf_counter()
            accuracy = self.evaluate(model)["accuracy"]
            self.seconds.append(t - (self._start if self._start is not None else t) - self.eval_seconds)
            self.eval_seconds += time.perf_counter() - t
            self.points.append((state.global_step, accuracy))


def run_variant(
    name: str,
    data: DemoData,
    size: dict[str, Any],
    out_dir: Path,
    seed: int,
    steps: int,
    overrides: dict[str, Any] | None = None,
    trainer_cls=None,
    progress: bool = True,
    curve_start: float | None = None,
) -> dict[str, Any]:
    """Train one configuration from the prepared student; return accuracy (greedy, avg@k, pass@k), curve,
    logs, wall time and training time. ``curve_start``: the student's accuracy on the curve subset before training
    (the curve's point at step 0, second 0; measured once per seed)."""
    from sead.tasks import scoring

    task = task_of(size)
    overrides = dict(overrides or {})
    method = overrides.pop("method", name)
    cfg = demo_config(method, size, out_dir, seed, steps, **overrides)

    def evaluate(model, dataset=data.curve):
        return scoring.evaluate_accuracy(
            model, data.prepared.tokenizer, dataset, batch_size=512, max_new_tokens=task.max_new_tokens
        )

    curve = AccuracyCurve(evaluate, size["eval_every"])
    student, teacher = data.prepared.load_student(), data.prepared.load_teacher()
    start = time.perf_counter()
    if trainer_cls is None:
        from sead.training.trainer import OPDTrainer

        trainer = OPDTrainer(
            student,
            teacher,
            args=cfg,
            train_dataset=data.train,
            processing_class=data.prepared.tokenizer,
            callbacks=[curve],
        )
    else:
        trainer = trainer_cls(student, teacher, cfg, data.train, data.prepared.tokenizer, [curve])
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(TrainProgress(f"{name}", enabled=progress))  # a compact bar, or lines in a log
    trainer.train()
    wall = time.perf_counter() - start  # the trainer's set-up, training and the curve's evaluations
    final = evaluate_final(trainer.model, data.prepared.tokenizer, data, size, seed=seed)
    # the curve from step 0 (None there: unknown without curve_start, and left out of the AUC)
    points = [(0, curve_start), *curve.points]
    seconds = [0.0, *curve.seconds]
    auc = normalized_auc([p[0] for p in points], [p[1] for p in points])
    if curve_start is None:
        points, seconds = points[1:], seconds[1:]
    return {
        **final,
        "wall_seconds": wall,
        # training alone: from the first step to the last, the curve's evaluations excluded
        "train_seconds": curve.seconds[-1] if curve.seconds else wall - curve.eval_seconds,
        "curve": [list(p) for p in points],
        "curve_seconds": seconds,
        "training_mechanisms": training_mechanisms(trainer.state.log_history),
        "auc": auc,
        "log_history": trainer.state.log_history,
        "config": {
            k: getattr(cfg, k)
            for k in ("method", "estimator", "learning_rate", "max_steps", "per_device_train_batch_size")
        }
        | cfg.components,
    }


def normalized_auc(steps, accs) -> float | None:
    """Trapezoid area under accuracy-vs-step divided by the step span (a mean accuracy over training).
    A ``None`` accuracy at step 0 is filled by the caller (``curve_start``)."""
    pts = [(s, a) for s, a in zip(steps, accs) if a is not None]
    if len(pts) < 2:
        return pts[0][1] if pts else None
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def series(history: list[dict], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of one logged metric, from a trainer's ``log_history``."""
    return [(h["step"], float(h[key])) for h in history if key in h and h[key] is not None and "step" in h]


#: Training steps at which the demo reports the curriculum's open pool (those within the run).
POOL_MARKS = (1, 25, 50, 100, 150, 200, 250, 300)


def training_mechanisms(history: list[dict]) -> dict[str, Any]:
    """What the training logs say about the mechanisms: the curriculum's open pool at a few steps and the
    step at which every prompt was open; SG-OPD's consensus fraction in the first and last fifth of the
    steps; the teacher's mean entropy on the rollouts (``sead/mean_h_t``)."""
    out: dict[str, Any] = {}
    pool = dict(series(history, "curriculum/open_pool"))
    if pool:
        full = max(pool.values())
        out["open_pool"] = {str(s): pool[s] for s in POOL_MARKS if s in pool}
        out["open_pool_full_at"] = min((s for s, v in pool.items() if v >= full), default=None)
        out["open_pool_series"] = sorted(pool.items())
    for key, name in (("sgopd/consensus_frac", "consensus_frac"), ("sead/mean_h_t", "mean_h_t")):
        values = [v for _, v in series(history, key)]
        if values:
            q = max(1, len(values) // 5)
            out[name] = {"first_fifth": sum(values[:q]) / q, "last_fifth": sum(values[-q:]) / q}
    return out


def _trl_trainer(student, teacher, cfg, dataset, tokenizer, callbacks):
    from trl import DistillationTrainer

    return DistillationTrainer(
        model=student, teacher_model=teacher, args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )


def run_one(
    task: str, quick: bool, seed: int, variant: str, data_dir: Path, out: Path, steps: int | None = None,
    cache_dir: str | None = None, overrides: dict | None = None, keep_log: bool = False,
) -> dict[str, Any]:
    """Train ``variant`` on seed ``seed``'s saved data; return its scores (the log history goes to
    ``out/log_history.json`` with ``keep_log``)."""
    size = bench_size(task, quick, steps)
    data, curve_start = load_data(task, quick, data_dir, cache_dir)
    config = dict(VARIANTS[variant]) if variant in VARIANTS else {}
    config.update(overrides or {})
    if "method" not in config:
        raise SystemExit(f"unknown variant {variant!r} and no --overrides with a method")
    t0 = time.perf_counter()
    res = run_variant(
        variant, data, size, out, seed, size["steps"], config,
        trainer_cls=_trl_trainer if variant == "trl" else None, progress=False, curve_start=curve_start,
    )
    history = res.pop("log_history")
    if keep_log:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(history))
    res.update(variant=variant, seed=seed, seconds=time.perf_counter() - t0, overrides=config)
    return res


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
