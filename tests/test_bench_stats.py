"""Paired 95% intervals of the quality benchmark against hand-computed values."""

import math

import pytest

from sead.bench.stats import mean_sd, paired_difference, t_quantile_975


def test_paired_interval_hand_computed():
    # x - y = [2, 4, 3, 5, 1]: mean 3, sd sqrt(10/4) = 1.5811; t_{0.975,4} = 2.776
    # half width = 2.776 * 1.5811 / sqrt(5) = 1.9630
    res = paired_difference([12, 14, 13, 15, 11], [10, 10, 10, 10, 10])
    assert res["n"] == 5
    assert res["mean"] == pytest.approx(3.0)
    assert res["sd"] == pytest.approx(math.sqrt(2.5))
    assert res["ci_low"] == pytest.approx(3.0 - 1.9630, abs=1e-3)
    assert res["ci_high"] == pytest.approx(3.0 + 1.9630, abs=1e-3)


def test_pairing_removes_the_shared_seed_effect():
    # a seed effect common to both variants: unpaired sd is large, paired sd 0
    x, y = [0.5, 0.7, 0.6], [0.4, 0.6, 0.5]
    res = paired_difference(x, y)
    assert res["mean"] == pytest.approx(0.1) and res["sd"] == pytest.approx(0.0, abs=1e-12)
    assert res["ci_low"] == pytest.approx(0.1) and res["ci_high"] == pytest.approx(0.1)
    assert mean_sd(x)[1] == pytest.approx(0.1)


def test_one_seed_has_no_interval_and_mismatch_is_refused():
    assert paired_difference([1.0], [0.5]) == {"mean": 0.5, "sd": 0.0, "n": 1, "ci_low": None, "ci_high": None}
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([1, 2], [1])


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(4) == 2.776 and t_quantile_975(30) == 2.042
    assert t_quantile_975(60) == pytest.approx(2.000, abs=2e-3)  # table value 2.000
    assert t_quantile_975(120) == pytest.approx(1.980, abs=2e-3)  # table value 1.980
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_quality_bench_runs_every_seed_and_variant_and_pairs_by_seed(monkeypatch):
    import sead.bench.suite as suite

    class Prepared:
        teacher_accuracy, student_accuracy = 0.9, 0.3
        teacher_accuracy_by_level = student_accuracy_by_level = {1: 0.5}
        levels = (1,)

    class Task:
        def prepare_models(self, **kwargs):
            return Prepared()

    calls = []

    def fake_workers(jobs, workers, progress, desc):
        calls.append((desc, [args for _, args in jobs], workers))
        out = {}
        for key, args in jobs:
            seed = int(args[args.index("--seed") + 1])
            if args[0] == "quality-data":
                out[key] = {"seed": seed, "student_start": {"accuracy": 0.3}, "curve_start": 0.3}
            else:
                variant = args[args.index("--variant") + 1]
                acc = 0.5 + 0.1 * seed + (0.05 if variant == "sead" else 0.0)  # sead = opd + 5 points on every seed
                out[key] = {"seed": seed, "accuracy": acc, "auc": acc, "avg_at_k": acc, "pass_at_k": acc, "wall_seconds": 1.0}
        return out

    monkeypatch.setattr(suite, "run_workers", fake_workers)
    monkeypatch.setattr(suite, "machine_facts", lambda: {})
    monkeypatch.setattr("sead.tasks.get_task", lambda name: Task())
    res = suite.bench_quality(seeds=3, variants=("opd", "sead"), progress=False, jobs=2, task="sums", mechanisms=False)
    data_jobs, run_jobs = calls[0][1], calls[1][1]
    assert len(data_jobs) == 3 and len(run_jobs) == 6 and calls[1][2] == 2
    assert res["summary"]["sead"]["accuracy_vs_opd"]["mean"] == pytest.approx(0.05)
    assert res["summary"]["sead"]["accuracy_vs_opd"]["sd"] == pytest.approx(0.0, abs=1e-12)
    assert res["summary"]["opd"]["accuracy_std"] == pytest.approx(0.1)  # seeds differ, the pairing removes it
    # the benchmark's own length on sums (250 steps, not the demo's 300) reaches every run, and the results say so
    from sead.experiments.settings import TASK_SIZES

    bench_steps = TASK_SIZES["sums"]["full"]["bench_steps"]
    assert bench_steps != TASK_SIZES["sums"]["full"]["steps"]
    assert all(args[args.index("--steps") + 1] == str(bench_steps) for args in run_jobs)
    assert res["steps"] == res["size"]["steps"] == bench_steps and "bench_steps" not in res["size"]
    calls.clear()
    suite.bench_quality(seeds=1, steps=7, variants=("opd",), progress=False, task="sums", mechanisms=False)
    assert calls[1][1][0][calls[1][1][0].index("--steps") + 1] == "7"  # --steps overrides it
    # an added variant (OPDConfig fields) runs next to the named ones, with its fields passed to the worker
    calls.clear()
    extra = {"x": {"method": "opd", "skip_fraction": 0.0}}
    suite.bench_quality(seeds=1, variants=("opd",), overrides=extra, progress=False, task="sums", mechanisms=False)
    variants = [args[args.index("--variant") + 1] for args in calls[1][1]]
    assert variants == ["opd", "x"]
    assert '"skip_fraction": 0.0' in calls[1][1][1][calls[1][1][1].index("--overrides") + 1]
    with pytest.raises(ValueError, match="unknown quality variant"):
        suite.bench_quality(variants=("nope",), progress=False)
