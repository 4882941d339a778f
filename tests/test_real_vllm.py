"""The real pair (SmolLM2-135M-Instruct and its depth-pruned copy) with real vLLM engines: opd, sead and sgopd train
with the student's rollouts in TRL's colocate engine, and the student ``sead train`` saves is served by vLLM with the
greedy outputs of ``AutoModelForCausalLM`` (both fp32). In a subprocess (tests/_vllm_real.py) bounded by a timeout,
so that an engine crash cannot take pytest down. Needs vLLM (``make install`` installs PyPI's CPU build)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _tiny import REPO, vllm_env

SCRIPT_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def ran(smollm2, tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM is not installed (`make install` installs it)")
    root = tmp_path_factory.mktemp("vllm_real")
    out = root / "out.json"
    script = str(REPO / "tests" / "_vllm_real.py")
    for cmd in ([sys.executable, script, smollm2["teacher"], smollm2["student"], str(root), str(out)],
                [sys.executable, script, "--serve", str(out)]):  # fmt: skip
        try:
            proc = subprocess.run(cmd, env=vllm_env(), cwd=str(root), capture_output=True, text=True,
                                  timeout=SCRIPT_TIMEOUT_S)  # fmt: skip
        except subprocess.TimeoutExpired as err:
            tail = (err.stdout or "")[-3000:] if isinstance(err.stdout, str) else ""
            pytest.fail(f"{' '.join(cmd[1:3])} ran past {SCRIPT_TIMEOUT_S} s:\n{tail}")
        if proc.returncode != 0 or not out.exists():
            pytest.fail(f"{' '.join(cmd[1:3])} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_methods_train_with_vllm_colocate_rollouts(ran, method):
    run = ran[method]
    assert run["steps"] == 2 and len(run["losses"]) == 2 and run["all_finite"]
    assert run["engine_calls"] >= 2  # every step's rollouts came from the colocate engine
    assert run["tied"]


def _until_eos(ids, eos=2):
    return ids[: ids.index(eos)] if eos in ids else ids


def test_saved_student_is_served_by_vllm_with_the_same_greedy_outputs(ran):
    assert ran["sead_train_rc"] == 0 and ran["reloaded_tied"]
    hf = [_until_eos(ids) for ids in ran["hf_greedy"]]
    served = [_until_eos(ids) for ids in ran["vllm_greedy"]]
    assert all(len(ids) > 0 for ids in hf)
    assert served == hf
