"""BENCHMARKS.md from the benchmarks' JSON results: tables, ratios measured in the same run, goals."""

from __future__ import annotations

import statistics
from pathlib import Path

from sead.bench.suite import LOSS_IMPLS, pooled_intervals
from sead.bench.worker import LONG_RUN_S, SLOW_RUN_S
from sead.experiments.plots import plot_accuracy_curves


def _runs_phrase(rows, reps: int) -> str:
    """How many timed runs each median is of, as the rows record it (slow implementations are timed fewer times)."""
    counts = sorted({len(r["times_s"]) for r in rows if r.get("times_s")}) or [reps]
    if counts == [reps]:
        return f"{reps} timed runs"
    return f"{counts[0]}-{counts[-1]} timed runs ({counts[0]} where a run took over {SLOW_RUN_S:g} s)"


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
    by = {(r["impl"], r["N_requested"], r["V"], r.get("H", 512)): r for r in rows}
    shapes = sorted({(r["N_requested"], r["V"], r.get("H", 512)) for r in rows}, key=lambda s: (s[1], s[0]))
    table = []
    impls = LOSS_IMPLS
    for n, v, h in shapes:
        trl, opd = by.get(("trl_chunked", n, v, h)), by.get(("opd_fused", n, v, h))
        for impl in impls:
            r = by.get((impl, n, v, h))
            if r is None:
                continue
            ratio_t = f"{r['time_s'] / trl['time_s']:.2f}x" if _same_n(r, trl) else "-"
            ratio_o = f"{r['time_s'] / opd['time_s']:.2f}x" if _same_n(r, opd) else "-"
            ratio_m = f"{r['peak_mb'] / trl['peak_mb']:.2f}x" if _same_n(r, trl) and trl["peak_mb"] > 0 else "-"
            shape = f"{v} ({r['model']})" if r.get("model") else str(v)
            table.append([impl, str(r["N"]), shape, str(h), f"{r['time_s']:.2f}", ratio_t, ratio_o, f"{r['peak_mb']:.0f}", ratio_m])
    errors = [f"- {r['impl']} N={r['N']} V={r['V']}: {r['error']}" for r in res["rows"] if "error" in r]
    goals = {}
    key = (4096, 32768, 512)
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
        f"Machine: {_machine_line(res['machine'])}; torch threads {res['threads']}; median of {_runs_phrase(rows, res['reps'])} after one warm-up (a warm-up over {LONG_RUN_S:g} s counts as the first timed run), each implementation in its own process; peak = peak RSS minus RSS before the call.",
        "",
        f"`sead_fused`: the trainer's defaults: zones on (skip 50%, FKL 10%), alpha 0.5, zone entropies over the teacher's top-64 ids (`entropy_support: teacher`), zone pass precision `auto` ({auto}). One setting changed, at the goal shape only: `sead_fused_bf16zones`: `zone_precision: bf16` (the zone pass projects in bfloat16; loss and gradient exact given its zones); `sead_fused_ownsupport`: `entropy_support: own` (each model's own top-64, so the zone pass projects the student too). `opd_fused`: the same function with zones off (vanilla reverse KL). `sgopd_fused`: the SG-OPD preset's loss, fused (`sead.losses.fused.fused_objective`: full estimator, sign gate, a frozen reference head, zones off; rollouts of 512 tokens, half of them verified correct); `sgopd_naive`: the same objective on full `[N, V]` student, teacher and reference logits (`sead.losses.objective.logits_objective`), at the goal shape only. `trl_chunked`: `trl.trainer.distillation_trainer._chunked_divergence_loss`, beta=1 (its CPU path). `naive`: full `[N, V]` logits, reverse KL. Hidden size H: 512, and at the vocabularies of two real checkpoints their own (SmolLM2-135M: V 49,152, H 576; Gemma 3 270M: V 262,144, H 640), on random weights of those shapes. Ratios are to TRL's and to our fused OPD loss's time in the same run.",
        "",
        _table(["impl", "N", "V", "H", "time s", "time / TRL", "time / opd_fused", "peak MB", "peak / TRL"], table),
        "",
        *(f"- {n}" for n in sorted(set(res.get("notes", [])))),
        *errors,
    ]
    return "\n".join(text), goals


#: The step benchmark's cost goals (issue 29): ``(key, row, reference row, shape, at most)``.
STEP_COST_GOALS = (
    ("sead_step_vs_opd_tiny", "sead", "opd", "tiny", 1.10),
    ("sead_step_vs_opd_large", "sead", "opd", "large", 1.0),
    ("sgopd_step_vs_opd_tiny", "sgopd", "opd", "tiny", 1.15),
    ("sgopd_step_vs_opd_large", "sgopd", "opd", "large", 1.15),
    ("sead_server_step_vs_sead_topk", "sead_server", "sead_topk", "tiny", 1.2),
)


