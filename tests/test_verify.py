"""Answer extraction (sead.grading.answers) and time-bounded grading (sead.grading.verifier)."""

from __future__ import annotations

import threading
import time

import pytest

from sead.grading.answers import extract_answer, extract_boxed, normalize_answer
from sead.grading.verifier import (
    GRADE_COUNTER,
    GradeCounter,
    GradeResult,
    grade,
    grade_many,
    make_math_reward,
    math_reward,
)
from sead.utils.errors import SeadError

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{5}.", "5"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        (
            "\\boxed{\\left\\{ 1, \\frac{3}{\\sqrt{2}} \\right\\}}",
            "\\left\\{ 1, \\frac{3}{\\sqrt{2}} \\right\\}",
        ),
        ("\\fbox{x^{2}}", "x^{2}"),
        ("$\\boxed {7}$", "7"),
        ("\\boxed 5 apples", "5"),
        ("ok \\boxed{3} but then \\boxed{4", "3"),  # truncated last box: take the last complete one
        ("\\boxed{\\boxed{8}}", "8"),
    ],
)
def test_extract_boxed_cases(text, expected):
    assert extract_answer(text) == expected


def test_extract_boxed_none():
    assert extract_boxed("no box here") is None
    assert extract_answer("no answer here", mode="boxed") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
        ("#### 1,000\n", "1,000"),
        ("Thus, the answer is 42.", "42"),
        ("The final answer is $\\frac{3}{4}$. Done", "\\frac{3}{4}"),
        ("So the answer is: x = 3\nmore text", "x = 3"),
        ("we get 3 apples and 14 pears", "14"),
        ("total -2.5 degrees", "-2.5"),
        ("costs 12,345 dollars", "12,345"),
    ],
)
def test_extract_other_formats(text, expected):
    assert extract_answer(text) == expected


def test_extract_auto_order_prefers_boxed_then_gsm8k_then_answer_is():
    assert extract_answer("the answer is 3. \\boxed{4}\n#### 5") == "4"
    assert extract_answer("the answer is 3.\n#### 5") == "5"
    assert extract_answer("the answer is 3. And 17 more") == "3"


def test_extract_modes_restrict():
    text = "the answer is 3. \\boxed{4}\n#### 5 and 6"
    assert extract_answer(text, mode="boxed") == "4"
    assert extract_answer(text, mode="gsm8k") == "5 and 6"
    assert extract_answer(text, mode="answer_is") == "3"
    assert extract_answer(text, mode="last_number") == "6"
    assert extract_answer("no box 7", mode="boxed") is None
    with pytest.raises(ValueError, match="mode"):
        extract_answer(text, mode="nope")


def test_normalize_answer():
    assert normalize_answer(" $\\frac12$ ") == "\\frac12"
    assert normalize_answer("\\boxed{5}.") == "5"
    assert normalize_answer("\\(x+1\\)") == "x+1"
    assert normalize_answer("1, 2, \\ldots") == "1, 2, \\ldots"


# ---------------------------------------------------------------------------------------------
# Grading: right, wrong, equivalent forms
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\tfrac12}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\sqrt{18}}", "3\\sqrt{2}"),
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}"),
        ("\\boxed{\\{3,1\\}}", "\\{1,3\\}"),
        ("\\boxed{3, 1}", "1,3"),
        ("\\boxed{1000}", "1,000"),
        ("\\boxed{25}", "025"),
        ("\\boxed{27}", 27.0),
        ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{[1, 2)}", "[1,2)"),
        ("\\boxed{x = 5}", "5"),
        ("#### 18", "18"),
        ("The answer is 18.", "18"),
        ("\\boxed{2.50}", "2.5"),
        ("\\boxed{69, 84}", ["$69$", "$84$"]),
    ],
)
def test_equivalent_forms_grade_correct(response, gold):
    result = grade(response, gold)
    assert result.correct, result
    assert not result.timed_out and result.error is None


@pytest.mark.parametrize(
    ("response", "gold"),
    [
        ("\\boxed{19}", "18"),
        ("\\boxed{0.51}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{18}"),
        ("\\boxed{\\{1,4\\}}", "\\{1,3\\}"),
        ("\\boxed{[1, 2]}", "[1,2)"),
        ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed{-18}", "18"),
        ("no number at all", "18"),
    ],
)
def test_wrong_answers_grade_wrong(response, gold):
    assert not grade(response, gold).correct


def test_grade_result_fields():
    result = grade("\\boxed{\\frac{1}{2}}", "0.5")
    assert isinstance(result, GradeResult)
    assert result == GradeResult(correct=True, pred="\\frac{1}{2}", timed_out=False, error=None)
    with pytest.raises(AttributeError):
        result.correct = False  # frozen
    unparsed = grade("nothing", "1")
    assert unparsed.pred is None and not unparsed.correct


