"""BENCHMARKS.md generation from JSON results (hand-computed ratios and verdicts), and the quality
profile's draw shares (hand-computed)."""

from __future__ import annotations

import pytest

from sead.bench.profiles.quality import draw_shares
from sead.bench.report import write_report

MACHINE = {
    "date": "2026-12-01 00:00 UTC", "cores": 2, "cpu": "test", "python": "3.11", "torch": "2.13.0",
    "transformers": "5", "trl": "1.16.0", "accelerate": "1", "sead-opd": "0.1.0",
}


def _loss_row(impl, n, v, t, mb, n_req=None):
    return {"impl": impl, "N": n, "N_requested": n_req or n, "V": v, "time_s": t, "peak_mb": mb}


def _results():
    loss = {
        "machine": MACHINE, "threads": 2, "reps": 5, "notes": ["naive shrunk"],
        "rows": [
            _loss_row("sead_fused", 4096, 32768, 6.0, 300.0),
            _loss_row("sead_fused_bf16zones", 4096, 32768, 3.0, 320.0),
            _loss_row("sead_fused_ownsupport", 4096, 32768, 5.5, 330.0),
            _loss_row("opd_fused", 4096, 32768, 5.0, 310.0),
            _loss_row("sgopd_fused", 4096, 32768, 6.5, 400.0),
            _loss_row("trl_chunked", 4096, 32768, 12.0, 6000.0),
            _loss_row("naive", 4096, 32768, 10.0, 4000.0),
            _loss_row("sgopd_naive", 4096, 32768, 16.0, 8000.0),
        ],
    }
    step = {
        "machine": MACHINE, "threads": 1,
        "rows": [
            {"trainer": "trl", "step_time_s": 0.050, "peak_rss_mb": 400.0, "batch": 16, "completion_tokens": 12, "steps": 14},
            {"trainer": "opd", "step_time_s": 0.055, "peak_rss_mb": 410.0},
            {"trainer": "opd_nograde", "step_time_s": 0.051, "peak_rss_mb": 410.0},
        ],
    }

    def run(seed, acc, levels, avg=0.3, pas=0.7, secs=5.0):
        return {"seed": seed, "accuracy": acc, "accuracy_by_level": levels, "curve": [[0, 0.4], [10, acc]], "auc": 0.45,
                "avg_at_k": avg, "pass_at_k": pas, "wall_seconds": 3.0, "train_seconds": secs, "curve_seconds": [0.0, secs]}

    from sead.bench.suite import summarize_quality

    runs = {
        "trl": [run(0, 0.50, {"1": 1.0, "2": 0.0}), run(1, 0.50, {"1": 0.8, "2": 0.2})],
        "opd": [run(0, 0.50, {"1": 1.0, "2": 0.1}), run(1, 0.52, {"1": 1.0, "2": 0.1})],
        # paired: +0.07 and +0.05 -> mean +0.06, sd 0.01414, t(1) = 12.706: half width 0.1271
        "sead": [run(0, 0.57, {"1": 1.0, "2": 0.3}, secs=4.0), run(1, 0.57, {"1": 1.0, "2": 0.3}, secs=4.0)],
        # avg@k +0.02 both seeds (interval of width 0), pass@k +0.10 and +0.04
        "sgopd": [run(0, 0.51, {"1": 1.0, "2": 0.1}, 0.32, 0.80), run(1, 0.53, {"1": 1.0, "2": 0.1}, 0.32, 0.74)],
    }
    quality = {
        "machine": MACHINE, "steps": 10, "seeds": 2, "task": "sums",
        "size": {"batch": 8, "num_test": 40, "sample_k": 8, "sample_temperature": 1.0, "num_sample": 20},
        "student_start": {"0": {"accuracy": 0.4}, "1": {"accuracy": 0.4}},
        "teacher": {"accuracy": 0.9, "accuracy_by_level": {"1": 1.0, "2": 0.8}},
        "summary": summarize_quality(runs),
        "runs": runs,
    }
    return {"loss": loss, "step": step, "quality": quality}


