"""The built-in demo: every method trained from the same student, for the same steps, on a built-in
task (``sums`` by default, ``--task arithmetic``); held-out accuracy per level, avg@k / pass@k of sampled
answers, wall time, the task's mechanism measurements, plots and ``results.json``.

``run_variant`` (one configuration, one seed) is shared with the quality benchmark.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from .errors import SeadError
from .plots import plot_accuracy_curves, plot_entropy_histogram, plot_series
from .progress import TrainProgress

__all__ = ["DemoOptions", "SIZES", "TASK_SIZES", "task_size", "demo_config", "run_demo", "run_variant", "prepare_demo"]

# Two sizes of the same pipeline per task. "quick" finishes in about a minute or two on 2 cores including
# model preparation. ``sample_k`` answers per prompt at ``sample_temperature`` on the first ``num_sample``
# held-out problems give avg@k and pass@k (0: not measured); ``mechanism_prompts`` student rollouts are
# scored for the mechanism figures (0: not measured).
TASK_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "sums": {
        "full": {
            "num_prompts": 1024,
            "num_test": 400,
            "num_curve": 150,
            "steps": 300,
            # `sead bench quality` trains 250 steps: 11 variants x 5 seeds of 300 steps did not fit make bench's
            # 90 minutes on 2 cores (116 min measured on 2026-12-01); the demo keeps 300.
            "bench_steps": 250,
            "batch": 64,
            "lr": 5e-4,
            "eval_every": 50,
            "difficulty_rollouts": 8,
            "sample_k": 8,
            "sample_temperature": 1.0,
            "num_sample": 200,
            "mechanism_prompts": 512,
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


def task_size(task: str, quick: bool) -> dict[str, Any]:
    """A copy of the ``quick`` or ``full`` size of ``task``, with the task's name in it."""
    from .tasks import TASKS

    if task not in TASKS:
        raise SeadError(f"unknown built-in task {task!r}; choose from {', '.join(TASKS)}")
    return {**TASK_SIZES[task]["quick" if quick else "full"], "task": task}


DEFAULT_METHODS = ("opd", "sead", "sgopd")


@dataclass
class DemoOptions:
    task: str = "sums"
    quick: bool = False
    methods: tuple[str, ...] = DEFAULT_METHODS
    steps: int | None = None
    seed: int = 0
    out: Path = Path("runs/demo")
    cache_dir: str | None = None
    threads: int = 1
    #: Methods trained at a time, each in its own process (one torch thread each); 1: one after another here.
    jobs: int = 3
    progress: bool = True
    report_to: tuple[str, ...] = ("tensorboard",)
    extra: dict[str, Any] = field(default_factory=dict)


def _task(size: dict[str, Any]):
    from .tasks import get_task

    return get_task(size.get("task", "sums"))