def _shape_name(row: dict) -> str:
    return (row.get("shape") or {}).get("name", "tiny")


def step_section(res: dict, command: str) -> tuple[str, dict]:
    rows = [r for r in res["rows"] if "error" not in r]
    by = {(_shape_name(r), r["trainer"]): r for r in rows}
    table = []
    for r in rows:
        shape = _shape_name(r)
        trl, opd = by.get((shape, "trl")), by.get((shape, "opd"))
        table.append([r["trainer"], shape, f"{r['step_time_s'] * 1000:.0f}",
                      f"{r['step_time_s'] / trl['step_time_s']:.2f}x" if trl else "-",
                      f"{r['step_time_s'] / opd['step_time_s']:.2f}x" if opd else "-", f"{r['peak_rss_mb']:.0f}"])  # fmt: skip
    goals = {}
    trl, opd, nograde = by.get(("tiny", "trl")), by.get(("tiny", "opd")), by.get(("tiny", "opd_nograde"))
    if opd and trl:
        goals["opd_step_vs_trl"] = (opd["step_time_s"] / trl["step_time_s"], 1.05)
    if nograde and trl:
        goals["opd_nograde_step_vs_trl"] = (nograde["step_time_s"] / trl["step_time_s"], 1.05)
    for key, name, ref, shape, limit in STEP_COST_GOALS:
        if (shape, name) in by and (shape, ref) in by:
            goals[key] = (by[(shape, name)]["step_time_s"] / by[(shape, ref)]["step_time_s"], limit)
    errors = [f"- {r['trainer']} ({_shape_name(r)}): {r['error']}" for r in res["rows"] if "error" in r]
    first = next((r for r in rows if _shape_name(r) == "tiny"), rows[0] if rows else {})
    large = next((r for r in rows if _shape_name(r) == "large"), None)
    large_text = []
    if large is not None:
        from sead.bench.worker import STEP_SHAPES

        sh = {**STEP_SHAPES["large"], **large["shape"]}
        large_text = [
            "",
            f"`large`: a student of hidden {sh['student'][0]} x {sh['student'][1]} layers ({sh.get('student_params', 0) / 1e6:.0f}M "
            f"parameters), a teacher of hidden {sh['teacher'][0]} x {sh['teacher'][1]} layers (4x the student), a "
            f"{sh['vocab']}-token vocabulary, {large.get('completion_tokens')} completion tokens, {large.get('batch')} "
            f"rollouts per micro-batch x {large.get('gradient_accumulation_steps')} micro-batches per step, "
            f"{large.get('steps')} steps (median of the last {max(large.get('steps', 3) - 2, 1)}), "
            f"{large.get('rounds', 1)} round(s): the loss and the forwards outweigh generation.",
        ]
    text = [
        "## 2. Training step",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine_line(res['machine'])}; torch threads {res['threads']}; each trainer in its own process.",
        "",
        f"`tiny`: random Qwen2 models (student hidden 64 x 2 layers x 2 heads, teacher 160 x 4 x 4), {first.get('batch')} prompts per step, "
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
        "once for the benchmark): one `prompt_logprobs` request per step, sent when the rollouts are generated, no "
        "teacher in the training process. `sead` takes its zone percentiles over the optimizer step (`zone_scope: "
        "step`, the default: a no-grad zone pass over the step's rollouts with the student's hidden states recorded "
        "while it sampled, whose teacher hidden states and entropies the losses reuse); `sead_nocache` the same step "
        "with `zone_student_hidden: forward` and `teacher_cache: off` (a student forward in the zone pass, the teacher "
        "again in each loss: the cost before issue 29); `sead_microbatch` with `zone_scope: micro_batch` (no zone pass).",
        *large_text,
        "",
        _table(["trainer", "shape", "step ms", "step / TRL", "step / opd", "peak RSS MB"], table),
        *errors,
    ]
    return "\n".join(text), goals


def _by_level(runs: list[dict], key: str = "accuracy_by_level") -> str:
    """A per-level score, mean over seeds: ``"95/70/60/10"``."""
    levels = sorted({lv for r in runs for lv in r.get(key, {})}, key=str)
    if not levels:
        return "-"
    return "/".join(f"{100 * statistics.mean(r[key][lv] for r in runs if lv in r.get(key, {})):.0f}" for lv in levels)


def _mean_sd(s: dict, metric: str) -> str:
    if s.get(f"{metric}_mean") is None:
        return "-"
    return f"{100 * s[f'{metric}_mean']:.1f} ± {100 * s.get(f'{metric}_std', 0.0):.1f}"


