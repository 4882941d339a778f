"""`sead difficulty` at scale: resumable pre-pass (only unfinished prompts are generated), settings from a
recipe, chat templates, output files. (The samplers it runs on are tested in tests/test_sampling.py.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from _tiny import REPO, save_models, tokenizer, write_jsonl
from sead.cli import main
from sead.commands import difficulty as cmd
from sead.data import difficulty as prepass


class CountingGenerator:
    """A stand-in generator: answers prompt i with `\\boxed{i}` on its first `i % (K+1)` samples, counts prompts."""

    def __init__(self, fail_after_calls: int | None = None):
        self.prompts: list[str] = []
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def __call__(self, prompts, num_samples, seed):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            i = int(p.split()[-1])
            good = i % (num_samples + 1)
            out.append([f"\\boxed{{{i}}}"] * good + ["\\boxed{-1}"] * (num_samples - good))
        return out


def _prompts(n):
    return [f"question {i}" for i in range(n)], [str(i) for i in range(n)]


# --------------------------------------------------------------------------- the resumable loop
def test_resume_generates_only_unfinished_prompts(tmp_path):
    prompts, answers = _prompts(7)
    partial = tmp_path / "p.jsonl"
    # a previous run finished prompts 0, 2 and 5 (with made-up counts that must be kept, not recomputed)
    partial.write_text("".join(json.dumps({"index": i, "correct": 1, "n": 4}) + "\n" for i in (0, 2, 5)))
    gen = CountingGenerator()
    counts = prepass.run_prepass(
        gen, prompts, answers, num_rollouts=4, prompts_per_chunk=2, partial_path=partial, progress=False
    )
    assert gen.prompts == ["question 1", "question 3", "question 4", "question 6"]
    assert gen.calls == 2
    assert [counts[i] for i in (0, 2, 5)] == [(1, 4)] * 3
    assert counts[1] == (1, 4) and counts[3] == (3, 4) and counts[4] == (4, 4) and counts[6] == (1, 4)
    # everything is in the partial file now: a rerun generates nothing
    again = CountingGenerator()
    assert prepass.run_prepass(again, prompts, answers, num_rollouts=4, prompts_per_chunk=2,
                           partial_path=partial, progress=False) == counts  # fmt: skip
    assert again.prompts == []


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    prompts, answers = _prompts(6)
    partial = tmp_path / "p.jsonl"
    first = CountingGenerator(fail_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        prepass.run_prepass(first, prompts, answers, num_rollouts=2, prompts_per_chunk=2,
                        partial_path=partial, progress=False)  # fmt: skip
    assert first.prompts == prompts[:4]
    with open(partial, "a") as f:
        f.write('{"index": 4, "corr')  # a line cut by the interruption: that prompt is simply redone
    second = CountingGenerator()
    counts = prepass.run_prepass(second, prompts, answers, num_rollouts=2, prompts_per_chunk=2,
                             partial_path=partial, progress=False)  # fmt: skip
    assert second.prompts == prompts[4:]
    uninterrupted = prepass.run_prepass(CountingGenerator(), prompts, answers, num_rollouts=2, prompts_per_chunk=2,
                                    partial_path=tmp_path / "fresh.jsonl", progress=False)  # fmt: skip
    assert counts == uninterrupted


# --------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("difficulty")
    student, _ = save_models(root)
    from sead.tasks.arithmetic import make_dataset

    rows = make_dataset(6, seed=3).to_list()
    data = write_jsonl([{"question": r["prompt"], "gold": r["answer"]} for r in rows], root / "train.jsonl")
    return root, student, data


def _count_hf_generate(monkeypatch):
    import sead.data.difficulty

    seen: list[str] = []
    real = sead.data.difficulty.sample_texts

    def counting(sampler, tok, prompts, sampling, **kw):
        seen.extend(prompts)
        return real(sampler, tok, prompts, sampling, **kw)

    monkeypatch.setattr(sead.data.difficulty, "sample_texts", counting)
    return seen


def test_command_resumes_and_writes_the_difficulty_column(tiny_setup, tmp_path, monkeypatch, capsys):
    root, student, data = tiny_setup
    out = tmp_path / "out.parquet"
    partial = Path(str(out) + ".partial.jsonl")
    partial.write_text("".join(json.dumps({"index": i, "correct": c, "n": 3}) + "\n" for i, c in ((1, 3), (4, 1))))
    seen = _count_hf_generate(monkeypatch)
    argv = [
        "difficulty", "--model", student, "--dataset", data, "--prompt-column", "question", "--answer-column", "gold",
        "--num-rollouts", "3", "--max-new-tokens", "4", "--batch-size", "6", "--out", str(out), "--backend", "hf",
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    prompts = [json.loads(line)["question"] for line in open(data)]
    assert seen == [p for i, p in enumerate(prompts) if i not in (1, 4)]  # finished prompts are not redone
    from datasets import load_dataset

    ds = load_dataset("parquet", data_files=str(out), split="train")
    assert ds.column_names == ["question", "gold", "difficulty"]  # columns kept as they were, plus difficulty
    assert ds["difficulty"][1] == 0.0 and ds["difficulty"][4] == pytest.approx(2 / 3)
    assert all(0.0 <= d <= 1.0 for d in ds["difficulty"])
    assert "6 prompts" in capsys.readouterr().out

    # a rerun with the same settings generates nothing; a jsonl output is written too
    seen.clear()
    rerun = [a if a != str(out) else str(tmp_path / "out.jsonl") for a in argv] + ["--partial", str(partial)]
    assert main(rerun) == 0
    assert seen == []
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [r["difficulty"] for r in rows] == ds["difficulty"]

    # other settings with the same partial file are refused
    changed = [a if a != "3" else "5" for a in argv]  # --num-rollouts 5
    assert main(changed) == 2
    assert "other settings" in capsys.readouterr().err


def test_command_limit_and_bad_input(tiny_setup, tmp_path, capsys):
    _, student, data = tiny_setup
    base = ["difficulty", "--model", student, "--dataset", data, "--prompt-column", "question", "--no-progress"]
    assert main(base + ["--answer-column", "missing", "--out", str(tmp_path / "a.parquet")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(base + ["--answer-column", "gold", "--out", str(tmp_path / "a.csv")]) == 2
    assert main(base + ["--answer-column", "gold", "--out", data.replace(".jsonl", ".jsonl")]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(base + ["--answer-column", "gold", "--temperature", "0", "--out", str(tmp_path / "b.jsonl")]) == 2
    out = tmp_path / "c.jsonl"
    assert main(base + ["--answer-column", "gold", "--limit", "2", "--num-rollouts", "2", "--max-new-tokens", "2",
                        "--out", str(out)]) == 0  # fmt: skip
    assert len(out.read_text().splitlines()) == 2


def test_settings_come_from_a_recipe_and_flags_win():
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    recipe = str(REPO / "recipes" / "qwen3-1.7b-8b-sead.yaml")
    s = cmd.resolve_settings(parser.parse_args(["--config", recipe, "--dataset", "d.jsonl", "--out", "o.parquet"]))
    assert s["model"] == "Qwen/Qwen3-1.7B"
    assert (s["prompt_column"], s["answer_column"], s["difficulty_column"]) == ("prompt", "solution", "difficulty")
    assert s["chat_template"] is True and s["chat_template_kwargs"] == {"enable_thinking": False}
    assert s["max_new_tokens"] == 4096 and s["num_rollouts"] == 8 and s["temperature"] == 0.7
    s = cmd.resolve_settings(parser.parse_args([
        "--config", recipe, "--dataset", "d.jsonl", "--out", "o.parquet", "--no-chat-template",
        "--max-new-tokens", "64", "--model", "other", "--chat-template-kwargs", "{}",
    ]))  # fmt: skip
    assert s["chat_template"] is False and s["max_new_tokens"] == 64 and s["model"] == "other"
    assert s["chat_template_kwargs"] == {}


def test_chat_template_formatting(capsys):
    import copy

    tok = copy.deepcopy(tokenizer())  # the shared tokenizer stays without a chat template
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    plain, conv = "1+1=", [{"role": "user", "content": "2+2="}]
    assert prepass.format_prompts([plain, conv], tok, None, {}) == ["1+1=", "<user>2+2=<a>"]
    assert "plain strings" in capsys.readouterr().err  # the notice: --chat-template exists
    assert prepass.format_prompts([plain], tok, True, {}) == ["<user>1+1=<a>"]
    assert prepass.format_prompts([plain], tok, False, {}) == ["1+1="]
    tok.chat_template = None
    from sead.utils.errors import SeadError

    with pytest.raises(SeadError, match="no chat template"):
        prepass.format_prompts([plain], tok, True, {})
    with pytest.raises(SeadError, match="conversations"):
        prepass.format_prompts([conv], tok, None, {})


def test_backend_choice_and_server_flags(tiny_setup, tmp_path, capsys):
    from sead.engines.vllm_engine import choose_backend

    assert choose_backend("hf") == "hf"
    assert choose_backend("auto", installed=True, cuda=False) == "hf"  # vLLM's CPU build is not picked on a CPU
    _, student, data = tiny_setup
    argv = ["difficulty", "--model", student, "--dataset", data, "--prompt-column", "question", "--answer-column",
            "gold", "--out", str(tmp_path / "o.jsonl"), "--backend", "server", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    assert "--server-url" in capsys.readouterr().err
    assert main(argv[:-3] + ["--backend", "vllm", "--vllm-kwargs", "[1]", "--no-progress"]) == 2
    assert "--vllm-kwargs must be a JSON object" in capsys.readouterr().err
