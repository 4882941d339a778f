"""``fused_objective`` (chunked, from hidden states and heads) against ``logits_objective`` on the projected
logits: every estimator, top-k convention, zones / anneal on and off, the SG-OPD sign gate with and without a
reference head, biases, temperature and output transforms. float64; loss, per-token values, zones, stats and
the gradients w.r.t. the student's hidden states, weight and bias must agree to 1e-6 (they agree to ~1e-12),
and skipped rows get exactly zero gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

from _fused_problem import fused, make_problem, on_logits  # noqa: E402
from sead.losses.fused import LMHead
from sead.method.logit_transforms import IDENTITY, LogitTransform
from sead.method.zones import MASKED, SKIP


def _logits(h, w, b, tf):
    z = h @ w.T
    return tf(z if b is None else z + b)


def run_both(p, *, tf_s=IDENTITY, tf_t=IDENTITY, tf_r=IDENTITY, reference=False, chunk_size=4, **kw):
    """(fused output, fused grads, naive output, naive grads); grads w.r.t. (hidden, weight, bias) of the student."""
    fused_in = [None if x is None else x.clone().requires_grad_(True) for x in (p["hs"], p["ws"], p["bs"])]
    naive_in = [None if x is None else x.clone().requires_grad_(True) for x in (p["hs"], p["ws"], p["bs"])]
    ref_head = LMHead(p["hr"], p["wr"], p["br"], tf_r) if reference else None
    out = fused(
        LMHead(*fused_in, tf_s), LMHead(p["ht"], p["wt"], p["bt"], tf_t), p["mask"], p["ids"],
        correct=p["correct"], reference=ref_head, chunk_size=chunk_size, **kw,
    )
    ref_logits = _logits(p["hr"], p["wr"], p["br"], tf_r) if reference else None
    naive = on_logits(
        _logits(*naive_in, tf_s), _logits(p["ht"], p["wt"], p["bt"], tf_t), p["mask"], p["ids"],
        correct=p["correct"], ref_logits=ref_logits, **kw,
    )

    def grads(out, inputs):
        present = [x for x in inputs if x is not None]
        gs = iter(torch.autograd.grad(out.loss, present, allow_unused=True))
        return [None if x is None else next(gs) for x in inputs]

    return out, grads(out, fused_in), naive, grads(naive, naive_in)


def assert_agree(fused, g_fused, naive, g_naive, tol=1e-9):
    assert torch.equal(fused.zones, naive.zones)
    torch.testing.assert_close(fused.loss.detach(), naive.loss.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(fused.per_token, naive.per_token.detach(), rtol=tol, atol=tol)
    assert fused.stats.keys() == naive.stats.keys()
    for key in naive.stats:
        assert fused.stats[key] == pytest.approx(naive.stats[key], rel=tol, abs=tol), key
    for a, b in zip(g_fused, g_naive):
        if b is None:
            assert a is None
            continue
        if a is None:  # the naive gradient does not exist only if it is identically zero
            assert torch.all(b == 0)
            continue
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    dead = (fused.zones == SKIP) | (fused.zones == MASKED)
    assert torch.all(g_fused[0][dead] == 0)


CASES = []
for estimator, gate, zones in itertools.product(("full", "topk", "sampled"), (False, True), (False, True)):
    conventions = ("tail", "renormalized", "clamped") if estimator == "topk" else ("tail",)
    for conv in conventions:
        CASES.append(dict(estimator=estimator, sign_gate=gate, zones=zones, topk_convention=conv))


# (case, reference): the reference head is used by the sign gate only
REFERENCE_CASES = [(c, ref) for ref in (False, True) for c in CASES if c["sign_gate"] or not ref]


@pytest.mark.parametrize(
    ("case", "reference"), REFERENCE_CASES,
    ids=lambda x: x if isinstance(x, bool) else "-".join(f"{k}={v}" for k, v in x.items()),
)
def test_fused_objective_matches_logits_objective(case, reference):
    seed = len(CASES) * reference + CASES.index(case)
    p = make_problem(seed, bias=seed % 2 == 0)
    kw = dict(case, estimator_top_k=4, alpha=0.3, teacher_quantile=0.8, skip_fraction=0.4,
              entropy_top_k=5, temperature=0.8 if seed % 3 else 1.0)
    out, gf, naive, gn = run_both(p, reference=reference, **kw)
    assert_agree(out, gf, naive, gn)
    if case["sign_gate"]:
        assert 0 < out.stats["consensus_frac"] < 1  # both branches of the gate were exercised
    if case["zones"]:
        assert bool((out.zones == SKIP).any())


TRANSFORMS = [
    ("softcap", LogitTransform(softcap=2.0), LogitTransform(softcap=3.0)),
    ("scale", LogitTransform(scale=0.6), LogitTransform(scale=1.7)),
    ("scale+softcap", LogitTransform(scale=2.5, softcap=4.0), LogitTransform(scale=0.5, softcap=1.5)),
]


@pytest.mark.parametrize("name,tf_s,tf_t", TRANSFORMS, ids=[t[0] for t in TRANSFORMS])
@pytest.mark.parametrize("estimator,gate,zones", [("full", False, True), ("full", True, False),
                                                  ("topk", True, True), ("sampled", True, True)])
def test_output_transforms_in_the_fused_path(name, tf_s, tf_t, estimator, gate, zones):
    p = make_problem(101, bias=True)
    kw = dict(estimator=estimator, sign_gate=gate, zones=zones, estimator_top_k=4, alpha=0.4,
              entropy_top_k=5, temperature=0.9)
    out, gf, naive, gn = run_both(p, tf_s=tf_s, tf_t=tf_t, tf_r=tf_s, reference=gate, **kw)
    assert_agree(out, gf, naive, gn)


@pytest.mark.parametrize("support,top_k", [("teacher", 5), ("own", 5), ("teacher", None)])
@pytest.mark.parametrize("normalize,num_items", [("kept", None), ("all", None), ("kept", 17.0)])
def test_entropy_support_and_normalisers(support, top_k, normalize, num_items):
    p = make_problem(7)
    kw = dict(estimator="topk", sign_gate=True, zones=True, estimator_top_k=3, alpha=0.5, entropy_top_k=top_k,
              entropy_support=support, normalize=normalize, num_items=num_items)
    out, gf, naive, gn = run_both(p, reference=True, chunk_size=5, **kw)
    assert_agree(out, gf, naive, gn)


def test_no_grad_one_pass_gives_the_same_values():
    p = make_problem(11, bias=True)
    kw = dict(estimator="sampled", sign_gate=True, zones=True, alpha=0.2, entropy_top_k=5)
    out, _, naive, _ = run_both(p, reference=True, **kw)
    with torch.no_grad():
        again = fused(
            LMHead(p["hs"], p["ws"], p["bs"]), LMHead(p["ht"], p["wt"], p["bt"]), p["mask"], p["ids"],
            correct=p["correct"], reference=LMHead(p["hr"], p["wr"], p["br"]), chunk_size=3, **kw,
        )
    assert torch.equal(again.zones, out.zones)
    torch.testing.assert_close(again.loss, out.loss.detach(), rtol=1e-10, atol=1e-12)
    assert again.stats == pytest.approx(naive.stats, rel=1e-9)


def test_fp32_inputs_are_computed_in_fp32_and_bf16_in_fp32():
    # bf16 hidden states and weights: the projection runs on fp32 copies (the loss is fp32), so the sign of d_t
    # is read from fp32 log-probs, not from bf16-rounded logits
    p = make_problem(13)
    bf = {k: (v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in p.items()}
    hs = bf["hs"].clone().requires_grad_(True)
    out = fused(LMHead(hs, bf["ws"]), LMHead(bf["ht"], bf["wt"]), p["mask"], p["ids"],
                          estimator="sampled", sign_gate=True, correct=p["correct"])
    assert out.loss.dtype == torch.float32
    (g,) = torch.autograd.grad(out.loss, hs)
    assert g.dtype == torch.bfloat16
    f32 = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in bf.items()}
    naive = on_logits(f32["hs"] @ f32["ws"].T, f32["ht"] @ f32["wt"].T, p["mask"], p["ids"],
                             estimator="sampled", sign_gate=True, correct=p["correct"])
    torch.testing.assert_close(out.loss, naive.loss, rtol=1e-5, atol=1e-6)
    assert out.stats["consensus_frac"] == naive.stats["consensus_frac"]


@pytest.mark.parametrize("kw,match", [
    (dict(estimator="sampled"), "completion_ids"),
    (dict(sign_gate=True), "completion_ids"),
    (dict(estimator="bogus"), "estimator"),
    (dict(estimator="topk", topk_convention="bogus"), "topk_convention"),
    (dict(estimator="topk", estimator_top_k=0), "estimator_top_k"),
])
def test_bad_options_are_refused_by_name(kw, match):
    p = make_problem(3)
    with pytest.raises(ValueError, match=match):
        fused(LMHead(p["hs"], p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"], **kw)


def test_bad_ids_and_verdicts_are_refused():
    p = make_problem(3)
    args = (LMHead(p["hs"], p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"])
    with pytest.raises(ValueError, match="completion_ids"):
        fused(*args, p["ids"] + 100, estimator="sampled")
    with pytest.raises(ValueError, match="correct"):
        fused(*args, p["ids"], sign_gate=True)
    with pytest.raises(ValueError, match="correct"):
        fused(*args, p["ids"], sign_gate=True, correct=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="reference_weight"):
        fused(*args, p["ids"], sign_gate=True, correct=p["correct"],
                        reference=LMHead(p["hr"], p["wr"][:-1]))
