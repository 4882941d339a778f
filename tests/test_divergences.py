"""Per-position divergences and entropies against naive float64 references.

The references below are written with Python loops over the vocabulary and ``math`` on float64
numbers; they share no code with ``sead``. Hand-computed cases write their numbers out.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sead.losses import (
    forward_kl,
    generalized_jsd,
    mixed_kl,
    reverse_kl,
    sgopd_target_logits,
    skew_kl,
    token_entropy,
    topk_forward_kl,
    topk_reverse_kl,
)

SETTINGS = settings(max_examples=50, deadline=None)


# --------------------------------------------------------------------------- naive references
def _log_softmax(row, tau=1.0):
    xs = [x / tau for x in row]
    m = max(xs)
    lse = m + math.log(math.fsum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def _softmax(row, tau=1.0):
    return [math.exp(lp) for lp in _log_softmax(row, tau)]


def _kl_from_logp(logp, logq):
    """KL(p || q) = sum_v p(v) (log p(v) - log q(v)), taken under p."""
    return math.fsum(math.exp(a) * (a - b) for a, b in zip(logp, logq))


def _kl_probs(p, q):
    """KL(p || q) over explicit probability vectors, taken under p (terms with p = 0 vanish)."""
    return math.fsum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _entropy_probs(p):
    return -math.fsum(pi * math.log(pi) for pi in p if pi > 0)


def ref_forward_kl_row(s, t, tau=1.0):
    return _kl_from_logp(_log_softmax(t, tau), _log_softmax(s, tau))  # KL(p_T || p_S), under p_T


def ref_reverse_kl_row(s, t, tau=1.0):
    return _kl_from_logp(_log_softmax(s, tau), _log_softmax(t, tau))  # KL(p_S || p_T), under p_S


def ref_jsd_row(s, t, beta, tau=1.0):
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    m = [(1 - beta) * a + beta * b for a, b in zip(ps, pt)]
    return beta * _kl_probs(pt, m) + (1 - beta) * _kl_probs(ps, m)


def ref_skew_row(s, t, skew, tau=1.0, reverse=False):
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    if not reverse:  # KL(p_T || skew p_T + (1 - skew) p_S), under p_T
        m = [skew * b + (1 - skew) * a for a, b in zip(ps, pt)]
        return _kl_probs(pt, m)
    m = [skew * a + (1 - skew) * b for a, b in zip(ps, pt)]  # KL(p_S || skew p_S + (1-skew) p_T)
    return _kl_probs(ps, m)


def _topk_buckets(s, t, k, tau):
    """(p_T buckets, p_S buckets): teacher top-k ids by teacher logits, plus one tail bucket."""
    ids = sorted(range(len(t)), key=lambda i: -t[i])[: min(k, len(t))]
    rest = [i for i in range(len(t)) if i not in ids]
    ps, pt = _softmax(s, tau), _softmax(t, tau)
    bt = [pt[i] for i in ids] + [math.fsum(pt[i] for i in rest)]
    bs = [ps[i] for i in ids] + [math.fsum(ps[i] for i in rest)]
    return bt, bs


def ref_topk_fkl_row(s, t, k, tau=1.0):
    bt, bs = _topk_buckets(s, t, k, tau)
    return _kl_probs(bt, bs)


def ref_topk_rkl_row(s, t, k, tau=1.0):
    bt, bs = _topk_buckets(s, t, k, tau)
    return _kl_probs(bs, bt)


def ref_entropy_row(z, top_k=None, tau=1.0):
    if top_k is not None:
        z = sorted(z, reverse=True)[: min(top_k, len(z))]
    return _entropy_probs(_softmax(z, tau))


def _apply(ref_row, s, t, *args):
    """Apply a per-row reference to [..., V] tensors, returning a float64 tensor shaped [...]."""
    V = s.shape[-1]
    rs = s.detach().double().reshape(-1, V).tolist()
    rt = t.detach().double().reshape(-1, V).tolist()
    out = [ref_row(a, b, *args) for a, b in zip(rs, rt)]
    return torch.tensor(out, dtype=torch.float64).reshape(s.shape[:-1])


def _rand(shape, seed, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _close64(actual, expected, tol=1e-9):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol)


seeds = st.integers(0, 2**31 - 1)
scales = st.sampled_from([0.1, 1.0, 3.0])
temps = st.sampled_from([0.5, 1.0, 2.0])
row_floats = st.floats(-30, 30, allow_nan=False, allow_infinity=False)


@st.composite
def logit_pair_rows(draw, min_v=2, max_v=12):
    """Two raw float rows drawn element-wise by hypothesis (ties and repeats are allowed)."""
    V = draw(st.integers(min_v, max_v))
    s = draw(st.lists(row_floats, min_size=V, max_size=V))
    t = draw(st.lists(row_floats, min_size=V, max_size=V))
    return (torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64))


# --------------------------------------------------------------------------- hand-computed cases
def test_forward_and_reverse_kl_hand_computed():
    # p_S = softmax([0, 0]) = [1/2, 1/2]; p_T = softmax([log 3, 0]) = [3/4, 1/4]
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    fkl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # = 0.130812035...
    rkl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = 0.143841036...
    assert fkl == pytest.approx(0.1308120351, abs=1e-9)
    assert rkl == pytest.approx(0.1438410362, abs=1e-9)
    _close64(forward_kl(s, t), torch.tensor([fkl], dtype=torch.float64), 1e-12)
    _close64(reverse_kl(s, t), torch.tensor([rkl], dtype=torch.float64), 1e-12)
    # swapping the roles swaps the directions
    _close64(forward_kl(t, s), torch.tensor([rkl], dtype=torch.float64), 1e-12)


def test_kl_temperature_hand_computed():
    # with tau = 2: p_S = softmax([0, 0]) = [1/2, 1/2]; p_T = softmax([log 9, 0] / 2) = [3/4, 1/4]
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(9.0), 0.0]], dtype=torch.float64)
    fkl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    _close64(forward_kl(s, t, temperature=2.0), torch.tensor([fkl], dtype=torch.float64), 1e-12)
    # tau = 1: p_T = [9/10, 1/10]
    fkl1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    _close64(forward_kl(s, t), torch.tensor([fkl1], dtype=torch.float64), 1e-12)


def test_jsd_hand_computed_half():
    # p_S = [1, 0]-ish is not allowed (finite logits), use p_S = [1/2, 1/2], p_T = [3/4, 1/4], beta = 1/2:
    # m = [5/8, 3/8]
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    kl_t = 0.75 * math.log(0.75 / 0.625) + 0.25 * math.log(0.25 / 0.375)
    kl_s = 0.5 * math.log(0.5 / 0.625) + 0.5 * math.log(0.5 / 0.375)
    expected = 0.5 * kl_t + 0.5 * kl_s
    _close64(generalized_jsd(s, t, 0.5), torch.tensor([expected], dtype=torch.float64), 1e-12)
    # beta = 0.25: m = 0.75 p_S + 0.25 p_T = [9/16, 7/16]
    kl_t = 0.75 * math.log(0.75 / (9 / 16)) + 0.25 * math.log(0.25 / (7 / 16))
    kl_s = 0.5 * math.log(0.5 / (9 / 16)) + 0.5 * math.log(0.5 / (7 / 16))
    expected = 0.25 * kl_t + 0.75 * kl_s
    _close64(generalized_jsd(s, t, 0.25), torch.tensor([expected], dtype=torch.float64), 1e-12)


def test_skew_kl_hand_computed():
    # p_S = [1/2, 1/2], p_T = [3/4, 1/4], skew 0.1
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    m_fwd = [0.1 * 0.75 + 0.9 * 0.5, 0.1 * 0.25 + 0.9 * 0.5]  # [0.525, 0.475]
    fwd = 0.75 * math.log(0.75 / m_fwd[0]) + 0.25 * math.log(0.25 / m_fwd[1])
    m_rev = [0.1 * 0.5 + 0.9 * 0.75, 0.1 * 0.5 + 0.9 * 0.25]  # [0.725, 0.275]
    rev = 0.5 * math.log(0.5 / m_rev[0]) + 0.5 * math.log(0.5 / m_rev[1])
    _close64(skew_kl(s, t, skew=0.1), torch.tensor([fwd], dtype=torch.float64), 1e-12)
    _close64(skew_kl(s, t, skew=0.1, reverse=True), torch.tensor([rev], dtype=torch.float64), 1e-12)
    # default skew is 0.1 and default direction is forward
    _close64(skew_kl(s, t), torch.tensor([fwd], dtype=torch.float64), 1e-12)


def test_topk_hand_computed_k1():
    # V = 3, teacher logits [log 6, log 3, log 1] -> p_T = [0.6, 0.3, 0.1]; teacher top-1 = id 0.
    # student logits [log 2, log 5, log 3] -> p_S = [0.2, 0.5, 0.3].
    # buckets: p_T -> [0.6, 0.4], p_S -> [0.2, 0.8].
    t = torch.tensor([[math.log(6.0), math.log(3.0), 0.0]], dtype=torch.float64)
    s = torch.tensor([[math.log(2.0), math.log(5.0), math.log(3.0)]], dtype=torch.float64)
    fkl = 0.6 * math.log(0.6 / 0.2) + 0.4 * math.log(0.4 / 0.8)
    rkl = 0.2 * math.log(0.2 / 0.6) + 0.8 * math.log(0.8 / 0.4)
    _close64(topk_forward_kl(s, t, top_k=1), torch.tensor([fkl], dtype=torch.float64), 1e-12)
    _close64(topk_reverse_kl(s, t, top_k=1), torch.tensor([rkl], dtype=torch.float64), 1e-12)
    # k = 2: ids {0, 1}; buckets p_T [0.6, 0.3, 0.1], p_S [0.2, 0.5, 0.3] = the full distributions
    fkl2 = 0.6 * math.log(3.0) + 0.3 * math.log(0.3 / 0.5) + 0.1 * math.log(0.1 / 0.3)
    _close64(topk_forward_kl(s, t, top_k=2), torch.tensor([fkl2], dtype=torch.float64), 1e-12)


def test_topk_buckets_follow_teacher_not_student():
    # The top-k ids come from the TEACHER's logits: the student's favourite token (id 2) lands in the tail.
    # p_T = [0.5, 0.3, 0.2], p_S = [0.1, 0.1, 0.8]; k = 1 -> buckets T [0.5, 0.5], S [0.1, 0.9]
    t = torch.tensor([[math.log(5.0), math.log(3.0), math.log(2.0)]], dtype=torch.float64)
    s = torch.tensor([[0.0, 0.0, math.log(8.0)]], dtype=torch.float64)
    fkl = 0.5 * math.log(0.5 / 0.1) + 0.5 * math.log(0.5 / 0.9)
    _close64(topk_forward_kl(s, t, top_k=1), torch.tensor([fkl], dtype=torch.float64), 1e-12)


def test_entropy_hand_computed():
    # uniform over 4 -> log 4; p = [1/2, 1/4, 1/4] -> 1.5 log 2; top_k=2 of [log 2, log 1, log 1] -> log 2
    # the last logit of row 1 carries negligible mass (e^-50 relative)
    z = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0, -50.0]], dtype=torch.float64)
    H = token_entropy(z)
    assert H.shape == (2,)
    assert float(H[0]) == pytest.approx(math.log(4.0), abs=1e-12)
    assert float(H[1]) == pytest.approx(1.5 * math.log(2.0), abs=1e-12)
    H2 = token_entropy(z, top_k=2)
    assert float(H2[0]) == pytest.approx(math.log(2.0), abs=1e-12)
    # top-2 of [log 2, 0, 0, -50] = [log 2, 0] -> p = [2/3, 1/3]
    h = -(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3)
    assert float(H2[1]) == pytest.approx(h, abs=1e-12)
    # top_k = 1 -> a single renormalised token: entropy exactly 0
    assert torch.all(token_entropy(z, top_k=1).abs() < 1e-12)
    # temperature 2 on [log 4, 0] -> softmax([log 2, 0]) = [2/3, 1/3]
    z2 = torch.tensor([[math.log(4.0), 0.0]], dtype=torch.float64)
    assert float(token_entropy(z2, temperature=2.0)[0]) == pytest.approx(h, abs=1e-12)


def test_sgopd_target_logits_hand_computed():
    zt = torch.tensor([[[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]], dtype=torch.float64)  # [1, 2, 3]
    zr = torch.tensor([[[0.0, 0.0, 6.0], [2.0, 2.0, 2.0]]], dtype=torch.float64)
    # lam = 1.8 scalar: 1.8 z_T - 0.8 z_ref
    exp = torch.tensor([[[1.8, 3.6, 0.6], [-1.6, -3.4, 5.6]]], dtype=torch.float64)
    torch.testing.assert_close(sgopd_target_logits(zt, zr, 1.8), exp, rtol=0, atol=1e-12)
    # per-position lam [1, 2]: position 0 lam 0.5, position 1 lam 0.0 -> z_ref
    lam = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    exp = torch.tensor([[[0.5, 1.0, 4.5], [2.0, 2.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(sgopd_target_logits(zt, zr, lam), exp, rtol=0, atol=1e-12)
    torch.testing.assert_close(sgopd_target_logits(zt, zr, 1.0), zt, rtol=0, atol=1e-12)
    torch.testing.assert_close(sgopd_target_logits(zt, zr, 0.0), zr, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5)])
def test_output_shapes(shape):
    s, t = _rand(shape, 1), _rand(shape, 2)
    want = shape[:-1]
    assert forward_kl(s, t).shape == want
    assert reverse_kl(s, t).shape == want
    assert generalized_jsd(s, t, 0.5).shape == want
    assert mixed_kl(s, t, 0.3).shape == want
    assert skew_kl(s, t).shape == want
    assert skew_kl(s, t, reverse=True).shape == want
    assert topk_forward_kl(s, t, top_k=2).shape == want
    assert topk_reverse_kl(s, t, top_k=2).shape == want
    assert token_entropy(s).shape == want
    assert token_entropy(s, top_k=2).shape == want


# --------------------------------------------------------------------------- against references
@SETTINGS
@given(seed=seeds, scale=scales, tau=temps, B=st.integers(1, 3), T=st.integers(1, 4), V=st.integers(2, 11))
def test_fkl_rkl_match_reference(seed, scale, tau, B, T, V):
    s, t = _rand((B, T, V), seed, scale), _rand((B, T, V), seed + 1, scale)
    _close64(forward_kl(s, t, temperature=tau), _apply(ref_forward_kl_row, s, t, tau))
    _close64(reverse_kl(s, t, temperature=tau), _apply(ref_reverse_kl_row, s, t, tau))


@SETTINGS
@given(seed=seeds, scale=scales, tau=temps, beta=st.floats(0.01, 0.99), N=st.integers(1, 6), V=st.integers(2, 11))
def test_jsd_matches_reference(seed, scale, tau, beta, N, V):
    s, t = _rand((N, V), seed, scale), _rand((N, V), seed + 1, scale)
    _close64(generalized_jsd(s, t, beta, temperature=tau), _apply(ref_jsd_row, s, t, beta, tau))


@SETTINGS
@given(seed=seeds, scale=scales, tau=temps, alpha=st.floats(0.0, 1.0), N=st.integers(1, 6), V=st.integers(2, 11))
def test_mixed_kl_matches_reference(seed, scale, tau, alpha, N, V):
    s, t = _rand((N, V), seed, scale), _rand((N, V), seed + 1, scale)
    exp = alpha * _apply(ref_forward_kl_row, s, t, tau) + (1 - alpha) * _apply(ref_reverse_kl_row, s, t, tau)
    _close64(mixed_kl(s, t, alpha, temperature=tau), exp)


@SETTINGS
@given(
    seed=seeds, scale=scales, tau=temps, skew=st.floats(0.0, 1.0), reverse=st.booleans(),
    N=st.integers(1, 6), V=st.integers(2, 11),
)
def test_skew_kl_matches_reference(seed, scale, tau, skew, reverse, N, V):
    s, t = _rand((N, V), seed, scale), _rand((N, V), seed + 1, scale)
    exp = _apply(ref_skew_row, s, t, skew, tau, reverse)
    _close64(skew_kl(s, t, skew=skew, temperature=tau, reverse=reverse), exp)
    # bound: the mixture is >= skew * p pointwise, so the skew KL is <= -log(skew)
    if skew > 0:
        assert float(exp.max()) <= -math.log(skew) + 1e-9


@SETTINGS
@given(seed=seeds, scale=scales, tau=temps, k=st.integers(1, 12), N=st.integers(1, 6), V=st.integers(2, 11))
def test_topk_matches_reference(seed, scale, tau, k, N, V):
    # Semantics check (which buckets, which direction); the tail's floating-point precision is tested
    # separately and strictly below (test_topk_with_k_vocab_minus_one_equals_full_kl, ..._tiny_student_tail).
    s, t = _rand((N, V), seed, scale), _rand((N, V), seed + 1, scale)
    _close64(topk_forward_kl(s, t, top_k=k, temperature=tau), _apply(ref_topk_fkl_row, s, t, k, tau), 1e-6)
    _close64(topk_reverse_kl(s, t, top_k=k, temperature=tau), _apply(ref_topk_rkl_row, s, t, k, tau), 1e-6)


@SETTINGS
@given(seed=seeds, scale=scales, tau=temps, k=st.one_of(st.none(), st.integers(1, 12)), N=st.integers(1, 6),
       V=st.integers(2, 11))
def test_entropy_matches_reference(seed, scale, tau, k, N, V):
    z = _rand((N, V), seed, scale)
    exp = torch.tensor([ref_entropy_row(r, k, tau) for r in z.tolist()], dtype=torch.float64)
    _close64(token_entropy(z, top_k=k, temperature=tau), exp)


@SETTINGS
@given(seed=seeds, N=st.integers(1, 4), V=st.integers(2, 9), use_tensor=st.booleans())
def test_sgopd_target_logits_matches_reference(seed, N, V, use_tensor):
    zt, zr = _rand((2, N, V), seed), _rand((2, N, V), seed + 1)
    lam = _rand((2, N), seed + 2) * 2 if use_tensor else 1.8
    out = sgopd_target_logits(zt, zr, lam)
    assert out.shape == zt.shape
    for b in range(2):
        for n in range(N):
            lv = float(lam[b, n]) if use_tensor else lam
            for v in range(V):
                exp = lv * float(zt[b, n, v]) + (1 - lv) * float(zr[b, n, v])
                assert float(out[b, n, v]) == pytest.approx(exp, abs=1e-12)


def test_float32_inputs_match_float64_reference():
    s, t = _rand((4, 7, 13), 11, 3.0, torch.float32), _rand((4, 7, 13), 12, 3.0, torch.float32)
    for fn, ref in [(forward_kl, ref_forward_kl_row), (reverse_kl, ref_reverse_kl_row)]:
        out = fn(s, t)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), _apply(ref, s, t), rtol=1e-4, atol=2e-5)
    out = topk_forward_kl(s, t, top_k=3)
    torch.testing.assert_close(out.double(), _apply(ref_topk_fkl_row, s, t, 3), rtol=1e-4, atol=2e-5)


# --------------------------------------------------------------------------- properties
@SETTINGS
@given(pair=logit_pair_rows(), tau=temps)
def test_kl_nonnegative_and_zero_on_self(pair, tau):
    s, t = pair
    for fn in (forward_kl, reverse_kl):
        assert float(fn(s, t, temperature=tau).min()) >= -1e-9
        assert float(fn(s, s, temperature=tau).abs().max()) <= 1e-9
        assert float(fn(t, t, temperature=tau).abs().max()) <= 1e-9
    for k in (1, 2, 64):
        for fn in (topk_forward_kl, topk_reverse_kl):
            assert float(fn(s, t, top_k=k, temperature=tau).min()) >= -1e-9
            assert float(fn(s, s, top_k=k, temperature=tau).abs().max()) <= 1e-9


@SETTINGS
@given(seed=seeds, scale=scales, shift_s=st.floats(-1e3, 1e3), shift_t=st.floats(-1e3, 1e3))
def test_kl_invariant_to_per_position_logit_shift(seed, scale, shift_s, shift_t):
    s, t = _rand((3, 7), seed, scale), _rand((3, 7), seed + 1, scale)
    for fn in (forward_kl, reverse_kl):
        torch.testing.assert_close(fn(s + shift_s, t + shift_t), fn(s, t), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(token_entropy(s + shift_s), token_entropy(s), rtol=1e-7, atol=1e-8)


@SETTINGS
@given(seed=seeds, scale=scales, tau=temps)
def test_temperature_equals_scaled_logits(seed, scale, tau):
    s, t = _rand((3, 7), seed, scale), _rand((3, 7), seed + 1, scale)
    _close64(forward_kl(s, t, temperature=tau), forward_kl(s / tau, t / tau).double())
    _close64(reverse_kl(s, t, temperature=tau), reverse_kl(s / tau, t / tau).double())
    _close64(token_entropy(s, temperature=tau), token_entropy(s / tau).double())


@SETTINGS
@given(pair=logit_pair_rows(), tau=temps)
def test_jsd_endpoints_are_exactly_fkl_and_rkl(pair, tau):
    s, t = pair
    assert torch.equal(generalized_jsd(s, t, 0.0, temperature=tau), forward_kl(s, t, temperature=tau))
    assert torch.equal(generalized_jsd(s, t, 1.0, temperature=tau), reverse_kl(s, t, temperature=tau))
    # mixed_kl endpoints: alpha = 1 is FKL, alpha = 0 is RKL
    torch.testing.assert_close(mixed_kl(s, t, 1.0, temperature=tau), forward_kl(s, t, temperature=tau))
    torch.testing.assert_close(mixed_kl(s, t, 0.0, temperature=tau), reverse_kl(s, t, temperature=tau))


@SETTINGS
@given(pair=logit_pair_rows(), beta=st.floats(0.001, 0.999), tau=temps)
def test_jsd_bounds_and_symmetry(pair, beta, tau):
    s, t = pair
    j = generalized_jsd(s, t, beta, temperature=tau)
    # 0 <= JSD_beta <= H(beta) (binary entropy of the mixture weights)
    h = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
    assert float(j.min()) >= -1e-9
    assert float(j.max()) <= h + 1e-9
    # swapping student/teacher and beta <-> 1 - beta leaves the mixture and the value unchanged
    torch.testing.assert_close(generalized_jsd(t, s, 1 - beta, temperature=tau), j, rtol=1e-7, atol=1e-9)
    assert float(generalized_jsd(s, s, beta, temperature=tau).abs().max()) <= 1e-9


@SETTINGS
@given(pair=logit_pair_rows(), tau=temps)
def test_skew_endpoints(pair, tau):
    s, t = pair
    # skew 0: plain KL; skew 1: KL(p || p) = 0
    torch.testing.assert_close(skew_kl(s, t, skew=0.0, temperature=tau), forward_kl(s, t, temperature=tau),
                               rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(skew_kl(s, t, skew=0.0, temperature=tau, reverse=True),
                               reverse_kl(s, t, temperature=tau), rtol=1e-7, atol=1e-8)
    assert float(skew_kl(s, t, skew=1.0, temperature=tau).abs().max()) <= 1e-9
    assert float(skew_kl(s, t, skew=1.0, temperature=tau, reverse=True).abs().max()) <= 1e-9
    for rev in (False, True):
        assert float(skew_kl(s, t, skew=0.3, temperature=tau, reverse=rev).min()) >= -1e-9


@SETTINGS
@given(pair=logit_pair_rows(), tau=temps)
def test_topk_is_coarse_graining_of_full_kl(pair, tau):
    s, t = pair
    V = s.shape[-1]
    full_f, full_r = forward_kl(s, t, temperature=tau), reverse_kl(s, t, temperature=tau)
    prev_f = prev_r = None
    for k in range(1, V + 1):
        f = topk_forward_kl(s, t, top_k=k, temperature=tau)
        r = topk_reverse_kl(s, t, top_k=k, temperature=tau)
        # data-processing inequality: bucketing never increases KL
        assert float((f - full_f).max()) <= 1e-7 * (1 + float(full_f.abs().max()))
        assert float((r - full_r).max()) <= 1e-7 * (1 + float(full_r.abs().max()))
        if prev_f is not None and len(set(t[0].tolist())) == V:  # nested bucketings (needs no teacher ties)
            assert float((prev_f - f).max()) <= 1e-7 * (1 + float(f.abs().max()))
            assert float((prev_r - r).max()) <= 1e-7 * (1 + float(r.abs().max()))
        prev_f, prev_r = f, r


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("extra", [0, 1, 50])
def test_topk_with_k_at_least_vocab_equals_full_kl(dtype, tol, extra):
    V = 9
    s, t = _rand((4, 3, V), 21, 2.0, dtype), _rand((4, 3, V), 22, 2.0, dtype)
    k = V + extra
    f, r = topk_forward_kl(s, t, top_k=k), topk_reverse_kl(s, t, top_k=k)
    assert torch.isfinite(f).all() and torch.isfinite(r).all()
    torch.testing.assert_close(f.double(), _apply(ref_forward_kl_row, s, t), rtol=tol, atol=tol)
    torch.testing.assert_close(r.double(), _apply(ref_reverse_kl_row, s, t), rtol=tol, atol=tol)
    H = token_entropy(s, top_k=k)
    torch.testing.assert_close(H.double(), token_entropy(s).double(), rtol=tol, atol=tol)


@SETTINGS
@given(seed=seeds, scale=scales, V=st.integers(2, 12), k=st.integers(1, 12))
def test_entropy_bounds(seed, scale, V, k):
    z = _rand((5, V), seed, scale)
    H = token_entropy(z)
    assert float(H.min()) >= -1e-9
    assert float(H.max()) <= math.log(V) + 1e-9
    Hk = token_entropy(z, top_k=k)
    assert float(Hk.min()) >= -1e-9
    assert float(Hk.max()) <= math.log(min(k, V)) + 1e-9


def test_entropy_uniform_and_peaked():
    V = 10
    z = torch.zeros(3, V, dtype=torch.float64)
    torch.testing.assert_close(token_entropy(z), torch.full((3,), math.log(V), dtype=torch.float64))
    z[:, 0] = 200.0  # essentially one-hot; must stay finite and ~0
    H = token_entropy(z)
    assert torch.isfinite(H).all()
    assert float(H.abs().max()) < 1e-12


# --------------------------------------------------------------------------- numerics and gradients
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_are_stable(dtype):
    # p_T ~= [1, e^-10000]: RKL from a uniform student = 0.5 log(0.5) + 0.5 (log 0.5 + 10000)
    s = torch.tensor([[0.0, 0.0]], dtype=dtype)
    t = torch.tensor([[0.0, -10000.0]], dtype=dtype)
    rkl = reverse_kl(s, t)
    assert torch.isfinite(rkl).all()
    assert float(rkl[0]) == pytest.approx(5000.0 + math.log(0.5), rel=1e-5)
    fkl = forward_kl(s, t)  # = log 2 (p_T is one-hot on id 0, p_S(0) = 1/2)
    assert float(fkl[0]) == pytest.approx(math.log(2.0), abs=1e-5)
    big = torch.tensor([[1e4, -1e4, 0.0]], dtype=dtype)
    zeros = torch.zeros(1, 3, dtype=dtype)
    for out in (forward_kl(big, zeros), reverse_kl(big, zeros), token_entropy(big), reverse_kl(big, big)):
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("tau", [1.0, 0.7, 2.5])
def test_kl_gradients_match_analytic(tau):
    s = _rand((3, 6), 31, 2.0).requires_grad_(True)
    t = _rand((3, 6), 32, 2.0)
    ps, pt = torch.softmax(s.detach() / tau, -1), torch.softmax(t / tau, -1)
    # d/dz_S KL(p_T || p_S) = (p_S - p_T) / tau
    (g,) = torch.autograd.grad(forward_kl(s, t, temperature=tau).sum(), s)
    torch.testing.assert_close(g, (ps - pt) / tau, rtol=1e-9, atol=1e-12)
    # d/dz_S KL(p_S || p_T) = p_S * (log p_S - log p_T - KL) / tau
    (g,) = torch.autograd.grad(reverse_kl(s, t, temperature=tau).sum(), s)
    lr = ps.log() - pt.log()
    kl = (ps * lr).sum(-1, keepdim=True)
    torch.testing.assert_close(g, ps * (lr - kl) / tau, rtol=1e-9, atol=1e-12)


def test_divergence_gradcheck():
    s = _rand((2, 5), 41).requires_grad_(True)
    t = _rand((2, 5), 42)
    fns = [
        lambda x: forward_kl(x, t, temperature=1.3),
        lambda x: reverse_kl(x, t, temperature=0.8),
        lambda x: generalized_jsd(x, t, 0.4),
        lambda x: mixed_kl(x, t, 0.3),
        lambda x: skew_kl(x, t, skew=0.2),
        lambda x: skew_kl(x, t, skew=0.2, reverse=True),
        lambda x: topk_forward_kl(x, t, top_k=2),
        lambda x: topk_reverse_kl(x, t, top_k=2),
    ]
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (s,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_topk_tail_bucket_with_tiny_student_tail_is_accurate(dtype, tol):
    # Teacher [1, 0, 0] (top-1 = id 0, tail mass 2/(e+2) ~ 0.42); student [50, 0, 0] puts only
    # 2e^-50 / (1 + 2e^-50) ~ 3.9e-22 on the tail. Computing that tail as 1 - 1/(1 + 2e^-50) in floating
    # point gives exactly 0; the bucketed KL must still be the finite, exact value.
    t = torch.tensor([[1.0, 0.0, 0.0]], dtype=dtype)
    s = torch.tensor([[50.0, 0.0, 0.0]], dtype=dtype)
    e = math.e
    a, b = e / (e + 2), 2 / (e + 2)  # teacher buckets
    log_sa = -math.log1p(2 * math.exp(-50.0))
    log_sb = math.log(2.0) - 50.0 + log_sa
    fkl = a * (math.log(a) - log_sa) + b * (math.log(b) - log_sb)  # under the teacher buckets
    rkl = math.exp(log_sa) * (log_sa - math.log(a)) + math.exp(log_sb) * (log_sb - math.log(b))
    assert fkl == pytest.approx(20.2188, abs=1e-3)
    f, r = topk_forward_kl(s, t, top_k=1), topk_reverse_kl(s, t, top_k=1)
    assert torch.isfinite(f).all() and torch.isfinite(r).all()
    assert float(f[0]) == pytest.approx(fkl, rel=tol)
    assert float(r[0]) == pytest.approx(rkl, rel=tol)


def test_topk_with_k_vocab_minus_one_equals_full_kl():
    # With k = V - 1 the tail bucket holds exactly one token, so the buckets ARE the full distributions.
    # Hand case: V = 2, teacher [0, 26] (top-1 = id 1, tail = p_T(0) = 1/(1 + e^26) ~ 5.1e-12).
    s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 26.0]], dtype=torch.float64)
    lt1 = -math.log1p(math.exp(-26.0))  # log p_T(1)
    lt0 = -26.0 + lt1  # log p_T(0)
    rkl = 0.5 * (math.log(0.5) - lt0) + 0.5 * (math.log(0.5) - lt1)  # under p_S = [1/2, 1/2]
    fkl = math.exp(lt0) * (lt0 - math.log(0.5)) + math.exp(lt1) * (lt1 - math.log(0.5))
    assert rkl == pytest.approx(12.30685, abs=1e-5)
    assert float(topk_reverse_kl(s, t, top_k=1)[0]) == pytest.approx(rkl, rel=1e-12)
    assert float(topk_forward_kl(s, t, top_k=1)[0]) == pytest.approx(fkl, rel=1e-12)
    # random rows, tails of moderate size
    for seed in range(5):
        s, t = _rand((4, 6), 100 + seed, 4.0), _rand((4, 6), 200 + seed, 4.0)
        _close64(topk_forward_kl(s, t, top_k=5), forward_kl(s, t).double(), 1e-10)
        _close64(topk_reverse_kl(s, t, top_k=5), reverse_kl(s, t).double(), 1e-10)