def _goal(text: str, label: str) -> tuple[str, str]:
    row = next(line for line in text.splitlines() if line.startswith(f"| {label}"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    return cells[2], cells[3]


def test_report_ratios_and_verdicts_are_hand_computed(tmp_path):
    cmds = {"loss": "sead bench loss", "step": "sead bench step", "quality": "sead bench quality"}
    path = write_report(_results(), cmds, tmp_path / "BENCHMARKS.md", analysis="## Analysis\n\nhand text")
    text = path.read_text()
    # the goals are on "sead_fused" (the trainer's defaults):
    # 6 / 12 = 0.50 > 0.4: missed; 300 / 4000 = 0.075 <= 0.1: met; 6 / 5 = 1.2 > 0.8: missed
    assert _goal(text, "fused SEAD loss time / TRL") == ("0.50x", "**missed**")
    assert _goal(text, "fused SEAD loss peak memory") == ("0.07x", "met")
    assert _goal(text, "fused SEAD loss time / our fused") == ("1.20x", "**missed**")
    # one-setting variants: rows with their ratios to TRL (3 / 12, 5.5 / 12) and to opd_fused (3 / 5, 5.5 / 5)
    assert "| sead_fused_bf16zones | 4096 | 32768 | 512 | 3.00 | 0.25x | 0.60x | 320 | 0.05x |" in text
    assert "| sead_fused_ownsupport | 4096 | 32768 | 512 | 5.50 | 0.46x | 1.10x | 330 | 0.06x |" in text
    # SG-OPD: 400 / 8000 = 0.05 <= 0.1 met; its time next to opd_fused: 6.5 / 5 = 1.30x, 16 / 12, 8000 / 6000
    assert _goal(text, "fused SG-OPD loss peak memory") == ("0.05x", "met")
    assert "| sgopd_fused | 4096 | 32768 | 512 | 6.50 | 0.54x | 1.30x | 400 | 0.07x |" in text
    assert "| sgopd_naive | 4096 | 32768 | 512 | 16.00 | 1.33x | 3.20x | 8000 | 1.33x |" in text
    # 55 / 50 = 1.10 missed; 51 / 50 = 1.02 met
    assert _goal(text, "OPDTrainer step time / TRL DistillationTrainer (vanilla OPD, default") == ("1.10x", "**missed**")
    assert _goal(text, "OPDTrainer step time / TRL DistillationTrainer (vanilla OPD, log_pass_rate") == ("1.02x", "met")
    # paired differences against opd: sead +6.0 (>= 4.8 met), sgopd accuracy +1.0, avg@k +2.0 (met, >= 2),
    # pass@k +7.0 (missed, >= 7.5); |trl - opd| = |(0.0 - 0.02) / 2| = 1.0 (met)
    assert _goal(text, "SEAD accuracy")[1] == "met"
    assert _goal(text, "SEAD accuracy")[0] == "+6.0 pts (paired, 95% CI [-6.7, +18.7], 2 seeds; pooled over the design [+3.4, +8.6])"
    assert _goal(text, "SG-OPD accuracy")[0].startswith("+1.0 pts") and _goal(text, "SG-OPD accuracy")[1] == "**missed**"
    assert _goal(text, "SG-OPD avg@k")[0].startswith("+2.0 pts") and _goal(text, "SG-OPD avg@k")[1] == "met"
    assert _goal(text, "SG-OPD pass@k")[0].startswith("+7.0 pts") and _goal(text, "SG-OPD pass@k")[1] == "**missed**"
    assert _goal(text, "abs(our opd - TRL)")[0].startswith("+1.0 pts") and _goal(text, "abs(our opd - TRL)")[1] == "met"
    # loss table: time / TRL and peak / TRL of the naive row: 10 / 12, 4000 / 6000
    assert "| naive | 4096 | 32768 | 512 | 10.00 | 0.83x | 2.00x | 4000 | 0.67x |" in text
    # quality: trl's per-level accuracy is the mean over its seeds: (100 + 80) / 2, (0 + 20) / 2; mean 50.0, sd 0.0
    row = next(line for line in text.splitlines() if line.startswith("| trl |") and "±" in line)
    assert row.startswith("| trl | 50.0 ± 0.0 | -1.0 [-13.7, +11.7] |") and "| 90/10 | 3 |" in row
    assert "| sead | 57.0 ± 0.0 | +6.0 [-6.7, +18.7] |" in text
    # pooled over the 4 x 2 design: residuals +-0.005 everywhere, SS 8 * 0.005^2 = 2e-4 on df 3, sigma 0.008165;
    # a pair's half-width t(3) * sigma * sqrt(2 / 2) = 3.182 * 0.008165 = 0.0260; 2 points would take 3 seeds
    # (df 6: 2.447 * 0.008165 * sqrt(2 / 3) = 0.0163)
    assert "| sead | 57.0 ± 0.0 | +6.0 [-6.7, +18.7] | +6.0 [+3.4, +8.6] |" in text
    assert ("residual sd of final accuracy is 0.8 points and a paired difference's 95% half-width (a pair over all 2 "
            "seeds) 2.6 points") in text
    assert "(4 variants x 2 seeds, additive variant + seed model, 3 degrees of freedom" in text
    assert "would take 3 seeds per variant" in text
    # gap closed with start 40% and teacher 90%: opd (51 - 40) / 50 = 22%, sead (57 - 40) / 50 = 34%
    assert "opd 22%" in text and "sead 34%" in text
    assert "lowest later point is 51.0% at step 10 (no dip below the start)" in text
    assert (tmp_path / "bench_quality_curves.png").stat().st_size > 0
    # equal compute: sead trains in 4 s, opd in 5 s (cost 0.80x); at the cheapest median (4 s) opd's curve reads
    # 0.4 + (0.50 - 0.4) * 4 / 5 = 0.48 and 0.4 + (0.52 - 0.4) * 4 / 5 = 0.496: 48.8 +- 1.1
    row = next(line for line in text.splitlines() if line.startswith("| opd |") and "±" in line)
    assert "| 5 | 1.00x | 48.8 ± 1.1 |" in row
    assert "| 4 | 0.80x | 57.0 ± 0.0 | +8.2 [" in next(line for line in text.splitlines() if line.startswith("| sead |") and "±" in line)
    assert (tmp_path / "bench_quality_curves_time.png").stat().st_size > 0 and "bench_quality_curves_time.png" in text
    assert text.rstrip().endswith("hand text")
    assert text.count("Machine: 2026-12-01 00:00 UTC, 2 cores") == 3


def test_draw_shares_by_hand():
    d = [0.0, 0.0, 0.5, 1.0]
    # no curriculum: the dataset's own shares
    assert draw_shares(d, None) == pytest.approx({0.0: 0.5, 0.5: 0.25, 1.0: 0.25})
    # step 1 opens d = 0 only (all draws from it); step 2 opens everything: the mean of the two
    assert draw_shares(d, [0.0, 1.0]) == pytest.approx({0.0: 0.75, 0.5: 0.125, 1.0: 0.125})
    # a gate between values opens those below it
    assert draw_shares(d, [0.6]) == pytest.approx({0.0: 2 / 3, 0.5: 1 / 3, 1.0: 0.0})
    assert sum(draw_shares(d, [0.0, 0.5, 0.7, 1.0]).values()) == pytest.approx(1.0)


def test_machine_line_names_the_simd_level_when_recorded():
    from sead.bench.report import _machine_line

    assert "(test)," in _machine_line(MACHINE)  # older results without it still render
    line = _machine_line(MACHINE | {"cpu_capability": "AVX2", "bf16_matmul_native": False})
    assert "2 cores (test, AVX2, bf16 matmul emulated)" in line
    line = _machine_line(MACHINE | {"cpu_capability": "AVX512", "bf16_matmul_native": True})
    assert "(test, AVX512, bf16 matmul native)" in line


def test_loss_bench_measures_each_shape_once_and_extras_at_the_goal_shape(monkeypatch):
    import sead.bench.suite as suite

    calls = []

    def fake_worker(args):
        impl, n, v, h = args[1], int(args[3]), int(args[5]), int(args[7])
        calls.append((impl, n, v, h))
        return {"impl": impl, "time_s": 1.0, "peak_mb": 1.0}

    monkeypatch.setattr(suite, "run_worker", fake_worker)
    monkeypatch.setattr(suite, "machine_facts", lambda: MACHINE)
    res = suite.bench_loss(progress=False, shapes=[(1024, 131072, 512), (4096, 131072, 512), (4096, 32768, 512)])
    assert len(calls) == len(set(calls))  # nothing measured twice
    # naive at V=131072 is shrunk to N=1024 for both requested N, measured once, reported for both
    assert calls.count(("naive", 1024, 131072, 512)) == 1
    naive_rows = [r for r in res["rows"] if r["impl"] == "naive" and r["V"] == 131072]
    assert [(r["N"], r["N_requested"]) for r in naive_rows] == [(1024, 1024), (1024, 4096)]
    extras = {(n, v, h) for impl, n, v, h in calls if impl in suite.LOSS_EXTRA_IMPLS}
    assert extras == {suite.LOSS_GOAL_SHAPE}
    # every main implementation at every shape of the full run, the real checkpoints' (V, H) with their names
    calls.clear()
    res = suite.bench_loss(progress=False)
    for n, v, h in suite.LOSS_SHAPES_FULL:
        for impl in ("sead_fused", "opd_fused", "sgopd_fused", "trl_chunked"):
            assert (impl, n, v, h) in calls
    assert {r["model"] for r in res["rows"] if r["V"] == 262144} == {"Gemma 3 270M"}
    assert {r["H"] for r in res["rows"] if r["V"] == 49152} == {576}
    # the quick run measures every implementation, the SG-OPD rows included, at its one shape
    calls.clear()
    res = suite.bench_loss(quick=True, progress=False)
    assert {r["impl"] for r in res["rows"]} == set(suite.LOSS_IMPLS)


def test_step_bench_runs_round_robin_and_takes_the_median_of_rounds(monkeypatch):
    import sead.bench.suite as suite

    calls = []
    n = len(suite.STEP_TRAINERS)
    all_times = [round(0.10 + 0.01 * i, 2) for i in range(3 * n)]
    times = iter(all_times)

    def fake_worker(args, env=None):
        calls.append(args[1])
        assert ("--teacher-url" in args) == (args[1] == "sead_server")
        return {"trainer": args[1], "step_time_s": next(times), "peak_rss_mb": float(len(calls))}

    monkeypatch.setattr(suite, "run_worker", fake_worker)
    monkeypatch.setattr(suite, "machine_facts", lambda: MACHINE)
    monkeypatch.setattr(suite, "STEP_ROUNDS", 3)
    monkeypatch.setattr(suite, "_start_step_teacher_server", lambda stack, tmp: ("http://127.0.0.1:1", None))
    res = suite.bench_step(progress=False, shapes=("tiny",))
    names = list(suite.STEP_TRAINERS)
    # three rounds, each a rotation of the trainer list
    assert calls == names + names[1:] + names[:1] + names[2:] + names[:2]
    rows = {r["trainer"]: r for r in res["rows"]}
    # the first trainer ran 1st in round 0, last in round 1, (n-1)th in round 2
    first = [all_times[0], all_times[2 * n - 1], all_times[3 * n - 2]]
    assert rows[names[0]]["round_step_times_s"] == first
    assert rows[names[0]]["step_time_s"] == sorted(first)[1]
    assert rows[names[0]]["peak_rss_mb"] == float(3 * n - 1)  # the largest of its rounds (its last call)
    assert all(r["rounds"] == 3 for r in rows.values())


def test_step_bench_runs_each_shape_and_the_report_reads_the_cost_goals_per_shape(monkeypatch):
    """Both shapes by default: the large one runs the methods' rows only, each row names its shape; the report's
    step / opd ratios and cost goals are taken within a shape."""
    import sead.bench.suite as suite
    from sead.bench.report import step_section

    calls = []
    times = {("tiny", "opd"): 0.10, ("tiny", "sead"): 0.105, ("tiny", "sgopd"): 0.13, ("tiny", "sead_topk"): 0.1,
             ("tiny", "sead_server"): 0.11, ("large", "opd"): 20.0, ("large", "sead"): 19.0, ("large", "sgopd"): 21.0}

    def fake_worker(args, env=None):
        shape = args[args.index("--shape") + 1]
        calls.append((shape, args[1]))
        return {"trainer": args[1], "shape": {"name": shape}, "step_time_s": times.get((shape, args[1]), 0.2),
                "peak_rss_mb": 1.0}  # fmt: skip

    monkeypatch.setattr(suite, "run_worker", fake_worker)
    monkeypatch.setattr(suite, "machine_facts", lambda: MACHINE)
    monkeypatch.setattr(suite, "_start_step_teacher_server", lambda stack, tmp: ("http://127.0.0.1:1", None))
    res = suite.bench_step(progress=False)
    large = [name for shape, name in calls if shape == "large"]
    assert sorted(set(large)) == sorted(suite.STEP_TRAINERS_LARGE)
    assert len(large) == suite.STEP_ROUNDS_LARGE * len(suite.STEP_TRAINERS_LARGE)
    assert len([c for c in calls if c[0] == "tiny"]) == suite.STEP_ROUNDS * len(suite.STEP_TRAINERS)
    assert {(r["shape"]["name"], r["trainer"]) for r in res["rows"]} >= {("tiny", "sead"), ("large", "sead")}
    text, goals = step_section(res, "sead bench step")
    assert goals["sead_step_vs_opd_tiny"] == (pytest.approx(1.05), 1.10)
    assert goals["sead_step_vs_opd_large"] == (pytest.approx(0.95), 1.0)
    assert goals["sgopd_step_vs_opd_tiny"] == (pytest.approx(1.3), 1.15)
    assert goals["sgopd_step_vs_opd_large"] == (pytest.approx(1.05), 1.15)
    assert goals["sead_server_step_vs_sead_topk"] == (pytest.approx(1.1), 1.2)
    assert "| sead | large | 19000 | - | 0.95x |" in text
    assert suite.bench_step(progress=False, quick=True, shapes=None)["rows"][0]["shape"]["name"] == "tiny"


def test_step_bench_records_why_the_served_row_has_no_server(monkeypatch):
    import sead.bench.suite as suite

    monkeypatch.setattr(suite, "run_worker", lambda args, env=None: {"trainer": args[1], "step_time_s": 0.1, "peak_rss_mb": 1.0})
    monkeypatch.setattr(suite, "machine_facts", lambda: MACHINE)
    monkeypatch.setattr(suite, "_start_step_teacher_server", lambda stack, tmp: (None, "vLLM is not installed"))
    rows = {r["trainer"]: r for r in suite.bench_step(quick=True, progress=False)["rows"]}
    assert rows["sead_server"]["error"] == "vLLM is not installed"
    assert "error" not in rows["sead_topk"]


@pytest.mark.parametrize("long_run_s,calls_expected,warmup_timed", [(1e9, 4, False), (0.0, 3, True)])
def test_loss_worker_times_reps_runs_after_a_warmup_unless_it_is_long(monkeypatch, long_run_s, calls_expected,
                                                                      warmup_timed):
    import torch

    import sead.bench.worker as worker

    calls = []

    def fake_loss_fn(impl, h_s, w_s, h_t, w_t, mask, g=None):
        def run():
            calls.append(1)
            return (h_s * 0).sum() + (w_s * 0).sum()
        return run

    monkeypatch.setattr(worker, "_loss_fn", fake_loss_fn)
    monkeypatch.setattr(worker, "LONG_RUN_S", long_run_s)
    threads = torch.get_num_threads()
    try:
        res = worker.bench_loss("sead_fused", 8, 16, 4, reps=3, threads=1)
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == calls_expected  # reps timed runs, plus the warm-up unless it was timed
    assert len(res["times_s"]) == 3 and res["warmup_timed"] is warmup_timed


def test_sgopd_bench_rows_compute_the_same_loss():
    # the fused and the full-logits SG-OPD rows of `sead bench loss` are the same objective on the same inputs
    import torch

    import sead.bench.worker as worker

    g = torch.Generator().manual_seed(0)
    n, v, h = 2 * worker.ROLLOUT_TOKENS, 64, 8
    h_s, w_s = torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g, dtype=torch.float64)
    h_t, w_t = torch.randn(n, h, generator=g, dtype=torch.float64), torch.randn(v, h, generator=g, dtype=torch.float64)
    losses = [worker._loss_fn(impl, h_s, w_s, h_t, w_t, torch.ones(n), torch.Generator().manual_seed(1))()
              for impl in ("sgopd_fused", "sgopd_naive")]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)


