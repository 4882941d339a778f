"""The three benchmarks and their JSON results; ``report.py`` turns them into BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from sead.bench.common import machine_facts, median, run_worker
from sead.experiments import settings as _quality
from sead.experiments.workers import run_workers
from sead.utils.progress import progress_bar

LOSS_IMPLS = (
    "sead_fused",
    "sead_fused_bf16zones",
    "sead_fused_ownsupport",
    "opd_fused",
    "sgopd_fused",
    "trl_chunked",
    "naive",
    "sgopd_naive",
)
# One-setting variants of the fused SEAD loss and the full-logits SG-OPD reference, measured only at the goal
# shape (in --quick at its one shape).
LOSS_GOAL_SHAPE = (4096, 32768, 512)
LOSS_EXTRA_IMPLS = ("sead_fused_bf16zones", "sead_fused_ownsupport", "sgopd_naive")
# Implementations that hold [N, V] logits: shrunk to NAIVE_MAX_ELEMENTS.
FULL_LOGITS_IMPLS = ("naive", "sgopd_naive")
# Shapes of the loss benchmark, (N tokens, V vocabulary, H hidden): two at hidden 512, then the vocabularies and hidden
# sizes of two real checkpoints, SmolLM2-135M (V 49,152, H 576) and Gemma 3 270M (V 262,144, H 640), at fewer tokens
# (time grows as N x V x H: these two take about as long as the first). The naive path needs several [N, V] fp32
# tensors, so it is measured at fewer tokens where they would not fit (said in the report).
LOSS_SHAPES_FULL = [(1024, 32768, 512), (4096, 32768, 512), (1024, 49152, 576), (256, 262144, 640)]
LOSS_SHAPES_QUICK = [(1024, 32768, 512)]
#: The real checkpoint each (V, H) of LOSS_SHAPES_FULL comes from.
LOSS_SHAPE_MODELS = {(49152, 576): "SmolLM2-135M", (262144, 640): "Gemma 3 270M"}
NAIVE_MAX_ELEMENTS = 4096 * 32768


def bench_loss(
    quick: bool = False, reps: int | None = None, threads: int = 2, progress: bool = True, shapes=None
) -> dict[str, Any]:
    """Forward+backward median time and peak memory of each loss implementation, side by side."""
    shapes = shapes or (LOSS_SHAPES_QUICK if quick else LOSS_SHAPES_FULL)
    reps = reps or (3 if quick else 5)
    rows, notes = [], []
    shapes = [tuple(s) if len(s) == 3 else (*s, 512) for s in shapes]
    goal = shapes[0] if quick else LOSS_GOAL_SHAPE
    jobs = [(impl, *shape) for shape in shapes for impl in LOSS_IMPLS if shape == goal or impl not in LOSS_EXTRA_IMPLS]
    measured: dict[tuple[str, int, int, int], dict] = {}
    for impl, n, v, h in progress_bar(jobs, desc="bench loss", disable=not progress):
        n_run = n
        if impl in FULL_LOGITS_IMPLS and n * v > NAIVE_MAX_ELEMENTS:
            n_run = NAIVE_MAX_ELEMENTS // v
            notes.append(f"{impl} at V={v}: measured at N={n_run} instead of N={n} (its [N, V] logits would not fit)")
        if (impl, n_run, v, h) not in measured:  # a shrunk naive shape may repeat one already measured
            res = run_worker(
                ["loss", impl, "--n", str(n_run), "--v", str(v), "--h", str(h), "--reps", str(reps), "--threads", str(threads)]
            )
            res.setdefault("impl", impl)
            measured[(impl, n_run, v, h)] = res
        rows.append({**measured[(impl, n_run, v, h)], "N": n_run, "V": v, "H": h, "N_requested": n,
                     "model": LOSS_SHAPE_MODELS.get((v, h))})  # fmt: skip
    return {"benchmark": "loss", "machine": machine_facts(), "reps": reps, "threads": threads, "rows": rows, "notes": notes}


# "opd_nograde": vanilla OPD with log_pass_rate=False, i.e. without the verifier grading that only feeds the
# rollout/pass_rate log: the same work per step as TRL's trainer.
# "sead_topk" / "sead_server": SEAD with the top-k estimator (k = 8), the teacher local / served by a vLLM server
# that the suite starts on 127.0.0.1 for the whole benchmark (sead.bench.served).
# "opd_vllm": vanilla OPD with the student's rollouts in TRL's vLLM colocate engine.
# "sead_microbatch": SEAD with zone_scope micro_batch (next to "sead", the default step scope: the pre-pass's cost).
STEP_TRAINERS = (
    "trl", "opd", "opd_nograde", "opd_vllm", "sead", "sead_microbatch", "sgopd", "sead_topk", "sead_server",
)


STEP_ROUNDS = 3


def _merge_rounds(name: str, runs: list[dict]) -> dict:
    """One row per trainer from its rounds: median of the round medians, the largest peak RSS."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    return {
        **ok[0],
        "trainer": name,
        "step_time_s": median([r["step_time_s"] for r in ok]),
        "round_step_times_s": [r["step_time_s"] for r in ok],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "rounds": len(ok),
    }


