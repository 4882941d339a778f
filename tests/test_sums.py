"""The built-in `sums` task: the generator's forks are real, the oracle agrees with an independent
enumeration of correct paths, the verifier accepts every path, levels, splits, tokenizer round trip."""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter

import pytest

from sead.grading.verifier import grade
from sead.tasks import get_task
from sead.tasks import sums as S

STEP_RE = re.compile(r"^ (\d(?:\+\d)+)=(\d+)((?: \+\d(?:\+\d)*=\d+)*) \\boxed\{(\d+)\}$")


def _independent_check(items, text, max_first=3, max_later=2) -> bool:
    """A correct path per the task's rules, checked without the module: every step adds numbers still
    remaining (first step 2..max_first of them, later steps 1..max_later) and writes the true running total;
    all numbers are used once; the boxed value is the last total."""
    m = STEP_RE.match(text)
    if not m:
        return False
    steps = [(m.group(1), m.group(2))]
    steps += re.findall(r" \+(\d(?:\+\d)*)=(\d+)", m.group(3))
    remaining = Counter(items)
    total = 0
    for i, (terms, written) in enumerate(steps):
        digits = [int(d) for d in terms.split("+")]
        lo, hi = (2, max_first) if i == 0 else (1, max_later)
        if not lo <= len(digits) <= hi:
            return False
        for d in digits:
            if remaining[d] == 0:
                return False
            remaining[d] -= 1
        total += sum(digits)
        if int(written) != total or written != str(total):
            return False
    return sum(remaining.values()) == 0 and int(m.group(4)) == total == sum(items)


def _all_paths(items):
    """Every completion the oracle gives positive probability, with its probability (exhaustive walk)."""
    out = {}

    def rec(walk_tokens, prob):
        walk = S.SumWalk(items)
        for t in walk_tokens:
            assert walk.advance(t)
        dist = walk.distribution()
        if not dist:
            out["".join(walk_tokens[:-1])] = prob
            return
        for tok, q in dist.items():
            rec([*walk_tokens, tok], prob * q)

    rec([], 1.0)
    return out


@pytest.mark.parametrize("items", [(3, 7, 2), (5, 5, 1), (9, 8, 7, 6), (1, 2, 1, 2)])
def test_oracle_paths_are_exactly_the_independently_correct_ones(items):
    paths = _all_paths(items)
    assert math.isclose(sum(paths.values()), 1.0, rel_tol=1e-9)
    assert all(_independent_check(items, p) for p in paths)
    # the other direction: every text built by hand from an order and a grouping is among them
    n = len(items)
    for order in set(itertools.permutations(items)):
        for cuts in itertools.product([False, True], repeat=n - 1):  # cut after position i
            steps, cur = [], [order[0]]
            for x, cut in zip(order[1:], cuts):
                if cut:
                    steps.append(cur)
                    cur = []
                cur.append(x)
            steps.append(cur)
            running, text = 0, ""
            for i, step in enumerate(steps):
                running += sum(step)
                text += (" " if i == 0 else " +") + "+".join(map(str, step)) + f"={running}"
            text += f" \\boxed{{{running}}}"
            assert (text in paths) == _independent_check(items, text), text


def test_forks_have_several_correct_continuations_and_forced_tokens_one():
    rng = random.Random(0)
    for level in S.LEVELS:
        for _ in range(30):
            p = S._random_problem(level, "train", rng)
            text = S.sample_completion(p.items, rng)
            tokens = S.completion_tokens(text)
            dists = S.walk_distributions(p.items, tokens)
            forks = 0
            for t, dist in enumerate(dists):
                assert dist is not None and dist[tokens[t]] > 0
                if len(dist) > 1:
                    forks += 1
                    # every alternative next token still completes to a correct, verifier-accepted text
                    for alt in dist:
                        walk = S.SumWalk(p.items)
                        for tok in [*tokens[:t], alt]:
                            assert walk.advance(tok)
                        rest = []
                        while not walk.done:
                            tok = next(iter(walk.distribution()))
                            walk.advance(tok)
                            rest.append(tok)
                        done = "".join([*tokens[:t], alt, *rest][:-1])
                        assert _independent_check(p.items, done), done
                        assert grade(done, str(p.answer)).correct
            assert forks >= 1
            assert forks < len(tokens) / 2  # most positions are forced


