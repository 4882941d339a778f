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
    import sead.bench.quality as quality
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

    monkeypatch.setattr(quality, "run_workers", fake_workers)
    monkeypatch.setattr(quality, "machine_facts", lambda: {})
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


def test_block_residual_sd_matches_a_least_squares_fit_of_the_additive_model():
    import numpy as np

    from sead.bench.stats import block_residual_sd

    rng = np.random.default_rng(0)
    table = rng.normal(0.5, 0.05, size=(6, 3)) + np.arange(3)[None, :] * 0.1  # 6 variants x 3 seeds, a seed effect
    # naive reference: regress y on one-hot variant and seed columns, residual sum of squares / (V-1)(S-1)
    n_v, n_s = table.shape
    design = np.zeros((n_v * n_s, n_v + n_s))
    for v in range(n_v):
        for s in range(n_s):
            design[v * n_s + s, v] = 1.0
            design[v * n_s + s, n_v + s] = 1.0
    y = table.reshape(-1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    rss = float(((y - design @ coef) ** 2).sum())
    sigma, df = block_residual_sd(table.tolist())
    assert df == (n_v - 1) * (n_s - 1) == 10
    assert sigma == pytest.approx(math.sqrt(rss / df), rel=1e-9)
    # a seed effect shared by all variants is not noise: adding one leaves sigma alone
    shifted = table + np.array([0.3, -0.2, 0.0])[None, :]
    assert block_residual_sd(shifted.tolist())[0] == pytest.approx(sigma, rel=1e-9)
    with pytest.raises(ValueError, match="block design"):
        block_residual_sd([[0.1, 0.2]])


def test_contrast_hand_computed():
    from sead.bench.stats import contrast

    # (1, -1) on means 0.6, 0.5 with sigma 0.02 over 2 seeds, df 9: half = 2.262 * 0.02 * sqrt(2 / 2) = 0.04524
    d = contrast([0.6, 0.5], [1, -1], 0.02, 9, 2)
    assert d["mean"] == pytest.approx(0.1) and d["half_width"] == pytest.approx(0.04524, abs=1e-5)
    assert d["ci_low"] == pytest.approx(0.1 - 0.04524, abs=1e-5)
    # SEAD's interaction sead + 2 opd - zones - anneal - curriculum: sum c^2 = 8
    inter = contrast([0.7, 0.5, 0.55, 0.52, 0.51], [1, 2, -1, -1, -1], 0.02, 9, 2)
    assert inter["mean"] == pytest.approx(0.7 + 1.0 - 0.55 - 0.52 - 0.51)
    assert inter["half_width"] == pytest.approx(2.262 * 0.02 * 2.0, abs=1e-6)


def test_pooled_intervals_agree_with_the_per_seed_interaction_and_pairs():
    from sead.bench.stats import interaction
    from sead.bench.suite import pooled_intervals

    acc = {  # variant -> accuracy per seed (3 seeds)
        "opd": [0.50, 0.55, 0.52], "zones": [0.51, 0.57, 0.52], "anneal": [0.53, 0.56, 0.55],
        "curriculum": [0.49, 0.55, 0.53], "sead": [0.56, 0.60, 0.55], "trl": [0.50, 0.54, 0.53],
    }
    runs = {n: [{"seed": s, "accuracy": v} for s, v in enumerate(vals)] for n, vals in acc.items()}
    runs["partial"] = [{"seed": 0, "accuracy": 0.9}]  # missing seeds: left out of the design
    out = pooled_intervals(runs, "accuracy")
    assert out["variants"] == ["opd", "zones", "anneal", "curriculum", "sead", "trl"] and out["df"] == 10
    per_seed = interaction(acc["sead"], [acc["zones"], acc["anneal"], acc["curriculum"]], acc["opd"])
    assert out["interaction"]["mean"] == pytest.approx(per_seed["mean"])  # same point estimate, pooled interval
    mean_diff = sum(a - b for a, b in zip(acc["sead"], acc["opd"])) / 3
    assert out["vs_opd"]["sead"]["mean"] == pytest.approx(mean_diff)
    assert out["pair_half_width"] == pytest.approx(out["vs_opd"]["sead"]["half_width"])
    need = out["seeds_for_half_width"]["seeds"]
    assert need is not None and need >= 2
    assert pooled_intervals({"opd": runs["opd"]}) == {}


def test_binomial_se_seeds_needed_and_curve_reading_hand_computed():
    from sead.bench.stats import binomial_se, interaction, seeds_for_half_width, value_at

    assert binomial_se(0.38, 400) == pytest.approx(math.sqrt(0.38 * 0.62 / 400))  # 2.43 points: the figure
    assert binomial_se(0.5, 4000) == pytest.approx(0.0079, abs=1e-4)  # <= 0.8 point at 4000 problems
    # sd 2: n=6 gives 2.571 * 2 / sqrt(6) = 2.099 > 2; n=7 gives 2.447 * 2 / sqrt(7) = 1.850
    assert seeds_for_half_width(2.0, 2.0) == 7
    assert seeds_for_half_width(0.0, 2.0) == 2 and seeds_for_half_width(100.0, 0.01, max_seeds=50) is None
    assert value_at([0, 10, 20], [0.3, 0.5, 0.4], 15) == pytest.approx(0.45)
    assert value_at([0, 10], [0.3, 0.5], 11) is None
    # interaction per seed: (0.6 - 0.5) - [(0.52 - 0.5) + (0.53 - 0.5) + (0.51 - 0.5)] = 0.04
    res = interaction([0.6, 0.7], [[0.52, 0.62], [0.53, 0.63], [0.51, 0.61]], [0.5, 0.6])
    assert res["mean"] == pytest.approx(0.04) and res["sd"] == pytest.approx(0.0, abs=1e-12)


def test_additive_fit_is_the_block_design_on_a_balanced_table_and_exact_on_an_additive_one():
    import numpy as np

    from sead.bench.stats import additive_fit, block_residual_sd, contrast, fitted_contrast

    rng = np.random.default_rng(1)
    table = rng.normal(0.5, 0.05, size=(4, 5))
    names = ["a", "b", "c", "d"]
    fit = additive_fit({(names[v], s): table[v, s] for v in range(4) for s in range(5)})
    sigma, df = block_residual_sd(table.tolist())
    assert fit["df"] == df == 12 and fit["sigma"] == pytest.approx(sigma, rel=1e-9)
    means = table.mean(axis=1)
    want = contrast([means[1], means[0]], [1, -1], sigma, df, 5)
    got = fitted_contrast(fit, ["b", "a"], [1, -1])
    assert got["mean"] == pytest.approx(want["mean"]) and got["half_width"] == pytest.approx(want["half_width"])
    # unbalanced (c and d ran 3 of the 7 seeds): data exactly additive plus tiny noise, the effects come back
    effect, seed_effect = {"a": 0.50, "b": 0.42, "c": 0.47, "d": 0.55}, rng.normal(0, 0.03, size=7)
    cells = {(n, s): effect[n] + seed_effect[s] + rng.normal(0, 1e-6) for n in effect for s in range(7)
             if n in ("a", "b") or s < 3}  # fmt: skip
    fit = additive_fit(cells)
    assert fit["df"] == len(cells) - (4 + 7 - 1) == 10
    assert fitted_contrast(fit, ["b", "a"], [1, -1])["mean"] == pytest.approx(-0.08, abs=1e-5)
    assert fitted_contrast(fit, ["d", "c"], [1, -1])["mean"] == pytest.approx(0.08, abs=1e-5)
    # the pair with all 7 seeds is known better than a pair with 3: a narrower interval
    assert (fitted_contrast(fit, ["b", "a"], [1, -1])["half_width"]
            < fitted_contrast(fit, ["d", "a"], [1, -1])["half_width"])  # fmt: skip
    with pytest.raises(ValueError, match="summing to 0"):
        fitted_contrast(fit, ["b"], [1])


def test_pooled_intervals_use_every_run_when_the_pair_ran_more_seeds():
    from sead.bench.suite import pooled_intervals

    acc = {"opd": [0.50, 0.55, 0.52, 0.51, 0.54, 0.53], "sead": [0.46, 0.52, 0.47, 0.48, 0.50, 0.49],
           "zones": [0.47, 0.53, 0.50], "anneal": [0.51, 0.55, 0.52], "curriculum": [0.48, 0.54, 0.50]}  # fmt: skip
    runs = {n: [{"seed": s, "accuracy": v} for s, v in enumerate(vals)] for n, vals in acc.items()}
    out = pooled_intervals(runs, "accuracy")
    assert out["variants"] == list(acc) and out["seeds"] == list(range(6))
    assert out["unbalanced"]["zones"] == [0, 1, 2] and out["df"] == (6 * 2 + 3 * 3) - (5 + 6 - 1)
    # sead and opd ran the same seeds: their fitted difference is their mean paired difference
    mean_diff = sum(a - b for a, b in zip(acc["sead"], acc["opd"])) / 6
    assert out["vs_opd"]["sead"]["mean"] == pytest.approx(mean_diff)
    assert "interaction" in out
