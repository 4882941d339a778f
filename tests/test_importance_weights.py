"""The sampled estimator on rollouts from another sampler (vLLM): truncated importance weights (issue 14, item 3)."""

from __future__ import annotations

import math

import pytest
import torch

from _fused_problem import fused, make_problem, on_logits
from sead.engines.student_vllm import SamplerLogprobs
from sead.losses.fused import LMHead
from sead.losses.terms import importance_weight


def _sampler_logprobs(p, seed=5):
    """A sampler q near the student's own p_S: its log-probs of the sampled tokens (NaN on one row's tokens)."""
    g = torch.Generator().manual_seed(seed)
    z_s = p["hs"] @ p["ws"].T
    logp_s = torch.log_softmax(z_s, -1).gather(-1, p["ids"].unsqueeze(-1)).squeeze(-1)
    q = logp_s + 0.4 * torch.randn(logp_s.shape, generator=g, dtype=torch.float64)
    q = q.clamp(max=0.0)
    q[1] = float("nan")  # a teacher-mixed rollout: no sampler log-probs, weight 1
    return q


@pytest.mark.parametrize("gate, zones", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_weights_equal_the_logits_path(gate, zones):
    p = make_problem(3)
    q = _sampler_logprobs(p)
    hs = p["hs"].clone().requires_grad_()
    common = dict(estimator="sampled", zones=zones, alpha=0.3, sign_gate=gate, correct=p["correct"],
                  sampler_logprobs=q, importance_cap=1.7, entropy_top_k=None)
    ref_head = LMHead(p["hr"], p["wr"])
    out = fused(LMHead(hs, p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"], p["ids"],
                          reference=ref_head if gate else None, **common)
    (g_fused,) = torch.autograd.grad(out.loss, hs)
    hs2 = p["hs"].clone().requires_grad_()
    ref = on_logits(hs2 @ p["ws"].T, p["ht"] @ p["wt"].T, p["mask"], p["ids"],
                           ref_logits=(p["hr"] @ p["wr"].T) if gate else None, **common)
    (g_ref,) = torch.autograd.grad(ref.loss, hs2)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-10, rtol=1e-9)
    # and the weights changed the gradient (they are not all 1)
    plain = on_logits(hs2 @ p["ws"].T, p["ht"] @ p["wt"].T, p["mask"], p["ids"],
                             ref_logits=(p["hr"] @ p["wr"].T) if gate else None,
                             **{**common, "sampler_logprobs": None})
    (g_plain,) = torch.autograd.grad(plain.loss, hs2)
    assert (g_plain - g_ref).abs().max() > 1e-4


def test_weighted_gradient_is_the_on_policy_gradient_in_expectation():
    """One position, V tokens, enumerated exactly: sum_y q(y) w(y) g(y) = sum_y p_S(y) g(y) when p_S / q <= cap,
    g(y) the REINFORCE gradient -A(y) d log p_S(y) / d z (the sampled estimator's, at token y)."""
    torch.manual_seed(0)
    V = 7
    z_s = torch.randn(V, dtype=torch.float64)
    z_t = torch.randn(V, dtype=torch.float64)
    z_q = z_s + 0.3 * torch.randn(V, dtype=torch.float64)  # the sampler: near p_S, not equal
    logp_s, logp_t, logq = (torch.log_softmax(z, -1) for z in (z_s, z_t, z_q))
    p_s, q = logp_s.exp(), logq.exp()

    def grad_at(y, weighted):
        z = z_s.clone().requires_grad_()
        mask = torch.ones(1, 1)
        out = on_logits(z.view(1, 1, V), z_t.view(1, 1, V), mask, torch.tensor([[y]]), estimator="sampled",
                               sampler_logprobs=logq[y].view(1, 1) if weighted else None, importance_cap=100.0)
        (g,) = torch.autograd.grad(out.loss, z)
        return g

    on_policy = sum(p_s[y] * grad_at(y, weighted=False) for y in range(V))
    corrected = sum(q[y] * grad_at(y, weighted=True) for y in range(V))
    naive = sum(q[y] * grad_at(y, weighted=False) for y in range(V))
    torch.testing.assert_close(corrected, on_policy, atol=1e-12, rtol=1e-10)
    assert (naive - on_policy).abs().max() > 1e-3  # without the weights: the sampler's gradient, biased
    # the expected reverse-KL gradient itself: d/dz KL(p_S || p_T)
    z = z_s.clone().requires_grad_()
    kl = (torch.softmax(z, -1) * (torch.log_softmax(z, -1) - logp_t)).sum()
    (true,) = torch.autograd.grad(kl, z)
    torch.testing.assert_close(on_policy, true, atol=1e-12, rtol=1e-10)


def test_importance_weight_truncates_and_ignores_missing():
    s = torch.log(torch.tensor([0.5, 0.5, 0.9, 0.2]))
    q = torch.log(torch.tensor([0.5, 0.1, 0.3, 0.4]))
    q[3] = float("nan")
    w = importance_weight(s, q, cap=3.0)
    assert w.tolist() == pytest.approx([1.0, 3.0, 3.0, 1.0])  # 5.0 and 3.0 are capped; NaN -> 1


def test_sampler_logprobs_recorder_aligns_with_completions():
    class FakeGeneration:
        logprobs = None

        def generate(self, prompts, images, num_generations, profiler=None):
            assert self.logprobs == 0  # only the sampled token's
            completions = [[5, 6, 2], [7]]
            logprobs = [[[-0.1], [-0.2], [None]], [[-1.5]]]
            return prompts, completions, logprobs, [[[5], [6], [2]], [[7]]]

    gen = FakeGeneration()
    rec = SamplerLogprobs()
    rec.attach(gen)
    assert rec.take(3) is None
    gen.generate([[1], [1]], None, 1)
    q = rec.take(4)
    assert q.shape == (2, 4)
    assert q[0, :2].tolist() == pytest.approx([-0.1, -0.2])
    assert math.isnan(q[0, 2]) and math.isnan(q[0, 3]) and math.isnan(q[1, 1])
    assert q[1, 0].item() == pytest.approx(-1.5)
    assert rec.take(4) is None  # taken once
