"""Bad input raises ValueError whose message names the offending argument."""

from __future__ import annotations

import math

import pytest
import torch

from sead.losses import (
    forward_kl,
    fused_sead_loss,
    generalized_jsd,
    mixed_kl,
    reverse_kl,
    sead_loss,
    sead_zones,
    skew_kl,
    token_entropy,
    topk_forward_kl,
    topk_reverse_kl,
)

PAIR_FNS = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "generalized_jsd": lambda s, t, **kw: generalized_jsd(s, t, 0.5, **kw),
    "generalized_jsd_beta0": lambda s, t, **kw: generalized_jsd(s, t, 0.0, **kw),
    "mixed_kl": lambda s, t, **kw: mixed_kl(s, t, 0.3, **kw),
    "skew_kl": skew_kl,
    "skew_kl_reverse": lambda s, t, **kw: skew_kl(s, t, reverse=True, **kw),
    "topk_forward_kl": lambda s, t, **kw: topk_forward_kl(s, t, top_k=2, **kw),
    "topk_reverse_kl": lambda s, t, **kw: topk_reverse_kl(s, t, top_k=2, **kw),
    "sead_loss": lambda s, t, **kw: sead_loss(s, t, torch.ones(s.shape[:-1]), **kw).loss,
}


def _st(shape=(2, 3, 5)):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def _raises(fn, name):
    with pytest.raises(ValueError, match=name):
        fn()


# --------------------------------------------------------------------------- logits pairs
@pytest.mark.parametrize("fn", PAIR_FNS.values(), ids=PAIR_FNS.keys())
def test_vocab_mismatch(fn):
    s, _ = _st((2, 3, 5))
    _, t = _st((2, 3, 6))
    _raises(lambda: fn(s, t), "student_logits|teacher_logits")
    _raises(lambda: fn(t, s), "student_logits|teacher_logits")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("fn", PAIR_FNS.values(), ids=PAIR_FNS.keys())
def test_non_finite_logits(fn, bad):
    s, t = _st()
    s_bad = s.clone()
    s_bad[1, 2, 3] = bad
    _raises(lambda: fn(s_bad, t), "student_logits")
    t_bad = t.clone()
    t_bad[0, 0, 0] = bad
    _raises(lambda: fn(s, t_bad), "teacher_logits")


@pytest.mark.parametrize("tau", [0.0, -1.0])
@pytest.mark.parametrize("fn", PAIR_FNS.values(), ids=PAIR_FNS.keys())
def test_non_positive_temperature(fn, tau):
    s, t = _st()
    _raises(lambda: fn(s, t, temperature=tau), "temperature")


@pytest.mark.parametrize("k", [0, -3])
def test_top_k_below_one(k):
    s, t = _st()
    _raises(lambda: topk_forward_kl(s, t, top_k=k), "top_k")
    _raises(lambda: topk_reverse_kl(s, t, top_k=k), "top_k")
    _raises(lambda: token_entropy(s, top_k=k), "top_k")
    _raises(lambda: sead_loss(s, t, torch.ones(2, 3), entropy_top_k=k), "top_k")


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_out_of_range(alpha):
    s, t = _st()
    _raises(lambda: mixed_kl(s, t, alpha), "alpha")
    _raises(lambda: sead_loss(s, t, torch.ones(2, 3), alpha=alpha), "alpha")
    _raises(lambda: sead_loss(s, t, torch.ones(2, 3), alpha=alpha, zones=False), "alpha")


def test_token_entropy_bad_input():
    s, _ = _st()
    _raises(lambda: token_entropy(s, temperature=0.0), "temperature")
    _raises(lambda: token_entropy(s, temperature=-2.0), "temperature")
    bad = s.clone()
    bad[0, 1, 2] = math.nan
    _raises(lambda: token_entropy(bad), "logits")


# --------------------------------------------------------------------------- zones and sead_loss
def test_sead_zones_bad_input():
    h = torch.rand(2, 3, dtype=torch.float64)
    _raises(lambda: sead_zones(h, h, torch.ones(2, 4)), "mask")
    _raises(lambda: sead_zones(h, h, torch.ones(6)), "mask")
    for q in (-0.1, 1.1):
        _raises(lambda q=q: sead_zones(h, h, torch.ones(2, 3), teacher_quantile=q), "teacher_quantile")
        _raises(lambda q=q: sead_zones(h, h, torch.ones(2, 3), skip_fraction=q), "skip_fraction")


def test_sead_loss_bad_input():
    s, t = _st()
    m = torch.ones(2, 3)
    _raises(lambda: sead_loss(s, t, torch.ones(2, 4)), "mask")
    _raises(lambda: sead_loss(s, t, torch.ones(3, 2)), "mask")
    _raises(lambda: sead_loss(s, t, torch.ones(6)), "mask")
    for q in (-0.01, 1.01):
        _raises(lambda q=q: sead_loss(s, t, m, teacher_quantile=q), "teacher_quantile")
        _raises(lambda q=q: sead_loss(s, t, m, skip_fraction=q), "skip_fraction")
    _raises(lambda: sead_loss(s, t, m, temperature=0.0), "temperature")


# --------------------------------------------------------------------------- fused loss
def _fused_inputs():
    g = torch.Generator().manual_seed(1)
    hs = torch.randn(2, 4, 5, generator=g)
    ws = torch.randn(9, 5, generator=g)
    ht = torch.randn(2, 4, 7, generator=g)
    wt = torch.randn(9, 7, generator=g)
    mask = torch.ones(2, 4)
    return hs, ws, ht, wt, mask


def test_fused_vocab_mismatch():
    hs, ws, ht, wt, mask = _fused_inputs()
    wt_bad = torch.randn(10, 7)
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt_bad, mask), "student_weight|teacher_weight")
    ws_bad = torch.randn(8, 5)
    _raises(lambda: fused_sead_loss(hs, ws_bad, ht, wt, mask), "student_weight|teacher_weight")


def test_fused_mask_shape_mismatch():
    hs, ws, ht, wt, mask = _fused_inputs()
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, torch.ones(2, 5)), "mask")
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, torch.ones(8)), "mask")
    _raises(lambda: fused_sead_loss(hs.reshape(8, 5), ws, ht.reshape(8, 7), wt, torch.ones(7)), "mask")


@pytest.mark.parametrize("value", [-0.1, 1.1])
def test_fused_fractions_and_alpha_out_of_range(value):
    hs, ws, ht, wt, mask = _fused_inputs()
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, mask, teacher_quantile=value), "teacher_quantile")
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, mask, skip_fraction=value), "skip_fraction")
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, mask, alpha=value), "alpha")


def test_fused_temperature_and_top_k():
    hs, ws, ht, wt, mask = _fused_inputs()
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, mask, temperature=0.0), "temperature")
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, mask, temperature=-1.0), "temperature")
    _raises(lambda: fused_sead_loss(hs, ws, ht, wt, mask, entropy_top_k=0), "top_k")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("which", ["student_hidden", "student_weight", "teacher_hidden", "teacher_weight"])
def test_fused_non_finite(which, bad):
    inputs = dict(zip(["student_hidden", "student_weight", "teacher_hidden", "teacher_weight", "mask"],
                      _fused_inputs()))
    x = inputs[which].clone()
    x.view(-1)[3] = bad  # position (0, 0) of the hidden states (valid) or a weight entry
    inputs[which] = x
    _raises(lambda: fused_sead_loss(**inputs), which)
