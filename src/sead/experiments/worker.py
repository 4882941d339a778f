"""The quality experiment's worker process: ``python -m sead.experiments.worker quality-data|quality|serve ...``.

``quality-data`` prepares and saves one seed's data (:func:`sead.experiments.seeds.prepare_seed`); ``quality``
trains one variant on it (:func:`sead.experiments.runs.run_one`); each prints one JSON line. ``serve`` runs such
jobs one per stdin line (:func:`serve`, the worker's side of :class:`sead.experiments.workers.WorkerProcess`;
:mod:`sead.bench.worker` serves its measurements with it too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

__all__ = ["RESULT_PREFIX", "build_parser", "dispatch", "main", "serve", "worker_main"]

#: The line prefix of a job's result in a worker's output (libraries may print too).
RESULT_PREFIX = "@sead-result "


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sead.experiments.worker")
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("quality-data", "quality"):
        qp = sub.add_parser(name)
        qp.add_argument("--task", required=True)
        qp.add_argument("--seed", type=int, required=True)
        qp.add_argument("--data", required=True, help="the seed's data directory")
        qp.add_argument("--quick", action="store_true")
        qp.add_argument("--cache-dir", default=None)
        qp.add_argument("--threads", type=int, default=1)
        if name == "quality":
            qp.add_argument("--variant", required=True)
            qp.add_argument("--steps", type=int, default=None)
            qp.add_argument("--out", required=True)
            qp.add_argument("--overrides", default=None, help="JSON object of OPDConfig fields")
            qp.add_argument("--keep-log", action="store_true", help="write OUT/log_history.json")
    sub.add_parser("serve", help="run jobs (one JSON list of arguments per stdin line) until stdin closes")
    return p


def dispatch(a) -> dict:
    from sead.experiments.runs import run_one
    from sead.experiments.seeds import prepare_seed

    torch.set_num_threads(a.threads)
    if a.what == "quality-data":
        return prepare_seed(a.task, a.quick, a.seed, Path(a.data), a.cache_dir)
    overrides = json.loads(a.overrides) if a.overrides else None
    return run_one(a.task, a.quick, a.seed, a.variant, Path(a.data), Path(a.out), a.steps, a.cache_dir, overrides, a.keep_log)


def serve(parser, dispatch) -> int:
    """A worker module's ``serve``: run one job per stdin line (a JSON list of ``parser``'s arguments) with
    ``dispatch(namespace) -> dict`` and print each result as one ``RESULT_PREFIX`` line; a job that raises returns
    ``{"error": ...}`` and the next job runs."""
    import traceback

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            res = dispatch(parser.parse_args(json.loads(line)))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported to the parent, which names the job
            traceback.print_exc()
            res = {"error": f"{type(exc).__name__}: {exc}"}
        print(RESULT_PREFIX + json.dumps(res), flush=True)
    return 0


def worker_main(parser, dispatch, argv=None) -> int:
    """A worker module's ``main``: ``serve`` (:func:`serve`), or run the one job ``argv`` names and print its result."""
    a = parser.parse_args(argv)
    if a.what == "serve":
        return serve(parser, dispatch)
    print(json.dumps(dispatch(a)))
    return 0


def main(argv=None) -> int:
    return worker_main(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
