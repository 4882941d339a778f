"""The trainer's components, without a trainer, against hand values: the step schedules (the trainer reads every
anneal weight from them), the loss spec, the step's zone cuts (ties at the skip cut; two micro-batches equal to the
pooled batch), SG-OPD's gate at ``d = 0`` in the fused path, a served teacher's tail floor, the curriculum's window,
teacher mixing and the step's verdict counts."""

from __future__ import annotations

import math

import pytest
import torch

from _fused_problem import fused, make_problem, on_logits  # noqa: E402
from sead.components.teacher_mix import TeacherMix, splice_rollouts, step_seed, teacher_mix_picks
from sead.components.verdicts import StepVerdicts
from sead.components.zone_cuts import StepZoneCuts
from sead.losses.fused import LMHead, SparseTeacher
from sead.losses.spec import GateSpec, LossSpec, ZoneSpec
from sead.losses.terms import sparse_buckets, sparse_tail_floor
from sead.method.curriculum import CompetenceCurriculum
from sead.method.schedules import StepSchedules
from sead.method.zones import FKL, RKL, SKIP, ZoneThresholds, zone_thresholds, zones_from_thresholds


# ------------------------------------------------------------------------------------------- schedules
def test_schedules_by_hand_at_the_start_the_middle_and_the_end():
    s = StepSchedules(anneal=True, alpha_start=0.8, alpha_end=0.0, fkl_zone_anneal=True, teacher_mixing=True,
                      rho0=0.5, phase_fraction=0.2, zone_composition="mix")  # fmt: skip
    T = 100
    # alpha: 0.8 at step 0, (0.8 + 0) / 2 at T/2, 0 at T (the forward KL fades into reverse KL, not the other way)
    assert [s.alpha(t, T) for t in (0, 50, 100)] == pytest.approx([0.8, 0.4, 0.0], abs=1e-12)
    # the FKL zone's weight (the ablation of "mix"): 1 -> 0.5 -> 0; in the paper's composition alpha(t) itself
    assert [s.fkl_zone_alpha(t, T) for t in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    paper = StepSchedules(anneal=True, alpha_start=0.8, alpha_end=0.0)
    assert [paper.fkl_zone_alpha(t, T) for t in (0, 50, 100)] == pytest.approx([0.8, 0.4, 0.0], abs=1e-12)
    # rho: 0.5 at step 0, halfway through the cold start (10 of 20 steps) 0.25, 0 after it
    assert [s.rho(t, T) for t in (0, 10, 20, 50)] == pytest.approx([0.5, 0.25, 0.0, 0.0], abs=1e-12)
    off = StepSchedules()
    assert (off.alpha(10, T), off.fkl_zone_alpha(10, T), off.rho(0, T)) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="alpha_start"):
        StepSchedules(alpha_start=1.5)


def test_the_trainer_takes_each_steps_weights_from_its_schedules(tmp_path):
    from _tiny import tiny_trainer

    tr = tiny_trainer(tmp_path, method="sead", max_steps=10)
    spec = [None] * 3
    for i, step in enumerate((0, 5, 10)):
        tr.state.global_step = step
        spec[i] = tr.step_spec()
    assert [s.alpha for s in spec] == pytest.approx([0.8, 0.4, 0.0], abs=1e-12)
    # the paper's composition: the FKL zone weighed by alpha(t); no step's cuts taken yet
    assert [s.zones.fkl_zone_alpha for s in spec] == pytest.approx([0.8, 0.4, 0.0], abs=1e-12)
    assert all(s.zones.cuts is None for s in spec)


