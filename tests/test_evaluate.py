"""Metrics and the evaluation pipeline (sead.evaluation.evaluate, `sead eval`, `sead grade`)."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from sead.cli import main
from sead.evaluation.benchmarks import BENCHMARKS
from sead.evaluation.evaluate import EvalConfig, evaluate_benchmark, format_table, parse_k_spec
from sead.grading.metrics import avg_at_k, mean_pass_at_k, pass_at_k, pass_at_k_curve, report_ks
from sead.utils.errors import SeadError

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "math"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"shared data not found at {DATA_DIR}")

# ---------------------------------------------------------------------------------------------
# pass@k / avg@k
# ---------------------------------------------------------------------------------------------


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_special_values_and_stability():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 6, 5) == 1.0  # n - c < k
    # Large n: the combinatorial ratio would overflow floats; the product form does not.
    value = pass_at_k(2000, 1, 1000)
    assert value == pytest.approx(0.5) and math.isfinite(value)
    exact = 1 - Fraction(math.comb(10**6 - 10, 10), math.comb(10**6, 10))
    assert pass_at_k(10**6, 10, 10) == pytest.approx(float(exact), rel=1e-9)


@pytest.mark.parametrize(
    ("n", "c", "k"), [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5, 2.5, 1)]
)
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_avg_and_mean_pass_at_k():
    correct = [[True, False, False, False], [True, True, True, True], [False] * 4]
    assert avg_at_k(correct) == pytest.approx((0.25 + 1 + 0) / 3)
    assert mean_pass_at_k(correct, 1) == pytest.approx(avg_at_k(correct))  # pass@1 == avg@k
    assert mean_pass_at_k(correct, 4) == pytest.approx(2 / 3)
    assert pass_at_k_curve(correct, 4).keys() == {"1", "2", "4"}
    assert report_ks(1) == [1] and report_ks(8) == [1, 2, 4, 8] and report_ks(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        avg_at_k([])
    with pytest.raises(ValueError):
        avg_at_k([[]])


def test_parse_k_spec():
    benches = [BENCHMARKS[n] for n in ("math500", "aime24", "amc23")]
    assert parse_k_spec("8", benches) == {"math500": 8, "aime24": 8, "amc23": 8}
    assert parse_k_spec(0, benches) == {"math500": 0, "aime24": 0, "amc23": 0}
    assert parse_k_spec("paper", benches) == {"math500": 0, "aime24": 32, "amc23": 32}
    assert parse_k_spec("4,aime24=16", benches) == {"math500": 4, "aime24": 16, "amc23": 4}
    for bad in ("x", "-1", "gsm8k=2", ""):
        with pytest.raises(SeadError, match="--k"):
            parse_k_spec(bad, benches)


# ---------------------------------------------------------------------------------------------
# Pipeline with a scripted generator (no model)
# ---------------------------------------------------------------------------------------------


def test_evaluate_benchmark_with_scripted_generator():
    rows = [{"question": "q1", "answer": "#### 3"}, {"question": "q2", "answer": "#### 1,000"}]
    bench = BENCHMARKS["gsm8k"]
    prompts = [bench.prompt(r) for r in rows]

    def generate(prompts, num_samples, temperature, description):
        # greedy: right on q1 only; sampled: first of 4 right on every question, one timeout-free junk
        if temperature == 0:
            return [["\\boxed{3}"], ["\\boxed{7}"]]
        return [
            ["\\boxed{3}", "\\boxed{2}", "junk", "\\boxed{4}"],
            ["The answer is 1000.", "#### 9", "", "1"],
        ]

    config = EvalConfig(model="scripted", benchmarks="gsm8k", k="4")
    result, records = evaluate_benchmark(bench, rows, prompts, generate, k=4, config=config)
    assert result.greedy == {"pass@1": 0.5, "timeouts": 0, "errors": 0, "unparsed": 0}
    assert result.sampled["avg@4"] == pytest.approx(0.25)
    assert result.sampled["pass@k"]["4"] == pytest.approx(1.0)
    assert result.sampled["pass@k"]["1"] == pytest.approx(0.25)
    assert result.sampled["unparsed"] == 2  # "junk" and ""
    assert records[1]["answer"] == "1000" and records[1]["correct"] == [True, False, False, False]
    assert records[0]["greedy_correct"] is True and records[1]["greedy_pred"] == "7"
    table = format_table({"benchmarks": {"gsm8k": result.to_dict()}})
    assert "gsm8k" in table and "50.0" in table and "25.0" in table


# ---------------------------------------------------------------------------------------------
# `sead eval` end to end with a tiny random model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for ch in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    path = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _assert_finite(obj, where="results"):
    if isinstance(obj, dict):
        for key, value in obj.items():
            _assert_finite(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _assert_finite(value, f"{where}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), where


@needs_data
@pytest.mark.slow
def test_sead_eval_end_to_end(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_model_dir), "--benchmarks", "gsm8k,amc23", "--limit", "5", "--k", "2"]
    argv += ["--max-new-tokens", "8", "--out", str(out), "--data-dir", str(DATA_DIR), "--batch-size", "16"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gsm8k" in printed and "amc23" in printed and "results.json" in printed

    results = json.loads((out / "results.json").read_text())
    _assert_finite(results)
    assert results["model"] == str(tiny_model_dir)
    assert results["samples_per_question"] == {"gsm8k": 2, "amc23": 2}
    assert set(results["benchmarks"]) == {"gsm8k", "amc23"}
    for name, entry in results["benchmarks"].items():
        assert entry["num_questions"] == 5
        greedy, sampled = entry["greedy"], entry["sampled"]
        assert set(greedy) == {"pass@1", "timeouts", "errors", "unparsed"}
        assert 0.0 <= greedy["pass@1"] <= 1.0
        assert sampled["k"] == 2 and sampled["temperature"] == 0.7
        assert 0.0 <= sampled["avg@2"] <= 1.0
        assert set(sampled["pass@k"]) == {"1", "2"}
        assert sampled["pass@k"]["1"] <= sampled["pass@k"]["2"] + 1e-12
        assert all(isinstance(sampled[key], int) for key in ("timeouts", "errors", "unparsed"))

        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert len(records) == 5
        for record in records:
            assert {
                "id",
                "prompt",
                "answer",
                "greedy_response",
                "greedy_correct",
                "responses",
                "correct",
            } <= set(record)
            assert len(record["responses"]) == 2 and len(record["correct"]) == 2

    # the per-benchmark records are valid `sead grade` input
    assert (
        main(["grade", "--input", str(out / "gsm8k.jsonl"), "--output", str(tmp_path / "regraded.jsonl")])
        == 0
    )


def test_sead_eval_errors_are_clear(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--benchmarks", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--k", "2", "--temperature", "0"]) == 2
    assert "--temperature 0" in capsys.readouterr().err


@needs_data
def test_sead_eval_vllm_missing_is_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sead.engines.vllm_engine.vllm_installed", lambda: False)  # as on a machine without it
    argv = [
        "eval",
        "--model",
        str(tmp_path),
        "--benchmarks",
        "amc23",
        "--backend",
        "vllm",
        "--data-dir",
        str(DATA_DIR),
    ]
    assert main(argv) == 2
    assert "pip install vllm" in capsys.readouterr().err


def test_sead_eval_bad_model_dir_is_clear(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "amc23.jsonl").write_text(json.dumps({"question": "1+1?", "answer": 2}) + "\n")
    assert (
        main(
            ["eval", "--model", str(tmp_path / "no-model"), "--benchmarks", "amc23", "--data-dir", str(data)]
        )
        == 2
    )
    assert "no-model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# `sead grade`
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_sead_grade_end_to_end(tmp_path, capsys):
    rows = [
        {"id": 1, "answer": "\\frac{1}{2}", "responses": ["\\boxed{0.5}", "\\boxed{1/3}", "no idea"]},
        {"id": 2, "gold": "18", "response": "so #### 18"},
        {"id": 3, "answer": 27.0, "responses": ["The answer is 27.", "\\boxed{26}", "\\boxed{27}"]},
    ]
    src = _write_jsonl(tmp_path / "preds.jsonl", rows)
    dst = tmp_path / "sub" / "graded.jsonl"
    assert main(["grade", "--input", str(src), "--output", str(dst), "--timeout", "5"]) == 0
    graded = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [g["id"] for g in graded] == [1, 2, 3]
    assert graded[0]["correct"] == [True, False, False] and graded[0]["pred"] == ["0.5", "1/3", None]
    assert graded[1]["correct"] == [True] and graded[1]["pred"] == ["18"]
    assert graded[2]["correct"] == [True, False, True]
    assert graded[0]["responses"] == rows[0]["responses"]  # input fields kept
    printed = capsys.readouterr().out
    # avg@k = mean(1/3, 1, 2/3) = 66.67; pass@1 over k = min #responses = 1
    assert "avg@k (per-sample accuracy): 66.67" in printed
    assert "pass@1: 66.67" in printed
    assert "unparsed: 1" in printed


@needs_data
def test_sead_grade_with_benchmark_rule(tmp_path, capsys):
    rows = BENCHMARKS["gsm8k"].load(data_dir=DATA_DIR, limit=3)
    rows = [dict(r, responses=["\\boxed{18}", "\\boxed{3}"]) for r in rows]  # golds 18, 3, 70000
    src = _write_jsonl(tmp_path / "gsm.jsonl", rows)
    dst = tmp_path / "out.jsonl"
    assert main(["grade", "--input", str(src), "--output", str(dst), "--benchmark", "gsm8k"]) == 0
    graded = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [g["correct"] for g in graded] == [[True, False], [False, True], [False, False]]
    assert "pass@2: 66.67" in capsys.readouterr().out


def test_sead_grade_errors_are_clear(tmp_path, capsys):
    out = str(tmp_path / "o.jsonl")
    assert main(["grade", "--input", str(tmp_path / "missing.jsonl"), "--output", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    src = _write_jsonl(tmp_path / "a.jsonl", [{"responses": ["\\boxed{1}"]}])
    assert main(["grade", "--input", str(src), "--output", out]) == 2
    assert "`answer`" in capsys.readouterr().err
    src = _write_jsonl(tmp_path / "b.jsonl", [{"answer": "1"}])
    assert main(["grade", "--input", str(src), "--output", out]) == 2
    assert "`responses`" in capsys.readouterr().err
    src = _write_jsonl(tmp_path / "c.jsonl", [{"answer": "1", "responses": ["1"]}])
    assert main(["grade", "--input", str(src), "--output", out, "--benchmark", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err
