"""Property / fuzz tests the other suites do not cover.

- ``sead_loss``, ``fused_sead_loss`` and ``logits_objective`` (every estimator, with and without zones
  and the sign gate) on random masks and lengths (zero-length rows, fully masked batches), extreme
  logit scales and near-one-hot distributions, in float32 as in training: the loss and its gradient are
  finite, masked positions get exactly zero gradient, a fully masked batch gives exactly 0.
- The curriculum's gate and sampler on random difficulty columns (ties, constant columns, a single
  prompt), bucket counts, windows, horizons and verdict streams: the gate only opens, the open pool is
  never empty and is exactly ``{i: d_i <= gate}``, draws come from it (without replacement when they
  can), are a pure function of (seed, step, gate), and a state round-trip continues identically.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _fused_problem import on_logits  # noqa: E402
from sead.losses import fused_sead_loss, sead_loss
from sead.method.curriculum import CompetenceCurriculum

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])



@st.composite
def masks(draw, max_b=4, max_t=7):
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    kind = draw(st.sampled_from(["lengths", "random", "all", "none", "one"]))
    if kind == "lengths":  # right padding, zero-length rows allowed
        lens = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
        rows = [[1 if t < n else 0 for t in range(T)] for n in lens]
    elif kind == "random":
        rows = [[int(draw(st.booleans())) for _ in range(T)] for _ in range(B)]
    elif kind == "all":
        rows = [[1] * T for _ in range(B)]
    elif kind == "none":
        rows = [[0] * T for _ in range(B)]
    else:
        rows = [[0] * T for _ in range(B)]
        rows[draw(st.integers(0, B - 1))][draw(st.integers(0, T - 1))] = 1
    return torch.tensor(rows, dtype=torch.long)


loss_options = st.fixed_dictionaries({
    "zones": st.booleans(),
    "alpha": st.sampled_from([0.0, 0.37, 1.0]),
    "teacher_quantile": st.sampled_from([0.0, 0.5, 0.9, 1.0]),
    "skip_fraction": st.sampled_from([0.0, 0.5, 1.0]),
    "entropy_top_k": st.sampled_from([None, 1, 3]),
    "temperature": st.sampled_from([0.5, 1.0, 2.0]),
    "normalize": st.sampled_from(["kept", "all"]),
    "num_items": st.sampled_from([None, 1, 17]),
})

SCALES = [1.0, 30.0, 1e3, 3e4]  # 3e4: softmax is one-hot to float32 precision


def _check_grad(grad, mask, n_valid):
    assert grad is not None
    assert torch.isfinite(grad).all()
    masked = (mask == 0).unsqueeze(-1).expand_as(grad)
    assert torch.all(grad[masked] == 0)  # padding / EOS tails / empty rows: no gradient at all
    if n_valid == 0:
        assert torch.all(grad == 0)


@SETTINGS
@given(mask=masks(), opts=loss_options, V=st.integers(2, 9), scale=st.sampled_from(SCALES),
       seed=st.integers(0, 2**31 - 1))
def test_sead_loss_finite_on_random_masks_and_extreme_logits(mask, opts, V, scale, seed):
    g = torch.Generator().manual_seed(seed)
    B, T = mask.shape
    s = (torch.randn(B, T, V, generator=g) * scale).requires_grad_(True)
    t = torch.randn(B, T, V, generator=g) * scale
    out = sead_loss(s, t, mask, **opts)
    assert torch.isfinite(out.loss)
    n_valid = int(mask.sum())
    if n_valid == 0:
        assert float(out.loss) == 0.0
    out.loss.backward()
    _check_grad(s.grad, mask, n_valid)


@SETTINGS
@given(mask=masks(), opts=loss_options, V=st.integers(2, 9), H=st.integers(1, 5), scale=st.sampled_from(SCALES),
       chunk=st.sampled_from([None, 1, 3]), bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fused_sead_loss_finite_on_random_masks_and_extreme_logits(mask, opts, V, H, scale, chunk, bias, seed):
    g = torch.Generator().manual_seed(seed)
    B, T = mask.shape
    hs = (torch.randn(B, T, H, generator=g) * math.sqrt(scale)).requires_grad_(True)
    ws = (torch.randn(V, H, generator=g) * math.sqrt(scale)).requires_grad_(True)
    ht = torch.randn(B, T, H + 1, generator=g) * math.sqrt(scale)
    wt = torch.randn(V, H + 1, generator=g) * math.sqrt(scale)
    bs = torch.randn(V, generator=g).requires_grad_(True) if bias else None
    out = fused_sead_loss(hs, ws, ht, wt, mask, student_bias=bs, chunk_size=chunk, **opts)
    assert torch.isfinite(out.loss)
    n_valid = int(mask.sum())
    if n_valid == 0:
        assert float(out.loss) == 0.0
    out.loss.backward()
    _check_grad(hs.grad, mask, n_valid)
    for p in (ws, bs):
        if p is not None:
            assert p.grad is None or torch.isfinite(p.grad).all()
            if n_valid == 0 and p.grad is not None:
                assert torch.all(p.grad == 0)


@SETTINGS
@given(mask=masks(), opts=loss_options, V=st.integers(2, 9), scale=st.sampled_from(SCALES),
       estimator=st.sampled_from(["full", "topk", "sampled"]), sign_gate=st.booleans(), ref=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_logits_objective_finite_on_random_masks(mask, opts, V, scale, estimator, sign_gate, ref, seed):
    g = torch.Generator().manual_seed(seed)
    B, T = mask.shape
    s = (torch.randn(B, T, V, generator=g) * scale).requires_grad_(True)
    t = torch.randn(B, T, V, generator=g) * scale
    ids = torch.randint(0, V, (B, T), generator=g)
    correct = torch.rand(B, generator=g) > 0.5
    ref_logits = torch.randn(B, T, V, generator=g) * scale if ref else None
    out = on_logits(s, t, mask, ids, estimator=estimator, estimator_top_k=min(3, V), sign_gate=sign_gate,
                           correct=correct, ref_logits=ref_logits, **opts)
    assert torch.isfinite(out.loss)
    n_valid = int(mask.sum())
    if n_valid == 0:
        assert float(out.loss) == 0.0
    out.loss.backward()
    _check_grad(s.grad, mask, n_valid)


# ------------------------------------------------------------------------------------- curriculum
difficulty_columns = st.one_of(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40),
    st.lists(st.sampled_from([0.0, 0.125, 0.5, 0.875, 1.0]), min_size=1, max_size=40),  # heavy ties
    st.integers(1, 30).map(lambda n: [1.0] * n),  # the initial student solves nothing
    st.integers(1, 30).map(lambda n: [0.0] * n),
)


@st.composite
def curricula(draw):
    d = draw(difficulty_columns)
    kw = dict(
        threshold=draw(st.sampled_from([0.0, 0.3, 0.6, 1.0])),
        window=draw(st.integers(1, 8)),
        num_buckets=draw(st.integers(1, 6)),
        full_open_fraction=draw(st.sampled_from([0.0, 0.25, 0.8, 1.0])),
        seed=draw(st.integers(0, 1000)),
    )
    total = draw(st.integers(0, 30))
    batch = draw(st.integers(1, 12))
    verdicts = draw(st.lists(st.lists(st.booleans(), min_size=1, max_size=batch), max_size=12))
    return d, kw, total, batch, verdicts


def _check_pool(cur, step, total, batch):
    gate = cur.gate(step, total)
    pool = cur.open_indices(step, total)
    d = cur.difficulties
    assert pool.numel() >= 1
    assert set(pool.tolist()) == {i for i in range(d.numel()) if d[i] <= gate}
    picks = cur.draw(step, total, batch)
    assert len(picks) == batch
    assert set(picks) <= set(pool.tolist())
    if pool.numel() >= batch:
        assert len(set(picks)) == batch  # without replacement
    else:
        assert set(picks) == set(pool.tolist())  # every open prompt, then repeats
    assert picks == cur.draw(step, total, batch)  # a pure function of (seed, step, gate)
    return gate, pool


@SETTINGS
@given(case=curricula())
def test_curriculum_gate_and_sampler_properties(case):
    d, kw, total, batch, verdicts = case
    cur = CompetenceCurriculum(d, **kw)
    last_gate, last_bucket = -math.inf, 0
    for step, batch_verdicts in enumerate(verdicts + [[]]):
        gate, pool = _check_pool(cur, step, total, batch)
        assert gate >= last_gate  # the gate only opens
        assert 0 <= cur.bucket <= kw["num_buckets"] - 1 and cur.bucket >= last_bucket
        if total > 0 and step >= kw["full_open_fraction"] * total:
            assert pool.numel() == len(d)  # the floor schedule has opened everything
        last_gate, last_bucket = gate, cur.bucket
        # a state round-trip continues identically (what a resumed run relies on)
        twin = CompetenceCurriculum(d, **kw)
        twin.load_state_dict(cur.state_dict())
        assert twin.gate(step, total) == gate and twin.draw(step, total, batch) == cur.draw(step, total, batch)
        moved = cur.update(batch_verdicts)
        assert twin.update(batch_verdicts) == moved and twin.state_dict() == cur.state_dict()


@SETTINGS
@given(case=curricula())
def test_curriculum_gate_is_monotone_in_the_bucket(case):
    d, kw, total, batch, _ = case
    cur = CompetenceCurriculum(d, **kw)
    step = total // 2
    gates = []
    for bucket in range(kw["num_buckets"]):
        cur.load_state_dict({"bucket": bucket, "window": []})
        gates.append(cur.gate(step, total))
        _check_pool(cur, step, total, batch)
    assert gates == sorted(gates)
    assert gates[-1] == max(d)  # the last bucket opens every prompt


@settings(max_examples=25, deadline=None)
@given(bad=st.sampled_from([None, math.nan, math.inf, -0.01, 1.01, "x"]), n=st.integers(1, 10),
       where=st.integers(0, 9))
def test_curriculum_refuses_bad_difficulties_naming_the_row(bad, n, where):
    d = [0.5] * n
    d[where % n] = bad
    with pytest.raises(ValueError, match=f"row {where % n}"):
        CompetenceCurriculum(d)