def _paired(s: dict, metric: str) -> str:
    """``+1.2 [-0.4, +2.8]``: paired difference against opd with its 95% interval, in points."""
    d = s.get(f"{metric}_vs_opd")
    if not d:
        return "-"
    if d.get("ci_low") is None:
        return f"{100 * d['mean']:+.1f}"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def _interval(d: dict | None) -> str:
    """``+1.2 [-0.4, +2.8]`` from a contrast (:func:`sead.bench.stats.contrast`), in points; ``-`` without one."""
    if not d:
        return "-"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def quality_section(res: dict, command: str, out_dir: Path) -> tuple[str, dict]:
    summary = res["summary"]
    starts = res["student_start"]
    start_values = [v["accuracy"] if isinstance(v, dict) else v for v in starts.values()]
    start = statistics.mean(start_values) if start_values else float("nan")
    k = res.get("size", {}).get("sample_k")
    pooled = res.get("pooled") or {m: pooled_intervals(res["runs"], m) for m in ("accuracy", "avg_at_k", "pass_at_k")}
    pooled_acc = (pooled.get("accuracy") or {}).get("vs_opd", {})
    table = []
    for name, s in summary.items():
        runs = res["runs"][name]
        row = [name, _mean_sd(s, "accuracy"), _paired(s, "accuracy"), _interval(pooled_acc.get(name)),
               _mean_sd(s, "auc"), _paired(s, "auc")]
        if k:
            row += [_mean_sd(s, "avg_at_k"), _paired(s, "avg_at_k"), _mean_sd(s, "pass_at_k"), _paired(s, "pass_at_k")]
        wall = s.get("wall_seconds_median")
        row += [_by_level(runs), "-" if wall is None else f"{wall:.0f}"]
        if "train_seconds_median" in s:
            row += [f"{s['train_seconds_median']:.0f}", f"{s.get('cost_vs_opd', float('nan')):.2f}x",
                    _mean_sd(s, "acc_at_equal_time"), _paired(s, "acc_at_equal_time")]
        elif any("train_seconds_median" in o for o in summary.values()):
            row += ["-"] * 4  # a run whose time says nothing (ran beside the design, or was paused)
        table.append(row)
    head = ["variant", "final acc %", "vs opd [95% CI]", "vs opd, pooled sd", "AUC %", "vs opd"]
    if k:
        head += [f"avg@{k} %", "vs opd", f"pass@{k} %", "vs opd"]
    head += ["acc % by level (easy to hard)", "wall s"]
    if any("train_seconds_median" in s for s in summary.values()):
        head += ["train s", "cost vs opd", "acc at equal time %", "vs opd"]
    curves = {}
    for name, runs in res["runs"].items():
        if not runs:
            continue
        steps = [p[0] for p in runs[0]["curve"]]
        curves[name] = [(st, statistics.mean(r["curve"][i][1] for r in runs)) for i, st in enumerate(steps)]
    lines = {"teacher": (res.get("teacher") or {}).get("accuracy"), "student start": start}
    lines = {k: v for k, v in lines.items() if v is not None and v == v}
    plot = plot_accuracy_curves(curves, out_dir / "bench_quality_curves.png", title="Held-out accuracy vs step (mean over seeds)",
                                reference=lines)
    timed = _curves_by_time(res["runs"])
    time_plot = None
    if timed:
        time_plot = plot_accuracy_curves(timed, out_dir / "bench_quality_curves_time.png", reference=lines,
                                         title="Held-out accuracy vs training time (mean over seeds)",
                                         xlabel="training seconds (median over seeds; the curve's evaluations excluded)")
    goals = {}
    opd = summary.get("opd")
    if opd is not None:
        for key, name, metric, target in (
            ("sead_minus_opd", "sead", "accuracy", 0.048),
            ("sead_avg_minus_opd", "sead", "avg_at_k", 0.048),
            ("sgopd_minus_opd", "sgopd", "accuracy", 0.02),
            ("sgopd_avg_minus_opd", "sgopd", "avg_at_k", 0.02),
            ("sgopd_pass_minus_opd", "sgopd", "pass_at_k", 0.075),
        ):
            d = summary.get(name, {}).get(f"{metric}_vs_opd")
            if d:
                goals[key] = (d["mean"], target, {**d, "pooled": (pooled.get(metric) or {}).get("vs_opd", {}).get(name)})
        trl = summary.get("trl", {}).get("accuracy_vs_opd")
        if trl:
            goals["opd_minus_trl_abs"] = (abs(trl["mean"]), 0.02, {**trl, "pooled": (pooled.get("accuracy") or {}).get("vs_opd", {}).get("trl")})
    seeds_line = ", ".join(f"{100 * v:.1f}" for v in start_values)
    sampled = (
        f" avg@{k} / pass@{k}: {k} answers per problem sampled at temperature {res['size'].get('sample_temperature')} on "
        f"the first {res['size'].get('num_sample')} held-out problems (pass@{k}: at least one correct)." if k else ""
    )
    teacher = res.get("teacher") or {}
    teacher_line = ""
    if teacher:
        teacher_line = (
            f" Teacher: {100 * teacher['accuracy']:.1f}% greedy ({_by_level([teacher])} by level)"
            + (f", avg@{k} {100 * teacher['avg_at_k']:.1f}%, pass@{k} {100 * teacher['pass_at_k']:.1f}%." if k and "avg_at_k" in teacher else ".")
        )
    errors = [f"- failed run: {e}" for e in res.get("errors", [])]
    power = _power_lines(res, pooled.get("accuracy") or {})
    wall = f" Wall time of this benchmark: {res['wall_seconds']:.0f} s ({res.get('jobs', 1)} runs at a time)." if "wall_seconds" in res else ""
    text = [
        f"## 3. Distillation quality on the built-in task `{res.get('task', 'arithmetic')}`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {_machine_line(res['machine'])}.{wall}",
        "",
        f"Same prepared student (held-out greedy accuracy at start {100 * start:.1f}%; per seed {seeds_line}), same "
        f"{res['steps']} steps of {res['size']['batch']} prompts, {res['seeds']} seed(s) (a seed changes the training "
        f"prompts, sampling and difficulty pre-pass; runs of one seed share them, so differences are paired).{teacher_line} "
        f"Final acc: greedy, {res['size']['num_test']} held-out problems. AUC: mean accuracy over training (trapezoid area "
        f"under the accuracy-vs-step curve / steps), on the curve subset.{sampled} Mean ± sd over seeds; \"vs opd\": the "
        "paired difference against vanilla OPD in points, mean over seeds [95% interval, Student's t on the per-seed "
        "differences]. `trl` is TRL's `DistillationTrainer` (beta=1, reverse KL); `zones`, `anneal`, `curriculum` "
        "and their pairs are SEAD's components added to vanilla OPD; `sead` is SEAD in the paper's composition of zones "
        "and anneal, `sead/mix` in our earlier one (docs/methods.md 1b); a `@tuned` row is that variant at its chosen "
        "learning rate (see \"Learning rates\" below); rows with one seed are single runs paired on seed 0.",
        "",
        _table(head, table),
        "",
        "Cost: `train s` is each variant's median training time (wall seconds from its first step to its last, "
        "the accuracy curve's evaluations excluded; two runs at a time on the 2 cores, so every variant ran under "
        "the same load), `cost vs opd` its ratio to vanilla OPD's. `acc at equal time`: each run's accuracy curve "
        "(on the curve subset) read at one training time for all, the cheapest variant's median, so that a variant "
        "that costs more per step is compared after the same compute, not after the same steps.",
        "",
        *_gap_lines(summary, curves, start, (res.get("teacher") or {}).get("accuracy")),
        *_rate_lines(res, k),
        *power,
        f"![accuracy vs step]({plot.name})",
        *([f"![accuracy vs training time]({time_plot.name})"] if time_plot else []),
        *errors,
    ]
    return "\n".join(text), goals