def test_grade_never_raises_on_model_output():
    for response in (
        None,
        "",
        "\\boxed{}",
        "\\boxed{\\frac{1}{0}}",
        "\\boxed{)(}",
        "\\boxed{\\begin{matrix}",
    ):
        result = grade(response, "1")
        assert result.correct is False


def test_fast_path_decimals_defer_to_math_verify_rounding():
    # Unequal decimals are not decided by the exact fast path: math-verify rounds to 6 places.
    assert grade("\\boxed{0.3333333}", "0.333333").correct
    assert not grade("\\boxed{0.34}", "0.33").correct


def test_in_process_grading_without_bound():
    assert grade("\\boxed{\\sqrt{18}}", "3\\sqrt{2}", timeout_seconds=None).correct
    assert not grade("\\boxed{\\sqrt{17}}", "3\\sqrt{2}", timeout_seconds=None).correct


# ---------------------------------------------------------------------------------------------
# Time bound
# ---------------------------------------------------------------------------------------------

PATHOLOGICAL = [
    "\\boxed{9^{9^{9^{9}}}}",  # sympy tries to evaluate the power tower (hangs in C code)
    "\\boxed{" + "(" * 3000 + "1" + ")" * 3000 + "}",  # deep nesting
    "\\boxed{" + "+".join(f"x_{{{i}}}^{{{i}}}" for i in range(400)) + "}",  # huge expression
]


@pytest.mark.parametrize("response", PATHOLOGICAL, ids=["power-tower", "deep-nesting", "huge-sum"])
def test_pathological_response_returns_within_bound(response):
    bound = 1.0
    start = time.monotonic()
    result = grade(response, "5", timeout_seconds=bound)
    elapsed = time.monotonic() - start
    assert elapsed < 3 * bound + 5
    assert result.timed_out or not result.correct
    # the grader recovers: a fresh worker answers the next grade
    assert grade("\\boxed{\\sqrt{18}}", "3\\sqrt{2}").correct


def test_power_tower_times_out_and_is_counted():
    counter_before = GRADE_COUNTER.as_dict()["timeouts"]
    result = grade("\\boxed{9^{9^{9^{9}}}}", "5", timeout_seconds=1.0)
    assert result.timed_out and not result.correct and "timed out" in result.error
    assert GRADE_COUNTER.as_dict()["timeouts"] == counter_before + 1


def test_bound_holds_in_a_non_main_thread():
    results: list[GradeResult] = []

    def work():
        results.append(grade("\\boxed{9^{9^{9^{9}}}}", "5", timeout_seconds=1.0))
        results.append(grade("\\boxed{\\tfrac12}", "0.5"))

    thread = threading.Thread(target=work)
    start = time.monotonic()
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert time.monotonic() - start < 3 * 1.0 + 5 + 5  # + one worker start
    assert results[0].timed_out and not results[0].correct
    assert results[1].correct


def test_grade_many_parallel_matches_serial():
    responses = [f"\\boxed{{\\frac{{{i}}}{{4}}}}" for i in range(12)] + ["#### 7", "x"]
    golds = ["\\frac{1}{2}"] * 12 + ["7", "1"]
    serial = grade_many(responses, golds, num_workers=1)
    parallel = grade_many(responses, golds, num_workers=2)
    assert [r.correct for r in serial] == [r.correct for r in parallel]
    assert [r.correct for r in serial] == [i == 2 for i in range(12)] + [True, False]
    with pytest.raises(ValueError, match="length"):
        grade_many(["a"], ["1", "2"])


# ---------------------------------------------------------------------------------------------
# Reward function and counters
# ---------------------------------------------------------------------------------------------


def test_math_reward_strings_and_conversations():
    completions = [
        "\\boxed{4}",
        [{"role": "assistant", "content": "it is \\boxed{\\frac{8}{2}}"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\boxed{5}"}],
        "nothing",
    ]
    rewards = math_reward(prompts=["q"] * 4, completions=completions, answer=["4"] * 4)
    assert rewards == [1.0, 1.0, 0.0, 0.0]


def test_math_reward_requires_answers():
    with pytest.raises(SeadError, match="answer"):
        math_reward(prompts=["q"], completions=["\\boxed{1}"])
    with pytest.raises(SeadError, match="1 completions but 2 answers"):
        math_reward(prompts=["q"], completions=["\\boxed{1}"], answer=["1", "2"])


def test_make_math_reward_counts_timeouts():
    counter = GradeCounter()
    reward = make_math_reward(timeout_seconds=1.0, counter=counter)
    assert reward.__name__ == "math_reward"
    rewards = reward(
        prompts=None, completions=["\\boxed{9^{9^{9^{9}}}}", "\\boxed{2}", "zzz"], answer=["5", "2", "2"]
    )
    assert rewards == [0.0, 1.0, 0.0]
    assert counter.as_dict() == {"total": 3, "correct": 1, "timeouts": 1, "errors": 0, "unparsed": 1}
    assert counter.reset()["total"] == 3
    assert counter.as_dict()["total"] == 0