# ------------------------------------------------------------------------------------------- the spec
def test_the_spec_is_checked_once_by_name_and_builds_from_flat_options():
    spec = LossSpec.from_options(estimator="topk", zones=True, skip_fraction=0.3, sign_gate=True, lambda_conflict=0.5)
    assert spec.zones == ZoneSpec(0.9, 0.3, fkl_zone_alpha=0.0) and spec.gate == GateSpec(1.8, 0.5) and spec.estimator == "topk"
    assert LossSpec.from_options(skip_fraction=7.0).zones is None  # a part that is off is not built
    for bad, name in ((dict(estimator="exact"), "estimator"), (dict(alpha=1.2), "alpha"),
                      (dict(normalize="mean"), "normalize"), (dict(entropy_top_k=0), "entropy_top_k"),
                      (dict(zones=True, skip_fraction=1.5), "skip_fraction"),
                      (dict(sign_gate=True, lambda_consensus=0.0), "lambda_consensus")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            LossSpec.from_options(**bad)
    at = spec.at_step(alpha=0.25, fkl_zone_alpha=0.5, cuts=ZoneThresholds(1.0, 0.2))
    assert (at.alpha, at.zones.fkl_zone_alpha, at.zones.cuts) == (0.25, 0.5, ZoneThresholds(1.0, 0.2))
    assert at.zones.skip_fraction == 0.3 and spec.alpha == 0.0  # the run's spec is not changed
    # the global denominator: the expected kept count with zones and "kept", else the valid count
    assert spec.normaliser(40.0) == pytest.approx(28.0)
    assert LossSpec(zones=ZoneSpec(skip_fraction=0.25), normalize="all").normaliser(40.0) == 40.0
    assert LossSpec().normaliser(40.0) == 40.0 and spec.normaliser(None) is None


# ------------------------------------------------------------------------------------------- zone cuts
def test_tokens_tied_at_the_skip_cut_are_all_skipped():
    # H_T: the last token is the FKL zone (quantile 0.75). Of the other three, floor(0.25 * 4) = 1 is to be skipped;
    # two share the lowest H_S (0.5): the cut is 0.5 itself, and both tied tokens are skipped
    h_t = torch.tensor([0.1, 0.2, 0.3, 2.0], dtype=torch.float64)
    h_s = torch.tensor([0.5, 0.5, 0.9, 0.1], dtype=torch.float64)
    cuts = zone_thresholds(h_t, h_s, None, teacher_quantile=0.75, skip_fraction=0.25)
    assert cuts.student_entropy_cut == 0.5
    assert zones_from_thresholds(h_t, h_s, torch.ones(4), cuts).tolist() == [SKIP, SKIP, RKL, FKL]
    # a token exactly at a hand-set cut is skipped; just above it is not
    at = zones_from_thresholds(h_t[:3], torch.tensor([0.4, 0.4 + 1e-12, 0.3], dtype=torch.float64), torch.ones(3),
                               ZoneThresholds(1.0, 0.4))  # fmt: skip
    assert at.tolist() == [SKIP, RKL, SKIP]


@pytest.mark.parametrize("estimator,gate", [("full", False), ("topk", True), ("sampled", True)])
def test_a_step_of_two_micro_batches_equals_the_pooled_batch(estimator, gate):
    """The component the trainer holds: the step's cuts from both micro-batches' entropies; each micro-batch's loss
    with those cuts and the step's kept count; their zones and summed loss (and gradient) are the pooled batch's."""
    p = make_problem(64, B=4, T=6)
    kw = dict(estimator=estimator, estimator_top_k=4, sign_gate=gate, zones=True, alpha=0.3, entropy_top_k=5,
              teacher_quantile=0.8, skip_fraction=0.4, chunk_size=5)
    spec = LossSpec.from_options(**kw)
    hs = p["hs"].clone().requires_grad_(True)
    pooled = on_logits(hs @ p["ws"].T, p["ht"] @ p["wt"].T, p["mask"], p["ids"], correct=p["correct"],
                       **{k: v for k, v in kw.items() if k != "chunk_size"})  # the readable reference, one call
    micro = [slice(0, 1), slice(1, 4)]
    cuts = StepZoneCuts(spec)
    cuts.start(step=7)
    for sl in micro:
        assert cuts.add(LMHead(p["hs"][sl], p["ws"]), LMHead(p["ht"][sl], p["wt"]), p["mask"][sl])
    result = cuts.finish()
    assert result.tokens == int(p["mask"].sum())
    assert result.frac_skip == pytest.approx(float((pooled.zones == SKIP).sum()) / result.tokens)
    assert cuts.cuts_at(8) is None and cuts.cuts_at(7) is result.cuts  # the cuts belong to their step only
    step_spec = spec.at_step(alpha=0.3, cuts=cuts.cuts_at(7))
    kept = float(pooled.stats["num_kept"])
    from sead.losses.fused import fused_objective

    outs = [fused_objective(step_spec, LMHead(hs[sl], p["ws"]), LMHead(p["ht"][sl], p["wt"]), p["mask"][sl],
                            p["ids"][sl], correct=p["correct"][sl], num_items=kept) for sl in micro]  # fmt: skip
    assert torch.equal(torch.cat([o.zones for o in outs]), pooled.zones)
    total = sum(o.loss for o in outs)
    torch.testing.assert_close(total.detach(), pooled.loss.detach(), rtol=1e-9, atol=1e-12)
    (g_micro,) = torch.autograd.grad(total, hs)
    (g_pooled,) = torch.autograd.grad(pooled.loss, hs)
    torch.testing.assert_close(g_micro, g_pooled, rtol=1e-9, atol=1e-12)
    # without the step's cuts each micro-batch takes its own percentiles: other zones (what the cuts are for)
    own = [fused(LMHead(p["hs"][sl], p["ws"]), LMHead(p["ht"][sl], p["wt"]), p["mask"][sl], p["ids"][sl],
                 correct=p["correct"][sl], **kw) for sl in micro]  # fmt: skip
    assert not torch.equal(torch.cat([o.zones for o in own]), pooled.zones)


def test_zone_cuts_skip_a_micro_batch_with_nan_and_refuse_other_errors():
    p = make_problem(65)
    cuts = StepZoneCuts(LossSpec.from_options(zones=True, entropy_top_k=5))
    cuts.start(step=0)
    bad = p["hs"].clone()
    bad[0, 0, 0] = float("nan")
    assert not cuts.add(LMHead(bad, p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"])
    assert cuts.finish().tokens == 0  # nothing pooled: no token in the FKL or skip zone
    with pytest.raises(ValueError, match="vocabulary"):
        cuts.add(LMHead(p["hs"], p["ws"]), LMHead(p["ht"], p["wt"][:-1]), p["mask"])
    with pytest.raises(ValueError, match="zones"):
        StepZoneCuts(LossSpec())


# ------------------------------------------------------------------------------------------- the gate
def test_d_zero_is_a_conflict_in_the_fused_path():
    # teacher = student: d_t = log pi_T(y_t) - log pi_S(y_t) = 0 at every token, a conflict whatever the verdict
    p = make_problem(66)
    same = LMHead(p["hs"], p["ws"])
    for correct in (torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)):
        for estimator in ("full", "sampled"):
            out = fused(LMHead(p["hs"].clone().requires_grad_(True), p["ws"]), same, p["mask"], p["ids"],
                        estimator=estimator, sign_gate=True, correct=correct, lambda_consensus=1.8, lambda_conflict=0.5)
            assert out.stats["consensus_frac"] == 0.0


# ------------------------------------------------------------------------------------------- a served teacher
def test_a_served_teachers_tail_floor_is_k_float_epsilons():
    assert sparse_tail_floor(64, torch.float32) == 64 * 2.0**-23  # 7.63e-6
    assert sparse_tail_floor(5, torch.float64) == 5 * 2.0**-52
    # a top-k holding all the mass (tail 0): the tail bucket gets the floor, and the k+1 buckets still sum to 1
    lp = torch.log(torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float32))
    b = sparse_buckets(torch.tensor([[3, 1, 2]]), lp, 3, sparse_tail_floor(3, torch.float32))
    floor = 3 * 2.0**-23
    assert float(b.tail.exp()) == pytest.approx(floor / (1 + floor), rel=1e-4)
    assert float(torch.cat([b.logb, b.tail[:, None]], -1).exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_a_served_teacher_gives_the_dense_teachers_entropies_to_the_zone_cuts():
    p = make_problem(67)
    logp = torch.log_softmax(p["ht"] @ p["wt"].T, -1)
    top = logp.topk(6, -1)
    spec = LossSpec.from_options(zones=True, entropy_top_k=6, estimator="topk", estimator_top_k=6)
    cuts = [StepZoneCuts(spec) for _ in range(2)]
    for c, teacher in zip(cuts, (LMHead(p["ht"], p["wt"]), SparseTeacher(top.indices, top.values))):
        c.start(0)
        c.add(LMHead(p["hs"], p["ws"]), teacher, p["mask"])
    dense, served = cuts[0].finish(), cuts[1].finish()
    assert dense.cuts.teacher_entropy == pytest.approx(served.cuts.teacher_entropy, rel=1e-10)
    assert dense.cuts.student_entropy_cut == pytest.approx(served.cuts.student_entropy_cut, rel=1e-10)


# ------------------------------------------------------------------------------------------- the curriculum
def test_a_partial_window_never_opens_the_gate():
    cur = CompetenceCurriculum([0.1, 0.4, 0.6, 0.9], threshold=0.5, window=4, num_buckets=4)
    assert not cur.update([True, True, True])  # pass rate 1.0, but 3 of 4 rollouts: the gate waits
    assert cur.bucket == 0
    assert cur.update([True])  # the window is full: 1.0 > 0.5 opens the next quantile
    assert cur.bucket == 1 and len(cur.window) == 0
    assert not cur.update([True, False, False, False])  # full, 0.25: stays
    assert cur.bucket == 1


# ------------------------------------------------------------------------------------------- teacher mixing
def test_teacher_mix_picks_by_hand_and_the_step_seed():
    assert step_seed(3, 2) == 3 * 7919 + 2 * 131
    assert teacher_mix_picks(0.0, 4, seed=0, step=0, rank=0) == []
    assert sorted(teacher_mix_picks(1.0, 4, seed=0, step=0, rank=1)) == [0, 1, 2, 3]
    u = torch.rand((), generator=torch.Generator().manual_seed(step_seed(5, 9))).item()
    assert len(teacher_mix_picks(0.3, 10, seed=5, step=9, rank=0)) == math.floor(0.3 * 10 + u)


def test_teacher_mix_keeps_the_first_endorsed_rollout_and_repads():
    calls = []

    def sample(prompt_ids, prompt_mask, seed):
        calls.append((prompt_ids.tolist(), seed))
        # two rollouts per picked prompt: prompt 20's second one is endorsed, prompt 21's none
        by_prompt = {20: [[7, 7], [5, 6, 1]], 21: [[7], [7, 7, 7, 7]]}
        return [r for row in prompt_ids.tolist() for r in by_prompt[row[-1]]]

    def grade(rows, texts):
        return [t.startswith("5") for t in texts]

    mix = TeacherMix(sample, grade, lambda rows: [" ".join(map(str, r)) for r in rows], num_generations=2, seed=1,
                     pad_token_id=0)  # fmt: skip
    output = {
        "prompt_ids": torch.tensor([[1, 20], [1, 21]]),
        "prompt_mask": torch.ones(2, 2, dtype=torch.long),
        "completion_ids": torch.tensor([[9, 9], [8, 0]]),
        "completion_mask": torch.tensor([[1, 1], [1, 0]]),
    }
    result = mix.mix([{}, {}], dict(output), [False, False], rho=1.0, step=4, rank=0)
    assert sorted(result.picks) == [0, 1] and result.mixed == [True, False] and result.correct == [True, False]
    assert calls[0][1] == step_seed(1, 4) + 0  # (seed, step, rank)
    assert result.output["completion_ids"].tolist() == [[5, 6, 1], [8, 0, 0]]  # re-padded to the longest
    assert result.output["completion_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    none = mix.mix([{}, {}], dict(output), [False, False], rho=0.0, step=4, rank=0)
    assert none.picks == [] and none.output["completion_ids"] is output["completion_ids"]


def test_splice_gives_a_teachers_row_all_its_tokens_and_no_sampler_logprob():
    output = {
        "completion_ids": torch.tensor([[4, 4]]),
        "tool_mask": torch.tensor([[1, 0]]),
        "sampler_logprobs": torch.tensor([[-0.5, -0.7]]),
    }
    student = splice_rollouts(dict(output), [[4, 4]], [False], pad_token_id=0)
    assert student["tool_mask"].tolist() == [[1, 0]] and torch.equal(student["sampler_logprobs"], output["sampler_logprobs"])
    teacher = splice_rollouts(dict(output), [[3, 3, 3]], [True], pad_token_id=0)
    assert teacher["tool_mask"].tolist() == [[1, 1, 1]] and torch.isnan(teacher["sampler_logprobs"]).all()


# ------------------------------------------------------------------------------------------- verdict counts
def test_step_verdicts_count_the_students_own_rollouts():
    v = StepVerdicts.of([True, True, False, True], [False, True, False, False], timeouts=1, errors=2)
    assert (v.passed, v.own, v.mixed, v.rows) == (2.0, 3.0, 1.0, 4.0)
    summed = v.summed("cpu", reduce=lambda t: t * 2)  # two processes with the same counts
    assert (summed.passed, summed.own, summed.grader_timeouts, summed.grader_errors) == (4.0, 6.0, 2.0, 4.0)
    assert summed.pass_rate == pytest.approx(2 / 3) and summed.mixed_fraction == pytest.approx(0.25)
    assert StepVerdicts.of([True], [True], 0, 0).pass_rate is None  # no rollout of the student's own