def _rate_lines(res: dict, k: int | None) -> list[str]:
    """The learning-rate search (validation accuracy per rate, the chosen one) and the tuned-rate table: each variant
    at its chosen rate against OPD at its own (empty without a search)."""
    search, tuned = res.get("lr_search"), res.get("summary_tuned")
    if not search and not tuned:
        return []
    out = ["", "**Learning rates.**"]
    if search:
        grid = [f"{lr:g}" for lr in search["grid"]]
        rows = [[v, *(f"{100 * sc[g]:.1f}" if g in sc else "-" for g in grid), f"{search['rates'][v]:g}"]
                for v, sc in search["scores"].items() if v in search["rates"]]
        out += [
            "",
            f"Each searched variant's rate was chosen on seed 0's validation set ({res['size'].get('num_validation')} "
            "problems of the training split that the seed does not train on, so none is in the test split), by "
            "greedy accuracy after the benchmark's steps; the table gives that validation accuracy (%) per rate.",
            "",
            _table(["variant", *(f"lr {g}" for g in grid), "chosen"], rows),
        ]
    if tuned:
        pooled = ((res.get("pooled_tuned") or {}).get("accuracy") or {}).get("vs_opd", {})
        head = ["variant", "lr", "final acc %", "vs opd [95% CI]", "vs opd, pooled sd"]
        head += [f"avg@{k} %", "vs opd"] if k else []
        rows = []
        for name, s in tuned.items():
            row = [name, f"{s.get('lr', float('nan')):g}", _mean_sd(s, "accuracy"), _paired(s, "accuracy"),
                   _interval(pooled.get(name))]
            rows.append(row + ([_mean_sd(s, "avg_at_k"), _paired(s, "avg_at_k")] if k else []))
        out += ["", "Each variant at its chosen rate (variants not searched at the size's rate; differences paired "
                "by seed against OPD at its own chosen rate):", "", _table(head, rows)]
    return out


