"""``sead plan --config recipe.yaml [--gpus N --gpu-memory GiB] [--json]``: will a recipe fit, and how.

Estimates per-GPU memory (student, teacher, reference, optimizer, gradients, activations, the loss's
working set, rollouts) for DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2, and names the accelerate config
of the simplest strategy that fits. Nothing is downloaded: the recipes' models are in a table of
public config facts (:data:`sead.plan.KNOWN_MODELS`); others need ``--model-config`` /
``--teacher-config``. Recipe fields can be overridden as in ``sead train``:
``sead plan --config X.yaml --gpus 4 --per_device_train_batch_size 2``.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe (see recipes/)")
    parser.add_argument("--gpus", type=int, default=8, help="number of GPUs (processes), default 8")
    parser.add_argument(
        "--gpu-memory", type=float, default=80.0, help="memory of one GPU in GiB, default 80 (H100/A100 80GB)"
    )
    parser.add_argument("--model-config", default=None, help="the student's config.json (models not in the table)")
    parser.add_argument("--teacher-config", default=None, help="the teacher's config.json")
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=None,
        help="prompt length in tokens (default: the recipe's max_prompt_length, else 512)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when no strategy fits (for scripts)"
    )
    parser.epilog = (
        "Any other --field value pair overrides the recipe, as in `sead train` (fields of ScriptArguments and "
        "OPDConfig), e.g. --per_device_train_batch_size 2 --gradient_accumulation_steps 6."
    )

    # Unknown flags are recipe fields (an argparse REMAINDER positional would not take `--field value`
    # pairs that follow an option), passed on in order to TRL's parser.
    def parse_args(args=None, namespace=None):
        known, fields = parser.parse_known_args(list(sys.argv[1:] if args is None else args), namespace)
        known.fields = fields
        return known

    parser.parse_args = parse_args


def _parse_recipe(config: str, fields: list[str]):
    """The recipe's (ScriptArguments, OPDConfig), parsed without needing the recipe's hardware."""
    import torch

    from sead.commands.train import parse

    argv = ["--config", config] + list(fields or [])
    if not torch.cuda.is_available() and "--use_cpu" not in argv:
        argv += ["--use_cpu", "true"]  # only so that a bf16 recipe parses here; the plan reads bf16 as written
    return parse(argv)


def run(args: argparse.Namespace) -> int:
    from sead.plan import format_plan, plan_recipe
    from sead.utils.errors import SeadError

    if args.gpus < 1:
        raise SeadError(f"--gpus must be >= 1; got {args.gpus}")
    if not args.gpu_memory > 0:
        raise SeadError(f"--gpu-memory must be > 0 GiB; got {args.gpu_memory}")
    script, cfg = _parse_recipe(args.config, args.fields)
    plan = plan_recipe(
        script,
        cfg,
        gpus=args.gpus,
        gpu_memory_gib=args.gpu_memory,
        model_config=args.model_config,
        teacher_config=args.teacher_config,
        prompt_tokens=args.prompt_tokens,
    )
    plan["recipe"]["config"] = args.config
    if args.json:
        json.dump(plan, sys.stdout, indent=2, default=str)
        print()
    else:
        print(format_plan(plan))
    if args.check and plan["recommended"] is None:
        return 1
    return 0
