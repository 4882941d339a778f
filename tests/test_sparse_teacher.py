"""A served teacher (``SparseTeacher``: its top-k ids and log-probs per position, and the sampled token's
log-prob) against the dense-teacher fused loss when the sparse inputs are computed from the dense teacher
(float64): ``topk`` in every convention with zones and anneal, ``sampled`` with the sign gate and a reference;
losses, per-token values, zones, stats and student gradients."""

from __future__ import annotations

import pytest
import torch

from _fused_problem import fused, make_problem, on_logits  # noqa: E402
from sead.losses.fused import LMHead, SparseTeacher
from sead.method.divergences import topk_forward_kl
from sead.method.gates import sign_gated_advantage
from sead.method.zones import SKIP, zone_weights


def served(p, k, shuffle=True):
    """What a server returns for the dense teacher of problem ``p``: top-k ids and log-probs (in a shuffled order
    per position: the loss sorts them), and the sampled token's log-prob; all at temperature 1."""
    z_t = p["ht"] @ p["wt"].T + (0 if p["bt"] is None else p["bt"])
    logp = torch.log_softmax(z_t, -1)
    top = logp.topk(k, dim=-1)
    ids, lp = top.indices, top.values
    if shuffle:
        g = torch.Generator().manual_seed(0)
        perm = torch.argsort(torch.rand(ids.shape, generator=g), dim=-1)
        ids, lp = ids.gather(-1, perm), lp.gather(-1, perm)
    return SparseTeacher(ids, lp, logp.gather(-1, p["ids"].unsqueeze(-1)).squeeze(-1))


def _student(p):
    inputs = [None if x is None else x.clone().requires_grad_(True) for x in (p["hs"], p["ws"], p["bs"])]
    return LMHead(*inputs), inputs


def _grads(loss, inputs):
    present = [x for x in inputs if x is not None]
    gs = iter(torch.autograd.grad(loss, present))
    return [None if x is None else next(gs) for x in inputs]


def _agree(a, ga, b, gb, tol=1e-9):
    assert torch.equal(a.zones, b.zones)
    torch.testing.assert_close(a.loss.detach(), b.loss.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(a.per_token, b.per_token.detach(), rtol=tol, atol=tol)
    assert a.stats == pytest.approx(b.stats, rel=tol, abs=tol)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=tol, atol=tol)


@pytest.mark.parametrize("convention", ["tail", "renormalized", "clamped"])
@pytest.mark.parametrize("zones,alpha", [(True, 0.3), (False, 0.0), (False, 0.6)])
@pytest.mark.parametrize("k_served,k_est,k_ent", [(6, 6, 6), (8, 5, 6)])
def test_topk_from_a_served_teacher_equals_the_dense_teacher(convention, zones, alpha, k_served, k_est, k_ent):
    p = make_problem(21 + k_est, bias=True)
    kw = dict(estimator="topk", topk_convention=convention, estimator_top_k=k_est, entropy_top_k=k_ent,
              entropy_support="teacher", zones=zones, alpha=alpha, teacher_quantile=0.8, skip_fraction=0.4, chunk_size=4)
    s_dense, in_dense = _student(p)
    dense = fused(s_dense, LMHead(p["ht"], p["wt"], p["bt"]), p["mask"], **kw)
    s_sparse, in_sparse = _student(p)
    sparse = fused(s_sparse, served(p, k_served), p["mask"], **kw)
    _agree(sparse, _grads(sparse.loss, in_sparse), dense, _grads(dense.loss, in_dense))
    if zones:
        assert bool((sparse.zones == SKIP).any())


@pytest.mark.parametrize("gate,reference", [(False, False), (True, False), (True, True)])
def test_sampled_from_a_served_teacher_equals_the_dense_teacher_without_fkl(gate, reference):
    # zones off, alpha 0: only the REINFORCE term, identical for both teachers (the dense FKL is never weighted)
    p = make_problem(31, bias=True)
    kw = dict(estimator="sampled", estimator_top_k=6, entropy_top_k=6, sign_gate=gate, correct=p["correct"],
              reference=LMHead(p["hr"], p["wr"], p["br"]) if reference else None, chunk_size=5)
    s_dense, in_dense = _student(p)
    dense = fused(s_dense, LMHead(p["ht"], p["wt"], p["bt"]), p["mask"], p["ids"], **kw)
    s_sparse, in_sparse = _student(p)
    sparse = fused(s_sparse, served(p, 6), p["mask"], p["ids"], **kw)
    _agree(sparse, _grads(sparse.loss, in_sparse), dense, _grads(dense.loss, in_dense))
    if gate:
        assert 0 < sparse.stats["consensus_frac"] < 1


