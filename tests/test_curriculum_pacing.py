"""The curriculum's pacing knobs (issue 28): a threshold relative to the open pool's starting pass rate, and
difficulty re-estimated online from the rollouts' verdicts. Hand-computed values."""

from __future__ import annotations

import pytest

from _tiny import tiny_trainer
from sead.method.curriculum import CompetenceCurriculum
from sead.utils.errors import SeadError

# eight prompts, two per bucket: d = 0, 0 | 0.25, 0.25 | 0.5, 0.5 | 1, 1
D = [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0]


def test_relative_threshold_is_the_first_windows_pass_rate_plus_the_margin():
    cur = CompetenceCurriculum(D, num_buckets=4, window=4, threshold=0.6, threshold_mode="relative", margin=0.25)
    assert cur.current_threshold() == float("inf")  # s_0 not measured yet
    assert not cur.update([True, False, False, False])  # the first full window: s_0 = 0.25, no move
    assert cur.start_rate == 0.25 and cur.current_threshold() == pytest.approx(0.5)
    assert not cur.update([True, True])  # window [F, F, T, T]: 0.5, not above 0.5
    assert cur.update([True])  # window [F, T, T, T]: 0.75 > 0.5: the next bucket opens
    assert cur.bucket == 1 and cur.start_rate is None and len(cur.window) == 0  # s_1 is measured afresh
    state = cur.state_dict()
    cur.update([False] * 4)
    twin = CompetenceCurriculum(D, num_buckets=4, window=4, threshold=0.6, threshold_mode="relative", margin=0.25)
    twin.load_state_dict(cur.state_dict())
    assert twin.start_rate == 0.0 and twin.bucket == 1 and state["start_rate"] is None


def test_relative_gate_moves_where_the_absolute_one_stays():
    kw = dict(num_buckets=2, window=4, threshold=0.6)
    absolute = CompetenceCurriculum([0.9, 0.9, 1.0, 1.0], **kw)
    relative = CompetenceCurriculum([0.9, 0.9, 1.0, 1.0], threshold_mode="relative", margin=0.05, **kw)
    for verdicts in ([False] * 4, [True, False]):  # s_0 = 0, then 0.25 > 0.05, below 0.6
        absolute.update(verdicts)
        relative.update(verdicts)
    assert absolute.bucket == 0 and relative.bucket == 1


def test_online_difficulty_is_an_ema_of_the_verdicts_and_moves_the_quantiles():
    cur = CompetenceCurriculum([0.5, 0.5, 0.5, 1.0], num_buckets=2, window=100, online=True, ema=0.5)
    assert cur.gate(0, 100) == 0.5
    cur.update([True, True, False], indices=[0, 1, 3])
    assert cur.difficulties.tolist() == pytest.approx([0.25, 0.25, 0.5, 1.0])  # 0.5 * d + 0.5 * (1 - correct)
    assert cur.gate(0, 100) == 0.25  # the first quantile (2 of 4 prompts) of the current values
    assert cur.open_indices(0, 100).tolist() == [0, 1]
    state = cur.state_dict()
    twin = CompetenceCurriculum([0.5, 0.5, 0.5, 1.0], num_buckets=2, window=100, online=True, ema=0.5)
    twin.load_state_dict(state)
    assert twin.difficulties.tolist() == cur.difficulties.tolist() and twin.gate(0, 100) == 0.25
    with pytest.raises(ValueError, match="indices"):
        cur.update([True])


@pytest.mark.parametrize("kw, match", [(dict(threshold_mode="gain"), "competence_threshold_mode"),
                                       (dict(margin=1.5), "competence_margin"),
                                       (dict(ema=-0.1), "curriculum_difficulty_ema")])
def test_bad_pacing_is_refused_by_name(kw, match):
    with pytest.raises(ValueError, match=match):
        CompetenceCurriculum(D, **kw)


def test_the_trainer_feeds_each_verdicts_prompt_to_the_online_difficulty(tmp_path):
    tr = tiny_trainer(tmp_path, method="opd", curriculum=True, curriculum_online_difficulty=True, max_steps=2,
                      competence_threshold_mode="relative")
    before = tr.curriculum.difficulties.clone()
    tr.train()
    after = tr.curriculum.difficulties
    moved = (after != before).nonzero().flatten().tolist()
    assert moved  # the drawn prompts' difficulty followed their verdicts
    assert all(0.0 <= float(x) <= 1.0 for x in after)
    with pytest.raises(SeadError, match="competence_threshold_mode"):
        tiny_trainer(tmp_path / "bad", method="opd", curriculum=True, competence_threshold_mode="gain")


def test_a_repeated_draw_serves_each_prompt_that_many_times_in_a_row():
    cur = CompetenceCurriculum(D, num_buckets=1, window=4, seed=3)
    picks = cur.draw(5, 100, 8, repeat=4)
    assert len(picks) == 8 and picks[:4] == [picks[0]] * 4 and picks[4:] == [picks[4]] * 4
    assert [picks[0], picks[4]] == cur.draw(5, 100, 2)  # the same prompts as a plain draw of two
    with pytest.raises(ValueError, match="repeat"):
        cur.draw(5, 100, 8, repeat=3)
