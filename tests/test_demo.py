"""End to end: `sead demo --quick` trains every method and writes results.json and the plots."""

import json
import math

import pytest

from sead.cli import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-tensorboard"]) == 0
    printed = capsys.readouterr().out
    for name in ("teacher", "student (start)", "opd", "sead", "sgopd", "overall"):
        assert name in printed
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["teacher"]["accuracy"] <= 1.0 and 0.0 <= res["student_start"]["accuracy"] <= 1.0
    assert set(res["methods"]) == {"opd", "sead", "sgopd"}
    for method, r in res["methods"].items():
        values = [r["accuracy"], r["wall_seconds"], *r["accuracy_by_level"].values()]
        assert all(math.isfinite(v) for v in values), method
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["curve"][0][0] == 0 and r["curve"][-1][0] == res["settings"]["steps"]
    for png in ("accuracy_vs_step.png", "zones_alpha_sead.png", "curriculum_sead.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    history = json.loads((out / "log_history.json").read_text())["sead"]
    fractions = [h["sead/frac_skip"] for h in history if "sead/frac_skip" in h]
    assert fractions and all(0.45 <= f <= 0.55 for f in fractions)  # about half the tokens skipped


def test_demo_refuses_unknown_method(capsys):
    assert main(["demo", "--methods", "opd,foo"]) == 2
    assert "foo" in capsys.readouterr().err
