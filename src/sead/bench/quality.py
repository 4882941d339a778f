"""The quality benchmark (``sead bench quality``): every variant trained on the same seeds' data from the same start,
scored on the test split (and a validation set); its tables (per-variant summaries, paired and pooled intervals
against vanilla OPD, SEAD's interaction); :func:`merge_quality` adds another result's variants."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from sead.bench.common import machine_facts, median
from sead.experiments import settings as _quality
from sead.experiments.workers import run_workers

# Quality: the variants live in sead.experiments.settings (runs go to long-lived worker processes, one run at a time each).
QUALITY_VARIANTS = _quality.VARIANTS
QUALITY_QUICK_VARIANTS = _quality.QUICK_VARIANTS
QUALITY_DEFAULT_VARIANTS = _quality.DEFAULT_VARIANTS
#: Metrics of a quality run summarised over seeds and paired against vanilla OPD.
QUALITY_METRICS = ("accuracy", "auc", "avg_at_k", "pass_at_k")
QUALITY_SEEDS = 2
#: The name suffix of a variant's runs at its tuned learning rate (where that differs from the size's rate).
TUNED = "@tuned"


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
    rates: dict[str, float] | None = None,
    plan: dict[str, list[int]] | None = None,
    prior: dict[str, list[dict]] | None = None,
) -> dict[str, Any]:
    """Held-out scores after the same steps from the same start, ``seeds`` seeds, every variant.

    The task's models are prepared (or loaded) once; every seed's data and every (seed, variant) run is a job
    for ``jobs`` long-lived worker processes (one job at a time each, one torch thread each; a process is reused
    so that it imports torch and TRL once; each job seeds its own run). ``overrides`` adds variants: ``{name:
    OPDConfig fields}`` (with a ``method``). ``mechanisms``: also measure the task's mechanisms on the
    prepared student's rollouts (:mod:`sead.bench.profiles.mechanisms`).

    ``rates``: each variant's chosen learning rate (:func:`tune_learning_rates`); every variant then runs at the
    size's rate (the same-rate table, ``summary``) and, where its chosen rate differs, at that rate too as
    ``<variant>@tuned`` (the tuned-rate table, ``summary_tuned``). ``plan``: the seeds a variant runs (default all
    ``seeds``); ``prior``: runs measured before (the learning-rate search's), merged in (:func:`bench_factorial`).
    """
    from sead.experiments.settings import bench_size
    from sead.tasks import DEFAULT_TASK, get_task

    task = task or DEFAULT_TASK
    size = bench_size(task, quick, steps)  # the benchmark's own sizes where the task sets them (`bench_<key>`)
    steps = size["steps"]
    seeds = seeds or (1 if quick else QUALITY_SEEDS)
    overrides, rates, plan, prior = dict(overrides or {}), dict(rates or {}), dict(plan or {}), dict(prior or {})
    variants = tuple(variants or (QUALITY_QUICK_VARIANTS if quick else QUALITY_DEFAULT_VARIANTS))
    for name in variants:
        if name in rates and rates[name] != size["lr"]:
            overrides[name + TUNED] = {**QUALITY_VARIANTS.get(name, overrides.get(name, {})),
                                       "learning_rate": rates[name]}  # fmt: skip
    variants += tuple(name for name in overrides if name not in variants)
    unknown = [v for v in variants if v not in QUALITY_VARIANTS and v not in overrides]
    if unknown:
        raise ValueError(f"unknown quality variant(s) {unknown}; known: {', '.join(QUALITY_VARIANTS)}")
    seed_of = {name: sorted(plan.get(name, range(seeds))) for name in variants}
    t_start = time.perf_counter()
    prepared = get_task(task).prepare_models(cache_dir=cache_dir, quick=quick, seed=0, progress=progress)
    starts, done = _quality_jobs(task, quick, steps, threads, cache_dir, jobs, progress, seed_of, overrides)
    measured = None
    if mechanisms and size.get("mechanism_prompts"):
        from sead.experiments.mechanisms import measure

        measured = measure(
            get_task(task), prepared.load_teacher(), prepared.load_student(), prepared.tokenizer,
            size["mechanism_prompts"], 0, prepared.levels,
        )
    runs: dict[str, list[dict]] = {v: list(prior.get(v, [])) for v in variants}
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
        **quality_tables(runs, rates, {n: overrides.get(n, {}).get("learning_rate", size["lr"]) for n in runs}),
        "runs": runs,
        "errors": errors,
        "wall_seconds": time.perf_counter() - t_start,
    }


def _quality_jobs(task, quick, steps, threads, cache_dir, jobs, progress, seed_of, overrides):
    """Every seed's data (seed 0's always: the teacher's scores), then every ``(variant, seed)`` run of ``seed_of``,
    on ``jobs`` worker processes: ``(starts, done)``, keyed by seed and by ``"variant\tseed"``."""
    common = ["--task", task, "--threads", str(threads)] + (["--quick"] if quick else []) + (["--cache-dir", cache_dir] if cache_dir else [])
    run_seeds = sorted({s for ss in seed_of.values() for s in ss})
    with tempfile.TemporaryDirectory() as tmp:
        data_dirs = {seed: Path(tmp) / f"data-{seed}" for seed in sorted({0, *run_seeds})}
        starts = run_workers(
            [(str(s), ["quality-data", "--seed", str(s), "--data", str(d), *common]) for s, d in data_dirs.items()],
            jobs, progress, "quality data",
        )
        failed = {k: v["error"] for k, v in starts.items() if "error" in v}
        if failed:
            raise RuntimeError(f"quality data preparation failed: {failed}")
        run_jobs = []  # seed by seed: a benchmark cut short has the same seeds of every variant
        for seed in run_seeds:
            for name in (n for n, ss in seed_of.items() if seed in ss):
                args = ["quality", "--seed", str(seed), "--variant", name, "--data", str(data_dirs[seed]),
                        "--out", str(Path(tmp) / f"{name.replace('/', '_')}-{seed}"), "--steps", str(steps), *common]
                if name in overrides:
                    args += ["--overrides", json.dumps(overrides[name])]
                run_jobs.append((f"{name}\t{seed}", args))
        done = run_workers(run_jobs, jobs, progress, "bench quality")
    return starts, done


def quality_tables(runs: dict[str, list[dict]], rates: dict[str, float], lr_of: dict[str, float]) -> dict[str, Any]:
    """The quality result's tables from its runs: ``summary`` (every variant at the size's rate, and the
    ``@tuned`` runs as their own rows), ``interaction``, ``pooled``; and with ``rates``, ``summary_tuned`` and
    ``pooled_tuned`` (each variant at its chosen rate). Each summary row gives its ``lr``; SEAD's row its pooled
    difference against OPD in greedy accuracy (``accuracy_vs_opd_pooled``)."""
    metrics = ("accuracy", "avg_at_k", "pass_at_k")
    summary, pooled = summarize_quality(runs), {m: pooled_intervals(runs, m) for m in metrics}
    for name, entry in summary.items():
        entry["lr"] = lr_of.get(name)
        if name in rates:
            entry["lr_chosen"] = rates[name]
    out: dict[str, Any] = {"rates": rates or None, "summary": summary, "interaction": interaction_terms(runs),
                           "pooled": pooled, "summary_tuned": None, "pooled_tuned": None}  # fmt: skip
    tables = [(summary, pooled)]
    if rates:
        tuned = {n: runs.get(n + TUNED) or rs for n, rs in runs.items() if not n.endswith(TUNED)}
        out["summary_tuned"] = summarize_quality(tuned)
        out["pooled_tuned"] = {m: pooled_intervals(tuned, m) for m in metrics}
        for name, entry in out["summary_tuned"].items():
            entry["lr"] = lr_of.get(name + TUNED) if runs.get(name + TUNED) else lr_of.get(name)
        tables.append((out["summary_tuned"], out["pooled_tuned"]))
    for table, pool in tables:
        sead_vs = (pool["accuracy"] or {}).get("vs_opd", {}).get("sead")
        if sead_vs is not None and "sead" in table:
            table["sead"]["accuracy_vs_opd_pooled"] = sead_vs
    return out


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
        walls = [r["wall_seconds"] for r in rs if r.get("wall_seconds") is not None]  # None: a run whose time says nothing
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs], "wall_seconds_median": median(walls) if walls else None}
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
    shared = [n for n, v in by_seed.items() if len(set(v) & set(seeds)) >= 2]
    if len(shared) > len(names) and len(seeds) >= 2:  # some variants ran fewer seeds than the reference
        return _unbalanced_intervals(by_seed, shared, seeds, metric, reference, joint, half_width)
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


def _unbalanced_intervals(by_seed, names, seeds, metric, reference, joint, half_width) -> dict[str, Any]:
    """:func:`pooled_intervals` when variants ran different seeds (e.g. more seeds for SEAD and OPD than for the
    components): the additive model fitted over every run of the reference's seeds (:func:`sead.bench.stats.
    additive_fit`), contrasts read off the fit; ``unbalanced`` lists each variant's seeds."""
    from sead.bench.stats import additive_fit, fitted_contrast, t_quantile_975

    cells = {(n, s): by_seed[n][s] for n in names for s in seeds if s in by_seed[n]}
    fit = additive_fit(cells)
    sigma, df = fit["sigma"], fit["df"]
    out: dict[str, Any] = {"metric": metric, "sigma": sigma, "df": df, "seeds": seeds, "variants": names,
                           "unbalanced": {n: sorted(s for s in by_seed[n] if s in seeds) for n in names}}  # fmt: skip
    out[f"vs_{reference}"] = {n: fitted_contrast(fit, [n, reference], [1, -1]) for n in names if n != reference}
    out["pair_half_width"] = t_quantile_975(df) * sigma * (2 / len(seeds)) ** 0.5
    parts = (joint, reference, *SEAD_COMPONENTS)
    if all(p in names for p in parts):
        out["interaction"] = fitted_contrast(fit, list(parts), [1, 2, -1, -1, -1])
    need = next((n for n in range(2, 1001) if t_quantile_975((len(names) - 1) * (n - 1)) * sigma * (2 / n) ** 0.5
                 <= half_width), None)
    out["seeds_for_half_width"] = {"half_width": half_width, "seeds": need}
    return out


def merge_quality(res: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``res`` with another quality result's variants added (the same task, steps and prepared models; its seeds'
    data are the same seeds' data), the tables recomputed over all runs. A variant in both keeps ``res``'s runs."""
    for key in ("task", "steps"):
        if res.get(key) != extra.get(key):
            raise ValueError(f"cannot merge quality results with different {key}: {res.get(key)} and {extra.get(key)}")
    runs = dict(res["runs"])
    runs.update({n: rs for n, rs in extra["runs"].items() if n not in runs})
    lr_of = {n: s.get("lr") for src in (extra, res) for n, s in src["summary"].items()}
    out = {**res, **quality_tables(runs, res.get("rates") or {}, lr_of), "runs": runs}
    out["errors"] = [*res.get("errors", []), *extra.get("errors", [])]
    out["merged"] = [*res.get("merged", []), {"command": extra.get("command"), "wall_seconds": extra.get("wall_seconds")}]
    return out