def test_branch_proportions_follow_the_style():
    # first pick among distinct digits at positions 0..3: weights 0.7**i
    walk = S.SumWalk((1, 2, 3, 4))
    assert walk.advance(" ")
    dist = walk.distribution()
    w = [S.STYLE.order_decay**i for i in range(4)]
    assert dist == pytest.approx({str(d): wi / sum(w) for d, wi in zip((1, 2, 3, 4), w)})
    # a repeated digit pools the weights of its remaining positions
    walk = S.SumWalk((5, 1, 5))
    walk.advance(" ")
    w = [S.STYLE.order_decay**i for i in range(3)]
    assert walk.distribution() == pytest.approx({"5": (w[0] + w[2]) / sum(w), "1": w[1] / sum(w)})
    # grouping: after two numbers of the first step a third with group_first
    walk = S.SumWalk((1, 2, 3, 4))
    for tok in [" ", "1", "+", "2"]:
        assert walk.advance(tok)
    assert walk.distribution() == pytest.approx({"+": S.STYLE.group_first, "=": 1 - S.STYLE.group_first})
    # sampled frequencies match (first pick of 4 distinct digits)
    rng = random.Random(1)
    firsts = Counter(S.sample_completion((1, 2, 3, 4), rng)[1] for _ in range(4000))
    expected = [S.STYLE.order_decay**i for i in range(4)]
    for d, wi in zip("1234", expected):
        assert abs(firsts[d] / 4000 - wi / sum(expected)) < 0.03


def test_oracle_rejects_errors_and_dies():
    items = (3, 7, 2)
    walk = S.SumWalk(items)
    for tok in " 3+7=1":
        assert walk.advance(tok)
    assert not walk.advance("1")  # 3+7 is not 11
    assert walk.distribution() is None
    dists = S.walk_distributions(items, S.completion_tokens(" 3+3=6 +7=13 \\boxed{13}"))
    assert dists[3] is not None and "3" not in dists[3]  # 3 is used up
    assert all(d is None for d in dists[4:])
    assert not S.is_correct_path(items, " 3+7=10 \\boxed{10}")  # 2 forgotten
    assert S.is_correct_path(items, " 3+7+2=12 \\boxed{12}")
    assert not S.is_correct_path(items, " 3+7+2=12 \\boxed{12}}")


def test_verifier_accepts_every_sampled_path_and_only_the_sum():
    rng = random.Random(2)
    for level in S.LEVELS:
        for p in S.sample_problems(40, levels=(level,), seed=3, split="test"):
            text = S.sample_completion(p.items, rng)
            assert _independent_check(p.items, text), text
            assert grade(text, str(p.answer)).correct
            assert not grade(text, str(p.answer + 1)).correct


def test_levels_lengths_and_budget():
    tok = S.build_tokenizer()
    rng = random.Random(4)
    for level, n in S.LEVEL_LENGTHS.items():
        ds = S.make_dataset(20, levels=(level,), seed=5)
        assert set(ds["level"]) == {level}
        for prompt, items, answer, completion in zip(ds["prompt"], ds["items"], ds["answer"], ds["completion"]):
            assert len(items) == n and prompt == S.format_prompt("+".join(map(str, items)))
            assert int(answer) == sum(items)
            assert S.is_correct_path(items, completion)
        # the longest path (one number per step, all 9s) fits the budget
        longest = " 9+9=18" + "".join(f" +9={9 * k}" for k in range(3, n + 1)) + f" \\boxed{{{9 * n}}}"
        assert S.is_correct_path((9,) * n, longest)
        assert len(tok(longest, add_special_tokens=False)["input_ids"]) + 1 <= S.MAX_NEW_TOKENS
    assert S.MAX_NEW_TOKENS == len(tok(longest, add_special_tokens=False)["input_ids"]) + 1
    assert rng  # seeded