def _start_step_teacher_server(stack: contextlib.ExitStack, tmp: Path) -> tuple[str | None, str | None]:
    """The "sead_server" row's teacher in a vLLM server for the whole benchmark: ``(url, None)``, or
    ``(None, why)`` when vLLM is missing or the server does not start."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None, "vLLM is not installed (the sead_server row needs a vLLM server for its teacher)"
    from sead.bench.served import vllm_teacher_server
    from sead.bench.worker import SERVED_TOP_K, served_step_teacher

    folder = tmp / "served-teacher"
    served_step_teacher().save_pretrained(folder)
    from sead.tasks.arithmetic import build_tokenizer

    build_tokenizer().save_pretrained(folder)
    try:
        url = stack.enter_context(vllm_teacher_server(folder, name="teacher", max_logprobs=SERVED_TOP_K, max_model_len=64))
    except RuntimeError as err:
        return None, " ".join(str(err).split())[-500:]
    return url, None


def bench_step(quick: bool = False, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """Median optimizer-step time and peak RSS of OPDTrainer vs TRL's DistillationTrainer, same models and batch."""
    steps = 6 if quick else 14
    rounds = 1 if quick else STEP_ROUNDS
    # Round-robin: every round runs each trainer once, in a rotated order, so a noisy stretch of the
    # machine hits all trainers alike; a trainer's step time is the median of its rounds' medians.
    by_name: dict[str, list[dict]] = {name: [] for name in STEP_TRAINERS}
    order = list(STEP_TRAINERS)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url, server_error = _start_step_teacher_server(stack, Path(tmp))
        bar = stack.enter_context(progress_bar(total=rounds * len(order), desc="bench step", disable=not progress))
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                args = ["step", name, "--steps", str(steps), "--threads", str(threads), "--out", str(Path(tmp) / f"{name}-{r}")]
                if name == "sead_server" and url is None:
                    res = {"error": server_error}
                else:
                    res = run_worker(args + (["--teacher-url", url] if name == "sead_server" else []),
                                     # a vLLM engine's KV cache: 1 GiB (the default share of the NUMA node does not fit beside training)
                                     env={"OMP_NUM_THREADS": str(threads),
                                          "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")})
                res.setdefault("trainer", name)
                by_name[name].append(res)
                bar.update(1)
    rows = [_merge_rounds(name, runs) for name, runs in by_name.items()]
    return {"benchmark": "step", "machine": machine_facts(), "threads": threads, "rows": rows}


# Quality: the variants live in sead.experiments.settings (runs go to long-lived worker processes, one run at a time each).
QUALITY_VARIANTS = _quality.VARIANTS
QUALITY_QUICK_VARIANTS = _quality.QUICK_VARIANTS
QUALITY_DEFAULT_VARIANTS = _quality.DEFAULT_VARIANTS
#: Metrics of a quality run summarised over seeds and paired against vanilla OPD.
QUALITY_METRICS = ("accuracy", "auc", "avg_at_k", "pass_at_k")
QUALITY_SEEDS = 2


