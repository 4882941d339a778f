"""The ``topk`` estimator's conventions against hand-written references of the peers' formulas.

- ``renormalized`` is NeMo-RL's ``DistillationLossFn`` with ``zero_outside_topk: false``: the student's logits
  gathered at the teacher's top-k ids and log-softmaxed over those k, the teacher's top-k logits log-softmaxed,
  then ``sum teacher_probs * (teacher_lp - student_lp)`` (forward) or ``sum student_probs * (student_lp - teacher_lp)``.
- ``clamped`` is verl's ``forward_kl_topk``: the student's full-vocabulary log-softmax gathered at the teacher's
  top-k ids, the teacher's full-vocabulary log-probs there, ``sum p_T (log p_T - log p_S)`` clamped at 0 (and,
  for the reverse direction, which verl does not have, the mirror ``max(0, sum p_S (log p_S - log p_T))``).
- ``tail`` is checked against a loop over k+1 buckets.
Each is written here with Python loops over one row at a time, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from sead.bench.profiles.topk_conventions import markdown, measure
from sead.method.divergences import forward_kl, reverse_kl, topk_forward_kl, topk_reverse_kl


def _log_softmax(xs):
    m = max(xs)
    lse = m + math.log(math.fsum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def _top_ids(row, k):
    return sorted(range(len(row)), key=lambda j: -row[j])[:k]


def nemo_rl(student_row, teacher_row, k, tau, reverse):
    """NeMo-RL, zero_outside_topk=False: both renormalised over the teacher's top-k."""
    ids = _top_ids(teacher_row, k)
    s_lp = _log_softmax([student_row[j] / tau for j in ids])
    t_lp = _log_softmax([teacher_row[j] / tau for j in ids])
    if reverse:
        return math.fsum(math.exp(a) * (a - b) for a, b in zip(s_lp, t_lp))
    return math.fsum(math.exp(b) * (b - a) for a, b in zip(s_lp, t_lp))


def verl(student_row, teacher_row, k, tau, reverse):
    """verl forward_kl_topk: full-vocabulary log-probs at the teacher's top-k, no tail, clamp_min(0)."""
    s_full, t_full = _log_softmax([x / tau for x in student_row]), _log_softmax([x / tau for x in teacher_row])
    ids = _top_ids(teacher_row, k)
    if reverse:
        kl = math.fsum(math.exp(s_full[j]) * (s_full[j] - t_full[j]) for j in ids)
    else:
        kl = math.fsum(math.exp(t_full[j]) * (t_full[j] - s_full[j]) for j in ids)
    return max(kl, 0.0)


def tail_buckets(student_row, teacher_row, k, tau, reverse):
    """k+1 buckets: the teacher's top-k ids and one tail holding each model's remaining mass."""
    s_full, t_full = _log_softmax([x / tau for x in student_row]), _log_softmax([x / tau for x in teacher_row])
    ids = set(_top_ids(teacher_row, k))
    ps = [math.exp(s_full[j]) for j in ids] + [math.fsum(math.exp(s_full[j]) for j in range(len(s_full)) if j not in ids)]
    pt = [math.exp(t_full[j]) for j in ids] + [math.fsum(math.exp(t_full[j]) for j in range(len(t_full)) if j not in ids)]
    a, b = (ps, pt) if reverse else (pt, ps)
    return math.fsum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


REFERENCES = {"renormalized": nemo_rl, "clamped": verl, "tail": tail_buckets}


def _logits(seed, n=24, v=30, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    s = t + torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    return s, t


@pytest.mark.parametrize("convention", ["tail", "renormalized", "clamped"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("k,tau", [(1, 1.0), (4, 1.0), (6, 0.7), (30, 1.3)])
def test_conventions_match_the_peers_formulas(convention, reverse, k, tau):
    s, t = _logits(k + int(10 * tau))
    fn = topk_reverse_kl if reverse else topk_forward_kl
    got = fn(s, t, k, tau, convention)
    ref = [REFERENCES[convention](a, b, k, tau, reverse) for a, b in zip(s.tolist(), t.tolist())]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_clamped_drops_the_gradient_where_the_truncated_sum_is_negative():
    # the student sharper than the teacher on the teacher's top-k: the truncated forward sum is negative, the
    # clamped term is 0 there and so is its gradient; elsewhere the gradient is the truncated sum's
    s, t = _logits(3, n=64, v=30, scale=1.0)
    s = s.clone().requires_grad_(True)
    value = topk_forward_kl(s, t, 4, 1.0, "clamped")
    logp_s, logp_t = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    idx = t.topk(4, -1).indices
    raw = (logp_t.gather(-1, idx).exp() * (logp_t.gather(-1, idx) - logp_s.gather(-1, idx))).sum(-1)
    negative = raw < 0
    assert 0 < int(negative.sum()) < 64  # both cases occur
    (g,) = torch.autograd.grad(value.sum(), s)
    assert torch.all(value[negative] == 0) and torch.all(g[negative] == 0)
    assert torch.all(g[~negative].abs().sum(-1) > 0)


@pytest.mark.parametrize("convention", ["tail", "renormalized", "clamped"])
def test_every_convention_is_exact_when_k_covers_the_vocabulary(convention):
    s, t = _logits(5, v=12)
    torch.testing.assert_close(topk_forward_kl(s, t, 12, 1.0, convention), forward_kl(s, t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(topk_reverse_kl(s, t, 12, 1.0, convention), reverse_kl(s, t), rtol=1e-10, atol=1e-12)


def test_unknown_convention_is_refused_by_name():
    s, t = _logits(1)
    with pytest.raises(ValueError, match="topk_convention"):
        topk_forward_kl(s, t, 4, 1.0, "nemo")


def test_error_table_command_measures_against_the_exact_kl():
    rows = measure(settings=(("gaussian", 2.0), ("zipf", 1.5)), n=8, v=64, k=64)
    # k = V: every convention is exact, so the errors are 0 and the gradients parallel
    for r in rows:
        for conv in ("tail", "renormalized", "clamped"):
            assert r[f"{conv}_rel_err"] == pytest.approx(0.0, abs=1e-9)
            assert r[f"{conv}_grad_cos"] == pytest.approx(1.0, abs=1e-9)
    rows = measure(settings=(("zipf", 1.0),), n=8, v=64, k=4)
    assert all(r["tail_rel_err"] > 0 for r in rows)
    table = markdown(rows)
    assert table.count("\n") == 3 and "| zipf 1 | FKL |" in table
