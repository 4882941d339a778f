"""The fair protocol's learning rates (``sead bench lr``, ``sead bench factorial``): each variant's rate chosen on a
validation set, then the full design at the size's rate and at the chosen ones (docs/task.md, "How the methods are
compared")."""

from __future__ import annotations

from typing import Any

from sead.bench.quality import QUALITY_DEFAULT_VARIANTS, QUALITY_VARIANTS, TUNED, bench_quality

#: The learning rates each variant is tried at on the validation set (the size's rate, half and twice it).
LR_GRID = (5e-4, 1e-3, 2e-3)


def _grid_name(variant: str, lr: float) -> str:
    return f"{variant}@lr={lr:g}"


def tune_learning_rates(
    variants: tuple[str, ...] | None = None,
    grid: tuple[float, ...] = LR_GRID,
    steps: int | None = None,
    jobs: int = 2,
    progress: bool = True,
    cache_dir: str | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    """Each variant's learning rate, chosen on seed 0's validation set (training-split problems not trained on, so
    none in the test split: :func:`sead.experiments.seeds.validation_dataset`) from the rates of ``grid``, at the
    benchmark's steps: the rate with the best greedy validation accuracy (ties: the smaller rate).
    ``{"rates": {variant: lr}, "scores": {variant: {lr: accuracy}}, "quality": the runs (test scores too)}``."""
    variants = tuple(variants or QUALITY_DEFAULT_VARIANTS)
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    unknown = [v for v in variants if v not in QUALITY_VARIANTS]
    if unknown:
        raise ValueError(f"unknown quality variant(s) {unknown}; known: {', '.join(QUALITY_VARIANTS)}")
    grid_runs = {_grid_name(v, lr): {**QUALITY_VARIANTS[v], "learning_rate": lr} for v in variants for lr in grid}
    res = bench_quality(seeds=1, steps=steps, variants=tuple(grid_runs), jobs=jobs, progress=progress,
                        cache_dir=cache_dir, task=task, overrides=grid_runs, mechanisms=False)  # fmt: skip
    scores: dict[str, dict[str, float]] = {v: {} for v in variants}
    for v in variants:
        for lr in grid:
            rs = [r for r in res["runs"].get(_grid_name(v, lr), []) if r.get("validation_accuracy") is not None]
            if rs:
                scores[v][f"{lr:g}"] = sum(r["validation_accuracy"] for r in rs) / len(rs)
    rates = {v: float(min(sc, key=lambda lr: (-sc[lr], float(lr)))) for v, sc in scores.items() if sc}
    return {"benchmark": "lr", "grid": list(grid), "steps": res["steps"], "rates": rates, "scores": scores,
            "machine": res["machine"], "wall_seconds": res["wall_seconds"], "quality": res}  # fmt: skip


def bench_factorial(
    variants: tuple[str, ...] | None = None,
    tune: tuple[str, ...] | None = None,
    grid: tuple[float, ...] = LR_GRID,
    seeds: int = 4,
    **options,
) -> dict[str, Any]:
    """The full design (``sead bench factorial``): the learning-rate search (:func:`tune_learning_rates`) for the
    variants of ``tune`` (default all), then ``seeds`` seeds of every variant at the size's rate and, where the
    chosen rate differs, at that rate. Seed 0's runs of the search are the design's seed-0 runs (the same data and
    configuration: the rate was chosen on the validation set, the tables read the test split). ``options``: the
    runs' ``steps``, ``jobs``, ``progress``, ``cache_dir``, ``task`` (:func:`bench_quality`'s)."""
    from sead.experiments.settings import bench_size
    from sead.tasks import DEFAULT_TASK

    variants = tuple(variants or QUALITY_DEFAULT_VARIANTS)
    tune = tuple(tune if tune is not None else variants)
    base = bench_size(options.get("task") or DEFAULT_TASK, False, options.get("steps"))["lr"]
    search = tune_learning_rates(tune, grid, **options) if tune else None
    rates = dict(search["rates"]) if search else {}
    prior, plan = {}, {}
    for v in tune:
        picked = {lr: search["quality"]["runs"].get(_grid_name(v, lr), []) for lr in grid}
        if picked.get(base):
            prior[v], plan[v] = [dict(r, variant=v) for r in picked[base]], list(range(1, seeds))
        if v in rates and rates[v] != base and picked.get(rates[v]):
            prior[v + TUNED] = [dict(r, variant=v + TUNED) for r in picked[rates[v]]]
            plan[v + TUNED] = list(range(1, seeds))
    res = bench_quality(seeds=seeds, variants=variants, rates=rates, plan=plan, prior=prior, **options)
    if search:
        res["lr_search"] = {k: search[k] for k in ("grid", "rates", "scores", "wall_seconds")}
        res["wall_seconds"] += search["wall_seconds"]
    return res