def test_splits_are_disjoint_and_sampling_is_seeded():
    for level in S.LEVELS:
        train = {p.question for p in S.sample_problems(300, levels=(level,), seed=0, split="train")}
        test = {p.question for p in S.sample_problems(300, levels=(level,), seed=0, split="test")}
        assert not train & test
        assert all(S.problem_split(q) == "train" for q in train)
    first = S.make_dataset(30, seed=7)
    assert first["prompt"] == S.make_dataset(30, seed=7)["prompt"]
    assert first["completion"] == S.make_dataset(30, seed=7)["completion"]
    assert first["prompt"] != S.make_dataset(30, seed=8)["prompt"]
    level1 = S.sample_problems(2000, levels=(1,), split="test")
    pool = {p.question for p in level1}
    assert len(pool) == len(S._enumerated(1, "test"))  # a small level repeats only once exhausted
    assert Counter(p.question for p in level1).most_common(1)[0][1] <= math.ceil(2000 / len(pool))


def test_tokenizer_round_trips_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = S.build_tokenizer()
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    rng = random.Random(6)
    for level in S.LEVELS:
        p = S._random_problem(level, "train", rng)
        text = p.prompt + S.sample_completion(p.items, rng)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
        assert reloaded.decode(ids) == text == tok.decode(ids)
        assert [tok.decode([i]) for i in ids] == S.completion_tokens(text, eos=False)


def test_registry_and_task_object():
    task = get_task("sums")
    assert task is S.TASK and task.levels == S.LEVELS
    ds = task.make_dataset(8, seed=0)
    tokens = S.completion_tokens(ds[0]["completion"])
    dists = task.oracle_distributions(ds[0], tokens)
    assert all(d is not None for d in dists) and dists[-1] == {S.EOS: 1.0}
    for spec in (r.model for r in (*task.recipes(), *task.recipes(quick=True))):
        assert spec.hidden_size // spec.num_heads in (32, 64, 80, 96, 112, 128)
    from sead.utils.errors import SeadError

    with pytest.raises(SeadError, match="unknown built-in task"):
        get_task("nope")


def test_the_background_teacher_taking_a_second_thread_trains_the_same_model():
    # sead demo lends the waiting parent's core to the teacher's SFT (sead.tasks.prepare.lend_core): the cached
    # teacher must not depend on when that happened, or the demo and the benchmarks would share a cache entry
    # holding different models.
    import dataclasses

    import torch

    from sead.tasks.sft import build_model, train_sft

    teacher_recipe, _ = S.TASK.recipes(False)
    settings = dataclasses.replace(teacher_recipe.sft, steps=24, stop_at_accuracy=None)
    tokenizer = S.TASK.build_tokenizer()
    before = torch.get_num_threads()
    runs, seen = [], []
    try:
        for switch_at in (None, 8):
            torch.set_num_threads(1)

            def on_step(step, switch_at=switch_at):
                seen.append(step)
                if step == switch_at:
                    torch.set_num_threads(2)

            model = build_model(teacher_recipe.model, tokenizer, seed=0)
            losses = train_sft(model, tokenizer, settings, S.TASK.draw_example, S.TASK.sft_levels(teacher_recipe),
                               seed=0, progress=False, on_step=on_step)  # fmt: skip
            runs.append((losses, [p.detach().clone() for p in model.parameters()]))
        assert torch.get_num_threads() == 2  # the switch happened
    finally:
        torch.set_num_threads(before)
    assert seen == list(range(24)) * 2
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
