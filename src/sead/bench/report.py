"""BENCHMARKS.md from the benchmarks' JSON results: tables, ratios measured in the same run, goals."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..plots import plot_accuracy_curves
from .suite import LOSS_IMPLS


def _machine_line(m: dict) -> str:
    simd = ""
    if "cpu_capability" in m:
        simd = f", {m['cpu_capability']}, bf16 matmul {'native' if m.get('bf16_matmul_native') else 'emulated'}"
    return (
        f"{m['date']}, {m['cores']} cores ({m['cpu']}{simd}), Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, trl {m['trl']}, accelerate {m['accelerate']}, sead {m['sead-opd']}"
    )


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _same_n(row: dict, ref: dict | None) -> bool:
    """A ratio is shown only between rows measured at the same token count."""
    return ref is not None and row["N"] == ref["N"]


def loss_section(res: dict, command: str) -> tuple[str, dict]:
    rows = [r for r in res["rows"] if "error" not in r]
    by = {(r["impl"], r["N_requested"], r["V"]): r for r in rows}
    shapes = sorted({(r["N_requested"], r["V"]) for r in rows}, key=lambda s: (s[1], s[0]))
    table = []
    impls = LOSS_IMPLS
    for n, v in shapes:
        trl, opd = by.get(("trl_chunked", n, v)), by.get(("opd_fused", n, v))
        for impl in impls:
            r = by.get((impl, n, v))
            if r is None:
                continue
            ratio_t = f"{r['time_s'] / trl['time_s']:.2f}x" if _same_n(r, trl) else "-"
            ratio_o = f"{r['time_s'] / opd['time_s']:.2f}x" if _same_n(r, opd) else "-"
            ratio_m = f"{r['peak_mb'] / trl['peak_mb']:.2f}x" if _same_n(r, trl) and trl["peak_mb"] > 0 else "-"
            table.append([impl, str(r["N"]), str(v), f"{r['time_s']:.2f}", ratio_t, ratio_o, f"{r['peak_mb']:.0f}", ratio_m])
    errors = [f"- {r['impl']} N={r['N']} V={r['V']}: {r['error']}" for r in res["rows"] if "error" in r]
    goals = {}
    key = (4096, 32768)
    s, o, t, nv = (by.get((i, *key)) for i in ("sead_fused", "opd_fused", "trl_chunked", "naive"))
    if s and t:
        goals["sead_time_vs_trl"] = (s["time_s"] / t["time_s"], 0.4)
    if s and nv and nv["N"] == s["N"]:
        goals["sead_mem_vs_naive"] = (s["peak_mb"] / nv["peak_mb"], 0.1)
    if s and o:
        goals["sead_time_vs_opd_fused"] = (s["time_s"] / o["time_s"], 0.8)
    sg, sg_naive = by.get(("sgopd_fused", *key)), by.get(("sgopd_naive", *key))
    if sg and sg_naive and sg_naive["N"] == sg["N"] and sg_naive["peak_mb"] > 0:
        goals["sgopd_mem_vs_naive"] = (sg["peak_mb"] / sg_naive["peak_mb"], 0.1)
    native = next((r["bf16_matmul_native"] for r in rows if "bf16_matmul_native" in r), None)
    auto = {True: "bf16 on this CPU", False: "exact (fp32) on this CPU: it has no native bf16 matmul", None: "see fused.py"}[native]
    text = [
        "## 1. Loss kernels (forward + backward)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine_line(res['machine'])}; torch threads {res['threads']}; median of {res['reps']} timed runs after one warm-up (a warm-up over 20 s counts as the first timed run), each implementation in its own process; peak = peak RSS minus RSS before the call.",
        "",
        f"`sead_fused`: the trainer's defaults: zones on (skip 50%, FKL 10%), alpha 0.5, zone entropies over the teacher's top-64 ids (`entropy_support: teacher`), zone pass precision `auto` ({auto}). One setting changed, at the goal shape only: `sead_fused_bf16zones`: `zone_precision: bf16` (the zone pass projects in bfloat16; loss and gradient exact given its zones); `sead_fused_ownsupport`: `entropy_support: own` (each model's own top-64, so the zone pass projects the student too). `opd_fused`: the same function with zones off (vanilla reverse KL). `sgopd_fused`: the SG-OPD preset's loss, fused (`sead.fused.fused_objective`: full estimator, sign gate, a frozen reference head, zones off; rollouts of 512 tokens, half of them verified correct); `sgopd_naive`: the same objective on full `[N, V]` student, teacher and reference logits (`sead.objective.logits_objective`), at the goal shape only. `trl_chunked`: `trl.trainer.distillation_trainer._chunked_divergence_loss`, beta=1 (its CPU path). `naive`: full `[N, V]` logits, reverse KL. Hidden size 512. Ratios are to TRL's and to our fused OPD loss's time in the same run.",
        "",
        _table(["impl", "N", "V", "time s", "time / TRL", "time / opd_fused", "peak MB", "peak / TRL"], table),
        "",
        *(f"- {n}" for n in sorted(set(res.get("notes", [])))),
        *errors,
    ]
    return "\n".join(text), goals


def step_section(res: dict, command: str) -> tuple[str, dict]:
    rows = [r for r in res["rows"] if "error" not in r]
    trl = next((r for r in rows if r["trainer"] == "trl"), None)
    table = []
    for r in rows:
        ratio = f"{r['step_time_s'] / trl['step_time_s']:.2f}x" if trl else "-"
        table.append([r["trainer"], f"{r['step_time_s'] * 1000:.0f}", ratio, f"{r['peak_rss_mb']:.0f}"])
    goals = {}
    opd = next((r for r in rows if r["trainer"] == "opd"), None)
    if opd and trl:
        goals["opd_step_vs_trl"] = (opd["step_time_s"] / trl["step_time_s"], 1.05)
    nograde = next((r for r in rows if r["trainer"] == "opd_nograde"), None)
    if nograde and trl:
        goals["opd_nograde_step_vs_trl"] = (nograde["step_time_s"] / trl["step_time_s"], 1.05)
    errors = [f"- {r['trainer']}: {r['error']}" for r in res["rows"] if "error" in r]
    first = rows[0] if rows else {}
    text = [
        "## 2. Training step",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine_line(res['machine'])}; torch threads {res['threads']}; each trainer in its own process.",
        "",
        f"Tiny random Qwen2 models (student hidden 64 x 2 layers x 2 heads, teacher 160 x 4 x 4), {first.get('batch')} prompts per step, "
        f"{first.get('completion_tokens')} completion tokens (forced with `min_new_tokens`), {first.get('steps')} steps, median step time "
        f"excluding the first two (warm-up); {first.get('rounds', 1)} round(s), each trainer once per round in a rotated order, "
        "median of the round medians. A step includes rollout generation, the teacher forward and the update; ours also "
        "grades every rollout with the verifier to log `rollout/pass_rate` (`log_pass_rate: true`, the default), except "
        "`opd_nograde` (`log_pass_rate: false`), which does the same work as TRL's step. `opd_vllm`: vanilla OPD with "
        "the student's rollouts in TRL's vLLM colocate engine (`use_vllm: true`, `vllm_mode: colocate`; vLLM's CPU "
        "build, bf16) instead of HF generate; its step includes pushing the new weights into the engine (vLLM's "
        "`min_tokens` forces the length). `sead_topk`: SEAD with the "
        "top-k estimator (k = 8, zone entropies over the same 8) and a teacher of the same size with 2 attention heads; "
        "`sead_server`: that step with that teacher served by a vLLM server on this machine (fp32, 127.0.0.1, started "
        "once for the benchmark): one `prompt_logprobs` request per micro-batch, no teacher in the training process. "
        "`sead` takes its zone percentiles over the optimizer step (`zone_scope: step`, the default: an entropies-only "
        "pre-pass of student and teacher over the step's rollouts); `sead_microbatch` the same step with "
        "`zone_scope: micro_batch` (no pre-pass): their ratio is the step scope's cost.",
        "",
        _table(["trainer", "step ms", "step / TRL", "peak RSS MB"], table),
        *errors,
    ]
    return "\n".join(text), goals


def _by_level(runs: list[dict]) -> str:
    """Final accuracy per task level, mean over seeds: ``"95/70/60/10"``."""
    levels = sorted({lv for r in runs for lv in r.get("accuracy_by_level", {})}, key=str)
    if not levels:
        return "-"
    return "/".join(f"{100 * statistics.mean(r['accuracy_by_level'][lv] for r in runs if lv in r['accuracy_by_level']):.0f}" for lv in levels)


def quality_section(res: dict, command: str, out_dir: Path) -> tuple[str, dict]:
    summary = res["summary"]
    start = statistics.mean(res["student_start"].values()) if res["student_start"] else float("nan")
    opd = summary.get("opd", {}).get("accuracy_mean")
    table = []
    for name, s in summary.items():
        delta = f"{100 * (s['accuracy_mean'] - opd):+.1f}" if opd is not None else "-"
        auc = "-" if s["auc_mean"] is None else f"{100 * s['auc_mean']:.1f} ± {100 * s['auc_std']:.1f}"
        table.append(
            [name, f"{100 * s['accuracy_mean']:.1f} ± {100 * s['accuracy_std']:.1f}", delta, auc, _by_level(res["runs"][name]), f"{s['wall_seconds_median']:.0f}"]
        )
    curves = {}
    for name, runs in res["runs"].items():
        steps = [p[0] for p in runs[0]["curve"]]
        curves[name] = [(st, statistics.mean(r["curve"][i][1] for r in runs)) for i, st in enumerate(steps)]
    plot = plot_accuracy_curves(curves, out_dir / "bench_quality_curves.png", title="Held-out accuracy vs step (mean over seeds)")
    goals = {}
    if opd is not None:
        for name, target in (("sead", 0.048), ("sgopd", 0.02)):
            if name in summary:
                goals[f"{name}_minus_opd"] = (summary[name]["accuracy_mean"] - opd, target)
        if "trl" in summary:
            goals["opd_minus_trl_abs"] = (abs(opd - summary["trl"]["accuracy_mean"]), 0.02)
    text = [
        "## 3. Distillation quality on the built-in task",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine_line(res['machine'])}.",
        "",
        f"Same prepared student (held-out accuracy at start {100 * start:.1f}%), same {res['steps']} steps of "
        f"{res['size']['batch']} prompts, {res['seeds']} seed(s) (seed changes the training prompts, sampling and "
        f"difficulty pre-pass). Accuracy: greedy, {res['size']['num_test']} held-out problems. AUC: mean accuracy over "
        "training (trapezoid area under the accuracy-vs-step curve / steps), on the curve subset. `trl` is TRL's "
        "`DistillationTrainer` (beta=1, reverse KL); the rows between are the SEAD factorial ablation (components added to vanilla OPD).",
        "",
        _table(["variant", "final acc % (mean ± sd)", "vs opd (points)", "AUC %", "acc % by level (easy to hard)", "wall s"], table),
        "",
        f"![accuracy vs step]({plot.name})",
    ]
    return "\n".join(text), goals


GOAL_TEXT = {
    "sead_time_vs_trl": ("fused SEAD loss time / TRL chunked, N=4096 V=32768", "<="),
    "sead_mem_vs_naive": ("fused SEAD loss peak memory / naive, N=4096 V=32768", "<="),
    "sead_time_vs_opd_fused": ("fused SEAD loss time / our fused vanilla OPD loss, N=4096 V=32768", "<="),
    "sgopd_mem_vs_naive": ("fused SG-OPD loss peak memory / full-logits SG-OPD, N=4096 V=32768", "<="),
    "opd_step_vs_trl": ("OPDTrainer step time / TRL DistillationTrainer (vanilla OPD, default: grading for the pass-rate log)", "<="),
    "opd_nograde_step_vs_trl": ("OPDTrainer step time / TRL DistillationTrainer (vanilla OPD, log_pass_rate=false: same work)", "<="),
    "sead_minus_opd": ("SEAD accuracy - vanilla OPD accuracy", ">="),
    "sgopd_minus_opd": ("SG-OPD accuracy - vanilla OPD accuracy", ">="),
    "opd_minus_trl_abs": ("abs(our opd - TRL) accuracy", "<="),
}


def goals_section(goals: dict[str, tuple[float, float]]) -> str:
    rows = []
    for key, (value, target) in goals.items():
        label, op = GOAL_TEXT[key]
        ok = value <= target if op == "<=" else value >= target
        pct = key.endswith(("opd", "trl_abs"))
        fmt = (lambda x: f"{100 * x:+.1f} pts") if pct else (lambda x: f"{x:.2f}x")
        rows.append([label, f"{op} {fmt(target)}", fmt(value), _verdict(ok)])
    return "\n".join(["## Goals", "", _table(["goal", "target", "measured", "verdict"], rows)])


def write_report(results: dict[str, dict], commands: dict[str, str], path: Path, analysis: str = "") -> Path:
    sections, goals = [], {}
    if "loss" in results:
        text, g = loss_section(results["loss"], commands["loss"])
        sections.append(text)
        goals.update(g)
    if "step" in results:
        text, g = step_section(results["step"], commands["step"])
        sections.append(text)
        goals.update(g)
    if "quality" in results:
        text, g = quality_section(results["quality"], commands["quality"], path.parent)
        sections.append(text)
        goals.update(g)
    head = [
        "# Benchmarks\n\nGenerated by `make bench` (`sead bench all`); raw results in `benchmarks/results/*.json`. Every number "
        "below comes from the run recorded next to it; ratios are measured side by side in that run. This machine "
        "is noisy (2 shared cores): read medians and ratios, not single timings.",
        goals_section(goals),
    ]
    body = "\n\n".join(head + sections + ([analysis] if analysis else []))
    path.write_text(body + "\n")
    return path
