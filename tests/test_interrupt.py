"""Interruption: SIGTERM or SIGINT during training saves a checkpoint and exits cleanly (status 3); the
next run resumes from it (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from _tiny import sead_command, standard_recipe, subprocess_env, tiny_trainer
from sead.commands.train import EXIT_INTERRUPTED
from sead.training.interrupt import GracefulInterrupt


class _SignalAt(TrainerCallback):
    """Sends ``signum`` to this process at the beginning of step ``step`` (1-based)."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_saves_and_stops(tmp_path, signum):
    interrupt = GracefulInterrupt()
    trainer = tiny_trainer(tmp_path, method="opd", max_steps=50, callbacks=[interrupt, _SignalAt(2, signum)])
    before = signal.getsignal(signum)
    with interrupt.installed():
        trainer.train()
    assert signal.getsignal(signum) is before  # handlers restored
    assert interrupt.received == signum
    assert trainer.state.global_step == 2  # the step in flight completed, nothing after it
    checkpoint = tmp_path / "checkpoint-2"
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json", "sead_state.json"):
        assert (checkpoint / name).is_file(), name
    resumed = tiny_trainer(tmp_path / "resumed", method="opd", max_steps=3)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 3


def _run_until_steps(cmd, env, steps: int, stderr_path: Path, timeout: float = 120.0):
    """Start ``cmd``; return the process once it has logged ``steps`` training steps."""
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    lines: list[str] = []
    seen = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if sum("'loss'" in x for x in lines) >= steps:
                seen.set()

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not seen.wait(0.1):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"training never reached {steps} steps:\n{''.join(lines)}\n{stderr_path.read_text()}")
    return proc, lines


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_interrupt_exit_code_and_resume(tmp_path, signum):
    recipe = standard_recipe(tmp_path, method="sead", max_steps=100_000, competence_window=4)
    env = subprocess_env()
    proc, lines = _run_until_steps(sead_command("train", "--config", recipe), env, 2, tmp_path / "stderr.txt")
    proc.send_signal(signum)
    rc = proc.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc == EXIT_INTERRUPTED == 3, stderr
    assert "Traceback" not in stderr
    match = re.search(r"Resume with --resume_from_checkpoint (\S+)", stderr)
    assert match, stderr
    checkpoint = Path(match.group(1))
    step = int(checkpoint.name.split("-")[1])
    assert step >= 2
    state = json.loads((checkpoint / "sead_state.json").read_text())
    assert state["global_step"] == step and state["curriculum"] is not None
    if signum == signal.SIGINT:
        return  # the resume leg is the same for both signals; run it once
    resumed = subprocess.run(
        sead_command("train", "--config", recipe, "--resume_from_checkpoint", str(checkpoint),
                     "--max_steps", str(step + 2)),
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"sead train: done, {step + 2} steps" in resumed.stdout
    assert (checkpoint.parent / "model.safetensors").is_file()