def _curves_by_time(runs: dict) -> dict:
    """Per variant the mean accuracy curve against the median (over seeds) training seconds at each point: the
    same curves as the step plot, on the axis of equal compute (empty when the runs recorded no times)."""
    out = {}
    for name, rs in runs.items():
        if not rs or not all(r.get("curve_seconds") and len(r["curve_seconds"]) == len(r["curve"]) for r in rs):
            continue
        n = min(len(r["curve"]) for r in rs)
        out[name] = [(statistics.median(r["curve_seconds"][i] for r in rs), statistics.mean(r["curve"][i][1] for r in rs))
                     for i in range(n)]
    return out


def _gap_lines(summary: dict, curves: dict, start: float, teacher: float | None) -> list[str]:
    """How much of the student-to-teacher gap each variant closed, ``(final - start) / (teacher - start)``, and the
    lowest point of vanilla OPD's mean accuracy curve against its start (a dip below the start: the step size)."""
    if teacher is None or not teacher > start:
        return []
    closed = [f"{name} {100 * (s['accuracy_mean'] - start) / (teacher - start):.0f}%" for name, s in summary.items()
              if s.get("accuracy_mean") is not None]
    line = (f"Gap closed, `(final - start) / (teacher - start)` with the student at {100 * start:.1f}% and the teacher "
            f"at {100 * teacher:.1f}%: " + ", ".join(closed) + ".")
    curve = curves.get("opd")
    if curve and len(curve) > 1:
        low_step, low = min(curve[1:], key=lambda p: p[1])
        line += (f" Vanilla OPD's mean curve starts at {100 * curve[0][1]:.1f}% (the curve subset) and its lowest later "
                 f"point is {100 * low:.1f}% at step {low_step}"
                 + (" (no dip below the start)." if low >= curve[0][1] else f" ({100 * (low - curve[0][1]):+.1f} points: a dip below the start)."))
    return [line, ""]



def _design_size(pooled: dict) -> str:
    """How many runs a pooled design read: ``V variants x S seeds``, or per seed count when variants ran different
    seeds (``unbalanced``)."""
    runs = pooled.get("unbalanced")
    if not runs:
        return f"{len(pooled['variants'])} variants x {len(pooled['seeds'])} seeds"
    by_count: dict[int, list[str]] = {}
    for name, seeds in runs.items():
        by_count.setdefault(len(seeds), []).append(name)
    parts = [f"{', '.join(names)} over {n} seeds" if len(names) < 4 else f"{len(names)} variants over {n} seeds"
             for n, names in sorted(by_count.items(), reverse=True)]  # fmt: skip
    return f"{sum(len(s) for s in runs.values())} runs: " + "; ".join(parts)

