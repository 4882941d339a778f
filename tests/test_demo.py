"""End to end: `sead demo --quick` trains every method on the default task (`sums`) and writes results.json,
the plots and the mechanism figures; the log summaries it prints are checked by hand."""

import json
import math

import pytest

from sead.cli import main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-tensorboard"]) == 0
    printed = capsys.readouterr().out
    for name in ("teacher", "student (start)", "opd", "sead", "sgopd", "overall", "avg@4", "pass@4",
                 "teacher entropy", "SG-OPD gate", "curriculum open prompts"):
        assert name in printed, name
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "sums"
    assert 0.0 <= res["teacher"]["accuracy"] <= 1.0 and 0.0 <= res["student_start"]["accuracy"] <= 1.0
    assert set(res["methods"]) == {"opd", "sead", "sgopd"}
    for method, r in res["methods"].items():
        values = [r["accuracy"], r["wall_seconds"], r["avg_at_k"], r["pass_at_k"], *r["accuracy_by_level"].values()]
        assert all(math.isfinite(v) for v in values), method
        assert 0.0 <= r["avg_at_k"] <= r["pass_at_k"] <= 1.0  # at least one of k correct is at least the mean
        assert r["curve"][0][0] == 0 and r["curve"][-1][0] == res["settings"]["steps"]
    mech = res["mechanisms"]
    shares = mech["token_share"]
    assert shares["fork"] + shares["forced"] + shares["off_path"] == pytest.approx(1.0)
    assert sum(z["token_share"] for z in mech["zones"].values()) == pytest.approx(1.0)
    assert mech["zones"]["skip"]["token_share"] == pytest.approx(0.5, abs=0.05)
    for png in ("accuracy_vs_step.png", "zones_alpha_sead.png", "curriculum_sead.png", "teacher_entropy.png",
                "sign_gate_sgopd.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    history = json.loads((out / "log_history.json").read_text())["sead"]
    fractions = [h["sead/frac_skip"] for h in history if "sead/frac_skip" in h]
    assert fractions and all(0.45 <= f <= 0.55 for f in fractions)  # about half the tokens skipped


def test_demo_refuses_unknown_method(capsys):
    assert main(["demo", "--methods", "opd,foo"]) == 2
    assert "foo" in capsys.readouterr().err


def test_training_mechanisms_from_a_log_by_hand():
    from sead.experiments.runs import training_mechanisms

    history = [{"step": s, "curriculum/open_pool": p, "sgopd/consensus_frac": c, "sead/mean_h_t": h}
               for s, p, c, h in [(1, 10, 0.2, 0.5), (2, 10, 0.4, 0.4), (3, 30, 0.6, 0.3), (4, 30, 0.8, 0.2),
                                  (5, 30, 1.0, 0.1)]]
    tm = training_mechanisms(history)
    assert tm["open_pool"] == {"1": 10}  # only the report's marks that exist
    assert tm["open_pool_full_at"] == 3
    # 5 values: a fifth is 1 value
    assert tm["consensus_frac"] == {"first_fifth": 0.2, "last_fifth": 1.0}
    assert tm["mean_h_t"] == {"first_fifth": 0.5, "last_fifth": 0.1}
    assert training_mechanisms([{"step": 1, "loss": 1.0}]) == {}


def test_table_shows_sampled_columns():
    from sead.experiments.demo import format_table

    r = {"accuracy": 0.5, "accuracy_by_level": {"1": 1.0, "2": 0.0}, "avg_at_k": 0.25, "pass_at_k": 0.75, "sample_k": 8}
    table = format_table({"teacher": r, "student_start": r, "methods": {"opd": {**r, "wall_seconds": 3.0, "auc": 0.4}}})
    head, _, *rows = table.splitlines()
    assert head.split() == ["method", "L1", "L2", "overall", "AUC", "avg@8", "pass@8", "wall", "s"]
    assert rows[-1].split() == ["opd", "100.0", "0.0", "50.0", "40.0", "25.0", "75.0", "3"]


def test_demo_recipe_holds_the_demo_values():
    from pathlib import Path

    import yaml

    from sead.experiments.settings import demo_config, task_size
    from sead.tasks import get_task

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml").read_text())
    size = task_size(recipe["builtin_task"], quick=False)
    cfg = demo_config("sead", size, "/tmp/unused", 0, size["steps"])
    for key in ("max_steps", "per_device_train_batch_size", "learning_rate", "max_completion_length",
                "competence_window", "teacher_num_generations", "temperature"):
        assert recipe[key] == getattr(cfg, key), key
    assert recipe["builtin_num_prompts"] == size["num_prompts"]
    assert recipe["difficulty_num_rollouts"] == size["difficulty_rollouts"]
    assert recipe["max_completion_length"] == get_task(recipe["builtin_task"]).max_new_tokens
