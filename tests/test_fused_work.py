"""The fused SEAD loss does the matmul work its docstring promises (counted, not timed): over the
teacher's top-k the zone pass never projects the student over the vocabulary, so the student's
``[rows, V]`` projections cover only the kept rows; over each model's own top-k they cover all valid
rows once more."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
