"""DeepSpeed ZeRO-3, for real (DeepSpeed from PyPI on two gloo CPU processes, tests/_zero3_train.py).

Under ZeRO-3 a partitioned parameter's data is ``torch.empty(0)`` outside its module's forward, and sead's loss reads
the ``lm_head`` weights without calling ``lm_head.forward``: before the fix every method stopped at step 1 with
``student_weight must be [V, H], got shape (0,)``. And under DeepSpeed the optimizer step runs inside
``accelerator.backward``, before the callback that drops non-finite steps.

Checked against an independent replay: the same rollouts (what the loss saw on each rank) through an unsharded
trainer in this process, gradients averaged over the two ranks, one SGD step ``w <- w - lr * g`` per step. Step 3
has NaN teacher hidden states on rank 1 (the student's stand-in loss then has an exactly zero gradient; ``nonfinite_policy: skip``): it must not be applied on either rank.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from _ports import retry_on_port_collision
from _tiny import REPO, parity_reward, subprocess_env, tiny_config, tiny_dataset, tiny_model, tokenizer

METHODS = ("sead", "sgopd")


@pytest.fixture(scope="module")
def zero3_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3")
    env = {**subprocess_env(), "DS_ACCELERATOR": "cpu"}
    for method in METHODS:

        def launch(port: int, method: str = method) -> subprocess.CompletedProcess:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                   str(REPO / "tests" / "_zero3_train.py"), str(out), method]  # fmt: skip
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)

        proc = retry_on_port_collision(launch)  # again on a fresh port if another process took it meanwhile
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


def _replay(method: str, run_dir, tmp_path) -> dict[int, dict[str, torch.Tensor]]:
    """The student after each step, from the recorded inputs, without DeepSpeed: mean of the two ranks' gradients
    of the unsharded trainer's loss, then ``w - lr * g``; a step with a NaN rank is not applied."""
    from _zero3_train import LR, NAN_STEP, STEPS
    from sead.method.zones import ZoneThresholds
    from sead.training.trainer import OPDTrainer

    cfg = tiny_config(tmp_path / method, method=method, max_steps=STEPS, per_device_train_batch_size=2,
                      teacher_mixing=False)  # fmt: skip
    trainer = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(16),
                         processing_class=tokenizer(), reward_funcs=parity_reward)  # fmt: skip
    model = trainer.model
    w0 = torch.load(run_dir / "w0.pt")
    assert all(torch.equal(w0[k], v) for k, v in model.state_dict().items() if k in w0)  # the same initial student
    model.train()
    after = {}
    for step in range(1, STEPS + 1):
        trainer.state.global_step = step - 1
        model.zero_grad(set_to_none=True)
        if step != NAN_STEP:
            for rank in (0, 1):
                rec = torch.load(run_dir / f"inputs-step{step}-rank{rank}.pt")
                if rec["zone_cuts"] is not None:  # the step's zone cuts, taken over both ranks' tokens
                    trainer.zone_cuts.start(step - 1)
                    trainer.zone_cuts.cuts = ZoneThresholds(*rec["zone_cuts"])
                loss = trainer._compute_loss(model, rec["inputs"], rec["num_items"])[0]
                (loss / 2).backward()  # DeepSpeed averages the ranks' gradients
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= LR * p.grad
        after[step] = {k: v.detach().clone() for k, v in model.named_parameters()}
    return after


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_zero3_steps_equal_an_unsharded_replay_and_a_nan_step_is_dropped_on_every_rank(zero3_runs, method, tmp_path):
    from _zero3_train import NAN_STEP, STEPS

    run_dir = zero3_runs / method
    records = [json.loads((run_dir / f"record-rank{r}.json").read_text()) for r in (0, 1)]
    for rec in records:
        assert rec["distributed_type"].endswith("DEEPSPEED") and rec["engine"] == "DeepSpeedEngine"
        assert rec["global_step"] == STEPS
        # the path the fix is for: every head is partitioned (empty) between steps
        expected_heads = {"student", "teacher", "reference"} if method == "sgopd" else {"student", "teacher"}
        assert set(rec["heads_empty_at_rest"]) == expected_heads and all(rec["heads_empty_at_rest"].values())
        assert rec["counters"]["nonfinite_skipped_steps"] == 1  # the NaN step, on both ranks
    replay = _replay(method, run_dir, tmp_path)
    for step in range(1, STEPS + 1):
        got = torch.load(run_dir / f"w-step{step}.pt")
        for name, want in replay[step].items():
            assert torch.allclose(got[name], want, rtol=1e-5, atol=1e-6), (step, name, (got[name] - want).abs().max())
    before, nan_step = torch.load(run_dir / f"w-step{NAN_STEP - 1}.pt"), torch.load(run_dir / f"w-step{NAN_STEP}.pt")
    assert all(torch.equal(before[k], nan_step[k]) for k in before)  # not applied, not half-applied
    moved = torch.load(run_dir / "w0.pt")
    assert any(not torch.equal(moved[k], before[k]) for k in before)  # the other steps did train


def test_a_deepspeed_config_that_would_apply_nonfinite_steps_is_refused():
    from sead.training.nonfinite import deepspeed_refusal

    assert deepspeed_refusal({"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}) is None
    assert deepspeed_refusal({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}) is None
    off = {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True, "check_grad_overflow": False}}
    assert "bf16.check_grad_overflow" in deepspeed_refusal(off)
    assert "compute_grad_norm" in deepspeed_refusal({"zero_optimization": {"stage": 1, "compute_grad_norm": False}})


def test_deepspeed_on_a_cpu_only_torch_is_chosen_without_its_warning():
    """accelerate imports DeepSpeed when installed, and DeepSpeed warns at import when it finds no GPU; on a `+cpu`
    torch sead sets DS_ACCELERATOR=cpu first (DeepSpeed's own answer there), so `import sead` then accelerate is
    quiet, and an explicit setting is kept."""
    from importlib.metadata import version

    from sead.utils.deepspeed_env import choose_cpu_for_deepspeed

    env = {}
    assert choose_cpu_for_deepspeed(env) == version("torch").endswith("+cpu")
    kept = {"DS_ACCELERATOR": "cuda"}
    assert not choose_cpu_for_deepspeed(kept) and kept == {"DS_ACCELERATOR": "cuda"}
    clean = {k: v for k, v in subprocess_env().items() if k != "DS_ACCELERATOR"}
    proc = subprocess.run([sys.executable, "-c", "import sead, accelerate"], capture_output=True, text=True,
                          env=clean, timeout=300, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0 and "Setting accelerator to CPU" not in proc.stderr + proc.stdout