def _power_lines(res: dict, pooled: dict) -> list[str]:
    """What the design can resolve: the evaluation's standard error next to the seed sd, the half-widths of the
    paired intervals, the seeds a 2-point half-width would take (``pooled``: the design's pooled intervals of
    final accuracy, :func:`sead.bench.suite.pooled_intervals`), and SEAD's interaction term."""
    from sead.bench.stats import binomial_se, seeds_for_half_width

    summary, size = res["summary"], res.get("size", {})
    opd = summary.get("opd")
    lines = []
    if opd and opd.get("accuracy_mean") is not None and size.get("num_test"):
        se = binomial_se(opd["accuracy_mean"], size["num_test"])
        pairs = [s["accuracy_vs_opd"] for n, s in summary.items() if n != "opd" and s.get("accuracy_vs_opd", {}).get("ci_low") is not None]
        half = sorted(0.5 * (d["ci_high"] - d["ci_low"]) for d in pairs)
        sds = sorted(d["sd"] for d in pairs)
        lines.append(
            f"Power: the evaluation's standard error at vanilla OPD's accuracy is {100 * se:.1f} points "
            f"({size['num_test']} held-out problems, binomial), its seed sd {100 * opd.get('accuracy_std', 0.0):.1f}."
        )
        if half:
            mid_sd = sds[len(sds) // 2]
            need = seeds_for_half_width(mid_sd, 0.02)
            lines[-1] += (
                f" Paired against vanilla OPD over {res['seeds']} seeds, the 95% intervals on final accuracy have "
                f"half-widths {100 * half[0]:.1f}-{100 * half[-1]:.1f} points (median {100 * half[len(half) // 2]:.1f}): "
                "differences smaller than that are not resolved. At the median sd of the paired differences "
                f"({100 * mid_sd:.1f} points), a half-width of 2 points would take "
                + (f"{need} seeds." if need else "more than 1000 seeds.")
            )
    if pooled:
        need = pooled["seeds_for_half_width"]["seeds"]
        lines.append(
            f"Pooled over the design ({_design_size(pooled)}, additive variant + seed model"
            + (", fitted by least squares" if pooled.get("unbalanced") else "")
            + f", {pooled['df']} degrees of freedom; column `vs opd, pooled sd`): the residual sd of "
            f"final accuracy is {100 * pooled['sigma']:.1f} points and a paired difference's 95% half-width (a pair "
            f"over all {len(pooled['seeds'])} seeds) "
            f"{100 * pooled['pair_half_width']:.1f} points; a half-width of 2 points would take "
            + (f"{need} seeds per variant at this sd." if need else "more than 1000 seeds.")
            + (f" SEAD's interaction on this pooled sd: {_interval(pooled['interaction'])}." if pooled.get("interaction") else "")
        )
    inter = res.get("interaction") or {}
    if inter:
        parts = [
            f"{metric.replace('_', ' ')} {100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"
            for metric, d in inter.items() if d.get("ci_low") is not None
        ]
        if parts:
            lines.append(
                "SEAD's interaction (all three components together against the sum of each one's effect, per seed "
                "`(sead - opd) - [(zones - opd) + (anneal - opd) + (curriculum - opd)]`, in points, 95% interval): "
                + "; ".join(parts) + ". Positive: the components help more together than apart."
            )
    return [*(line for pair in zip(lines, [""] * len(lines)) for line in pair)]


def _teacher_lines(teacher: dict | None, k: int | None) -> list[str]:
    if not teacher:
        return []
    by = teacher["accuracy_by_level"]
    hardest = max(by, key=int)
    line = (
        f"**Fallible teacher.** Greedy {100 * teacher['accuracy']:.1f}% ({_by_level([teacher])} by level): wrong on "
        f"{100 * (1 - by[hardest]):.0f}% of the hardest level, and the verifier sees it"
    )
    if k and "avg_at_k_by_level" in teacher:
        line += (
            f"; sampled at temperature 1 (as SG-OPD's teacher rollouts are), {100 * teacher['avg_at_k_by_level'][hardest]:.0f}% "
            f"of its answers on the hardest level are correct (avg@{k}), {100 * teacher['pass_at_k_by_level'][hardest]:.0f}% of "
            f"those problems have at least one correct answer in {k}"
        )
    return [line + ".", ""]


def mechanisms_section(res: dict, command: str, out_dir: Path) -> str:
    """The built-in task's mechanisms: measured on the prepared student's rollouts, and from training logs."""
    from sead.experiments.mechanisms import _nats, _pct
    from sead.experiments.plots import plot_entropy_histogram, plot_series
    from sead.experiments.runs import POOL_MARKS

    m = res.get("mechanisms")
    if not m:
        return ""
    png = plot_entropy_histogram(m["h_t_histogram"], out_dir / "bench_teacher_entropy.png")
    inc, gate = m["incoherence"], m["sign_gate"]
    zones = [
        [name, _pct(z["token_share"]), _pct(z["fork_share"]), _pct(z["off_path_share"]), _nats(z["mean_h_t"]),
         _pct(z["disagree_rate"]), _pct(z["share_of_disagreements"])]
        for name, z in m["zones"].items()
    ]
    levels = [
        [lv, _pct(m["pass_rate_by_level"].get(lv)), _nats(v["mean_h_t"]), _nats(v["mean_h_t_passed"]), _nats(v["mean_h_t_failed"])]
        for lv, v in inc["by_level"].items()
    ]
    gates = [
        [label, str(g["tokens"]), _pct(g["consensus_frac"]), _pct(g["teacher_wrong_at_conflict"]), _pct(g["teacher_wrong_at_consensus"]),
         _pct(g.get("teacher_wrong_at_conflict_weighted")), _pct(g.get("teacher_wrong_at_consensus_weighted"))]
        for label, g in ((k, gate[k]) for k in ("all", "passed", "failed"))
    ]
    # curriculum's open pool and SG-OPD's consensus over training (mean over seeds)
    pool_series, consensus = {}, {}
    for name, runs in res.get("runs", {}).items():
        series = [r.get("training_mechanisms", {}).get("open_pool_series") for r in runs]
        series = [s for s in series if s]
        if series and name in ("curriculum", "sead"):
            steps = [p[0] for p in series[0]]
            pool_series[name] = [(st, statistics.mean(s[i][1] for s in series if i < len(s))) for i, st in enumerate(steps)]
        cf = [r.get("training_mechanisms", {}).get("consensus_frac") for r in runs]
        cf = [c for c in cf if c]
        if cf:
            consensus[name] = (statistics.mean(c["first_fifth"] for c in cf), statistics.mean(c["last_fifth"] for c in cf))
    pool_lines = []
    if pool_series:
        pool_png = plot_series(
            pool_series, out_dir / "bench_open_pool.png", title="Curriculum: open prompts over training (mean over seeds)",
            ylabel="open prompts",
        )
        total = res.get("size", {}).get("num_prompts")
        for name, pts in pool_series.items():
            full = next((st for st, v in pts if total and v >= total), None)
            marks = ", ".join(f"{int(st)}: {v:.0f}" for st, v in pts if st in POOL_MARKS)
            pool_lines.append(f"- `{name}`: open prompts at step {marks} (of {total}); all open from step {full}.")
        pool_lines.append(f"\n![open pool]({pool_png.name})")
    cons_lines = [
        f"- `{name}`: consensus fraction {100 * a:.1f}% in the first fifth of the steps, {100 * b:.1f}% in the last."
        for name, (a, b) in consensus.items()
    ]
    ts, hm = m["token_share"], m["h_t_mass_share"]
    text = [
        "## Mechanisms of the built-in task",
        "",
        f"Command: `{command}` (the same numbers: `python -m sead.bench.profiles.mechanisms --task {res.get('task')}`). "
        f"{m['rollouts']} rollouts of the prepared student (temperature 1) on training prompts, {m['tokens']} completion "
        "tokens, scored by both models and by the task's exact oracle (which next tokens are correct after a prefix). "
        f"Zones as the trainer decides them (teacher quantile {m['zone_settings']['teacher_quantile']}, skip fraction "
        f"{m['zone_settings']['skip_fraction']}, entropies over the teacher's top-{m['zone_settings']['entropy_top_k']}), "
        "per batch of 64 rollouts. Why each mechanism matters: docs/task.md.",
        "",
        f"**Forks.** Teacher entropy {_nats(m['mean_h_t'])} nats per token (goal >= 0.2). At forks (several correct next "
        f"tokens, {_pct(ts['fork'])} of tokens) {_nats(m['mean_h_t_at']['fork'])}, at forced positions ({_pct(ts['forced'])}) "
        f"{_nats(m['mean_h_t_at']['forced'])}, after a rollout left every correct path ({_pct(ts['off_path'])}) "
        f"{_nats(m['mean_h_t_at']['off_path'])}; forks carry {_pct(hm['fork'])} of the entropy, forced positions "
        f"{_pct(hm['forced'])}, off-path ones {_pct(hm['off_path'])}. Of all forks, {_pct(m['forks_in_fkl_zone'])} are in the "
        "FKL zone.",
        "",
        f"![teacher entropy]({png.name})",
        "",
        f"**Mastered tokens.** Both models below 0.1 nats on {_pct(m['both_confident_share'])} of tokens.",
        "",
        "**Zones** (share of tokens; of the zone's tokens: forks, off-path, mean teacher entropy, top-1 disagreement "
        "rate; the zone's share of all teacher-student top-1 disagreements):",
        "",
        _table(["zone", "tokens", "forks", "off path", "mean H_T", "top-1 disagree", "share of disagreements"], zones),
        "",
        f"**Incoherence.** Teacher entropy on passed rollouts {_nats(inc['mean_h_t_passed'])}, on failed ones "
        f"{_nats(inc['mean_h_t_failed'])}: before their first error {_nats(inc['mean_h_t_failed_before_error'])}, from it on "
        f"{_nats(inc['mean_h_t_failed_from_error'])}. At the positions the text's form determines (no free choice in the "
        f"grammar: a total's digits, the answer, the format) {_nats(inc.get('mean_h_t_determined_passed'))} on passed rollouts "
        f"and {_nats(inc.get('mean_h_t_determined_failed_from_error'))} on failed ones from their first error on; at the free "
        f"choices {_nats(inc.get('mean_h_t_choice_passed'))} and {_nats(inc.get('mean_h_t_choice_failed_from_error'))}. By level:",
        "",
        _table(["level", "student pass rate", "mean H_T", "H_T passed", "H_T failed"], levels),
        "",
        *(_teacher_lines(res.get("teacher"), res.get("size", {}).get("sample_k"))),
        "**Curriculum.**",
        "",
        *(pool_lines or ["- no curriculum run in these results."]),
        "",
        "**SG-OPD's gate** on the same rollouts (consensus iff d_t * v > 0; the teacher is wrong at a token when the "
        "sign of d_t = log pi_T - log pi_S differs from the oracle's sign of log p* - log pi_S; judged where the prefix is "
        f"still on a correct path, {_pct(gate['judged_share'])} of tokens):",
        "",
        _table(["rollouts", "tokens", "consensus", "teacher wrong at conflict", "teacher wrong at consensus",
                "same, weighted by abs(d_t): conflict", "consensus"], gates),
        "",
        f"At the first error of a failed rollout the teacher pushes the student's wrong token up in "
        f"{_pct(gate['teacher_endorses_error'])} of cases. Over training:",
        "",
        *(cons_lines or ["- no SG-OPD run in these results."]),
    ]
    return "\n".join(text)


GOAL_TEXT = {
    "sead_time_vs_trl": ("fused SEAD loss time / TRL chunked, N=4096 V=32768", "<="),
    "sead_mem_vs_naive": ("fused SEAD loss peak memory / naive, N=4096 V=32768", "<="),
    "sead_time_vs_opd_fused": ("fused SEAD loss time / our fused vanilla OPD loss, N=4096 V=32768", "<="),
    "sgopd_mem_vs_naive": ("fused SG-OPD loss peak memory / full-logits SG-OPD, N=4096 V=32768", "<="),
    "opd_step_vs_trl": ("OPDTrainer step time / TRL DistillationTrainer (vanilla OPD, default: grading for the pass-rate log)", "<="),
    "opd_nograde_step_vs_trl": ("OPDTrainer step time / TRL DistillationTrainer (vanilla OPD, log_pass_rate=false: same work)", "<="),
    "sead_step_vs_opd_tiny": ("SEAD step time / vanilla OPD step time, tiny shape", "<="),
    "sead_step_vs_opd_large": ("SEAD step time / vanilla OPD step time, large shape", "<="),
    "sgopd_step_vs_opd_tiny": ("SG-OPD step time / vanilla OPD step time, tiny shape", "<="),
    "sgopd_step_vs_opd_large": ("SG-OPD step time / vanilla OPD step time, large shape", "<="),
    "sead_server_step_vs_sead_topk": ("SEAD step, teacher served by vLLM / the same step with a local teacher", "<="),
    "sead_minus_opd": ("SEAD accuracy - vanilla OPD accuracy", ">="),
    "sead_avg_minus_opd": ("SEAD avg@k - vanilla OPD avg@k", ">="),
    "sgopd_minus_opd": ("SG-OPD accuracy - vanilla OPD accuracy", ">="),
    "sgopd_avg_minus_opd": ("SG-OPD avg@k - vanilla OPD avg@k", ">="),
    "sgopd_pass_minus_opd": ("SG-OPD pass@k - vanilla OPD pass@k", ">="),
    "opd_minus_trl_abs": ("abs(our opd - TRL) accuracy", "<="),
}


def goals_section(goals: dict[str, tuple[float, float]]) -> str:
    rows = []
    for key, (value, target, *paired) in goals.items():
        label, op = GOAL_TEXT[key]
        eps = 1e-9 * max(1.0, abs(target))  # float sums of exact fractions (accuracy over 400 problems): 2.0 is 2.0
        ok = value <= target + eps if op == "<=" else value >= target - eps
        pct = key.endswith(("opd", "trl_abs"))
        fmt = (lambda x: f"{100 * x:+.1f} pts") if pct else (lambda x: f"{x:.2f}x")
        measured = fmt(value)
        if paired and paired[0].get("ci_low") is not None:
            d = paired[0]
            measured += f" (paired, 95% CI [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}], {d['n']} seeds"
            if d.get("pooled"):
                measured += f"; pooled over the design [{100 * d['pooled']['ci_low']:+.1f}, {100 * d['pooled']['ci_high']:+.1f}]"
            measured += ")"
        rows.append([label, f"{op} {fmt(target)}", measured, _verdict(ok)])
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
        mech = mechanisms_section(results["quality"], commands["quality"], path.parent)
        if mech:
            sections.append(mech)
    if "served" in results:  # python -m sead.bench.served (benchmarks/results/served_cost.json)
        from sead.bench.served import served_section

        sections.append(served_section(results["served"]))
    from sead.bench.gpu_check import (
        gpu_section,  # make gpu-check (benchmarks/results/gpu_check.json), or: none ran
    )

    sections.append(gpu_section(results.get("gpu")))
    head = [
        "# Benchmarks\n\nGenerated by `make bench` (`sead bench all`); raw results in `benchmarks/results/*.json`. Every number "
        "below comes from the run recorded next to it; ratios are measured side by side in that run. This machine "
        "is noisy (2 shared cores): read medians and ratios, not single timings.",
        goals_section(goals),
    ]
    body = "\n\n".join(head + sections + ([analysis] if analysis else []))
    path.write_text(body + "\n")
    return path