def bench_quality(
    quick: bool = False,
    seeds: int | None = None,
    steps: int | None = None,
    variants: tuple[str, ...] | None = None,
    threads: int = 1,
    progress: bool = True,
    cache_dir: str | None = None,
    task: str | None = None,
    jobs: int = 2,
    overrides: dict[str, dict] | None = None,
    mechanisms: bool = True,
) -> dict[str, Any]:
    """Held-out scores after the same steps from the same start, ``seeds`` seeds, every variant.

    The task's models are prepared (or loaded) once; every seed's data and every (seed, variant) run is a job
    for ``jobs`` long-lived worker processes (one job at a time each, one torch thread each; a process is reused
    so that it imports torch and TRL once; each job seeds its own run). ``overrides`` adds variants: ``{name:
    OPDConfig fields}`` (with a ``method``). ``mechanisms``: also measure the task's mechanisms on the
    prepared student's rollouts (:mod:`sead.bench.profiles.mechanisms`).
    """
    from sead.experiments.settings import bench_size
    from sead.tasks import DEFAULT_TASK, get_task

    task = task or DEFAULT_TASK
    size = bench_size(task, quick, steps)  # the benchmark's own sizes where the task sets them (`bench_<key>`)
    steps = size["steps"]
    seeds = seeds or (1 if quick else QUALITY_SEEDS)
    overrides = dict(overrides or {})
    variants = tuple(variants or (QUALITY_QUICK_VARIANTS if quick else QUALITY_DEFAULT_VARIANTS))
    variants += tuple(name for name in overrides if name not in variants)
    unknown = [v for v in variants if v not in QUALITY_VARIANTS and v not in overrides]
    if unknown:
        raise ValueError(f"unknown quality variant(s) {unknown}; known: {', '.join(QUALITY_VARIANTS)}")
    t_start = time.perf_counter()
    prepared = get_task(task).prepare_models(cache_dir=cache_dir, quick=quick, seed=0, progress=progress)
    common = ["--task", task, "--threads", str(threads)] + (["--quick"] if quick else []) + (["--cache-dir", cache_dir] if cache_dir else [])
    with tempfile.TemporaryDirectory() as tmp:
        data_dirs = {seed: Path(tmp) / f"data-{seed}" for seed in range(seeds)}
        starts = run_workers(
            [(str(s), ["quality-data", "--seed", str(s), "--data", str(d), *common]) for s, d in data_dirs.items()],
            jobs, progress, "quality data",
        )
        failed = {k: v["error"] for k, v in starts.items() if "error" in v}
        if failed:
            raise RuntimeError(f"quality data preparation failed: {failed}")
        run_jobs = []
        for seed in range(seeds):
            for name in variants:
                args = ["quality", "--seed", str(seed), "--variant", name, "--data", str(data_dirs[seed]),
                        "--out", str(Path(tmp) / f"{name}-{seed}"), *common]
                if steps:
                    args += ["--steps", str(steps)]
                if name in overrides:
                    args += ["--overrides", json.dumps(overrides[name])]
                run_jobs.append((f"{name}\t{seed}", args))
        done = run_workers(run_jobs, jobs, progress, "bench quality")
    measured = None
    if mechanisms and size.get("mechanism_prompts"):
        from sead.experiments.mechanisms import measure

        measured = measure(
            get_task(task), prepared.load_teacher(), prepared.load_student(), prepared.tokenizer,
            size["mechanism_prompts"], 0, prepared.levels,
        )
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    errors = []
    for key, res in done.items():
        name, seed = key.split("\t")
        if "error" in res:
            errors.append(f"{name} seed {seed}: {res['error']}")
            continue
        runs[name].append(res)
    for rs in runs.values():
        rs.sort(key=lambda r: r["seed"])
    return {
        "benchmark": "quality",
        "task": task,
        "machine": machine_facts(),
        "steps": size["steps"],
        "seeds": seeds,
        "jobs": jobs,
        "size": size,
        "teacher": starts["0"].get("teacher"),
        "prepared": prepared_facts(prepared),
        "student_start": {s: starts[s]["student_start"] for s in sorted(starts, key=int)},
        "seed_data": {s: {k: v for k, v in starts[s].items() if k not in ("student_start", "teacher")} for s in starts},
        "mechanisms": measured,
        "summary": summarize_quality(runs),
        "interaction": interaction_terms(runs),
        "pooled": {m: pooled_intervals(runs, m) for m in ("accuracy", "avg_at_k", "pass_at_k")},
        "runs": runs,
        "errors": errors,
        "wall_seconds": time.perf_counter() - t_start,
    }


def prepared_facts(prepared) -> dict[str, Any]:
    """What two machines compare: the prepared models' held-out accuracies (overall, by level) and SFT steps."""
    out: dict[str, Any] = {}
    for role in ("teacher", "student"):
        metrics = (getattr(prepared, "metrics", None) or {}).get(role, {})
        out[f"{role}_accuracy"] = getattr(prepared, f"{role}_accuracy")
        out[f"{role}_by_level"] = getattr(prepared, f"{role}_accuracy_by_level")
        out[f"{role}_steps"] = metrics.get("steps_run")
        out[f"{role}_eval_size"] = metrics.get("eval_size")
    return out


