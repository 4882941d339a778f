"""``sead demo``: the built-in demo (OPD vs SEAD vs SG-OPD from the same start) on a built-in task."""

from __future__ import annotations

import argparse
from pathlib import Path

from sead.utils.errors import SeadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sead.tasks import DEFAULT_TASK, TASKS

    parser.add_argument(
        "--task", default=DEFAULT_TASK, choices=list(TASKS), help=f"built-in task (default {DEFAULT_TASK}; docs/task.md)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller, faster run (a minute or two on 2 cores)"
    )
    parser.add_argument("--methods", default="opd,sead,sgopd", help="comma-separated: opd, sead, sgopd")
    parser.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per method (default: by size)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory")
    parser.add_argument(
        "--cache-dir", default=None, help="model cache (default $SEAD_CACHE_DIR or ~/.cache/sead)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    parser.add_argument(
        "--jobs", type=int, default=3, help="methods trained at a time, one process each (1: one after another)"
    )
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write tensorboard event files")


def run(args: argparse.Namespace) -> int:
    from sead.experiments.demo import DemoOptions, format_mechanisms, format_table, run_demo

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in ("opd", "sead", "sgopd")]
    if unknown or not methods:
        raise SeadError(
            f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; choose from opd, sead, sgopd"
        )
    if args.steps is not None and args.steps < 1:
        raise SeadError(f"--steps must be >= 1; got {args.steps}")
    opts = DemoOptions(
        task=args.task,
        quick=args.quick,
        methods=methods,
        steps=args.steps,
        seed=args.seed,
        out=args.out,
        cache_dir=args.cache_dir,
        threads=args.threads,
        jobs=max(1, args.jobs),
        report_to=() if args.no_tensorboard else ("tensorboard",),
    )
    results = run_demo(opts)
    print()
    print(format_table(results))
    mechanisms = format_mechanisms(results)
    if mechanisms:
        print()
        print(mechanisms)
    print(
        f"\nwrote {args.out / 'results.json'} and plots {', '.join(Path(p).name for p in results['plots'].values())}"
    )
    print(f"total {results['total_seconds']:.0f} s (preparation {results['prep_seconds']:.0f} s)")
    return 0
