"""How SEAD's zones compose with the anneal (METHODS.md 1b): the paper's loss (the default), our earlier reading
(`zone_composition: mix`) and its `fkl_zone_anneal` ablation."""

from __future__ import annotations

import math

import pytest
import torch

from _fused_problem import fused, make_problem, on_logits
from _tiny import tiny_trainer
from sead.losses.fused import LMHead
from sead.method.schedules import StepSchedules, cosine_anneal
from sead.method.zones import FKL, MASKED, RKL, SKIP, zone_weights
from sead.utils.errors import SeadError

ZONES = torch.tensor([FKL, RKL, SKIP, MASKED])


def test_zone_weights_paper_by_hand():
    # L = 1/|B u C| (sum_B RKL + alpha * lambda * sum_C FKL): FKL zone (alpha*lambda, 0), RKL zone (0, 1), skip (0, 0)
    w_f, w_r = zone_weights(ZONES, alpha=0.25)
    assert w_f.tolist() == [0.25, 0.0, 0.0, 0.0] and w_r.tolist() == [0.0, 1.0, 0.0, 0.0]
    w_f, w_r = zone_weights(ZONES, alpha=0.25, lam=2.0)
    assert w_f.tolist() == [0.5, 0.0, 0.0, 0.0] and w_r.tolist() == [0.0, 1.0, 0.0, 0.0]
    w_f, _ = zone_weights(ZONES, alpha=0.0)
    assert w_f.tolist() == [0.0] * 4  # late in training the teacher-uncertain tokens get no gradient


def test_zone_weights_mix_by_hand():
    w_f, w_r = zone_weights(ZONES, alpha=0.25, composition="mix")
    assert w_f.tolist() == [1.0, 0.25, 0.0, 0.0] and w_r.tolist() == [0.0, 0.75, 0.0, 0.0]
    w_f, w_r = zone_weights(ZONES, alpha=0.25, composition="mix", fkl_zone_alpha=0.6)
    assert w_f.tolist() == pytest.approx([0.6, 0.25, 0.0, 0.0]) and w_r.tolist() == pytest.approx([0.4, 0.75, 0.0, 0.0])


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=0.2, composition="mix", fkl_zone_alpha=1.5), "fkl_zone_alpha"),
    (dict(alpha=1.2), "alpha"),
    (dict(alpha=0.2, lam=-1.0), "fkl_zone_lambda"),
    (dict(alpha=0.2, composition="blend"), "composition"),
])
def test_zone_weights_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        zone_weights(ZONES, **kw)


@pytest.mark.parametrize("estimator", ["full", "topk", "sampled"])
@pytest.mark.parametrize("composition", ["paper", "mix"])
def test_fused_equals_logits_path_in_each_composition(estimator, composition):
    p = make_problem(11)
    kw = dict(estimator=estimator, estimator_top_k=5, zones=True, alpha=0.3, fkl_zone_alpha=0.45,
              zone_composition=composition, fkl_zone_lambda=1.3, teacher_quantile=0.7, skip_fraction=0.3,
              entropy_top_k=None)
    hs = p["hs"].clone().requires_grad_()
    out = fused(LMHead(hs, p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"], p["ids"], **kw)
    (g,) = torch.autograd.grad(out.loss, hs)
    hs2 = p["hs"].clone().requires_grad_()
    ref = on_logits(hs2 @ p["ws"].T, p["ht"] @ p["wt"].T, p["mask"], p["ids"], **kw)
    (g_ref,) = torch.autograd.grad(ref.loss, hs2)
    assert torch.equal(out.zones, ref.zones) and bool((out.zones == FKL).any())
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(g, g_ref, atol=1e-10, rtol=1e-9)
    other = on_logits(hs2 @ p["ws"].T, p["ht"] @ p["wt"].T, p["mask"], p["ids"], **{**kw, "fkl_zone_alpha": 1.0})
    assert abs(float(other.loss) - float(ref.loss)) > 1e-6  # the FKL zone's factor changes its loss


def test_schedules_fkl_zone_factor():
    paper = StepSchedules(anneal=True)
    for step in (0, 3, 10):
        assert paper.fkl_zone_alpha(step, 10) == pytest.approx(cosine_anneal(step, 10))  # alpha(t): 0.8 -> 0
    assert StepSchedules(anneal=False).fkl_zone_alpha(5, 10) == 1.0  # zones alone: lambda * FKL, constant
    mix = StepSchedules(anneal=True, zone_composition="mix")
    assert mix.fkl_zone_alpha(5, 10) == 1.0
    ablation = StepSchedules(anneal=True, zone_composition="mix", fkl_zone_anneal=True)
    assert ablation.fkl_zone_alpha(5, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))
    with pytest.raises(ValueError, match="fkl_zone_anneal"):
        StepSchedules(anneal=True, fkl_zone_anneal=True)


def test_trainer_schedule(tmp_path):
    tr = tiny_trainer(tmp_path, method="sead", max_steps=10)
    tr.state.max_steps = 10
    spec = tr.step_spec()
    assert spec.zones.composition == "paper" and spec.zones.fkl_zone_alpha == pytest.approx(0.8)
    tr.state.global_step = 5
    assert tr.step_spec().zones.fkl_zone_alpha == pytest.approx(0.4)  # alpha(t) half-way
    tr.state.global_step = 10
    assert tr.step_spec().zones.fkl_zone_alpha == pytest.approx(0.0)
    mix = tiny_trainer(tmp_path / "m", method="sead", max_steps=10, zone_composition="mix", fkl_zone_anneal=True)
    mix.state.global_step = 5
    assert mix.step_spec().zones.fkl_zone_alpha == pytest.approx(0.5)  # the cosine from 1 to alpha_end = 0
    plain = tiny_trainer(tmp_path / "p", method="sead", max_steps=10, zone_composition="mix")
    plain.state.global_step = 5
    assert plain.step_spec().zones.fkl_zone_alpha == 1.0 and plain.step_spec().alpha == pytest.approx(0.4)


def test_config_refuses_the_ablation_in_the_papers_composition(tmp_path):
    with pytest.raises(SeadError, match="fkl_zone_anneal"):
        tiny_trainer(tmp_path, method="sead", max_steps=10, fkl_zone_anneal=True)
    with pytest.raises(SeadError, match="zone_composition"):
        tiny_trainer(tmp_path / "b", method="sead", max_steps=10, zone_composition="blend")
