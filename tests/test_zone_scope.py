"""Zone thresholds from a wider scope than the micro-batch (``zone_scope: step``): the cuts computed from pooled
entropies (``zone_thresholds``) applied to each micro-batch reproduce ``sead_zones`` on the pooled tokens
(property, hypothesis), the step's skip fraction is ``skip_fraction``, the entropies-only pre-pass
(``fused_zone_entropies``) gives the loss's own entropies, and micro-batch losses with the step's cuts add up to
the loss of the pooled batch."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _fused_problem import fused, make_problem, on_logits, zone_entropies_of  # noqa: E402
from sead.losses.fused import LMHead, SparseTeacher
from sead.method.divergences import zone_entropies
from sead.method.zones import (
    FKL,
    MASKED,
    SKIP,
    ZoneThresholds,
    sead_zones,
    zone_thresholds,
    zones_from_thresholds,
)


@st.composite
def pooled_batches(draw):
    """Entropies of a pool of tokens (distinct H_S: no ties at the skip cut) split into micro-batches with masks."""
    n = draw(st.integers(1, 60))
    h_t = draw(st.lists(st.floats(0, 5, allow_nan=False), min_size=n, max_size=n))
    h_s = draw(st.lists(st.floats(0, 5, allow_nan=False), min_size=n, max_size=n, unique=True))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    return torch.tensor(h_t, dtype=torch.float64), torch.tensor(h_s, dtype=torch.float64), [0, *cuts, n]


@settings(max_examples=200, deadline=None)
@given(pooled_batches(), st.floats(0, 1), st.floats(0, 1), st.integers(0, 3))
def test_cuts_from_the_pool_reproduce_the_pooled_zones_in_every_micro_batch(pool, quantile, skip, pad):
    h_t, h_s, bounds = pool
    expected = sead_zones(h_t, h_s, torch.ones_like(h_t), quantile, skip)
    cuts = zone_thresholds(h_t, h_s, None, quantile, skip)
    got = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        # each micro-batch padded with `pad` masked positions holding garbage entropies
        mb_t = torch.cat([h_t[lo:hi], torch.full((pad,), 99.0, dtype=torch.float64)])
        mb_s = torch.cat([h_s[lo:hi], torch.full((pad,), -99.0, dtype=torch.float64)])
        mask = torch.cat([torch.ones(hi - lo), torch.zeros(pad)])
        zones = zones_from_thresholds(mb_t, mb_s, mask, cuts)
        assert torch.all(zones[mask == 0] == MASKED)
        got.append(zones[mask != 0])
    assert torch.equal(torch.cat(got), expected)
    # the step skips floor(skip_fraction * N) tokens (capped by the non-FKL ones)
    n = h_t.numel()
    assert int((expected == SKIP).sum()) == min(math.floor(skip * n), int((expected != FKL).sum()))


def test_thresholds_by_hand():
    h_t = torch.tensor([0.1, 0.2, 0.3, 2.0], dtype=torch.float64)
    h_s = torch.tensor([0.5, 0.4, 0.9, 0.1], dtype=torch.float64)
    cuts = zone_thresholds(h_t, h_s, None, teacher_quantile=0.75, skip_fraction=0.5)
    # quantile 0.75 at position 2.25 between 0.3 and 2.0 (0.725): only 2.0 is in the FKL zone, the cut sits midway
    # between 0.3 and 2.0; skip 2 of the three others (H_S 0.4, 0.5; 0.9 stays): midway between 0.5 and 0.9
    assert cuts == ZoneThresholds(pytest.approx(1.15), pytest.approx(0.7))
    assert zones_from_thresholds(h_t, h_s, torch.ones(4), cuts).tolist() == [0, 0, 1, 2]
    assert zone_thresholds(h_t, h_s, torch.zeros(4)) == ZoneThresholds(math.inf, -math.inf)  # empty pool
    assert zone_thresholds(h_t, h_s, None, 0.9, 0.0).student_entropy_cut == -math.inf
    assert zone_thresholds(h_t, h_s, None, 0.9, 1.0).student_entropy_cut == math.inf  # all non-FKL skipped
    assert zone_thresholds(h_t, h_s, None, 0.0, 0.5).teacher_entropy == -math.inf  # every token FKL
    # a tie at the skip cut: every tied token is skipped
    tied = zone_thresholds(h_t, torch.tensor([0.5, 0.5, 0.5, 0.1], dtype=torch.float64), None, 0.75, 0.25)
    assert tied.student_entropy_cut == 0.5
    with pytest.raises(ValueError, match="skip_fraction"):
        zone_thresholds(h_t, h_s, None, 0.9, 1.5)
    with pytest.raises(ValueError, match="ZoneThresholds"):
        zones_from_thresholds(h_t, h_s, torch.ones(4), (0.7, 0.5))


@pytest.mark.parametrize("support,top_k", [("teacher", 5), ("own", 5), ("teacher", None)])
def test_entropy_pre_pass_gives_the_losses_entropies(support, top_k):
    p = make_problem(61, bias=True)
    student, teacher = LMHead(p["hs"], p["ws"], p["bs"]), LMHead(p["ht"], p["wt"], p["bt"])
    h_t, h_s = zone_entropies_of(student, teacher, p["mask"], entropy_top_k=top_k, entropy_support=support,
                                    temperature=0.8, chunk_size=4)
    ref_t, ref_s = zone_entropies(p["hs"] @ p["ws"].T + p["bs"], p["ht"] @ p["wt"].T + p["bt"], top_k, 0.8, support)
    valid = p["mask"] != 0
    torch.testing.assert_close(h_t[valid], ref_t[valid], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_s[valid], ref_s[valid], rtol=1e-10, atol=1e-12)
    assert torch.all(h_t[~valid] == 0) and torch.all(h_s[~valid] == 0)


def test_entropy_pre_pass_with_a_served_teacher():
    p = make_problem(62)
    logp = torch.log_softmax(p["ht"] @ p["wt"].T, -1)
    top = logp.topk(6, -1)
    h_t, h_s = zone_entropies_of(LMHead(p["hs"], p["ws"]), SparseTeacher(top.indices, top.values), p["mask"],
                                    entropy_top_k=6)
    ref_t, ref_s = zone_entropies(p["hs"] @ p["ws"].T, p["ht"] @ p["wt"].T, 6, 1.0, "teacher")
    valid = p["mask"] != 0
    torch.testing.assert_close(h_t[valid], ref_t[valid], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h_s[valid], ref_s[valid], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", ["fused", "logits"])
@pytest.mark.parametrize("estimator,gate", [("full", False), ("topk", True), ("sampled", True)])
def test_micro_batch_losses_with_the_steps_cuts_add_up_to_the_pooled_loss(path, estimator, gate):
    # two micro-batches of one step: entropies pre-pass, pooled cuts, each loss normalised by the step's kept
    # count; their sum (and gradient) is the loss of one call over the pooled batch with its own percentiles
    p = make_problem(63, B=4, T=6)
    kw = dict(estimator=estimator, estimator_top_k=4, sign_gate=gate, zones=True, alpha=0.3, entropy_top_k=5,
              teacher_quantile=0.8, skip_fraction=0.4)
    hs = p["hs"].clone().requires_grad_(True)

    def loss(rows, **extra):
        sl = slice(*rows)
        if path == "fused":
            return fused(LMHead(hs[sl], p["ws"]), LMHead(p["ht"][sl], p["wt"]), p["mask"][sl], p["ids"][sl],
                                   correct=p["correct"][sl], chunk_size=5, **kw, **extra)
        return on_logits(hs[sl] @ p["ws"].T, p["ht"][sl] @ p["wt"].T, p["mask"][sl], p["ids"][sl],
                                correct=p["correct"][sl], **kw, **extra)

    pooled = loss((0, 4))
    micro = [(0, 1), (1, 4)]
    ents = [zone_entropies_of(LMHead(p["hs"][a:b], p["ws"]), LMHead(p["ht"][a:b], p["wt"]), p["mask"][a:b],
                                 entropy_top_k=5) for a, b in micro]
    masks = [p["mask"][a:b] != 0 for a, b in micro]
    cuts = zone_thresholds(torch.cat([e[0][m] for e, m in zip(ents, masks)]),
                           torch.cat([e[1][m] for e, m in zip(ents, masks)]), None, 0.8, 0.4)
    kept = float(pooled.stats["num_kept"])
    outs = [loss(rows, zone_thresholds=cuts, num_items=kept) for rows in micro]
    assert torch.equal(torch.cat([o.zones for o in outs]), pooled.zones)
    total = sum(o.loss for o in outs)
    torch.testing.assert_close(total.detach(), pooled.loss.detach(), rtol=1e-10, atol=1e-12)
    (g_pooled,) = torch.autograd.grad(pooled.loss, hs)
    (g_micro,) = torch.autograd.grad(total, hs)
    torch.testing.assert_close(g_micro, g_pooled, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("estimator", ["full", "sampled"])
def test_the_trainers_step_of_two_micro_batches_equals_the_pooled_batch(tmp_path, estimator):
    """Through the trainer's own hooks: the step's zone pass over a generation batch of two micro-batches, then each
    micro-batch's loss as TRL calls it. Their sum is the readable objective over the pooled batch, with the pooled
    batch's own percentiles, at step 3 of 10 (alpha by hand) and divided by the step's expected kept count."""
    from _tiny import tiny_trainer, tokenizer

    tr = tiny_trainer(tmp_path, method="sead", curriculum=False, estimator=estimator, max_steps=10,
                      per_device_train_batch_size=2, gradient_accumulation_steps=2)  # fmt: skip
    tr.model.train()
    tr.state.global_step = 3
    g = torch.Generator().manual_seed(0)
    vocab = len(tokenizer())
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[0, 1:], mask[1, 1:], mask[3, 2:] = 0, 0, 0  # a first micro-batch of 2 tokens: its own percentiles differ
    batch = {"prompt_ids": torch.randint(5, vocab, (4, 5), generator=g), "prompt_mask": torch.ones(4, 5, dtype=torch.long),
             "completion_ids": torch.randint(5, vocab, (4, 7), generator=g), "completion_mask": mask}  # fmt: skip
    tr._step_zone_cuts(batch)  # the step's cuts, from both micro-batches
    n_valid = float(mask.sum())
    student = tr.accelerator.unwrap_model(tr.model)
    total = sum(tr._compute_loss(student, {k: v[rows] for k, v in batch.items()}, torch.tensor(n_valid))[0]
                for rows in (slice(0, 2), slice(2, 4)))  # fmt: skip
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], mask], 1)
    with torch.no_grad():
        s = tr.model(input_ids=ids, attention_mask=attn).logits[:, -8:-1]
        t = tr.teacher_model(input_ids=ids, attention_mask=attn).logits[:, -8:-1]
    alpha = 0.4 + 0.4 * math.cos(math.pi * 3 / 10)  # cosine from 0.8 to 0 at step 3 of 10
    pooled = on_logits(s, t, mask, batch["completion_ids"], estimator=estimator, zones=True, alpha=alpha,
                       entropy_top_k=64, num_items=n_valid * 0.5)  # skip_fraction 0.5: the expected kept count
    assert float(total) == pytest.approx(float(pooled.loss), rel=1e-4)  # fp32 models: their rounding
    # the test's power: each micro-batch's own percentiles would give other zones than the step's
    own = torch.cat([on_logits(s[r], t[r], mask[r], batch["completion_ids"][r], zones=True, entropy_top_k=64).zones
                     for r in (slice(0, 2), slice(2, 4))])  # fmt: skip
    assert not torch.equal(own, pooled.zones)
    # evaluation takes each batch's own percentiles, not the training step's cuts
    tr.model.eval()
    assert tr.step_spec().zones.cuts is None
