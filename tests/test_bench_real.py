"""``sead bench real`` (sead.bench.real: compare, worker, mechanisms): its statistics, its gate and zone readings
against hand-computed values, its SFT batches against the tokenizer, its summary, report and plot on a made-up
result, and one short run end to end on the real pair of the ``smollm2`` fixture."""

from __future__ import annotations

import json

import pytest
import torch

from sead.bench.real import plot_real, real_markdown, summarize_real
from sead.bench.real.mechanisms import gate_consensus, zone_contents
from sead.bench.stats import paired_by_prompt
from sead.method.zones import FKL, RKL, SKIP


def test_paired_by_prompt_averages_each_prompt_over_seeds_then_takes_t_over_prompts():
    x = [[1, 1, 0, 1], [1, 0, 0, 1]]
    y = [[0, 1, 0, 0], [1, 1, 0, 0]]
    # per prompt: ((1-0)+(1-1))/2 = 0.5, ((1-1)+(0-1))/2 = -0.5, 0, ((1-0)+(1-0))/2 = 1
    d = [0.5, -0.5, 0.0, 1.0]
    mean = sum(d) / 4
    sd = (sum((v - mean) ** 2 for v in d) / 3) ** 0.5
    half = 3.182 * sd / 2  # t_{0.975, 3}
    got = paired_by_prompt(x, y)
    assert got["n"] == 4 and got["mean"] == pytest.approx(0.25)
    assert got["ci_low"] == pytest.approx(mean - half) and got["ci_high"] == pytest.approx(mean + half)
    with pytest.raises(ValueError, match="same prompts"):
        paired_by_prompt([[1, 0]], [[1]])


def test_the_gate_sides_with_the_verifier_when_the_teachers_direction_has_the_verdicts_sign():
    d_BT = torch.tensor([[0.5, -0.2, 0.0], [0.3, -0.4, 1.0]])
    passed_B = torch.tensor([True, False])
    mask_BT = torch.tensor([[True, True, True], [True, True, False]])
    # passed: consensus where d > 0; failed: where d < 0; d = 0 never; padding never
    assert gate_consensus(d_BT, passed_B, mask_BT).tolist() == [[True, False, False], [False, True, False]]


def test_zone_contents_counts_shares_digits_and_commonest_tokens_per_zone():
    zones = torch.tensor([[SKIP, SKIP, RKL, FKL], [SKIP, RKL, RKL, -1]])
    mask = zones >= 0
    strings = [["The", " 5", " 5", "}"], ["The", "12", " is", ""]]
    digit = torch.tensor([[False, True, True, False], [False, True, False, False]])
    disagree = torch.tensor([[False, True, False, True], [False, False, True, False]])
    h_t = torch.tensor([[0.0, 0.2, 0.4, 2.0], [0.1, 0.3, 0.5, 9.0]])
    out = zone_contents(zones, strings, digit, disagree, h_t, mask)
    assert out["skip"]["token_share"] == pytest.approx(3 / 7)
    assert out["skip"]["digit_share"] == pytest.approx(1 / 3) and out["skip"]["share_of_digits"] == pytest.approx(1 / 3)
    assert out["skip"]["disagree_rate"] == pytest.approx(1 / 3)
    assert out["skip"]["mean_h_t"] == pytest.approx(0.1)
    assert out["skip"]["commonest"][0] == ["The", 2]
    assert out["rkl"]["token_share"] == pytest.approx(3 / 7) and out["rkl"]["mean_h_t"] == pytest.approx(0.4)
    assert out["fkl"]["token_share"] == pytest.approx(1 / 7) and out["fkl"]["disagree_rate"] == 1.0


def _made_up() -> dict:
    """Two seeds, four held-out prompts; start 0.25, teacher 0.75."""
    def score(correct):
        return {"accuracy": sum(correct) / len(correct), "correct": correct}

    scores = {"start": score([1, 0, 0, 0])}
    finals = {"opd": ([1, 1, 0, 0], [1, 1, 1, 0]), "sead": ([1, 0, 0, 0], [1, 1, 0, 0]), "sgopd": ([1, 1, 0, 0], [1, 1, 0, 0])}
    runs = {}
    for method, per_seed in finals.items():
        for s, correct in enumerate(per_seed):
            scores[f"{method}/{s}@2"] = score(correct)
            scores[f"{method}/{s}@1"] = score([1, 0, 0, 0])
            runs[f"{method}/{s}"] = {"checkpoints": {"1": {"seconds": 10.0 + s}, "2": {"seconds": 20.0 + s}}}
    for s in range(2):
        scores[f"sft/{s}@equal_steps"] = score([1, 0, 0, 0])
        scores[f"sft/{s}@equal_time"] = score([1, 1, 1, 1])
        runs[f"sft/{s}"] = {"equal_steps": {"steps": 2, "seconds": 5.0}, "equal_time": {"steps": 9, "seconds": 20.0}}
    return {"seeds": 2, "steps": 2, "mid": 1, "num_test": 4, "start": {"accuracy": 0.25}, "teacher": {"accuracy": 0.75},
            "scores": scores, "runs": runs}  # fmt: skip