def summarize_quality(runs: dict[str, list[dict]], reference: str = "opd") -> dict[str, dict]:
    """Per variant and metric: mean and sd over seeds, and the paired difference against ``reference``
    (same seeds only) with its 95% interval; the training time (median seconds, and its ratio to the reference's);
    and the greedy accuracy of the curve at an equal training time for every variant (the cheapest variant's median
    training time: each run's curve read there, ``acc_at_equal_time``)."""
    from sead.bench.stats import mean_sd, paired_difference, value_at

    def train_seconds(r) -> float | None:
        return r.get("train_seconds")

    medians = {n: median([train_seconds(r) for r in rs]) for n, rs in runs.items() if rs and all(train_seconds(r) for r in rs)}
    budget = min(medians.values()) if medians else None
    for rs in runs.values():
        for r in rs:
            if budget is not None and r.get("curve_seconds") and len(r["curve_seconds"]) == len(r["curve"]):
                r["acc_at_equal_time"] = value_at(r["curve_seconds"], [p[1] for p in r["curve"]], budget)
    ref = {r["seed"]: r for r in runs.get(reference, [])}
    summary = {}
    for name, rs in runs.items():
        if not rs:
            continue
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "wall_seconds_median": median([r["wall_seconds"] for r in rs])}
        if name in medians:
            entry["train_seconds_median"] = medians[name]
            entry["equal_time_budget_s"] = budget
            if reference in medians:
                entry["cost_vs_" + reference] = medians[name] / medians[reference]
        for metric in (*QUALITY_METRICS, "acc_at_equal_time"):
            vals = [r[metric] for r in rs if r.get(metric) is not None]
            if not vals:
                continue
            entry[f"{metric}_mean"], entry[f"{metric}_std"] = mean_sd(vals)
            pairs = [(r[metric], ref[r["seed"]][metric]) for r in rs if r["seed"] in ref and r.get(metric) is not None
                     and ref[r["seed"]].get(metric) is not None]
            if pairs and name != reference:
                entry[f"{metric}_vs_{reference}"] = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
        summary[name] = entry
    return summary


#: SEAD's three components as single variants, and all three together (the claim of an interaction).
SEAD_COMPONENTS = ("zones", "anneal", "curriculum")


def interaction_terms(runs: dict[str, list[dict]], joint: str = "sead", base: str = "opd") -> dict[str, dict]:
    """Per metric, the interaction ``(joint - base) - sum_c (c - base)`` over the seeds every one of ``joint``,
    ``base`` and the :data:`SEAD_COMPONENTS` ran, with its 95% interval (:func:`sead.bench.stats.interaction`);
    empty when a variant is missing."""
    from sead.bench.stats import interaction

    names = (joint, base, *SEAD_COMPONENTS)
    if any(not runs.get(n) for n in names):
        return {}
    by_seed = {n: {r["seed"]: r for r in runs[n]} for n in names}
    seeds = sorted(set.intersection(*(set(v) for v in by_seed.values())))
    out = {}
    for metric in (*QUALITY_METRICS, "acc_at_equal_time"):
        if len(seeds) < 2 or any(by_seed[n][s].get(metric) is None for n in names for s in seeds):
            continue
        values = {n: [by_seed[n][s][metric] for s in seeds] for n in names}
        out[metric] = interaction(values[joint], [values[c] for c in SEAD_COMPONENTS], values[base])
    return out


def pooled_intervals(runs: dict[str, list[dict]], metric: str = "accuracy", reference: str = "opd",
                     joint: str = "sead", half_width: float = 0.02) -> dict[str, Any]:
    """``metric`` of every variant that ran all the seeds they share, read as one randomized block design
    (:func:`sead.bench.stats.block_residual_sd`): the pooled residual sd, each variant's difference against
    ``reference`` and SEAD's interaction ``(joint - ref) - sum_c (c - ref)`` as contrasts with 95% intervals on
    ``(V - 1)(S - 1)`` degrees of freedom, the half-width of one paired difference, and the seeds a ``half_width``
    half-width would take at this sd. Empty when fewer than two variants or seeds qualify."""
    from sead.bench.stats import block_residual_sd, contrast, t_quantile_975

    by_seed = {n: {r["seed"]: r[metric] for r in rs if r.get(metric) is not None} for n, rs in runs.items() if rs}
    if reference not in by_seed:
        return {}
    seeds = sorted(by_seed[reference])
    names = [n for n, v in by_seed.items() if all(s in v for s in seeds)]
    if len(names) < 2 or len(seeds) < 2:
        return {}
    sigma, df = block_residual_sd([[by_seed[n][s] for s in seeds] for n in names])
    means = {n: sum(by_seed[n][s] for s in seeds) / len(seeds) for n in names}
    out: dict[str, Any] = {"metric": metric, "sigma": sigma, "df": df, "seeds": seeds, "variants": names}
    out[f"vs_{reference}"] = {n: contrast([means[n], means[reference]], [1, -1], sigma, df, len(seeds))
                               for n in names if n != reference}
    out["pair_half_width"] = t_quantile_975(df) * sigma * (2 / len(seeds)) ** 0.5
    parts = (joint, reference, *SEAD_COMPONENTS)
    if all(p in means for p in parts):
        out["interaction"] = contrast([means[p] for p in parts], [1, 2, -1, -1, -1], sigma, df, len(seeds))
    need = next((n for n in range(2, 1001) if t_quantile_975((len(names) - 1) * (n - 1)) * sigma * (2 / n) ** 0.5
                 <= half_width), None)
    out["seeds_for_half_width"] = {"half_width": half_width, "seeds": need}
    return out


def save_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path
