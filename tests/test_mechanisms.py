"""The mechanism numbers (sead.experiments.mechanisms.summarize) on hand-built per-token scores."""

import math

import pytest
import torch

from sead.experiments.mechanisms import RolloutScores, format_summary, summarize
from sead.method.zones import FKL, RKL, SKIP

NEG = -math.inf
NAN = math.nan


def _scores():
    # rollout 0 passed (all on path): a fork, two forced tokens
    # rollout 1 failed: forced, then its error token (oracle p* = 0), then off path
    return RolloutScores(
        mask_BT=torch.tensor([[True, True, True], [True, True, True]]),
        h_t_BT=torch.tensor([[1.0, 0.0, 0.2], [0.1, 0.5, 0.9]]),
        h_s_BT=torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.5, 1.0]]),
        disagree_BT=torch.tensor([[True, False, False], [False, True, True]]),
        # d_t = log pi_T(y_t) - log pi_S(y_t)
        d_BT=torch.tensor([[-0.2, 0.1, -0.05], [0.3, 0.4, -1.0]]),
        oracle_logp_BT=torch.tensor([[math.log(0.5), 0.0, 0.0], [0.0, NEG, NAN]]),
        student_logp_BT=torch.tensor([[math.log(0.8), -0.1, -0.1], [-0.1, -1.0, -1.0]]),
        fork_BT=torch.tensor([[True, False, False], [False, False, False]]),
        on_path_BT=torch.tensor([[True, True, True], [True, True, False]]),
        correct_B=torch.tensor([True, False]),
        level_B=torch.tensor([1, 2]),
        zones_BT=torch.tensor([[FKL, SKIP, RKL], [SKIP, RKL, FKL]]),
        choice_BT=torch.tensor([[True, False, False], [False, True, True]]),
    )


def test_summary_by_hand():
    s = summarize(_scores(), entropy_bins=4)
    assert s["tokens"] == 6 and s["pass_rate"] == 0.5
    assert s["mean_h_t"] == pytest.approx(2.7 / 6)
    assert s["token_share"] == pytest.approx({"fork": 1 / 6, "forced": 4 / 6, "off_path": 1 / 6})
    assert s["mean_h_t_at"]["fork"] == pytest.approx(1.0) and s["mean_h_t_at"]["off_path"] == pytest.approx(0.9)
    assert s["h_t_mass_share"]["fork"] == pytest.approx(1.0 / 2.7)
    # both below 0.1: (0,1) only (0.0/0.0); (1,0) has h_t 0.1, not below
    assert s["both_confident_share"] == pytest.approx(1 / 6)
    inc = s["incoherence"]
    assert inc["mean_h_t_passed"] == pytest.approx(1.2 / 3) and inc["mean_h_t_failed"] == pytest.approx(1.5 / 3)
    assert inc["mean_h_t_failed_before_error"] == pytest.approx(0.1)  # the forced token before the error
    assert inc["mean_h_t_failed_from_error"] == pytest.approx(0.7)  # error token 0.5 and off-path 0.9
    assert inc["mean_h_t_determined_passed"] == pytest.approx(0.1)  # (0.0 + 0.2) / 2
    z = s["zones"]
    assert z["fkl"]["token_share"] == pytest.approx(2 / 6) and z["fkl"]["fork_share"] == pytest.approx(0.5)
    # disagreements: (0,0) fkl, (1,1) rkl, (1,2) fkl
    assert z["fkl"]["share_of_disagreements"] == pytest.approx(2 / 3) and z["skip"]["disagree_rate"] == 0.0
    assert s["forks_in_fkl_zone"] == 1.0
    g = s["sign_gate"]
    # v = +1 row 0: consensus iff d > 0 -> (0,1); v = -1 row 1: consensus iff d < 0 -> (1,2)
    assert g["consensus_frac"] == pytest.approx(2 / 6)
    # oracle direction sign(log p* - log pi_S): row 0: log .5 - log .8 < 0, +0.1 > 0, +0.1 > 0; row 1: +0.1 > 0, -inf
    # teacher wrong where sign(d) differs, on path: (0,2) d<0 but oracle up; (1,1) d>0 at the error token
    # conflict on path: (0,0) right, (0,2) wrong, (1,0) right, (1,1) wrong -> 2/4; consensus on path: (0,1) right -> 0
    assert g["all"]["teacher_wrong_at_conflict"] == pytest.approx(0.5)
    assert g["all"]["teacher_wrong_at_consensus"] == 0.0
    # weighted by |d|: wrong 0.05 + 0.4 over 0.2 + 0.05 + 0.3 + 0.4
    assert g["all"]["teacher_wrong_at_conflict_weighted"] == pytest.approx(0.45 / 0.95)
    assert g["teacher_endorses_error"] == 1.0  # d > 0 at the one error token
    hist = s["h_t_histogram"]
    assert sum(hist["fork"]) + sum(hist["forced"]) + sum(hist["off_path"]) == 6
    assert "teacher entropy" in format_summary(s)
