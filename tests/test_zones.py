"""SEAD token zones (METHODS.md 1a) against hand-computed cases, a naive reference and properties.

Zone codes: 0 skip, 1 RKL, 2 FKL, -1 masked.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sead.losses import sead_zones

SETTINGS = settings(max_examples=50, deadline=None)

from _naive_zones import FKL, MASKED, RKL, SKIP, ref_quantile, ref_zones  # noqa: E402


def _t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


# The hand case: ten valid positions.
HT = [0.5, 1.0, 0.2, 0.9, 0.1, 0.3, 0.8, 0.4, 0.7, 0.6]
HS = [0.05, 3.0, 0.7, 0.2, 0.9, 0.1, 0.4, 0.6, 0.3, 0.8]


# --------------------------------------------------------------------------- hand-computed cases
def test_reference_quantile_hand_computed():
    assert ref_quantile(HT, 0.9) == pytest.approx(0.91, abs=1e-12)  # pos 8.1 between 0.9 and 1.0
    assert ref_quantile(HT, 0.8) == pytest.approx(0.82, abs=1e-12)
    assert ref_quantile(HT, 1.0) == 1.0
    assert ref_quantile(HT, 0.0) == 0.1
    assert ref_quantile(HT, 0.9) == pytest.approx(float(torch.quantile(_t(HT), 0.9)), abs=1e-15)


@pytest.mark.parametrize(
    "q,s,expected",
    [
        # threshold 0.91: FKL = {1}; skip the floor(0.5*10) = 5 lowest H_S of the rest: {0, 5, 3, 8, 6}
        (0.9, 0.5, [0, 2, 1, 0, 1, 0, 0, 1, 0, 1]),
        # threshold 0.82: FKL = {1, 3}; skip 5 lowest H_S of the rest: {0, 5, 8, 6, 7}
        (0.8, 0.5, [0, 2, 1, 2, 1, 0, 0, 0, 0, 1]),
        # skip floor(0.25*10) = 2: {0, 5}
        (0.9, 0.25, [0, 2, 1, 1, 1, 0, 1, 1, 1, 1]),
        # skip_fraction 0: nothing skipped
        (0.9, 0.0, [1, 2, 1, 1, 1, 1, 1, 1, 1, 1]),
        # skip floor(1.0*10) = 10 > 9 remaining -> all non-FKL skipped
        (0.9, 1.0, [0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
        # quantile 0: every valid position has H_T >= min -> all FKL, none left to skip
        (0.0, 0.5, [2] * 10),
        # quantile 1: only the maximum
        (1.0, 0.5, [0, 2, 1, 0, 1, 0, 0, 1, 0, 1]),
        # skip floor(0.95*10) = 9 of the 8 remaining (FKL {1, 3} at q=0.8) -> all 8 skipped
        (0.8, 0.95, [0, 2, 0, 2, 0, 0, 0, 0, 0, 0]),
    ],
)
def test_zones_hand_computed(q, s, expected):
    mask = torch.ones(10, dtype=torch.long)
    z = sead_zones(_t(HT), _t(HS), mask, teacher_quantile=q, skip_fraction=s)
    assert z.dtype == torch.long
    assert z.shape == (10,)
    assert z.tolist() == expected
    assert ref_zones(HT, HS, [1] * 10, q, s) == expected  # the reference agrees with the hand numbers


def test_zones_defaults_are_q09_s05():
    z = sead_zones(_t(HT), _t(HS), torch.ones(10, dtype=torch.bool))
    assert z.tolist() == [0, 2, 1, 0, 1, 0, 0, 1, 0, 1]


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long, torch.int32, torch.float32])
def test_zones_hand_computed_batched_with_padding(mask_dtype):
    # [2, 7]: row 0 holds hand positions 0..5 + one pad, row 1 positions 6..9 + three pads.
    # Pads carry H_T = 100 (would be FKL) and H_S = -1 (would be skipped): they must not count.
    ht = [HT[0:6] + [100.0], HT[6:10] + [100.0] * 3]
    hs = [HS[0:6] + [-1.0], HS[6:10] + [-1.0] * 3]
    mask = torch.tensor([[1] * 6 + [0], [1] * 4 + [0] * 3]).to(mask_dtype)
    z = sead_zones(_t(ht), _t(hs), mask, teacher_quantile=0.9, skip_fraction=0.5)
    flat = [0, 2, 1, 0, 1, 0, 0, 1, 0, 1]
    assert z.shape == (2, 7)
    assert z.dtype == torch.long
    assert z.tolist() == [flat[0:6] + [-1], flat[6:10] + [-1] * 3]


def test_zones_padding_in_the_middle_and_float32_entropies():
    # interleave pads; float32 entropies that are well separated
    ht = [0.5, 9.0, 1.0, 0.2, 9.0, 0.9, 0.1, 0.3, 0.8, 0.4, 0.7, 0.6]
    hs = [0.05, -5.0, 3.0, 0.7, -5.0, 0.2, 0.9, 0.1, 0.4, 0.6, 0.3, 0.8]
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    z = sead_zones(_t(ht, torch.float32), _t(hs, torch.float32), mask)
    assert z.tolist() == [0, -1, 2, 1, -1, 0, 1, 0, 0, 1, 0, 1]


def test_no_valid_position_gives_all_masked():
    z = sead_zones(torch.rand(3, 4, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64),
                   torch.zeros(3, 4, dtype=torch.long))
    assert z.tolist() == [[-1] * 4] * 3
    assert z.dtype == torch.long


def test_single_valid_position_is_fkl():
    z = sead_zones(_t([0.3, 5.0]), _t([0.1, 0.0]), torch.tensor([1, 0]))
    assert z.tolist() == [2, -1]


def test_all_equal_teacher_entropy_is_all_fkl():
    # every H_T equals the quantile -> all FKL, no skip
    z = sead_zones(torch.full((6,), 0.7, dtype=torch.float64), _t([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
                   torch.ones(6, dtype=torch.long))
    assert z.tolist() == [2] * 6


def test_zones_do_not_track_gradients():
    ht = _t(HT).requires_grad_(True)
    hs = _t(HS).requires_grad_(True)
    z = sead_zones(ht, hs, torch.ones(10, dtype=torch.long))
    assert not z.requires_grad
    assert z.tolist() == [0, 2, 1, 0, 1, 0, 0, 1, 0, 1]


# --------------------------------------------------------------------------- properties / fuzz
entropy_value = st.one_of(st.floats(0.0, 10.0), st.sampled_from([0.0, 0.5, 1.0, 2.5]))


@st.composite
def zone_inputs(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 9))
    n = B * T
    ht = draw(st.lists(entropy_value, min_size=n, max_size=n))
    hs = draw(st.lists(entropy_value, min_size=n, max_size=n))
    kind = draw(st.sampled_from(["random", "lengths", "all", "none"]))
    if kind == "random":
        mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif kind == "lengths":  # right padding with random lengths per row
        lens = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
        mask = [t < lens[b] for b in range(B) for t in range(T)]
    elif kind == "all":
        mask = [True] * n
    else:
        mask = [False] * n
    q = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 0.9, 1.0])))
    s = draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.5, 1.0])))
    return B, T, ht, hs, mask, q, s


@SETTINGS
@given(inp=zone_inputs())
def test_zone_properties(inp):
    B, T, ht, hs, mask, q, s = inp
    ht_t = _t(ht).reshape(B, T)
    hs_t = _t(hs).reshape(B, T)
    mask_t = torch.tensor(mask, dtype=torch.long).reshape(B, T)
    z = sead_zones(ht_t, hs_t, mask_t, teacher_quantile=q, skip_fraction=s)
    assert z.shape == (B, T)
    assert z.dtype == torch.long
    zf = z.reshape(-1).tolist()

    # -1 exactly where the mask is 0; valid positions get 0, 1 or 2
    for i in range(B * T):
        if mask[i]:
            assert zf[i] in (SKIP, RKL, FKL)
        else:
            assert zf[i] == MASKED
    valid = [i for i in range(B * T) if mask[i]]
    n = len(valid)
    if n == 0:
        return

    # FKL: exactly the valid positions with H_T >= the float64 linear quantile of valid H_T
    thr = float(torch.quantile(_t([ht[i] for i in valid]), q))
    fkl = {i for i in valid if ht[i] >= thr}
    assert {i for i in valid if zf[i] == FKL} == fkl
    assert len(fkl) >= 1  # the maximum always reaches the quantile

    # skip count: min(floor(s * N), N - #FKL)
    skip = [i for i in valid if zf[i] == SKIP]
    rkl = [i for i in valid if zf[i] == RKL]
    assert len(skip) == min(math.floor(s * n), n - len(fkl))
    assert len(skip) + len(rkl) + len(fkl) == n

    # the skipped are the lowest H_S among the non-FKL positions
    if skip and rkl:
        assert max(hs[i] for i in skip) <= min(hs[i] for i in rkl)

    # without ties in H_S the assignment is unique: compare with the reference
    if len({hs[i] for i in valid}) == n:
        assert zf == ref_zones(ht, hs, mask, q, s)


@SETTINGS
@given(inp=zone_inputs(), seed=st.integers(0, 10_000))
def test_zones_invariant_to_garbage_at_masked_positions(inp, seed):
    B, T, ht, hs, mask, q, s = inp
    mask_t = torch.tensor(mask, dtype=torch.bool).reshape(B, T)
    ht_t, hs_t = _t(ht).reshape(B, T), _t(hs).reshape(B, T)
    g = torch.Generator().manual_seed(seed)
    junk_t = torch.rand(B, T, generator=g, dtype=torch.float64) * 100 - 50
    junk_s = torch.rand(B, T, generator=g, dtype=torch.float64) * 100 - 50
    z1 = sead_zones(ht_t, hs_t, mask_t, teacher_quantile=q, skip_fraction=s)
    z2 = sead_zones(torch.where(mask_t, ht_t, junk_t), torch.where(mask_t, hs_t, junk_s), mask_t,
                    teacher_quantile=q, skip_fraction=s)
    if len({hs[i] for i in range(B * T) if mask[i]}) == int(mask_t.sum()):
        assert torch.equal(z1, z2)
    else:  # with H_S ties only the counts are determined
        for code in (SKIP, RKL, FKL, MASKED):
            assert int((z1 == code).sum()) == int((z2 == code).sum())


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 60), q=st.floats(0.0, 1.0), s=st.floats(0.0, 1.0))
def test_zones_match_reference_on_continuous_entropies(seed, N, q, s):
    g = torch.Generator().manual_seed(seed)
    ht = torch.rand(N, generator=g, dtype=torch.float64) * 4
    hs = torch.rand(N, generator=g, dtype=torch.float64) * 4
    mask = torch.rand(N, generator=g) < 0.8
    z = sead_zones(ht, hs, mask, teacher_quantile=q, skip_fraction=s)
    assert z.tolist() == ref_zones(ht.tolist(), hs.tolist(), mask.tolist(), q, s)


def test_default_fractions_on_a_large_batch():
    # ~10% FKL, 50% skip, ~40% RKL on 1000 continuous positions
    g = torch.Generator().manual_seed(0)
    ht = torch.rand(1000, generator=g, dtype=torch.float64)
    hs = torch.rand(1000, generator=g, dtype=torch.float64)
    z = sead_zones(ht, hs, torch.ones(1000, dtype=torch.long))
    assert int((z == FKL).sum()) == 100  # quantile at pos 899.1 -> the top 100
    assert int((z == SKIP).sum()) == 500
    assert int((z == RKL).sum()) == 400
