"""``sead prune``: depth-prune a checkpoint (keep some decoder layers) and write a loadable copy.

Examples::

    sead prune --model runs/teacher --keep-every 3 --out runs/student        # layers 0, 3, 6, ...
    sead prune --model DIR --gguf-file model.Q4_1.gguf --keep 0,1,2,29 --out runs/student
    sead prune --model runs/smollm2/teacher --drop 26,27 --out runs/smollm2/student        # all but two layers

The copy keeps the embeddings, final norm and head (tied embeddings stay tied) and the tokenizer with its chat
template; ``AutoModelForCausalLM.from_pretrained(out)`` loads it. Distill it back towards the full model with
``sead train`` (recipes/smollm2-prune-distill.yaml).
"""

from __future__ import annotations

import argparse

from sead.utils.errors import SeadError


def _indices(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError as err:
        raise SeadError(f"{option} takes layer indices separated by commas, e.g. 0,3,6; got {text!r}.") from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory (save_pretrained) or hub id")
    parser.add_argument("--gguf-file", default=None, help="a GGUF file in --model's directory (or a full path)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--keep", default=None, help="layer indices to keep, e.g. 0,3,6,29")
    group.add_argument("--keep-every", type=int, default=None, help="keep every k-th layer: 0, k, 2k, ...")
    group.add_argument("--drop", default=None, help="layer indices to drop (keep all others), e.g. 26,27")
    parser.add_argument("--out", required=True, help="directory to write the pruned checkpoint to")


def run(args: argparse.Namespace) -> int:
    from sead.checkpoints.prune import prune_checkpoint

    keep = _indices(args.keep, "--keep") if args.keep is not None else None
    drop = _indices(args.drop, "--drop") if args.drop is not None else None
    kept = prune_checkpoint(args.model, args.out, keep=keep, every=args.keep_every, gguf_file=args.gguf_file, drop=drop)
    print(f"sead prune: kept {len(kept)} layers ({','.join(map(str, kept))}); saved to {args.out}")
    return 0
