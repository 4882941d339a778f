"""Exact resume: N steps saving at N/2, and a second run resumed from that checkpoint to N, end identical.

Identical means: parameters (max abs diff <= 1e-6 in fp32 on CPU; in practice 0), the optimizer state,
the curriculum gate/bucket/window, the anneal and teacher-mix schedule positions logged at every
resumed step, the counters, and the torch / numpy / python random streams.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from _tiny import max_abs_diff, params, parity_reward, standard_recipe, tiny_trainer

N = 6

# Keys logged per step that must match between the uninterrupted and the resumed run.
STEP_KEYS = (
    "loss",
    "grad_norm",
    "learning_rate",
    "rollout/pass_rate",
    "completions/mean_length",
    "curriculum/gate",
    "curriculum/open_pool",
    "curriculum/bucket",
    "sead/alpha",
    "sgopd/rho",
    "sgopd/teacher_mixed_frac",
    "counters/grader_errors",
)

CASES = {
    # curriculum (gate opens on the verifier's verdicts) + zones + anneal, fused loss
    "sead": dict(method="sead", competence_threshold=0.3, competence_window=4, curriculum_num_buckets=4),
    # sign gate (logits path, reference model) + phased teacher sampling
    "sgopd": dict(method="sgopd", teacher_mix_rho0=1.0, teacher_mix_phase_fraction=1.0, teacher_num_generations=2),
    # dataloader-driven prompts over several epochs (10 rows / 8 per step), gradient accumulation
    "opd-ga2-epochs": dict(method="opd", gradient_accumulation_steps=2, n=10),
}



def _rng_snapshot():
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _steps(log_history, after: int):
    return {e["step"]: e for e in log_history if "loss" in e and e["step"] > after}


@pytest.mark.parametrize("case", CASES, ids=CASES)
def test_exact_resume(tmp_path, case):
    kw = dict(CASES[case])
    n = kw.pop("n", 16)
    common = dict(n=n, reward_funcs=[parity_reward], max_steps=N, save_strategy="steps", save_steps=N // 2, **kw)

    full = tiny_trainer(tmp_path / "full", **common)
    full.train()
    full_rng = _rng_snapshot()
    checkpoint = tmp_path / "full" / f"checkpoint-{N // 2}"
    state = json.loads((checkpoint / "sead_state.json").read_text())
    assert state["global_step"] == N // 2

    resumed = tiny_trainer(tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    resumed_rng = _rng_snapshot()

    assert resumed.state.global_step == full.state.global_step == N
    assert max_abs_diff(params(full.model), params(resumed.model)) <= 1e-6
    opt_a, opt_b = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(opt_a[k][name], opt_b[k][name], rtol=0, atol=1e-9)

    assert full.sead_state() == resumed.sead_state()
    a, b = _steps(full.state.log_history, N // 2), _steps(resumed.state.log_history, N // 2)
    assert a.keys() == b.keys() == set(range(N // 2 + 1, N + 1))
    for step in a:
        for key in STEP_KEYS:
            if key in a[step] or key in b[step]:
                assert a[step][key] == pytest.approx(b[step][key], rel=1e-6, abs=1e-9), (step, key)

    assert torch.equal(full_rng[0], resumed_rng[0])
    assert all(np.array_equal(x, y) for x, y in zip(full_rng[1][1:2], resumed_rng[1][1:2]))
    assert full_rng[2] == resumed_rng[2]

    # the test exercises what it claims: the gate moved / teacher rollouts were mixed in
    logged = [e for e in full.state.log_history if "loss" in e]
    if case == "sead":
        assert full.curriculum.bucket > 0
        assert len({e["curriculum/gate"] for e in logged}) > 1
        assert len({e["sead/alpha"] for e in logged}) == N
    if case == "sgopd":
        assert any(e["sgopd/teacher_mixed_frac"] > 0 for e in logged)
        assert len({e["sgopd/rho"] for e in logged}) == N


def test_resume_without_sead_state_warns_and_restarts_curriculum(tmp_path):
    kw = CASES["sead"]
    common = dict(reward_funcs=[parity_reward], max_steps=4, save_strategy="steps", save_steps=2, **kw)
    tiny_trainer(tmp_path / "a", **common).train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    (checkpoint / "sead_state.json").unlink()
    with pytest.warns(UserWarning, match="curriculum restarts"):
        tiny_trainer(tmp_path / "b", **{**common, "max_steps": 3}).train(resume_from_checkpoint=str(checkpoint))


def test_cli_resume_is_exact(tmp_path, capsys):
    """`sead train --config R.yaml --resume_from_checkpoint DIR` (in-process): same final weights."""
    from safetensors.torch import load_file

    from sead.cli import main

    recipe = standard_recipe(
        tmp_path, method="sead", max_steps=4, save_strategy="steps", save_steps=2, competence_window=4
    )
    out_full, out_resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["train", "--config", recipe, "--output_dir", str(out_full)]) == 0
    assert main([
        "train", "--config", recipe, "--output_dir", str(out_resumed),
        "--resume_from_checkpoint", str(out_full / "checkpoint-2"),
    ]) == 0
    a, b = load_file(out_full / "model.safetensors"), load_file(out_resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    # `last` picks the newest checkpoint of output_dir (here the finished run's checkpoint-4: nothing to do)
    assert main(["train", "--config", recipe, "--output_dir", str(out_full), "--resume_from_checkpoint", "last"]) == 0
    capsys.readouterr()
    assert main(["train", "--config", recipe, "--resume_from_checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err