def test_runs_phrase_counts_the_timed_runs_each_row_records():
    from sead.bench.report import _runs_phrase
    from sead.bench.worker import SLOW_RUN_S

    assert _runs_phrase([{"times_s": [1, 2, 3, 4, 5]}, {"times_s": [1, 2, 3, 4, 5]}], 5) == "5 timed runs"
    assert _runs_phrase([{"times_s": [1, 2, 3, 4, 5]}, {"times_s": [9, 9, 9]}], 5) == (
        f"3-5 timed runs (3 where a run took over {SLOW_RUN_S:g} s)"
    )
    assert _runs_phrase([{"impl": "x"}], 5) == "5 timed runs"  # older results without times


def test_a_goal_met_exactly_is_met_despite_float_rounding():
    from sead.bench.report import goals_section

    # the paired trl - opd accuracy differences of the 2026-12-01 run (400 problems each): 2.0 points exactly
    per_seed = [0.0475, -0.035, 0.0525, 0.0175, 0.0175]
    value = sum(per_seed) / 5 + 7e-18  # what the run's float sums gave: 0.020000000000000007
    assert value > 0.02
    text = goals_section({"opd_minus_trl_abs": (value, 0.02)})
    assert "| met |" in text and "missed" not in text


def test_served_teacher_and_gpu_sections_hand_computed(tmp_path):
    """The served teacher's section: seconds per 1,000 positions = median / tokens x 1,000, ratios to the same
    path's plain prefill and to the HF forward, the parser's after / before; the GPU section: times and peaks over
    TRL's, or, with no device check run (or only its --small run), that no GPU was lent."""
    served = {
        "command": "python -m sead.bench.served --model M", "tokens": 2000, "repeats": 3,
        "machine": {"date": "2026-12-03 00:00 UTC", "cores": 2, "python": "3.11", "torch": "2.13",
                    "vllm": "0.30.0", "load_avg_1min_at_each_part": [1.0]},
        "rows": [
            {"what": "vllm server (default)", "k": None, "times_s": [4.0], "median_s": 4.0, "s_per_1000_positions": 2.0,
             "body_mb": 0.001},
            {"what": "vllm server (default)", "k": 64, "times_s": [6.0], "median_s": 6.0, "s_per_1000_positions": 3.0,
             "body_mb": 8.8, "json_loads_s_per_1000": 0.1, "parse_before_s_per_1000": 0.08,
             "parse_after_s_per_1000": 0.05},
            {"what": "vllm server, --skip-tokenizer-init", "k": 64, "times_s": [5.0], "median_s": 5.0,
             "s_per_1000_positions": 2.5, "body_mb": 8.8, "json_loads_s_per_1000": 0.1,
             "parse_before_s_per_1000": 0.08, "parse_after_s_per_1000": 0.05},
            {"what": "hf forward (a local teacher)", "k": None, "times_s": [8.0], "median_s": 8.0,
             "s_per_1000_positions": 4.0},
            {"what": "hf forward (a local teacher), lm_head + log_softmax + topk", "k": 64, "times_s": [9.0],
             "median_s": 9.0, "s_per_1000_positions": 4.5},
        ],
    }  # fmt: skip
    cmds = {"loss": "sead bench loss", "step": "sead bench step", "quality": "sead bench quality"}
    text = write_report({"served": served}, cmds, tmp_path / "BENCHMARKS.md").read_text()
    # 6 / 4 = 1.50x its plain request, 6 / 8 = 0.75x the HF forward; parser 0.05 / 0.08 = 0.62x (0.625)
    assert "| vllm server (default) | 64 | 3.00 | 1.50x | 0.75x | 8.8 |" in text
    assert "| vllm server (default) | 64 | 0.100 | 0.080 | 0.050 | 0.62x |" in text
    # before: 3.0 + 0.1 + 0.08 = 3.18; after: 2.5 + 0.1 + 0.05 = 2.65; 2.65 / 3.18 = 0.83x; plain 2.0, HF at k 64 4.5
    assert "| 64 | 3.18 | 2.65 | 0.83x | 2.00 | 4.50 |" in text
    assert "No GPU was lent to issue 24" in text
    gpu = {"small": False, "passed": True, "command": "python -m sead.bench.gpu_check",
           "environment": {"date": "d", "device": "cuda", "gpu": "H200", "cuda": "12.8", "torch": "2.11",
                           "transformers": "5.17", "trl": "1.16.0"},
           "losses": {"rows": [{"impl": "opd_fused", "N": 16384, "V": 151936, "median_s": 0.3, "peak_mb": 900.0},
                               {"impl": "trl_chunked", "N": 16384, "V": 151936, "median_s": 0.2, "peak_mb": 600.0}],
                      "checks": {"opd_fused_vs_trl_rel_diff": 1e-3, "opd_fused_vs_trl_ok": True}},
           "steps": {"rows": [{"method": "opd", "params": 494e6, "tokens": 5120, "median_s": 0.5, "peak_mb": 9000.0,
                               "loss_bf16": 1.0, "loss_fp32": 1.01, "rel_diff": 0.0099}],
                     "checks": {"opd_loss_vs_fp32_ok": True}}}  # fmt: skip
    text = write_report({"gpu": gpu}, cmds, tmp_path / "B2.md").read_text()
    assert "| opd_fused | 16384 | 151936 | 0.300 | 1.50x | 900 | 1.50x |" in text  # 0.3 / 0.2, 900 / 600
    assert "| opd | 494M | 5120 | 0.500 | 9000 | 1.00000 | 1.01000 | 9.90e-03 | yes |" in text
    assert "No GPU was lent" not in text and "Verdict: passed" in text
    small = write_report({"gpu": {**gpu, "small": True}}, cmds, tmp_path / "B3.md").read_text()
    assert "No GPU was lent to issue 24" in small


