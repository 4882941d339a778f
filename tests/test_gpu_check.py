"""The device check (`make gpu-check`, sead/bench/gpu_check.py) at toy sizes on this CPU: the same code paths as on a
GPU (TRL's chunked loss against the fused losses; one OPD, SEAD and SG-OPD step of a Qwen2-shaped pair in bf16 with
the loss against an fp32 copy of the same models), each check able to fail."""

from __future__ import annotations

import json

from sead.bench import gpu_check


def test_the_device_check_runs_small_on_cpu_and_its_checks_hold(tmp_path):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--small", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["small"] and res["passed"] and res["environment"]["device"] == "cpu"
    impls = {r["impl"]: r for r in res["losses"]["rows"]}
    assert set(impls) == {"opd_fused", "sead_fused", "sgopd_fused", "trl_chunked"}
    assert all("error" not in r and len(r["times_s"]) == gpu_check.REPEATS for r in impls.values())
    # sead's vanilla OPD loss and TRL's chunked reverse KL: the same number from the same bf16 inputs
    assert res["losses"]["checks"]["opd_fused_vs_trl_ok"]
    steps = {r["method"]: r for r in res["steps"]["rows"]}
    assert set(steps) == {"opd", "sead", "sgopd"}
    for method, row in steps.items():
        assert row["loss_fp32"] > 0 and row["rel_diff"] <= gpu_check.LOSS_RTOL[method]
        assert res["steps"]["checks"][f"{method}_loss_vs_fp32_ok"]


def test_a_failed_check_fails_the_run(tmp_path, monkeypatch):
    """A step whose bf16 loss is off its fp32 reference is reported and the run exits 1."""
    monkeypatch.setattr(gpu_check, "check_losses", lambda *a: {"rows": [], "checks": {}})
    monkeypatch.setattr(gpu_check, "_one_step", lambda method, *a: {"method": method, "rel_diff": 1.0})
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--small", "--device", "cpu", "--out", str(out)]) == 1
    res = json.loads(out.read_text())
    assert not res["passed"] and not any(res["steps"]["checks"].values())
