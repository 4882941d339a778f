"""Schedules (SEAD 1b cosine anneal, SG-OPD 2b teacher mix ratio) and the SG-OPD sign gate (2a)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sead.losses import cosine_anneal, sign_gate_lambda, sign_gated_advantage, teacher_mix_ratio

SETTINGS = settings(max_examples=50, deadline=None)


# --------------------------------------------------------------------------- references
def ref_cosine(step, total, start, end):
    if total == 0:
        return end
    t = min(max(step, 0), total)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t / total))


def ref_mix(step, total, rho0, phase_fraction):
    if phase_fraction == 0:
        return 0.0
    phase_end = phase_fraction * total
    if step >= phase_end:
        return 0.0
    return rho0 * (1 - step / phase_end)


# --------------------------------------------------------------------------- cosine_anneal
def test_cosine_anneal_hand_computed():
    assert cosine_anneal(0, 100) == pytest.approx(0.8, abs=1e-12)
    assert cosine_anneal(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_anneal(50, 100) == pytest.approx(0.4, abs=1e-12)
    # t/T = 1/4: 0.8 * 0.5 * (1 + cos(pi/4)) = 0.4 * 1.70710678...
    assert cosine_anneal(25, 100) == pytest.approx(0.6828427124746, abs=1e-12)
    # t/T = 3/4: 0.4 * (1 - 0.70710678...) = 0.117157287...
    assert cosine_anneal(75, 100) == pytest.approx(0.1171572875254, abs=1e-12)
    # custom endpoints: start 1, end 0.2, midpoint 0.6
    assert cosine_anneal(5, 10, start=1.0, end=0.2) == pytest.approx(0.6, abs=1e-12)


def test_cosine_anneal_clamps_and_zero_total():
    assert cosine_anneal(-5, 100) == pytest.approx(0.8, abs=1e-12)
    assert cosine_anneal(150, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_anneal(150, 100, start=0.9, end=0.1) == pytest.approx(0.1, abs=1e-12)
    assert cosine_anneal(0, 0) == 0.0
    assert cosine_anneal(7, 0, start=0.8, end=0.3) == pytest.approx(0.3, abs=1e-15)


def test_cosine_anneal_returns_python_float():
    assert isinstance(cosine_anneal(3, 10), float)
    assert isinstance(cosine_anneal(0, 0), float)


@SETTINGS
@given(
    step=st.integers(-20, 1200), total=st.integers(0, 1000),
    start=st.floats(0.0, 1.0), end=st.floats(0.0, 1.0),
)
def test_cosine_anneal_matches_formula(step, total, start, end):
    assert cosine_anneal(step, total, start=start, end=end) == pytest.approx(
        ref_cosine(step, total, start, end), abs=1e-12
    )


@SETTINGS
@given(total=st.integers(1, 1000), start=st.floats(0.0, 1.0), end=st.floats(0.0, 1.0), data=st.data())
def test_cosine_anneal_monotone_and_bounded(total, start, end, data):
    hi, lo = max(start, end), min(start, end)
    s1 = data.draw(st.integers(-10, total + 10))
    s2 = data.draw(st.integers(s1, total + 20))
    a1 = cosine_anneal(s1, total, start=hi, end=lo)
    a2 = cosine_anneal(s2, total, start=hi, end=lo)
    assert a1 >= a2 - 1e-12  # non-increasing when start >= end
    assert lo - 1e-12 <= a1 <= hi + 1e-12
    assert cosine_anneal(0, total, start=hi, end=lo) == pytest.approx(hi, abs=1e-12)
    assert cosine_anneal(total, total, start=hi, end=lo) == pytest.approx(lo, abs=1e-12)


def test_cosine_anneal_full_sweep_is_monotone():
    vals = [cosine_anneal(s, 37) for s in range(-3, 41)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert vals[0] == pytest.approx(0.8) and vals[-1] == pytest.approx(0.0)


# --------------------------------------------------------------------------- teacher_mix_ratio
def test_teacher_mix_ratio_hand_computed():
    # T = 100, rho0 = 0.5, phase 20%: 0.5 at 0, 0.375 at 5, 0.25 at 10, 0 from 20 on
    assert teacher_mix_ratio(0, 100) == pytest.approx(0.5, abs=1e-12)
    assert teacher_mix_ratio(5, 100) == pytest.approx(0.375, abs=1e-12)
    assert teacher_mix_ratio(10, 100) == pytest.approx(0.25, abs=1e-12)
    assert teacher_mix_ratio(20, 100) == pytest.approx(0.0, abs=1e-12)
    assert teacher_mix_ratio(21, 100) == 0.0
    assert teacher_mix_ratio(100, 100) == 0.0
    assert teacher_mix_ratio(1000, 100) == 0.0
    # custom: rho0 1.0, phase 50% of 10 steps -> 1, 0.8, 0.6, 0.4, 0.2, 0
    got = [teacher_mix_ratio(s, 10, rho0=1.0, phase_fraction=0.5) for s in range(7)]
    assert got == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0], abs=1e-12)


def test_teacher_mix_ratio_zero_phase_is_always_zero():
    for s in (0, 1, 5, 100):
        assert teacher_mix_ratio(s, 100, rho0=0.5, phase_fraction=0.0) == 0.0


@SETTINGS
@given(
    total=st.integers(1, 1000), rho0=st.floats(0.0, 1.0), pf=st.floats(0.0, 1.0), data=st.data(),
)
def test_teacher_mix_ratio_formula_monotone_bounded(total, rho0, pf, data):
    assume(pf == 0.0 or pf * total >= 1e-6)
    s1 = data.draw(st.integers(0, total + 10))
    s2 = data.draw(st.integers(s1, total + 20))
    r1 = teacher_mix_ratio(s1, total, rho0=rho0, phase_fraction=pf)
    r2 = teacher_mix_ratio(s2, total, rho0=rho0, phase_fraction=pf)
    assert r1 == pytest.approx(ref_mix(s1, total, rho0, pf), abs=1e-12)
    assert r1 >= r2 - 1e-12
    assert -1e-12 <= r1 <= rho0 + 1e-12
    if pf > 0:
        assert teacher_mix_ratio(0, total, rho0=rho0, phase_fraction=pf) == pytest.approx(rho0, abs=1e-12)
    if s1 >= pf * total:
        assert r1 == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- sign gate
TEACHER = [[-1.0, -2.0, -0.5], [-1.0, -3.0, -0.2]]
STUDENT = [[-1.5, -1.0, -0.5], [-2.0, -1.0, -0.2]]
REF = [[-1.2, -1.5, -1.0], [-1.0, -2.0, -0.7]]
CORRECT = [True, False]
# d = [[0.5, -1.0, 0.0], [1.0, -2.0, 0.0]]; v = [+1, -1]; d*v = [[0.5, -1, 0], [-1, 2, 0]]
LAMBDA = [[1.8, 1.0, 1.0], [1.0, 1.8, 1.0]]  # defaults: 1.8 on consensus, 1.0 on conflict


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_sign_gate_lambda_hand_computed():
    lam = sign_gate_lambda(_t(TEACHER), _t(STUDENT), torch.tensor(CORRECT))
    assert lam.shape == (2, 3)
    torch.testing.assert_close(lam.double(), _t(LAMBDA), rtol=0, atol=1e-12)
    lam = sign_gate_lambda(_t(TEACHER), _t(STUDENT), torch.tensor(CORRECT), lambda_consensus=3.0,
                           lambda_conflict=0.25)
    torch.testing.assert_close(lam.double(), _t([[3.0, 0.25, 0.25], [0.25, 3.0, 0.25]]), rtol=0, atol=1e-12)


def test_sign_gate_lambda_flips_with_verdict():
    lam = sign_gate_lambda(_t(TEACHER), _t(STUDENT), torch.tensor([False, True]), lambda_conflict=0.5)
    # row 0 now v = -1: d*v = [-0.5, 1, 0]; row 1 v = +1: [1, -2, 0]
    torch.testing.assert_close(lam.double(), _t([[0.5, 1.8, 0.5], [1.8, 0.5, 0.5]]), rtol=0, atol=1e-12)


def test_sign_gated_advantage_hand_computed():
    # without a reference: A = lambda * d
    a = sign_gated_advantage(_t(TEACHER), _t(STUDENT), torch.tensor(CORRECT), lambda_conflict=0.5)
    torch.testing.assert_close(a.double(), _t([[0.9, -0.5, 0.0], [0.5, -3.6, 0.0]]), rtol=0, atol=1e-12)
    # with a reference: A = d + (lambda - 1) (teacher - ref); teacher - ref = [[0.2,-0.5,0.5],[0,-1,0.5]]
    a = sign_gated_advantage(_t(TEACHER), _t(STUDENT), torch.tensor(CORRECT), ref_logp=_t(REF), lambda_conflict=0.5)
    exp = [[0.5 + 0.8 * 0.2, -1.0 - 0.5 * -0.5, -0.5 * 0.5], [1.0, -2.0 + 0.8 * -1.0, -0.5 * 0.5]]
    assert exp[0] + exp[1] == pytest.approx([0.66, -0.75, -0.25, 1.0, -2.8, -0.25])
    torch.testing.assert_close(a.double(), _t(exp), rtol=0, atol=1e-12)
    # lambda = 1 everywhere: the gate is the identity and A = d (with or without a reference)
    a = sign_gated_advantage(_t(TEACHER), _t(STUDENT), torch.tensor(CORRECT), ref_logp=_t(REF),
                             lambda_consensus=1.0, lambda_conflict=1.0)
    d = _t(TEACHER) - _t(STUDENT)
    torch.testing.assert_close(a.double(), d, rtol=0, atol=1e-12)


@st.composite
def gate_inputs(draw):
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    t = -torch.rand(B, T, generator=g, dtype=torch.float64) * 5
    s = -torch.rand(B, T, generator=g, dtype=torch.float64) * 5
    r = -torch.rand(B, T, generator=g, dtype=torch.float64) * 5
    ties = torch.rand(B, T, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    s = torch.where(ties, t, s)  # d == 0 exactly at these positions
    correct = torch.tensor(draw(st.lists(st.booleans(), min_size=B, max_size=B)), dtype=torch.bool)
    lc = draw(st.floats(1.0, 3.0))
    lf = draw(st.floats(0.05, 1.0))
    return t, s, r, correct, lc, lf


@SETTINGS
@given(inp=gate_inputs())
def test_sign_gate_fuzz_against_loop_reference(inp):
    t, s, r, correct, lc, lf = inp
    B, T = t.shape
    lam = sign_gate_lambda(t, s, correct, lambda_consensus=lc, lambda_conflict=lf)
    a_noref = sign_gated_advantage(t, s, correct, lambda_consensus=lc, lambda_conflict=lf)
    a_ref = sign_gated_advantage(t, s, correct, ref_logp=r, lambda_consensus=lc, lambda_conflict=lf)
    assert lam.shape == a_noref.shape == a_ref.shape == (B, T)
    for b in range(B):
        v = 1.0 if bool(correct[b]) else -1.0
        for i in range(T):
            d = float(t[b, i]) - float(s[b, i])
            consensus = d * v > 0
            want = lc if consensus else lf
            assert float(lam[b, i]) == pytest.approx(want, abs=1e-12)
            assert float(a_noref[b, i]) == pytest.approx(want * d, abs=1e-12)
            exp = d + (want - 1) * (float(t[b, i]) - float(r[b, i]))
            assert float(a_ref[b, i]) == pytest.approx(exp, abs=1e-12)
            # without a reference the advantage keeps the sign of d (lambda > 0)
            if d > 0:
                assert float(a_noref[b, i]) > 0
            elif d < 0:
                assert float(a_noref[b, i]) < 0
            else:
                assert float(a_noref[b, i]) == 0.0
                assert float(lam[b, i]) == pytest.approx(lf, abs=1e-12)  # d == 0 is a conflict


@SETTINGS
@given(inp=gate_inputs())
def test_sign_gate_float32_inputs(inp):
    t, s, r, correct, lc, lf = inp
    t32, s32 = t.float(), s.float()
    lam = sign_gate_lambda(t32, s32, correct, lambda_consensus=lc, lambda_conflict=lf)
    assert lam.dtype == torch.float32
    # consensus exactly where d * v > 0, d the float32 difference the gate sees; each value is float32(lc) or
    # float32(lf) exactly (no tolerance: lc and lf may lie closer than any tolerance, e.g. 1.0 and 0.99999)
    v32 = torch.where(correct, 1.0, -1.0).float()[:, None]
    consensus = (t32 - s32) * v32 > 0
    want = torch.where(consensus, torch.tensor(lc, dtype=torch.float32), torch.tensor(lf, dtype=torch.float32))
    assert torch.equal(lam, want)
    # rounding to float32 is monotone: the zones are the float64 ones, except where the rounding made t and s tie
    v64 = torch.where(correct, 1.0, -1.0).double()[:, None]
    assert torch.equal(consensus, ((t - s) * v64 > 0) & (t32 != s32))
