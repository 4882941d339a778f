"""``sead train --config recipe.yaml [--field value ...]``: TRL's YAML-plus-CLI conventions.

YAML keys are fields of ``ScriptArguments`` (what to train on) and ``OPDConfig`` (how); command-line
flags override the YAML. Also runs under ``accelerate launch -m sead.cli train --config ...``.

Exit status: 0 done; 2 a problem with the input (printed as one paragraph, no traceback: config,
data, models, or a ``NonFiniteError`` with ``nonfinite_policy: error``); 3 stopped by SIGTERM/SIGINT
after saving a checkpoint: rerun with ``--resume_from_checkpoint DIR`` (or ``--resume_from_checkpoint
last``: the newest checkpoint in ``output_dir``); 4 the teacher server (``teacher_server_url``) failed during
training after its retries: the last completed step was saved as a checkpoint, resume it once the server
answers. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from sead.utils.distributed import exit_after_distributed_run
from sead.utils.errors import SeadError

# Exit status after a SIGTERM/SIGINT that saved a checkpoint: resume with --resume_from_checkpoint.
EXIT_INTERRUPTED = 3
# Exit status after the teacher server failed mid-run (a checkpoint of the last completed step is saved).
EXIT_TEACHER_SERVER = 4

# `--resume_from_checkpoint` values meaning "the newest checkpoint in output_dir".
_LATEST = ("last", "latest", "true", "True")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML recipe (see recipes/)")
    parser.epilog = (
        "Any other --field value pair overrides the recipe (fields of ScriptArguments and OPDConfig; "
        "`sead train --help` lists them). Exit status: 0 done, 2 bad input, 3 interrupted by "
        "SIGTERM/SIGINT after saving a checkpoint (resume with --resume_from_checkpoint DIR or last), 4 the teacher "
        "server failed mid-run (a checkpoint of the last step was saved)."
    )

    # Every flag but --config is a recipe field, passed on in order to TRL's parser. (An argparse
    # REMAINDER positional would not take `--field value` pairs that follow an option.)
    def parse_args(args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        if "-h" in args or "--help" in args:  # the full list of fields, from TRL's parser (see run)
            print(parser.format_help())
            return argparse.Namespace(config=None, fields=["--help"])
        known, fields = parser.parse_known_args(args, namespace)
        known.fields = fields
        return known

    parser.parse_args = parse_args


def parse(argv: list[str]):
    """``(ScriptArguments, OPDConfig)`` from ``--config FILE`` and ``--field value`` flags."""
    import yaml
    from trl import TrlParser

    from sead.training.config import OPDConfig
    from sead.training.recipe import ScriptArguments

    if "--config" in argv:
        path = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else None
        if path is None:
            raise SeadError("--config needs a file path")
        if not os.path.isfile(path):
            raise SeadError(f"config file {path} does not exist (or is not a file). Recipes live in recipes/.")
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            detail = " ".join(str(err).split())
            raise SeadError(f"config file {path} could not be read as YAML: {detail}") from err
        if not isinstance(loaded, dict):
            raise SeadError(f"config file {path} must hold a YAML mapping of field: value")
    parser = TrlParser((ScriptArguments, OPDConfig))
    try:
        script, cfg = parser.parse_args_and_config(argv)
    except SystemExit as err:  # argparse already printed what was wrong
        raise SeadError("invalid arguments (see the message above); `sead train --help` lists every field") from err
    except (ValueError, TypeError) as err:
        if isinstance(err, SeadError):
            raise
        raise SeadError(" ".join(str(err).split())) from err
    return script, cfg


def _resume_target(value: str | None, output_dir: str) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint directory, or ``last`` for the newest one in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    if value in (None, "", "none", "None", "false", "False"):
        return None
    if value in _LATEST:
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise SeadError(f"--resume_from_checkpoint {value}: there is no checkpoint-* directory in {output_dir}.")
        return last
    if not os.path.isdir(value):
        raise SeadError(
            f"--resume_from_checkpoint {value}: no such checkpoint directory. Give a checkpoint-N directory "
            f"(e.g. {os.path.join(output_dir, 'checkpoint-100')}) or `last`."
        )
    if not os.path.isfile(os.path.join(value, "trainer_state.json")):
        raise SeadError(
            f"--resume_from_checkpoint {value}: not a training checkpoint (no trainer_state.json). Give a "
            "checkpoint-N directory written by `sead train`."
        )
    return value


def use_line_progress(trainer) -> None:
    """Outside a terminal (a log file, CI, a cluster job), transformers' carriage-return bar would write every
    update onto one line: replace it by :class:`sead.utils.progress.TrainProgress` (a line now and then with step, loss,
    pass rate and ETA). On a terminal the bar stays."""
    from transformers.trainer_callback import ProgressCallback

    from sead.utils.progress import TrainProgress, progress_mode

    if progress_mode() == "bar" or trainer.args.disable_tqdm:
        return
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(TrainProgress("sead train", leave=True))


def run(args: argparse.Namespace) -> int:
    argv = (["--config", args.config] if args.config else []) + list(args.fields or [])
    if "-h" in argv or "--help" in argv:
        from trl import TrlParser

        from sead.training.config import OPDConfig
        from sead.training.recipe import ScriptArguments

        TrlParser((ScriptArguments, OPDConfig)).print_help()
        return 0
    script, cfg = parse(argv)
    resume = _resume_target(cfg.resume_from_checkpoint, cfg.output_dir)
    from sead.engines.teacher_server import TeacherServerError
    from sead.training.interrupt import GracefulInterrupt
    from sead.training.recipe import build_trainer

    interrupt = GracefulInterrupt()
    try:
        trainer = build_trainer(script, cfg, callbacks=[interrupt])
    except SeadError:
        raise
    except (ValueError, OSError) as err:  # TRL / transformers refusing the models or data: the user's to fix
        raise SeadError(f"{type(err).__name__}: " + " ".join(str(err).split())) from err
    use_line_progress(trainer)
    with interrupt.installed():
        try:
            trainer.train(resume_from_checkpoint=resume)
        except TeacherServerError as err:
            print(f"sead train: error: {err}", file=sys.stderr)
            return EXIT_TEACHER_SERVER
    finished = trainer.state.max_steps > 0 and trainer.state.global_step >= trainer.state.max_steps
    if interrupt.received is not None and not finished:
        print(
            f"sead train: {signal.Signals(interrupt.received).name} received: saved a checkpoint in {cfg.output_dir} "
            f"at step {trainer.state.global_step}. Resume with --resume_from_checkpoint "
            f"{os.path.join(cfg.output_dir, f'checkpoint-{trainer.state.global_step}')}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    trainer.save_model(cfg.output_dir)
    # every rank: stop trackers and destroy the process group before the interpreter exits (left to exit, gloo's
    # threads can abort a rank with "terminate called without an active exception" after a finished run)
    trainer.accelerator.end_training()
    print(f"sead train: done, {trainer.state.global_step} steps; model saved to {cfg.output_dir}")
    exit_after_distributed_run(0)  # several processes: exit here, past the C++ teardown that can still abort a rank
    return 0