@pytest.mark.parametrize("convention", ["tail", "renormalized"])
@pytest.mark.parametrize("reference", [False, True])
def test_sampled_from_a_served_teacher_with_zones_and_the_gate(convention, reference):
    # with zones the FKL zone is weighted: a served teacher's FKL term is over its top-k (k+1 buckets), so the
    # reference is built from the full-logits pieces: zones of logits_objective, top-k FKL, gated REINFORCE term
    p = make_problem(41, bias=False)
    k, alpha = 6, 0.25
    ref_head = LMHead(p["hr"], p["wr"]) if reference else None
    kw = dict(estimator="sampled", topk_convention=convention, estimator_top_k=k, entropy_top_k=k, zones=True,
              alpha=alpha, sign_gate=True, correct=p["correct"], teacher_quantile=0.8, skip_fraction=0.4)
    student, inputs = _student(p)
    out = fused(student, served(p, k), p["mask"], p["ids"], reference=ref_head, chunk_size=3, **kw)
    g_out = _grads(out.loss, inputs)

    hs, ws = p["hs"].clone().requires_grad_(True), p["ws"].clone().requires_grad_(True)
    s_logits, t_logits = hs @ ws.T, p["ht"] @ p["wt"].T
    zones = on_logits(s_logits.detach(), t_logits, p["mask"], p["ids"], **{
        **kw, "estimator": "full", "sign_gate": False}).zones
    w_f, w_r = zone_weights(zones, alpha)
    fkl = topk_forward_kl(s_logits, t_logits, k, 1.0, convention)
    s_y = torch.log_softmax(s_logits, -1).gather(-1, p["ids"].unsqueeze(-1)).squeeze(-1)
    t_y = torch.log_softmax(t_logits, -1).gather(-1, p["ids"].unsqueeze(-1)).squeeze(-1)
    r_y = None
    if reference:
        r_y = torch.log_softmax(p["hr"] @ p["wr"].T, -1).gather(-1, p["ids"].unsqueeze(-1)).squeeze(-1)
    adv = sign_gated_advantage(t_y, s_y.detach(), p["correct"], r_y, 1.8, 1.0)  # the defaults
    per = torch.where(zones > 0, w_f * fkl + w_r * (-adv * s_y), torch.zeros_like(fkl))
    loss = per.sum() / (zones > 0).sum()
    g_ref = torch.autograd.grad(loss, [hs, ws])
    assert torch.equal(out.zones, zones)
    torch.testing.assert_close(out.loss.detach(), loss.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.per_token, per.detach(), rtol=1e-9, atol=1e-12)
    for a, b in zip(g_out[:2], g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_served_teacher_with_zero_probabilities_and_a_full_top_k_mass_stays_finite():
    # -inf log-probs (probability 0) and a top-k mass that rounds above 1 (no tail): the tail bucket is floored
    p = make_problem(5)
    sp = served(p, 6, shuffle=False)
    lp = sp.logprobs.clone()
    lp[..., -1] = float("-inf")
    lp[..., 0] = torch.log1p(-(lp[..., 1:-1].exp().sum(-1))) + 1e-9  # top-k mass 1 + 1e-9
    for estimator in ("topk", "sampled"):
        student, inputs = _student(p)
        out = fused(student, SparseTeacher(sp.token_ids, lp, sp.sampled_logprobs), p["mask"], p["ids"],
                              estimator=estimator, estimator_top_k=6, entropy_top_k=6, zones=True, alpha=0.5)
        assert torch.isfinite(out.loss)
        assert all(torch.isfinite(g).all() for g in _grads(out.loss, inputs) if g is not None)


@pytest.mark.parametrize("kw,match", [
    (dict(estimator="full"), "a served teacher gives top-k log-probs only; use estimator topk or sampled"),
    (dict(temperature=0.7), "temperature must be 1 with a served teacher"),
    (dict(sign_gate=True), "needs estimator sampled"),
    (dict(entropy_top_k=None), "entropy_top_k"),
    (dict(entropy_top_k=9), "entropy_top_k"),
    (dict(estimator_top_k=9), "estimator_top_k"),
])
def test_served_teacher_misuse_is_refused_clearly(kw, match):
    p = make_problem(2)
    base = dict(estimator="topk", estimator_top_k=6, entropy_top_k=6, correct=p["correct"])
    with pytest.raises(ValueError, match=match):
        fused(LMHead(p["hs"], p["ws"]), served(p, 6), p["mask"], p["ids"], **{**base, **kw})


def test_bad_served_inputs_are_refused_by_name():
    p = make_problem(2)
    sp = served(p, 6, shuffle=False)
    head = LMHead(p["hs"], p["ws"])
    kw = dict(estimator="topk", estimator_top_k=6, entropy_top_k=6)
    dup = sp.token_ids.clone()
    dup[..., 1] = dup[..., 0]
    with pytest.raises(ValueError, match="distinct"):
        fused(head, SparseTeacher(dup, sp.logprobs, sp.sampled_logprobs), p["mask"], **kw)
    with pytest.raises(ValueError, match="log-probabilities"):
        fused(head, SparseTeacher(sp.token_ids, sp.logprobs + 1.0, sp.sampled_logprobs), p["mask"], **kw)
    with pytest.raises(ValueError, match="token_ids"):
        fused(head, SparseTeacher(sp.token_ids + 100, sp.logprobs), p["mask"], **kw)
    with pytest.raises(ValueError, match="sampled_logprobs"):
        fused(head, SparseTeacher(sp.token_ids, sp.logprobs), p["mask"], p["ids"],
                        **{**kw, "estimator": "sampled"})
    with pytest.raises(ValueError, match="shaped"):
        fused(head, SparseTeacher(sp.token_ids[:1], sp.logprobs[:1]), p["mask"], **kw)


def test_own_entropy_support_with_a_served_teacher():
    # entropy_support="own": H_T over the served ids (the teacher's own top-k), H_S over the student's own top-k
    p = make_problem(51)
    kw = dict(estimator="topk", estimator_top_k=6, entropy_top_k=5, entropy_support="own", zones=True, alpha=0.2)
    s_dense, in_dense = _student(p)
    dense = fused(s_dense, LMHead(p["ht"], p["wt"]), p["mask"], **kw)
    s_sparse, in_sparse = _student(p)
    sparse = fused(s_sparse, served(p, 6), p["mask"], **kw)
    _agree(sparse, _grads(sparse.loss, in_sparse), dense, _grads(dense.loss, in_dense))
