"""The `fkl_zone_anneal` ablation (issue 15's lead): the FKL zone too moves from forward to reverse KL."""

from __future__ import annotations

import pytest
import torch

from _fused_problem import fused, make_problem, on_logits
from _tiny import tiny_trainer
from sead.losses.fused import LMHead
from sead.method.zones import FKL, MASKED, RKL, SKIP, zone_weights


def test_zone_weights_by_hand():
    zones = torch.tensor([FKL, RKL, SKIP, MASKED])
    w_f, w_r = zone_weights(zones, alpha=0.25)
    assert w_f.tolist() == [1.0, 0.25, 0.0, 0.0] and w_r.tolist() == [0.0, 0.75, 0.0, 0.0]  # the papers' composition
    w_f, w_r = zone_weights(zones, alpha=0.25, fkl_zone_alpha=0.6)
    assert w_f.tolist() == pytest.approx([0.6, 0.25, 0.0, 0.0]) and w_r.tolist() == pytest.approx([0.4, 0.75, 0.0, 0.0])
    with pytest.raises(ValueError, match="fkl_zone_alpha"):
        zone_weights(zones, 0.2, fkl_zone_alpha=1.5)


@pytest.mark.parametrize("estimator", ["full", "topk", "sampled"])
def test_fused_equals_logits_path_with_an_annealed_fkl_zone(estimator):
    p = make_problem(11)
    kw = dict(estimator=estimator, estimator_top_k=5, zones=True, alpha=0.3, fkl_zone_alpha=0.45,
              teacher_quantile=0.7, skip_fraction=0.3, entropy_top_k=None)
    hs = p["hs"].clone().requires_grad_()
    out = fused(LMHead(hs, p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"], p["ids"], **kw)
    (g,) = torch.autograd.grad(out.loss, hs)
    hs2 = p["hs"].clone().requires_grad_()
    ref = on_logits(hs2 @ p["ws"].T, p["ht"] @ p["wt"].T, p["mask"], p["ids"], **kw)
    (g_ref,) = torch.autograd.grad(ref.loss, hs2)
    assert torch.equal(out.zones, ref.zones) and bool((out.zones == FKL).any())
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-9)
    default = on_logits(hs2 @ p["ws"].T, p["ht"] @ p["wt"].T, p["mask"], p["ids"],
                               **{**kw, "fkl_zone_alpha": 1.0})
    assert abs(float(default.loss) - float(ref.loss)) > 1e-6  # the knob changes the FKL zone's loss


def test_trainer_schedule(tmp_path):
    tr = tiny_trainer(tmp_path, method="sead", max_steps=10, fkl_zone_anneal=True)
    tr.state.max_steps = 10
    # the spec the loss takes at each step
    assert tr.step_spec().zones.fkl_zone_alpha == pytest.approx(1.0)
    tr.state.global_step = 5
    assert tr.step_spec().zones.fkl_zone_alpha == pytest.approx(0.5)  # the cosine from 1 to alpha_end = 0, half-way
    tr.state.global_step = 10
    assert tr.step_spec().zones.fkl_zone_alpha == pytest.approx(0.0)
    plain = tiny_trainer(tmp_path / "p", method="sead", max_steps=10)
    plain.state.global_step = 5
    assert plain.step_spec().zones.fkl_zone_alpha == 1.0  # default: the FKL zone is always forward KL
