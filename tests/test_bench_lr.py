"""The fair protocol of the quality benchmark (issue 28): each variant's learning rate chosen on a validation set,
both tables (same rate, chosen rate), and the full design's reuse of the search's seed-0 runs. The worker processes
are replaced by a fake whose accuracies are a known function of (variant, rate, seed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sead.bench import quality, suite
from sead.experiments.seeds import validation_dataset
from sead.tasks import get_task

# validation accuracy peaks at a different rate per variant; test accuracy = validation + a seed effect
BEST = {"opd": 1e-3, "sead": 2e-3}


def _accuracy(variant: str, lr: float, seed: int) -> tuple[float, float]:
    base = variant.split("@")[0]
    val = 0.5 - 50.0 * abs(lr - BEST.get(base, 1e-3)) + (0.05 if base == "sead" else 0.0)
    return val, val + 0.01 * seed


@pytest.fixture
def fake_jobs(monkeypatch):
    calls: list[tuple[str, int, float]] = []

    def run_workers(jobs, workers, progress, desc, **kw):
        out = {}
        for key, args in jobs:
            seed = int(args[args.index("--seed") + 1])
            if args[0] == "quality-data":
                out[key] = {"seed": seed, "student_start": {"accuracy": 0.3}, "teacher": {"accuracy": 0.9}}
                continue
            variant = args[args.index("--variant") + 1]
            cfg = json.loads(args[args.index("--overrides") + 1]) if "--overrides" in args else {}
            lr = cfg.get("learning_rate", 1e-3)
            calls.append((variant, seed, lr))
            val, acc = _accuracy(variant, lr, seed)
            out[key] = {"variant": variant, "seed": seed, "accuracy": acc, "validation_accuracy": val,
                        "wall_seconds": 1.0, "train_seconds": 1.0}
        return out

    prepared = SimpleNamespace(teacher_accuracy=0.9, student_accuracy=0.3, teacher_accuracy_by_level={},
                               student_accuracy_by_level={}, metrics={}, load_teacher=lambda: None,
                               load_student=lambda: None, tokenizer=None, levels=(1,))
    monkeypatch.setattr(quality, "run_workers", run_workers)
    monkeypatch.setattr("sead.experiments.mechanisms.measure", lambda *a, **kw: None)
    monkeypatch.setattr(type(get_task("sums")), "prepare_models", lambda self, **kw: prepared)
    return calls


def test_the_search_picks_each_variants_best_validation_rate(fake_jobs):
    res = suite.tune_learning_rates(("opd", "sead"), grid=(5e-4, 1e-3, 2e-3), progress=False)
    assert res["rates"] == {"opd": 1e-3, "sead": 2e-3}
    assert res["scores"]["sead"]["0.002"] == pytest.approx(0.55)
    assert sorted(fake_jobs) == sorted((f"{v}@lr={lr:g}", 0, lr) for v in ("opd", "sead") for lr in (5e-4, 1e-3, 2e-3))


def test_ties_go_to_the_smaller_rate(fake_jobs, monkeypatch):
    monkeypatch.setitem(BEST, "opd", 1.5e-3)  # 1e-3 and 2e-3 equally far
    assert suite.tune_learning_rates(("opd",), grid=(1e-3, 2e-3), progress=False)["rates"] == {"opd": 1e-3}


def test_the_full_design_reuses_seed_0_and_reports_both_tables(fake_jobs):
    res = suite.bench_factorial(("opd", "sead", "zones"), tune=("opd", "sead"), grid=(1e-3, 2e-3), seeds=3,
                                progress=False)
    # the search: 4 runs on seed 0; then seeds 1-2 of opd and sead at 1e-3, of sead@tuned at 2e-3, zones on all seeds
    after = [c for c in fake_jobs[4:]]
    assert sorted(after) == sorted([("opd", 1, 1e-3), ("opd", 2, 1e-3), ("sead", 1, 1e-3), ("sead", 2, 1e-3),
                                    ("sead@tuned", 1, 2e-3), ("sead@tuned", 2, 2e-3),
                                    ("zones", 0, 1e-3), ("zones", 1, 1e-3), ("zones", 2, 1e-3)])
    assert [r["seed"] for r in res["runs"]["sead"]] == [0, 1, 2] and res["runs"]["sead"][0]["variant"] == "sead"
    assert res["rates"] == {"opd": 1e-3, "sead": 2e-3} and res["lr_search"]["rates"] == res["rates"]
    same, tuned = res["summary"], res["summary_tuned"]
    assert same["sead"]["lr"] == 1e-3 and same["sead"]["lr_chosen"] == 2e-3 and tuned["sead"]["lr"] == 2e-3
    assert tuned["opd"]["lr"] == 1e-3 and tuned["zones"]["lr"] == 1e-3
    # test accuracy: sead at 1e-3 = opd at 1e-3 + 0.05 - 0.05 = +0.0; at 2e-3: +0.05 (seed effects cancel in pairs)
    assert same["sead"]["accuracy_vs_opd"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert tuned["sead"]["accuracy_vs_opd"]["mean"] == pytest.approx(0.05)
    pooled = tuned["sead"]["accuracy_vs_opd_pooled"]
    assert pooled["mean"] == pytest.approx(0.05) and pooled["half_width"] == pytest.approx(0.0, abs=1e-9)  # no noise


def test_validation_problems_are_neither_trained_on_nor_in_the_test_split():
    from sead.tasks.sums import problem_split

    task = get_task("sums")
    train = task.make_dataset(400, levels=(1, 2), seed=3, split="train")
    val = validation_dataset(task, 200, (1, 2), train)
    prompts = val["prompt"]
    assert len(prompts) == 200 == len(set(prompts))
    assert not set(prompts) & set(train["prompt"])
    assert all(problem_split(q.split("Q: ")[1].split("=?")[0]) == "train" for q in prompts)
    assert sorted(set(val["level"])) == [1, 2] and val["level"].count(1) == 100


def test_a_second_result_merges_in_with_the_tables_recomputed(fake_jobs):
    main = suite.bench_quality(seeds=2, variants=("opd", "sead"), progress=False, mechanisms=False)
    extra = suite.bench_quality(seeds=1, variants=("gate",), progress=False, mechanisms=False)
    merged = suite.merge_quality(main, extra)
    assert sorted(merged["runs"]) == ["gate", "opd", "sead"] and merged["summary"]["gate"]["lr"] == 1e-3
    assert merged["summary"]["gate"]["accuracy_vs_opd"]["mean"] == pytest.approx(0.0)  # paired on seed 0
    assert merged["pooled"]["accuracy"]["variants"] == ["opd", "sead"]  # gate ran one of the two seeds
    with pytest.raises(ValueError, match="steps"):
        suite.merge_quality(main, {**extra, "steps": 7})
