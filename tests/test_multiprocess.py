"""Two processes (DDP over gloo on CPU): opd and sead train a few steps; the curriculum gate, open pool,
draws and competence window are identical on both ranks; the loss is normalised by the global token
count; a checkpoint saved by two processes resumes (exactly).

accelerate 1.15 starts a single process for ``accelerate launch --cpu --num_processes 2`` (its
multi-CPU mode needs MPI and ``--mpirun_hostfile``); two CPU processes come from
``accelerate launch --multi_gpu --num_processes 2`` with ``use_cpu: true`` in the recipe, which is
what these tests run (docs/reliability.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _ports import retry_on_port_collision
from _tiny import REPO, standard_recipe, subprocess_env, tiny_trainer


def _launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    def launch(port: int) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=timeout, cwd=REPO)

    proc = retry_on_port_collision(launch)  # again on a fresh port if another process took it meanwhile
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _records(out: Path):
    recs = [json.loads((out / f"record-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in recs] == [2, 2]
    return [{s["step"]: s for s in r["steps"]} for r in recs]


SAME_ON_EVERY_RANK = ("gate", "open_pool", "global_draw", "curriculum_state", "num_items_in_batch", "normaliser",
                      "counters", "zone_cuts")


@pytest.mark.slow
def test_two_processes_sead_identical_gate_global_normaliser_and_resume(tmp_path):
    from safetensors.torch import load_file

    script = str(REPO / "tests" / "_mp_train.py")
    # SEAD plus SG-OPD's teacher mixing: ranks mix different numbers of teacher rollouts, so the gathered
    # verdicts and the token count after mixing must be collected collectively, every step, on every rank.
    recipe = standard_recipe(tmp_path, method="sead", max_steps=4, save_strategy="steps", save_steps=2,
                             competence_window=4, competence_threshold=0.3, output_dir=str(tmp_path / "full"),
                             teacher_mixing=True, teacher_mix_rho0=1.0, teacher_mix_phase_fraction=1.0,
                             teacher_num_generations=2)
    _launch(script, "--config", recipe, "--parity_reward")
    r0, r1 = _records(tmp_path / "full")
    assert r0.keys() == r1.keys() == {1, 2, 3, 4}
    assert all(len(r0[s]["zone_cuts"]) == 2 for s in r0)  # zone_scope: step: cuts of the global step, every rank
    for step in r0:
        for key in SAME_ON_EVERY_RANK:
            assert r0[step][key] == r1[step][key], (step, key)
        # each rank trains on its own slice of the one global draw
        assert len(r0[step]["local_prompts"]) == len(r1[step]["local_prompts"]) == 4
        # TRL hands each rank (global valid tokens) / (processes); DDP averages the gradients: the loss is
        # normalised by the global count. SEAD "kept": times (1 - skip_fraction).
        global_tokens = r0[step]["local_tokens"][0] + r1[step]["local_tokens"][0]
        assert r0[step]["num_items_in_batch"][0] * 2 == pytest.approx(global_tokens)
        assert r0[step]["normaliser"][0] == pytest.approx(r0[step]["num_items_in_batch"][0] * 0.5)
    assert any(r0[s]["curriculum_state"]["bucket"] > 0 for s in r0)  # the gate moved on the gathered verdicts
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()

    # resume the two-process checkpoint with two processes: same records, same final weights
    _launch(script, "--config", recipe, "--parity_reward", "--output_dir", str(tmp_path / "resumed"),
            "--resume_from_checkpoint", str(checkpoint))
    q0, q1 = _records(tmp_path / "resumed")
    assert q0.keys() == q1.keys() == {3, 4}
    for step in (3, 4):
        for key in SAME_ON_EVERY_RANK:
            assert q0[step][key] == r0[step][key] == q1[step][key], (step, key)
        assert q0[step]["local_prompts"] == r0[step]["local_prompts"]
        assert q1[step]["local_prompts"] == r1[step]["local_prompts"]
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.slow
def test_two_processes_opd_through_the_cli(tmp_path):
    recipe = standard_recipe(tmp_path, method="opd", max_steps=2, save_strategy="steps", save_steps=2)
    proc = _launch("-m", "sead.cli", "train", "--config", recipe)
    assert "sead train: done, 2 steps" in proc.stdout
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_loss_normaliser_is_the_global_token_count(tmp_path):
    torch.set_num_threads(1)
    n = torch.tensor(40.0)
    # the trainer's spec divides by the global count, with SEAD "kept" by its expected kept share
    assert float(tiny_trainer(tmp_path / "a", method="opd").spec.normaliser(n)) == 40.0
    assert float(tiny_trainer(tmp_path / "b", method="sead", skip_fraction=0.25).spec.normaliser(n)) == 30.0
    assert float(tiny_trainer(tmp_path / "c", method="sead", loss_normalization="all").spec.normaliser(n)) == 40.0
    assert tiny_trainer(tmp_path / "d", method="opd").spec.normaliser(None) is None


@pytest.mark.slow
def test_two_processes_two_teachers_agree_on_each_teachers_cuts(tmp_path):
    """DDP with two teachers: every rank holds both, runs each on its own rows, and takes the same zone cuts per
    teacher from every rank's tokens (one gather per teacher, on every rank)."""
    from _tiny import save_models, tiny_dataset, tiny_model, tokenizer, write_jsonl, write_recipe

    student, teacher = save_models(tmp_path)
    other = tmp_path / "teacher2"
    tiny_model(2).save_pretrained(other)
    tokenizer().save_pretrained(other)
    rows = tiny_dataset(16).to_list()
    for i, row in enumerate(rows):
        row["teacher"] = ("x", "y", "y")[i % 3]
    data = write_jsonl(rows, tmp_path / "train.jsonl")
    recipe = write_recipe(tmp_path / "r.yaml", model_name_or_path=student, dataset_name=data, method="sead",
                          curriculum=False, max_steps=2, output_dir=str(tmp_path / "out"),
                          teachers={"x": teacher, "y": str(other)})  # fmt: skip
    _launch(str(REPO / "tests" / "_mp_train.py"), "--config", recipe)
    ranks = _records(tmp_path / "out")
    for step in (1, 2):
        a, b = (r[step]["zone_cuts_by_teacher"] for r in ranks)
        assert a == b and set(a) == {"0", "1"}, (step, a, b)
        assert a["0"] != a["1"]  # two teachers, two sets of cuts