def test_the_report_shows_the_rate_search_and_the_tuned_table(tmp_path):
    from sead.bench.quality import TUNED, quality_tables
    from sead.bench.report import write_report

    results = _results()
    q = results["quality"]
    runs = dict(q["runs"])
    # sead at its chosen rate: +0.10 on both seeds against opd
    runs["sead" + TUNED] = [dict(r, accuracy=o["accuracy"] + 0.10) for r, o in zip(runs["sead"], runs["opd"])]
    lr_of = {n: 1e-3 for n in runs} | {"sead" + TUNED: 2e-3}
    q.update(quality_tables(runs, {"opd": 1e-3, "sead": 2e-3}, lr_of), runs=runs)
    q["lr_search"] = {"grid": [1e-3, 2e-3], "rates": {"opd": 1e-3, "sead": 2e-3},
                      "scores": {"opd": {"0.001": 0.6, "0.002": 0.55}, "sead": {"0.001": 0.5, "0.002": 0.58}}}
    q["size"]["num_validation"] = 30
    text = write_report(results, {"loss": "l", "step": "s", "quality": "q"}, tmp_path / "B.md").read_text()
    assert "| opd | 60.0 | 55.0 | 0.001 |" in text and "| sead | 50.0 | 58.0 | 0.002 |" in text
    assert "seed 0's validation set (30 problems" in text
    tuned_row = next(line for line in text.splitlines() if line.startswith("| sead | 0.002 |"))
    assert "+10.0 [+10.0, +10.0]" in tuned_row
    assert q["summary_tuned"]["sead"]["lr"] == 2e-3 and q["summary"]["sead"]["lr"] == 1e-3
    assert q["summary_tuned"]["sead"]["accuracy_vs_opd_pooled"]["mean"] == pytest.approx(0.10)


def test_an_unbalanced_design_says_which_variants_ran_which_seeds():
    from sead.bench.report import _design_size

    runs = {"opd": [0, 1, 2], "sead": [0, 1, 2], "zones": [0, 1]}
    assert _design_size({"unbalanced": runs, "variants": list(runs), "seeds": [0, 1, 2]}) == (
        "8 runs: opd, sead over 3 seeds; zones over 2 seeds")
    assert _design_size({"variants": ["a", "b"], "seeds": [0, 1]}) == "2 variants x 2 seeds"
