"""``sead bench loss|step|quality|lr|factorial|teachers|all [--quick] [--json FILE] [--update-results]``: measure, then
record.

``teachers``: several teachers in one run (two partial teachers on sums, :mod:`sead.bench.teachers`), its results
``benchmarks/results/teachers.json`` and their table ``teachers.md``, which the report includes.

``real``: the methods on real pretrained weights (the pair of recipes/smollm2-prune-distill.yaml, :mod:`sead.bench.real`):
opd, sead, sgopd and SFT on the teacher's samples, ``--seeds`` (default 2) seeds of ``--steps`` (default 16) steps; its
results ``benchmarks/results/real_quality.json``, its plot ``bench_real.png`` and its section ``real_quality.md``.

``lr`` chooses each quality variant's learning rate on a validation set (``benchmarks/results/lr.json``);
``quality`` then runs every variant at the size's rate and, where its chosen rate differs, at that rate too
(``--same-rate``: the size's rate only). ``factorial`` is the full design (docs/evaluation.md): the rate search,
then ``--seeds`` (default 4) seeds of every variant, written as the quality results.

Without ``--json`` a run updates the committed results (``benchmarks/results/<what>[_quick].json``) and
regenerates BENCHMARKS.md (what ``make bench`` / ``make bench-quick`` do). ``--json FILE`` writes that file
only; add ``--update-results`` to update the committed results and the report as well.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sead.utils.errors import SeadError

RESULTS_DIR = Path("benchmarks/results")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["loss", "step", "quality", "lr", "factorial", "teachers", "real", "all", "report"], help="which benchmark (report: only rebuild the report)")
    parser.add_argument("--quick", action="store_true", help="small shapes / few runs (minutes)")
    parser.add_argument(
        "--json", type=Path, default=None,
        help="write this benchmark's results to this file only (the committed results and the report are left alone)",
    )
    parser.add_argument(
        "--update-results", action="store_true",
        help="with --json: also update the committed results (--results-dir) and regenerate the report",
    )
    parser.add_argument("--report", type=Path, default=Path("BENCHMARKS.md"), help="report to regenerate")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where JSON results are kept")
    parser.add_argument("--seeds", type=int, default=None, help="quality, real: number of seeds (default 2: what fits in make bench's 90 minutes, and real's 45; quick 1)")
    parser.add_argument("--task", default=None, help="quality: built-in task (default sums; docs/task.md)")
    parser.add_argument("--jobs", type=int, default=2, help="quality, real: runs at a time (one process, one thread each)")
    parser.add_argument("--variants", default=None, help="quality: comma-separated variants (default: the full factorial)")
    parser.add_argument("--steps", type=int, default=None, help="quality, real: optimizer steps per run (real: default 16)")
    parser.add_argument("--threads", type=int, default=2, help="loss: torch threads")
    parser.add_argument("--shapes", default=None, help="loss: NxV list, e.g. 4096x32768,1024x131072 (default: by size); "
                        "step: shape names, tiny,large (default: both; --quick: tiny)")
    parser.add_argument("--no-report", action="store_true", help="measure only; leave the report alone")
    parser.add_argument("--tune", default=None,
                        help="factorial: comma-separated variants whose rate is searched (default: every variant)")
    parser.add_argument("--lr-grid", default=None, help="lr: comma-separated learning rates (default 5e-4,1e-3,2e-3)")
    parser.add_argument("--same-rate", action="store_true",
                        help="quality: every variant at the size's learning rate only (ignore the chosen rates in lr.json)")


def _chosen_rates(results_dir: Path) -> dict[str, float] | None:
    """The learning rates ``sead bench lr`` chose (``lr.json``), or ``None`` when it has not run."""
    path = results_dir / "lr.json"
    if not path.exists():
        print(f"[sead bench] {path} not found: every variant at the size's learning rate (run `sead bench lr` first)")
        return None
    return {k: float(v) for k, v in json.loads(path.read_text())["rates"].items()}


def _grid(args) -> tuple[float, ...]:
    from sead.bench.suite import LR_GRID

    if not args.lr_grid:
        return LR_GRID
    try:
        return tuple(float(x) for x in args.lr_grid.split(",") if x.strip())
    except ValueError as err:
        raise SeadError(f"--lr-grid must be comma-separated numbers, e.g. 5e-4,1e-3,2e-3; got {args.lr_grid!r}") from err


def run(args: argparse.Namespace) -> int:
    from sead.bench import suite
    from sead.bench.report import write_report

    quick = " --quick" if args.quick else ""
    todo = {"all": ["loss", "step", "quality"], "report": []}.get(args.what, [args.what])
    if args.json is not None and len(todo) > 1:
        raise SeadError("--json names one file: use it with a single benchmark (loss, step or quality)")
    # a file asked for is written alone; the committed results change only on a plain run or when asked
    record = args.json is None or args.update_results
    for what in todo:
        if what == "loss":
            shapes = None
            if args.shapes:
                try:
                    shapes = [tuple(int(x) for x in s.lower().split("x")) for s in args.shapes.split(",")]
                except ValueError as err:
                    raise SeadError(f"--shapes must look like 4096x32768,1024x131072; got {args.shapes!r}") from err
            res = suite.bench_loss(quick=args.quick, threads=args.threads, shapes=shapes)
        elif what == "step":
            from sead.bench.worker import STEP_SHAPES

            names = tuple(x.strip() for x in args.shapes.split(",") if x.strip()) if args.shapes else None
            unknown = [x for x in names or () if x not in STEP_SHAPES]
            if unknown:
                raise SeadError(f"--shapes for step names shapes of {', '.join(sorted(STEP_SHAPES))}; got {unknown}")
            res = suite.bench_step(quick=args.quick, shapes=names)
        elif what == "lr":
            variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
            try:
                res = suite.tune_learning_rates(variants, _grid(args), steps=args.steps, jobs=args.jobs, task=args.task)
            except ValueError as err:
                raise SeadError(f"sead bench lr: {err}") from err
        elif what == "teachers":
            from sead.bench.teachers import bench_teachers, plot_teachers, teachers_markdown

            res = bench_teachers(steps=args.steps)
            res["command"] = "sead bench teachers" + (f" --steps {args.steps}" if args.steps else "")
            if record:
                png = plot_teachers(res, args.report.parent / "bench_teachers.png")
                (args.results_dir / "teachers.md").write_text(teachers_markdown(res, png.name))
        elif what == "real":
            from sead.bench.real import DEFAULT_STEPS, bench_real, plot_real, real_markdown

            try:
                res = bench_real(steps=args.steps or DEFAULT_STEPS, seeds=args.seeds or 2, jobs=args.jobs)
            except ValueError as err:
                raise SeadError(f"sead bench real: {err}") from err
            if record:
                png = plot_real(res, args.report.parent / "bench_real.png")
                (args.results_dir / "real_quality.md").write_text(real_markdown(res, png.name) + "\n")
        elif what == "factorial":
            variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
            try:
                tune = tuple(v.strip() for v in args.tune.split(",") if v.strip()) if args.tune else None
                res = suite.bench_factorial(variants, tune=tune, grid=_grid(args), seeds=args.seeds or 4,
                                            steps=args.steps, jobs=args.jobs, task=args.task)  # fmt: skip
            except ValueError as err:
                raise SeadError(f"sead bench factorial: {err}") from err
        else:
            variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
            try:
                rates = None if args.same_rate or args.quick else _chosen_rates(args.results_dir)
                res = suite.bench_quality(
                    quick=args.quick, seeds=args.seeds, steps=args.steps, task=args.task, jobs=args.jobs, variants=variants,
                    rates=rates,
                )
            except ValueError as err:
                raise SeadError(f"sead bench quality: {err}") from err
        res["command"] = f"sead bench {what}{quick}" + (f" --shapes {args.shapes}" if what in ("loss", "step") and args.shapes else "")
        if what in ("quality", "lr", "factorial", "real"):
            for flag, value in (("--task", args.task), ("--seeds", args.seeds), ("--steps", args.steps),
                                ("--variants", args.variants), ("--tune", args.tune), ("--lr-grid", args.lr_grid)):  # fmt: skip
                if value is not None:
                    res["command"] += f" {flag} {value}"
        if record:
            name = {"factorial": "quality", "real": "real_quality"}.get(what, what)  # the full design's results are the quality results
            suite.save_json(res, args.results_dir / f"{name}{'_quick' if args.quick else ''}.json")
            if what == "factorial" and res.get("lr_search"):
                suite.save_json({"benchmark": "lr", "command": res["command"], **res["lr_search"]},
                                args.results_dir / "lr.json")
        if args.json is not None:
            suite.save_json(res, args.json)
            print(f"[sead bench] wrote {args.json}")
        print(f"[sead bench] {what} done")
    if record and not args.no_report:
        results, commands = {}, {}
        for what in ("loss", "step", "quality"):
            for suffix in ("", "_quick"):
                p = args.results_dir / f"{what}{suffix}.json"
                if p.exists():
                    results[what] = json.loads(p.read_text())
                    commands[what] = results[what].get("command", f"sead bench {what}")
                    break
        for what, name in (("served", "served_cost.json"), ("gpu", "gpu_check.json")):  # measured by their scripts
            p = args.results_dir / name
            if p.exists():
                results[what] = json.loads(p.read_text())
        # hand-written sections kept through a regeneration: the analysis, the real checkpoints' measurements
        parts = [args.results_dir / "analysis.md", args.results_dir / "teachers.md",
                 args.results_dir / "real" / "real_checkpoints.md", args.results_dir / "real_quality.md",
                 args.results_dir / "real" / "real_methods.md"]  # fmt: skip
        analysis = "\n\n".join(p.read_text().strip() for p in parts if p.exists())
        write_report(results, commands, args.report, analysis)
        print(f"[sead bench] wrote {args.report}")
    return 0
