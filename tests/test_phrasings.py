"""The real pair's prompts (sead.data.phrasings): the split holds out what it says, and recipes/data/ holds it."""

from __future__ import annotations

import json
from pathlib import Path

from sead.data import phrasings as P

REPO = Path(__file__).resolve().parents[1]


def _question(row: dict) -> str:
    return row["prompt"][-1]["content"]


def test_train_and_test_share_no_prompt_and_hold_out_what_they_say():
    train, test = P.phrasing_rows(num_test=None)
    assert len(train) == 2 * (81 - P.NUM_HELD_PAIRS) * (10 - P.NUM_HELD_PHRASINGS)
    assert len(train) + len(test) == 2 * 81 * 10
    assert not {json.dumps(r["prompt"]) for r in train} & {json.dumps(r["prompt"]) for r in test}
    for op in ("+", "*"):
        train_pairs = {(r["a"], r["b"]) for r in train if r["op"] == op}
        held_pairs = {(r["a"], r["b"]) for r in test if r["op"] == op and r["split"] in ("pair", "both")}
        assert len(train_pairs) == 81 - P.NUM_HELD_PAIRS and len(held_pairs) == P.NUM_HELD_PAIRS
        assert not train_pairs & held_pairs
        held_phrasings = set(range(10 - P.NUM_HELD_PHRASINGS, 10))
        assert not {r["phrasing"] for r in train if r["op"] == op} & held_phrasings
        for r in (r for r in test if r["op"] == op):
            pair_held, phrasing_held = (r["a"], r["b"]) in held_pairs, r["phrasing"] in held_phrasings
            expected = "both" if pair_held and phrasing_held else "pair" if pair_held else "phrasing"
            assert (pair_held or phrasing_held) and r["split"] == expected


def test_rows_ask_what_their_answer_says():
    train, test = P.phrasing_rows()
    assert len(test) == 320
    for r in train + test:
        a, b = r["a"], r["b"]
        assert r["answer"] == str(a + b if r["op"] == "+" else a * b)
        assert _question(r) == P.PHRASINGS[r["op"]][r["phrasing"]].format(a=a, b=b)
        assert r["prompt"][0] == {"role": "system", "content": P.SYSTEM}
        assert [m["role"] for m in r["prompt"]] == ["system", "user", "assistant", "user"]
        assert str(a) in _question(r) and str(b) in _question(r)


def test_recipes_data_holds_the_generated_files(tmp_path):
    for written in P.write_files(tmp_path):
        assert written.read_text() == (REPO / "recipes" / "data" / written.name).read_text(), written.name


def test_the_strict_score_needs_a_closed_box_holding_the_answer():
    # sead.bench.real_pair's strict_accuracy: the verifier's "boxed" mode, without the bare-number fallback
    from sead.grading.verifier import grade

    def strict_correct(text: str, answer: str) -> bool:
        return bool(grade(text, answer, mode="boxed").correct)

    assert strict_correct("7 * 8 = 56. The answer is \\boxed{56}.", "56")
    assert strict_correct("\\boxed{5} no, \\boxed{56}", "56")  # the last box counts
    assert not strict_correct("7 * 8 = 56. The answer is \\boxed{56).", "56")  # unclosed: the verifier's fallback
    assert not strict_correct("7 * 8 = 56.", "56")
    assert not strict_correct("\\boxed{56} then \\boxed{5}", "56")
