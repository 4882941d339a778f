"""The built-in demo: every method trained from the same student, for the same steps, on a built-in
task (``sums`` by default, ``--task arithmetic``); held-out accuracy per level, avg@k / pass@k of sampled
answers, wall time, the task's mechanism measurements, plots and ``results.json``.

The units it is made of (one seed's data, one variant's run) are shared with the quality benchmark:
:mod:`sead.experiments.seeds`, :mod:`sead.experiments.runs`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sead.experiments.mechanisms import format_summary, measure
from sead.experiments.plots import plot_accuracy_curves, plot_entropy_histogram, plot_series
from sead.experiments.runs import run_variant, series
from sead.experiments.seeds import DemoData, evaluate_final, prepare_demo, save_data
from sead.experiments.settings import task_of, task_size
from sead.experiments.workers import run_workers
from sead.utils.errors import SeadError

__all__ = ["DEFAULT_METHODS", "DemoOptions", "format_mechanisms", "format_table", "run_demo"]

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


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """The whole demo; returns (and writes to ``opts.out``) the results."""
    from sead.tasks import scoring

    size = task_size(opts.task, opts.quick)
    task = task_of(size)
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
        mechanisms = measure(task, teacher, student, tok, size["mechanism_prompts"], opts.seed, data.prepared.levels)
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
        results["methods"][method] = run_variant(
            method, data, size, out / method, opts.seed, steps, overrides, progress=opts.progress, curve_start=curve_start
        )
    results["total_seconds"] = time.perf_counter() - t0
    _write_outputs(results, out)
    return results


def _train_in_workers(opts: DemoOptions, data: DemoData, curve_start: float, steps: int, overrides, out: Path):
    """Each method in a worker process (:mod:`sead.experiments.worker`), ``opts.jobs`` at a time."""
    import tempfile


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
        consensus = series(h, "sgopd/consensus_frac")
        if consensus:
            plots[f"sign_gate_{m}"] = plot_series(
                {"consensus fraction (d_t * v > 0)": consensus, "rollout pass rate": series(h, "rollout/pass_rate")},
                out / f"sign_gate_{m}.png",
                title=f"{m}: SG-OPD sign gate",
                ylabel="fraction",
                secondary={"teacher-mixed fraction": series(h, "sgopd/teacher_mixed_frac")},
                secondary_label="teacher rollouts mixed in",
            )
        zones = {z: series(h, f"sead/frac_{z}") for z in ("skip", "rkl", "fkl")}
        alpha = {"alpha": series(h, "sead/alpha")}
        if any(zones.values()) or any(alpha.values()):
            plots[f"zones_{m}"] = plot_series(
                {f"{z} fraction": v for z, v in zones.items()},
                out / f"zones_alpha_{m}.png",
                title=f"{m}: token zones and forward-KL weight alpha",
                ylabel="fraction of valid tokens",
                secondary=alpha,
                secondary_label="alpha",
            )
        gate = series(h, "curriculum/gate")
        if gate:
            plots[f"curriculum_{m}"] = plot_series(
                {
                    "gate c(t) (max difficulty open)": gate,
                    "rollout pass rate": series(h, "rollout/pass_rate"),
                },
                out / f"curriculum_{m}.png",
                title=f"{m}: competence-gated curriculum",
                ylabel="value in [0, 1]",
                secondary={"open prompts": series(h, "curriculum/open_pool")},
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
