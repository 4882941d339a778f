"""The fused SEAD loss does the matmul work its docstring promises (counted, not timed): over the
teacher's top-k the zone pass never projects the student over the vocabulary, so the student's
``[rows, V]`` projections cover only the kept rows; over each model's own top-k they cover all valid
rows once more."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _fused_problem import fused  # noqa: E402
from sead.losses import fused_sead_loss

V, HS, HT = 50, 6, 10  # distinct widths tell the student's projections from the teacher's


class _ProjectionRows(TorchDispatchMode):
    """Rows projected through a ``[V, H]`` head, per head width: ``mm(h_nH, W.T) -> [n, V]``."""

    def __init__(self):
        super().__init__()
        self.rows = {HS: 0, HT: 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            a, b = args[-2], args[-1]
            if out.dim() == 2 and out.shape[1] == V and a.shape[1] in self.rows and b.shape == (a.shape[1], V):
                self.rows[a.shape[1]] += out.shape[0]
        return out


@pytest.mark.parametrize("support,student_rows_in_pass_a", [("teacher", 0), ("own", 1)])
def test_student_projection_rows(support, student_rows_in_pass_a):
    g = torch.Generator().manual_seed(3)
    n = 40
    h_s = torch.randn(n, HS, generator=g, dtype=torch.float64).requires_grad_()
    w_s = torch.randn(V, HS, generator=g, dtype=torch.float64).requires_grad_()
    h_t, w_t = torch.randn(n, HT, generator=g, dtype=torch.float64), torch.randn(V, HT, generator=g, dtype=torch.float64)
    mask = torch.ones(n)
    mask[:4] = 0  # 36 valid rows
    with _ProjectionRows() as counter:
        out = fused_sead_loss(h_s, w_s, h_t, w_t, mask, entropy_top_k=8, entropy_support=support, chunk_size=7,
                              skip_fraction=0.5, teacher_quantile=0.9)
    valid, kept = 36, int((out.zones > 0).sum())
    assert kept == valid - 18  # 50% of the valid rows skipped
    # student: pass A (all valid rows, only with its own support) + pass B (kept rows)
    assert counter.rows[HS] == student_rows_in_pass_a * valid + kept
    # teacher: pass A (all valid rows) + pass B (kept rows), either way
    assert counter.rows[HT] == valid + kept
    # and the result is the same loss function: the gradient exists and is finite
    out.loss.backward()
    assert torch.isfinite(w_s.grad).all() and w_s.grad.abs().sum() > 0


def test_zones_off_projects_each_row_once():
    g = torch.Generator().manual_seed(4)
    n = 20
    h_s = torch.randn(n, HS, generator=g).requires_grad_()
    w_s = torch.randn(V, HS, generator=g).requires_grad_()
    h_t, w_t = torch.randn(n, HT, generator=g), torch.randn(V, HT, generator=g)
    with _ProjectionRows() as counter:
        fused_sead_loss(h_s, w_s, h_t, w_t, torch.ones(n), zones=False, chunk_size=6)
    assert counter.rows == {HS: n, HT: n}


class _Tiles(TorchDispatchMode):
    """The largest number of rows of any ``[rows, V]`` tensor an op allocates (views, e.g. ``W.T``, are not new)."""

    def __init__(self):
        super().__init__()
        self.max_rows = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        if returns and returns[0].alias_info is not None:  # a view or an in-place op: nothing new
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == V:
                self.max_rows = max(self.max_rows, t.shape[:-1].numel())
        return out


@pytest.mark.parametrize("estimator", ["full", "topk", "sampled"])
@pytest.mark.parametrize("gate,zones", [(True, False), (True, True), (False, True)])
def test_no_model_gets_more_than_a_chunk_of_logits(estimator, gate, zones):
    # every estimator, with the sign gate and a reference head: no [N, V] tensor for any model, only [chunk, V] tiles
    from sead.losses.fused import LMHead

    g = torch.Generator().manual_seed(5)
    b, t, chunk = 4, 10, 7
    h_s = torch.randn(b, t, HS, generator=g, dtype=torch.float64).requires_grad_()
    w_s = torch.randn(V, HS, generator=g, dtype=torch.float64).requires_grad_()
    h_t, w_t = torch.randn(b, t, HT, generator=g, dtype=torch.float64), torch.randn(V, HT, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (b, t), generator=g)
    with _Tiles() as tiles:
        out = fused(LMHead(h_s, w_s), LMHead(h_t, w_t), torch.ones(b, t), ids, estimator=estimator,
                              estimator_top_k=5, sign_gate=gate, correct=torch.tensor([True, False, True, False]),
                              reference=LMHead(h_s.detach() * 0.9, w_s.detach()), zones=zones, entropy_top_k=8,
                              chunk_size=chunk, alpha=0.3)
        out.loss.backward()
    assert 0 < tiles.max_rows <= chunk


@pytest.mark.parametrize("gate", [False, True])
def test_sign_gate_with_zones_projects_the_student_in_pass_a(gate):
    # with zones, pass A needs the student's log-normaliser for d_t of every valid token only when the gate is on
    # (consensus_frac counts them all); pass B projects the kept rows, the reference head included
    from sead.losses.fused import LMHead

    g = torch.Generator().manual_seed(6)
    n = 40
    h_s = torch.randn(n, HS, generator=g, dtype=torch.float64).requires_grad_()
    w_s = torch.randn(V, HS, generator=g, dtype=torch.float64).requires_grad_()
    h_t, w_t = torch.randn(n, HT, generator=g, dtype=torch.float64), torch.randn(V, HT, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (n,), generator=g)
    with _ProjectionRows() as counter:
        out = fused(LMHead(h_s, w_s), LMHead(h_t, w_t), torch.ones(n), ids, sign_gate=gate,
                              correct=torch.rand(n, generator=g) < 0.5, zones=True, entropy_top_k=8, chunk_size=7)
    kept = int((out.zones > 0).sum())
    assert kept == n - 20
    assert counter.rows[HS] == (n if gate else 0) + kept
    assert counter.rows[HT] == n + kept