def test_summarize_real_means_gap_closed_and_differences_to_opd_by_hand():
    s = summarize_real(_made_up())["final"]
    assert s["opd"]["mean"] == pytest.approx(0.625) and s["opd"]["gap_closed"] == pytest.approx((0.625 - 0.25) / 0.5)
    assert s["opd"]["seconds"] == pytest.approx(20.5) and s["opd"]["steps"] == 2
    assert [p["mean"] for p in s["opd"]["curve"]] == pytest.approx([0.25, 0.625])
    # sead - opd per seed: 0.25 - 0.5, 0.5 - 0.75 -> -0.25 both, sd 0 -> a zero-width interval
    assert s["sead"]["vs_opd_seeds"]["mean"] == pytest.approx(-0.25) and s["sead"]["vs_opd_seeds"]["ci_low"] == pytest.approx(-0.25)
    assert s["sead"]["vs_opd_prompts"]["mean"] == pytest.approx(-0.25)
    assert s["sft_equal_time"]["mean"] == 1.0 and s["sft_equal_time"]["steps"] == 9
    assert s["sft"]["gap_closed"] == pytest.approx(0.0) and "vs_opd_seeds" not in s["opd"]


def test_the_report_section_and_the_plot_of_a_made_up_run(tmp_path):
    res = _made_up()
    res.update(summarize_real(res))
    zone = {"token_share": 0.5, "share_of_digits": 0.1, "disagree_rate": 0.02, "commonest": [[" The", 9], ["\\boxed", 8]]}
    gate = {k: {"consensus": 0.5} for k in ("passed_digit", "passed_text", "failed_digit", "failed_text")}
    res.update({
        "machine": {"cores": 2, "cpu": "cpu", "date": "today", "torch": "2", "trl": "1"}, "total_seconds": 600.0,
        "mechanisms": {"rollouts": 8, "tokens": 100, "pass_rate": 0.5, "digit_token_share": 0.2, "mean_h_t": 0.3,
                       "mean_h_t_uncertain": 1.5, "mean_h_t_rest": 0.1, "both_confident_share": 0.6,
                       "zones": {"skip": zone, "rkl": zone, "fkl": zone}, "sign_gate": {"consensus": 0.7, **gate}},
    })  # fmt: skip
    png = plot_real(res, tmp_path / "real.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = real_markdown(res, png.name)
    assert "**62.5%**" in text and "-25.0 [-25.0, -25.0]" in text and "`The` (9)" in text and "70.0%" in text


def test_sft_batches_label_the_answer_and_its_eos_only(smollm2):
    from transformers import AutoTokenizer

    from sead.bench.real.worker import sft_batch
    from sead.data.phrasings import phrasing_rows

    tok = AutoTokenizer.from_pretrained(smollm2["teacher"], padding_side="right")
    rows = phrasing_rows(4)[1][:2]
    answers = ["3 + 4 = 7. The answer is \\boxed{7}.", "9"]
    batch = sft_batch(tok, [r["prompt"] for r in rows], answers)
    for i, (row, answer) in enumerate(zip(rows, answers)):
        labelled = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert labelled == tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        n = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i][:n].tolist() == list(prompt) + labelled
        assert batch["input_ids"][i][n:].eq(tok.pad_token_id).all()


def test_a_short_bench_real_end_to_end_on_the_real_pair(smollm2, tmp_path):
    """Two steps per method and seed, one seed, on 16 training and 8 held-out prompts: every arm comes back
    evaluated, the SFT equal-time run takes at least as many steps as the equal-steps one, and the saved students
    and the results are there."""
    from sead.bench.real import bench_real
    from sead.data.phrasings import phrasing_rows

    train, test = phrasing_rows(8)
    for name, rows in (("train", train[:16]), ("test", test)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pair = {"teacher": smollm2["teacher"], "student": smollm2["student"], "train": str(tmp_path / "train.jsonl"),
            "test": str(tmp_path / "test.jsonl")}  # fmt: skip
    res = bench_real(steps=2, seeds=1, jobs=2, out_dir=str(tmp_path / "out"), progress=False, pair=pair, limit=8,
                     mechanism_prompts=8)  # fmt: skip
    assert res["num_test"] == 8 and set(res["final"]) == {"opd", "sead", "sgopd", "sft", "sft_equal_time"}
    assert res["final"]["sft_equal_time"]["steps"] >= res["final"]["sft"]["steps"] == 2
    for method in ("opd", "sead", "sgopd"):
        assert (tmp_path / "out" / f"{method}-0" / "step-2" / "config.json").exists()
        assert res["runs"][f"{method}/0"]["checkpoints"]["1"]["seconds"] < res["runs"][f"{method}/0"]["seconds"]
    assert res["mechanisms"]["rollouts"] == 8 and 0 <= res["mechanisms"]["sign_gate"]["consensus"] <= 1
    json.dumps(res)  # the results are JSON
