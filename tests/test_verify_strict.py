"""Strict verdicts (issue 14): training and the difficulty pre-pass accept only explicit final answers.

Hand-written responses of each kind: a truncated rollout ending in the gold number, DAPO-Math's
``Answer:`` line, box-vs-line precedence, Markdown headings that look like GSM8K's ``####``, a box
cut off by the length limit; and the places that must grade strictly (the default reward, the trainer's
default verifier, ``estimate_difficulty``, ``sead difficulty``'s pre-pass) or offer it (``sead grade``,
``sead eval``).
"""

from __future__ import annotations

import json

import pytest

from sead.cli import main
from sead.grading.answers import EXTRACTION_MODES, TRAINING_MODE, extract_answer
from sead.grading.verifier import GradeCounter, grade, grade_many, make_math_reward, math_reward
from sead.utils.errors import SeadError

# A rollout cut off at the length limit mid-reasoning; its last number (42) happens to be the gold.
TRUNCATED = "Let x be the number of apples. Then 6 * 7 = 42, and we still need to subtract the 42"


def test_training_mode_is_strict():
    assert TRAINING_MODE == "strict" and "strict" in EXTRACTION_MODES and "answer_line" in EXTRACTION_MODES


def test_truncated_text_ending_in_gold_is_incorrect_under_strict_only():
    assert extract_answer(TRUNCATED, mode="strict") is None
    strict = grade(TRUNCATED, "42", mode="strict")
    assert not strict.correct and strict.pred is None
    assert grade(TRUNCATED, "42", mode="auto").correct  # the evaluation convenience credits it


@pytest.mark.parametrize("mode", ["strict", "auto", "answer_line"])
def test_dapo_answer_line_reads_the_fraction(mode):
    text = "We simplify the ratio of 3 to 4.\nAnswer: \\frac{3}{4}"
    assert extract_answer(text, mode=mode) == "\\frac{3}{4}"
    assert grade(text, "0.75", mode=mode).correct
    assert not grade(text, "4", mode=mode).correct


def test_dapo_answer_line_is_never_read_as_its_last_number():
    text = "Answer: \\frac{3}{4}"
    got = {mode: extract_answer(text, mode=mode) for mode in EXTRACTION_MODES}
    # only last_number (asked for explicitly) returns the 4; the other single markers find nothing
    assert got == {
        "auto": "\\frac{3}{4}",
        "strict": "\\frac{3}{4}",
        "boxed": None,
        "gsm8k": None,
        "answer_line": "\\frac{3}{4}",
        "answer_is": None,
        "last_number": "4",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("**Final Answer:** $\\frac{3}{4}$.", "\\frac{3}{4}"),
        ("so we are done.\nanswer: 17", "17"),
        ("### Final Answer:\n\n$7$\n", "7"),  # empty Answer line: the next non-empty line
        ("Answer: the ratio is $3/4$", "3/4"),  # prose around one math span: the span
        ("Answer: \\boxed{12}", "12"),
        ("Answer: 3.5", "3.5"),
        ("Answer: 5. That is all.", "5"),
        ("Answer: 1\nmore work\nAnswer: 2", "2"),  # the last Answer line
        ("The final answer: -8", "-8"),
    ],
)
def test_answer_line_forms(text, expected):
    assert extract_answer(text, mode="answer_line") == expected
    assert extract_answer(text, mode="strict") == expected


def test_answer_line_needs_a_line_start():
    # "answer:" inside a sentence is not a final-answer line
    assert extract_answer("My first answer: 3, but let me check 4", mode="answer_line") is None
    assert extract_answer("My first answer: 3, but let me check 4", mode="strict") is None


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{2}\nAnswer: 3",  # box first, then a line
        "Answer: 3\nWait, recheck.\n\\boxed{2}",  # line first, then a box
    ],
)
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_boxed_takes_precedence_over_answer_line(text, mode):
    assert extract_answer(text, mode=mode) == "2"


def test_precedence_of_the_other_markers():
    # Answer line over "the answer is"; #### over the Answer line (by kind, not position)
    assert extract_answer("the answer is 3.\nAnswer: 4", mode="strict") == "4"
    assert extract_answer("Answer: 4\nso the answer is 3.", mode="strict") == "4"
    assert extract_answer("Answer: 4\n#### 5", mode="strict") == "5"
    assert extract_answer("so the answer is 9. Then 11", mode="strict") == "9"