def demo_config(method: str, size: dict[str, Any], out_dir: Path, seed: int, steps: int, **overrides):
    """The ``OPDConfig`` of one demo run (``recipes/demo.yaml`` holds the same values for ``sums``)."""
    from .config import OPDConfig

    fields = {
        "output_dir": str(out_dir),
        "method": method,
        "max_steps": steps,
        "per_device_train_batch_size": size["batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": size["lr"],
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_completion_length": _task(size).max_new_tokens,
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


class AccuracyCurve(TrainerCallback):
    """Greedy held-out accuracy every ``every`` optimizer steps (and at the last step)."""

    def __init__(self, evaluate, every: int):
        self.evaluate, self.every, self.points = evaluate, every, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.points.append((state.global_step, self.evaluate(model)["accuracy"]))


@dataclass
class DemoData:
    prepared: Any
    train: Any
    test: Any
    curve: Any


def prepare_demo(
    size: dict[str, Any], seed: int, quick: bool, cache_dir: str | None, progress: bool
) -> DemoData:
    """Models (cached), training prompts with their difficulty (student pass rate), held-out problems.

    When the teacher is not cached yet, it trains in a second process while this one trains the student
    and runs the difficulty pre-pass (two cores: the student's work is hidden behind the teacher's)."""
    from pathlib import Path as _Path

    from .difficulty import estimate_difficulty
    from .tasks.prepare import default_cache_dir, join_background, prepare_in_background, read_metrics

    task = _task(size)
    cache = _Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    teacher_recipe, student_recipe = task.recipes(quick)
    child = None
    if read_metrics(task.entry_dir(teacher_recipe, 0, cache), task.metrics_file) is None:
        if progress:
            print(f"[sead demo] training the {task.name} teacher in a second process (a few minutes) ...", flush=True)
        child = prepare_in_background(task.name, "teacher", quick, 0, cache)
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
    curve = test.select(range(min(size["num_curve"], len(test))))
    if child is not None:
        join_background(child, f"{task.name} teacher")
    prepared = task.prepare_models(cache_dir=cache, quick=quick, seed=0, progress=progress)
    return DemoData(prepared, train, test, curve)


def evaluate_final(model, tokenizer, data: DemoData, size: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Greedy accuracy on the held-out problems and, when ``size["sample_k"]``, avg@k / pass@k of sampled
    answers on the first ``num_sample`` of them."""
    from .tasks import scoring

    task = _task(size)
    final = scoring.evaluate_accuracy(model, tokenizer, data.test, batch_size=512, max_new_tokens=task.max_new_tokens)
    out = {
        "accuracy": final["accuracy"],
        "accuracy_by_level": {str(k): v for k, v in final["accuracy_by_level"].items()},
    }
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
) -> dict[str, Any]:
    """Train one configuration from the prepared student; return accuracy (greedy, avg@k, pass@k), curve,
    logs and wall time."""
    from .tasks import scoring

    task = _task(size)
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
        from .trainer import OPDTrainer

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
    wall = time.perf_counter() - start
    final = evaluate_final(trainer.model, data.prepared.tokenizer, data, size, seed=seed)
    steps_, accs = zip(*curve.points) if curve.points else ((), ())
    auc = _normalized_auc([0, *steps_], [None, *accs])
    return {
        **final,
        "wall_seconds": wall,
        "curve": [list(p) for p in curve.points],
        "auc": auc,
        "log_history": trainer.state.log_history,
        "config": {
            k: getattr(cfg, k)
            for k in ("method", "estimator", "learning_rate", "max_steps", "per_device_train_batch_size")
        }
        | cfg.components,
    }


def _normalized_auc(steps, accs) -> float | None:
    """Trapezoid area under accuracy-vs-step divided by the step span (a mean accuracy over training).
    A ``None`` accuracy at step 0 is filled by the caller (``curve_start``)."""
    pts = [(s, a) for s, a in zip(steps, accs) if a is not None]
    if len(pts) < 2:
        return pts[0][1] if pts else None
    area = sum((s1 - s0) * (a0 + a1) / 2 for (s0, a0), (s1, a1) in zip(pts, pts[1:]))
    return area / (pts[-1][0] - pts[0][0])


def _series(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(h["step"], float(h[key])) for h in history if key in h and h[key] is not None and "step" in h]


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """The whole demo; returns (and writes to ``opts.out``) the results."""
    from .tasks import scoring

    size = task_size(opts.task, opts.quick)
    task = _task(size)
    steps = opts.steps or size["steps"]
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, opts.threads))
    t0 = time.perf_counter()
    data = prepare_demo(size, opts.seed, opts.quick, opts.cache_dir, opts.progress)
    tok = data.prepared.tokenizer
    teacher, student = data.prepared.load_teacher(), data.prepared.load_student()
    teacher_eval = evaluate_final(teacher, tok, data, size, seed=opts.seed)
    student_eval = evaluate_final(student, tok, data, size, seed=opts.seed)
    curve_start = scoring.evaluate_accuracy(student, tok, data.curve, batch_size=512, max_new_tokens=task.max_new_tokens)[
        "accuracy"
    ]
    mechanisms = None
    if size.get("mechanism_prompts"):
        if opts.progress:
            print(f"[sead demo] measuring the task's mechanisms on {size['mechanism_prompts']} student rollouts ...")
        mechanisms = measure_mechanisms(task, teacher, student, tok, size["mechanism_prompts"], opts.seed, data.prepared.levels)
    prep_seconds = time.perf_counter() - t0

    results: dict[str, Any] = {
        "task": opts.task,
        "teacher": teacher_eval,
        "student_start": student_eval,
        "mechanisms": mechanisms,
        "methods": {},
        "settings": {"quick": opts.quick, "steps": steps, "seed": opts.seed, **size, "threads": opts.threads},
        "prep_seconds": prep_seconds,
    }
    overrides = {"report_to": list(opts.report_to), **opts.extra}  # tensorboard files: OUT/METHOD/runs/
    if opts.jobs > 1 and len(opts.methods) > 1:
        results["methods"] = _train_in_workers(opts, data, curve_start, steps, overrides, out)
    for method in opts.methods if not results["methods"] else ():
        if opts.progress:
            print(f"[sead demo] training {method} for {steps} steps ...", flush=True)
        res = run_variant(method, data, size, out / method, opts.seed, steps, overrides, progress=opts.progress)
        res["curve"] = [[0, curve_start], *res["curve"]]
        res["auc"] = _normalized_auc([p[0] for p in res["curve"]], [p[1] for p in res["curve"]])
        res["training_mechanisms"] = training_mechanisms(res["log_history"])
        results["methods"][method] = res
    results["total_seconds"] = time.perf_counter() - t0
    _write_outputs(results, out)
    return results


def _train_in_workers(opts: DemoOptions, data: DemoData, curve_start: float, steps: int, overrides, out: Path):
    """Each method in a worker process (``sead.bench.worker quality``), ``opts.jobs`` at a time."""
    import tempfile

    from .bench.common import run_workers
    from .bench.quality import save_data

    if opts.progress:
        print(f"[sead demo] training {', '.join(opts.methods)} for {steps} steps, {opts.jobs} at a time ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_data(data, Path(tmp), curve_start)
        common = ["--task", opts.task, "--seed", str(opts.seed), "--data", tmp, "--steps", str(steps), "--keep-log",
                  "--threads", "1", "--overrides", json.dumps(overrides)]
        common += (["--quick"] if opts.quick else []) + (["--cache-dir", str(opts.cache_dir)] if opts.cache_dir else [])
        done = run_workers(
            [(m, ["quality", "--variant", m, "--out", str(out / m), *common]) for m in opts.methods],
            opts.jobs, opts.progress, "sead demo",
        )
    methods = {}
    for m, res in done.items():
        if "error" in res:
            raise SeadError(f"sead demo: training {m} failed in its worker process: {res['error']}")
        res["log_history"] = json.loads((out / m / "log_history.json").read_text())
        methods[m] = res
    return methods


def measure_mechanisms(task, teacher, student, tokenizer, num_prompts: int, seed: int, levels) -> dict[str, Any]:
    """The task's mechanisms on the initial student's rollouts (:mod:`sead.bench.profile_mechanisms`)."""
    from .bench.profile_mechanisms import measure

    return measure(task, teacher, student, tokenizer, num_prompts, seed, levels)


#: Training steps at which the demo reports the curriculum's open pool (those within the run).
POOL_MARKS = (1, 25, 50, 100, 150, 200, 250, 300)


def training_mechanisms(history: list[dict]) -> dict[str, Any]:
    """What the training logs say about the mechanisms: the curriculum's open pool at a few steps and the
    step at which every prompt was open; SG-OPD's consensus fraction in the first and last fifth of the
    steps; the teacher's mean entropy on the rollouts (``sead/mean_h_t``)."""
    out: dict[str, Any] = {}
    pool = dict(_series(history, "curriculum/open_pool"))
    if pool:
        full = max(pool.values())
        out["open_pool"] = {str(s): pool[s] for s in POOL_MARKS if s in pool}
        out["open_pool_full_at"] = min((s for s, v in pool.items() if v >= full), default=None)
        out["open_pool_series"] = sorted(pool.items())
    for key, name in (("sgopd/consensus_frac", "consensus_frac"), ("sead/mean_h_t", "mean_h_t")):
        values = [v for _, v in _series(history, key)]
        if values:
            q = max(1, len(values) // 5)
            out[name] = {"first_fifth": sum(values[:q]) / q, "last_fifth": sum(values[-q:]) / q}
    return out


def _str_keys(ev: dict) -> dict[str, float]:
    return {str(k): v for k, v in ev["accuracy_by_level"].items()}


def _write_outputs(results: dict[str, Any], out: Path) -> None:
    methods = results["methods"]
    plots = {
        "accuracy": plot_accuracy_curves(
            {m: [tuple(p) for p in r["curve"]] for m, r in methods.items()},
            out / "accuracy_vs_step.png",
            reference={"teacher": results["teacher"]["accuracy"]},
        )
    }
    if results.get("mechanisms"):
        plots["teacher_entropy"] = plot_entropy_histogram(results["mechanisms"]["h_t_histogram"], out / "teacher_entropy.png")
    for m, r in methods.items():
        h = r["log_history"]
        consensus = _series(h, "sgopd/consensus_frac")
        if consensus:
            plots[f"sign_gate_{m}"] = plot_series(
                {"consensus fraction (d_t * v > 0)": consensus, "rollout pass rate": _series(h, "rollout/pass_rate")},
                out / f"sign_gate_{m}.png",
                title=f"{m}: SG-OPD sign gate",
                ylabel="fraction",
                secondary={"teacher-mixed fraction": _series(h, "sgopd/teacher_mixed_frac")},
                secondary_label="teacher rollouts mixed in",
            )
        zones = {z: _series(h, f"sead/frac_{z}") for z in ("skip", "rkl", "fkl")}
        alpha = {"alpha": _series(h, "sead/alpha")}
        if any(zones.values()) or any(alpha.values()):
            plots[f"zones_{m}"] = plot_series(
                {f"{z} fraction": v for z, v in zones.items()},
                out / f"zones_alpha_{m}.png",
                title=f"{m}: token zones and forward-KL weight alpha",
                ylabel="fraction of valid tokens",
                secondary=alpha,
                secondary_label="alpha",
            )
        gate = _series(h, "curriculum/gate")
        if gate:
            plots[f"curriculum_{m}"] = plot_series(
                {
                    "gate c(t) (max difficulty open)": gate,
                    "rollout pass rate": _series(h, "rollout/pass_rate"),
                },
                out / f"curriculum_{m}.png",
                title=f"{m}: competence-gated curriculum",
                ylabel="value in [0, 1]",
                secondary={"open prompts": _series(h, "curriculum/open_pool")},
                secondary_label="open prompts",
            )
    results["plots"] = {k: str(v) for k, v in plots.items()}
    slim = {
        **results,
        "methods": {m: {k: v for k, v in r.items() if k != "log_history"} for m, r in methods.items()},
    }
    (out / "results.json").write_text(json.dumps(slim, indent=2))
    (out / "log_history.json").write_text(
        json.dumps({m: r["log_history"] for m, r in methods.items()}, indent=1)
    )


def format_table(results: dict[str, Any]) -> str:
    """Method x greedy accuracy per level, overall, AUC, avg@k, pass@k, wall time, as a text table."""
    levels = sorted(results["teacher"]["accuracy_by_level"], key=int)
    k = results["teacher"].get("sample_k")
    head = ["method", *[f"L{lv}" for lv in levels], "overall", "AUC"]
    if k:
        head += [f"avg@{k}", f"pass@{k}"]
    head.append("wall s")
    rows = []

    def pct(x):
        return "" if x is None else f"{100 * x:.1f}"

    def row(name, r, wall=None, auc=None):
        by = r.get("accuracy_by_level", {})
        cells = [name, *[f"{100 * by.get(lv, math.nan):.1f}" for lv in levels], f"{100 * r['accuracy']:.1f}", pct(auc)]
        if k:
            cells += [pct(r.get("avg_at_k")), pct(r.get("pass_at_k"))]
        cells.append("" if wall is None else f"{wall:.0f}")
        rows.append(cells)

    row("teacher", results["teacher"])
    row("student (start)", results["student_start"])
    for m, r in results["methods"].items():
        row(m, r, r["wall_seconds"], r.get("auc"))
    widths = [max(len(c[i]) for c in [head, *rows]) for i in range(len(head))]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]
    return "\n".join(lines)


def format_mechanisms(results: dict[str, Any]) -> str:
    """The mechanism figures: measured on the initial student's rollouts, then from each run's logs."""
    from .bench.mechanisms import format_summary

    lines = []
    if results.get("mechanisms"):
        lines += ["Mechanisms of the task, on the initial student's rollouts (temperature 1):", format_summary(results["mechanisms"])]
    for m, r in results["methods"].items():
        tm = r.get("training_mechanisms") or {}
        parts = []
        if "open_pool" in tm:
            pool = ", ".join(f"{s}: {int(v)}" for s, v in tm["open_pool"].items())
            parts.append(f"curriculum open prompts at step {pool}; all open from step {tm['open_pool_full_at']}")
        if "consensus_frac" in tm:
            c = tm["consensus_frac"]
            parts.append(f"SG-OPD consensus fraction {100 * c['first_fifth']:.1f}% (first fifth) -> {100 * c['last_fifth']:.1f}% (last)")
        if "mean_h_t" in tm:
            h = tm["mean_h_t"]
            parts.append(f"teacher entropy on rollouts {h['first_fifth']:.3f} -> {h['last_fifth']:.3f} nats/token")
        if parts:
            lines.append(f"{m}: " + "; ".join(parts))
    return "\n".join(lines)