def test_markdown_heading_is_not_a_gsm8k_answer():
    text = "#### Step 5: count the apples\n3 + 4 = 7, so the answer is 7."
    for mode in ("strict", "auto"):
        assert extract_answer(text, mode=mode) == "7"
    assert extract_answer(text, mode="gsm8k") is None
    assert extract_answer("##### 5", mode="strict") is None  # five hashes: a heading
    assert extract_answer("#### 18", mode="strict") == "18"
    assert extract_answer("####-3", mode="gsm8k") == "-3"


@pytest.mark.parametrize(
    "text", ["ok \\boxed{3} but then \\boxed{4", "\\boxed{3}. Finally \\boxed", "\\boxed{1"]
)
def test_cut_off_last_box_has_no_answer_under_strict(text):
    assert extract_answer(text, mode="strict") is None
    assert not grade(text, "3", mode="strict").correct


def test_cut_off_last_box_under_auto_keeps_the_previous_box():
    assert extract_answer("ok \\boxed{3} but then \\boxed{4", mode="auto") == "3"


def test_strict_accepts_each_explicit_marker():
    cases = [
        ("so \\boxed{12}.", "12"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("The final answer is $\\frac{1}{2}$.", "0.5"),
        ("...\nAnswer: 0.5", "1/2"),
    ]
    results = grade_many([t for t, _ in cases], [g for _, g in cases], mode="strict", num_workers=1)
    assert [r.correct for r in results] == [True] * len(cases)


def test_gold_written_back_in_each_format_grades_correct_under_strict():
    golds = ["\\frac{3}{4}", "-2", "(1, 2)", "x^2 + 1", "\\sqrt{3}"]
    for wrap in ("\\boxed{{{}}}", "Answer: {}", "Answer: ${}$", "The answer is ${}$."):
        results = grade_many([wrap.format(g) for g in golds], golds, mode="strict", num_workers=1)
        assert all(r.correct for r in results), (wrap, results)


# ---------------------------------------------------------------------------------------------
# Training: the default reward and the trainer's default verifier are strict
# ---------------------------------------------------------------------------------------------


def test_default_reward_is_strict():
    completions = [
        TRUNCATED,
        "6 * 7 = \\boxed{42}",
        "Answer: 42",
        [{"role": "assistant", "content": TRUNCATED}],
    ]
    assert math_reward(prompts=None, completions=completions, answer=["42"] * 4) == [0.0, 1.0, 1.0, 0.0]
    lenient = make_math_reward(mode="auto")
    assert lenient(prompts=None, completions=completions, answer=["42"] * 4) == [1.0, 1.0, 1.0, 1.0]


def test_trainer_default_verifier_is_strict():
    from sead.grading.rewards import default_reward as _default_reward

    counter = GradeCounter()
    reward = _default_reward("answer", 5.0, counter)
    rewards = reward(prompts=["q", "q"], completions=[TRUNCATED, "\\boxed{42}"], answer=["42", "42"])
    assert rewards == [0.0, 1.0]
    assert counter.as_dict()["unparsed"] == 1


def test_arithmetic_gold_completions_grade_correct_under_strict():
    from sead.tasks.arithmetic import LEVELS, format_completion, sample_problems

    problems = sample_problems(40, levels=LEVELS, seed=3)
    completions = [format_completion(p) for p in problems]
    golds = [str(p.answer) for p in problems]
    assert all(r.correct for r in grade_many(completions, golds, mode="strict", num_workers=1))
    # the same scratchpads cut before the box: no final answer (auto would read the scratchpad's last number)
    cut = [c[: c.index("\\boxed")] for c in completions]
    assert not any(r.correct for r in grade_many(cut, golds, mode="strict", num_workers=1))


# ---------------------------------------------------------------------------------------------
# Difficulty pre-pass: strict
# ---------------------------------------------------------------------------------------------


def test_estimate_difficulty_grades_strictly():
    import sead.data.difficulty as difficulty

    class FakeSampler:  # any sampler of sead.engines.sampling: token ids in, token ids out
        def sample_ids(self, prompt_ids, sampling, progress=False):
            # prompt "p0": truncated rollouts ending in the gold; "p1": boxed gold on every sample
            return [list(TRUNCATED if ids == p0 else "\\boxed{42}") for ids in prompt_ids for _ in range(sampling.n)]

    class CharTokenizer:  # one id per character
        eos_token_id = pad_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def batch_decode(self, rows, skip_special_tokens=True):
            return ["".join(c if isinstance(c, str) else chr(c) for c in row) for row in rows]

        def decode(self, row, skip_special_tokens=True):
            return self.batch_decode([row])[0]

    p0 = [ord(c) for c in "p0"]
    d = difficulty.estimate_difficulty(FakeSampler(), CharTokenizer(), ["p0", "p1"], ["42", "42"], num_rollouts=2,
                                       max_new_tokens=16, progress=False)
    assert d == [1.0, 0.0]


def test_difficulty_prepass_grades_strictly(tmp_path):
    from sead.data.difficulty import run_prepass

    def generate(prompts, num_samples, seed):
        return [[TRUNCATED, "\\boxed{42}"] for _ in prompts]

    counts = run_prepass(
        generate, ["a", "b"], ["42", "42"], num_rollouts=2, prompts_per_chunk=2,
        partial_path=tmp_path / "p.jsonl", progress=False,
    )  # fmt: skip
    assert counts == [(1, 2), (1, 2)]


def test_difficulty_partial_from_before_strict_grading_is_refused(tmp_path):
    from sead.data.difficulty import check_partial_settings

    partial = tmp_path / "p.jsonl"
    partial.write_text(json.dumps({"index": 0, "correct": 1, "n": 2}) + "\n")
    old_meta = {"model": "m", "num_prompts": 1}  # written before grade_mode was recorded
    partial.with_name(partial.name + ".meta.json").write_text(json.dumps(old_meta))
    with pytest.raises(SeadError, match="grade_mode"):
        check_partial_settings(partial, dict(old_meta, grade_mode="strict"))


# ---------------------------------------------------------------------------------------------
# sead grade / sead eval: --mode strict
# ---------------------------------------------------------------------------------------------


def test_sead_grade_mode_strict_and_auto(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"responses": [TRUNCATED, "Answer: 42"], "answer": "42"}) + "\n")
    for mode, expected in (("strict", [False, True]), ("auto", [True, True])):
        out = tmp_path / f"{mode}.jsonl"
        assert (
            main(["grade", "--input", str(src), "--output", str(out), "--mode", mode, "--workers", "1"]) == 0
        )
        row = json.loads(out.read_text())
        assert row["correct"] == expected, mode
        assert row["pred"][1] == "42"
    with pytest.raises(SystemExit):
        main(["grade", "--input", str(src), "--output", str(tmp_path / "x.jsonl"), "--mode", "nope"])
    capsys.readouterr()


def test_eval_grade_mode_reaches_the_grader():
    from sead.evaluation.benchmarks import BENCHMARKS
    from sead.evaluation.evaluate import EvalConfig, evaluate_benchmark

    bench = BENCHMARKS["gsm8k"]
    rows = [{"question": "q", "answer": "#### 42"}]

    def generate(prompts, num_samples, temperature, description):
        return [[TRUNCATED]]

    for mode, expected in (("strict", 0.0), ("auto", 1.0)):
        config = EvalConfig(model="scripted", benchmarks="gsm8k", k="0", grade_mode=mode)
        config.validate()
        result, _ = evaluate_benchmark(bench, rows, [bench.prompt(rows[0])], generate, k=0, config=config)
        assert result.greedy["pass@1"] == expected, mode
    with pytest.raises(SeadError, match="--mode"):
        EvalConfig(model="m", grade_mode="lenient").validate()


def test_eval_cli_has_mode_flag():
    import argparse

    from sead.commands import eval as eval_cmd

    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    assert parser.parse_args(["--model", "m"]).mode == "auto"
    assert parser.parse_args(["--model", "m", "--mode", "strict"]).mode == "strict"
