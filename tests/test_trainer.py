"""OPDTrainer on tiny random models: the method pieces behave as specified inside the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from _fused_problem import on_logits  # noqa: E402
from _tiny import fixed_batch, tiny_dataset, tiny_model, tokenizer
from sead.losses import fused_sead_loss, reverse_kl, sead_loss
from sead.method.curriculum import CompetenceCurriculum
from sead.training.config import OPDConfig
from sead.training.trainer import OPDTrainer


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        max_completion_length=6,
        learning_rate=1e-3,
        report_to=[],
        bf16=False,
        activation_checkpointing=False,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        seed=0,
    )
    base.update(kw)
    return OPDConfig(**base)


def test_opd_full_estimator_equals_trl_distillation_loss(tmp_path):
    """Vanilla OPD (fused, full vocabulary) gives TRL's DistillationTrainer loss with beta=1 on one batch."""
    from trl import DistillationConfig, DistillationTrainer

    ds = tiny_dataset(8)
    ours = OPDTrainer(tiny_model(0), tiny_model(1), args=_cfg(tmp_path, method="opd"), train_dataset=ds, processing_class=tokenizer())
    trl_args = DistillationConfig(
        output_dir=str(tmp_path / "trl"), beta=1.0, report_to=[], bf16=False, activation_checkpointing=False, use_cpu=True, max_steps=1
    )
    theirs = DistillationTrainer(model=tiny_model(0), teacher_model=tiny_model(1), args=trl_args, train_dataset=ds, processing_class=tokenizer())
    batch = fixed_batch()
    for n_items in (None, batch["num_items_in_batch"].float()):
        a = ours._compute_loss(ours.model, batch, n_items)[0]
        b = theirs._compute_loss(theirs.model, batch, n_items)[0]
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), (a, b)


def test_logits_path_equals_fused_path(tmp_path):
    ds = tiny_dataset(8)
    cfg = _cfg(tmp_path, method="sead", curriculum=False, zone_precision="exact")
    fused = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=ds, processing_class=tokenizer())
    plain = OPDTrainer(
        tiny_model(0), tiny_model(1), args=_cfg(tmp_path, method="sead", curriculum=False, use_fused_loss=False),
        train_dataset=ds, processing_class=tokenizer(),
    )
    batch = fixed_batch()
    a = fused._compute_loss(fused.model, batch, batch["num_items_in_batch"].float())[0]
    b = plain._compute_loss(plain.model, batch, batch["num_items_in_batch"].float())[0]
    assert torch.allclose(a, b, rtol=1e-5), (a, b)


@pytest.mark.parametrize("precision,support", [("bf16", "own"), ("exact", "teacher"), ("auto", "teacher")])
def test_the_fused_loss_gets_the_configured_zone_settings(tmp_path, monkeypatch, precision, support):
    import sead.training.trainer as trainer_module

    seen = []
    real = trainer_module.fused_objective

    def spy(spec, *args, **kwargs):
        seen.append((spec.zone_precision, spec.entropy_support))
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "fused_objective", spy)
    cfg = _cfg(tmp_path, method="sead", curriculum=False, zone_precision=precision, entropy_support=support)
    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8), processing_class=tokenizer())
    batch = fixed_batch()
    loss = tr._compute_loss(tr.model, batch, batch["num_items_in_batch"].float())[0]
    assert seen == [(precision, support)] and torch.isfinite(loss)
    defaults = OPDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False)
    assert (defaults.zone_precision, defaults.entropy_support) == ("auto", "teacher")
    with pytest.raises(Exception, match="zone_precision"):
        _cfg(tmp_path, zone_precision="fp8")
    with pytest.raises(Exception, match="entropy_support"):
        _cfg(tmp_path, entropy_support="student")


def test_zones_change_the_loss_as_specified_on_known_entropies():
    """Hand-built batch: teacher entropy high at t=0 (FKL), student entropy lowest at t=1,2 (skip)."""
    V = 6
    sharp, flat = torch.tensor([8.0, 0, 0, 0, 0, 0]), torch.zeros(V)
    # positions: 0: teacher flat (FKL); 1, 2: both sharp (skip); 3: teacher sharp, student flat (RKL)
    teacher = torch.stack([flat, sharp, sharp, sharp])[None]
    student = torch.stack([sharp * 0.5, sharp, sharp, flat])[None].requires_grad_()
    mask = torch.ones(1, 4)
    out = sead_loss(student, teacher, mask, alpha=0.25, teacher_quantile=0.75, skip_fraction=0.5)
    assert out.zones.tolist() == [[2, 0, 0, 1]]
    fkl = lambda i: (torch.softmax(teacher[0, i], -1) * (torch.log_softmax(teacher[0, i], -1) - torch.log_softmax(student[0, i], -1))).sum()  # noqa: E731
    rkl = lambda i: reverse_kl(student[0, i], teacher[0, i])  # noqa: E731
    # the paper's composition: FKL zone alpha * lambda * FKL, RKL zone pure RKL; normalised by the 2 kept tokens
    expected = (0.25 * fkl(0) + rkl(3)) / 2
    assert torch.allclose(out.loss, expected, rtol=1e-6)
    mix = sead_loss(student, teacher, mask, alpha=0.25, teacher_quantile=0.75, skip_fraction=0.5, zone_composition="mix")
    assert torch.allclose(mix.loss, (fkl(0) + 0.25 * fkl(3) + 0.75 * rkl(3)) / 2, rtol=1e-6)  # our earlier reading
    out.loss.backward()
    assert torch.count_nonzero(student.grad[0, 1:3]) == 0  # skip zone: exactly zero gradient
    assert torch.count_nonzero(student.grad[0, 0]) > 0 and torch.count_nonzero(student.grad[0, 3]) > 0


def test_skip_zone_gets_exactly_zero_gradient_in_fused_loss():
    g = torch.Generator().manual_seed(3)
    h_s = torch.randn(40, 8, generator=g, dtype=torch.float64).requires_grad_()
    w_s = torch.randn(30, 8, generator=g, dtype=torch.float64).requires_grad_()
    out = fused_sead_loss(h_s, w_s, torch.randn(40, 12, generator=g, dtype=torch.float64),
                          torch.randn(30, 12, generator=g, dtype=torch.float64), torch.ones(40), alpha=0.3, chunk_size=7)
    out.loss.backward()
    skipped = out.zones == 0
    assert skipped.sum() == 20
    assert torch.all(h_s.grad[skipped] == 0)
    assert torch.all(h_s.grad[~skipped].abs().sum(-1) > 0)


def test_sampler_only_yields_open_prompts_and_gate_opens_on_competence():
    d = torch.linspace(0, 1, 100)
    cur = CompetenceCurriculum(d, threshold=0.6, window=10, num_buckets=4, full_open_fraction=0.8, seed=1)
    T = 1000
    gate0 = cur.gate(0, T)
    assert math.isclose(gate0, float(d[24]))
    for step in range(20):
        for i in cur.draw(step, T, 16):
            assert d[i] <= cur.gate(step, T)
    # pass rate 0.6 is not above the threshold: the gate stays
    assert not cur.update([True] * 6 + [False] * 4)
    assert cur.bucket == 0
    # 7/10 > 0.6 over a full window: the next quantile opens, and the window restarts
    assert cur.update([True] * 7 + [False] * 3)
    assert cur.bucket == 1 and len(cur.window) == 0
    assert math.isclose(cur.gate(0, T), float(d[49]))
    # the floor opens everything by 80% of training
    assert cur.gate(800, T) == 1.0 and len(cur.open_indices(800, T)) == 100


def test_curriculum_gate_and_pool_are_logged_and_pass_rate_drives_it(tmp_path):
    ds = tiny_dataset(16)
    calls = []

    def always_right(prompts, completions, **kw):
        calls.append(len(completions))
        return [1.0] * len(completions)

    cfg = _cfg(tmp_path, method="sead", competence_window=4, curriculum_num_buckets=4, curriculum_full_open_fraction=1.0, max_steps=3)
    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=ds, processing_class=tokenizer(), reward_funcs=always_right)
    tr.train()
    assert calls and tr.curriculum.bucket == 3  # every window passes: the gate opened at each step
    logged = [h for h in tr.state.log_history if "curriculum/gate" in h]
    assert len(logged) == 3
    assert [h["curriculum/bucket"] for h in logged] == [1.0, 2.0, 3.0]
    for key in ("sead/frac_skip", "sead/alpha", "sead/mean_h_t", "rollout/pass_rate", "curriculum/open_pool"):
        assert key in logged[0]


def test_sign_gate_scales_as_specified_inside_the_objective():

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 7, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(2, 3, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 3), generator=g)
    mask = torch.ones(2, 3)
    correct = torch.tensor([True, False])
    out = on_logits(s, t, mask, ids, estimator="sampled", sign_gate=True, correct=correct)
    logp = lambda z: torch.log_softmax(z, -1).gather(-1, ids[..., None])[..., 0]  # noqa: E731
    d = logp(t) - logp(s).detach()
    v = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    lam = torch.where(d * v > 0, 1.8, 1.0)  # the defaults: 1.8 on consensus, 1.0 on conflict
    expected = -(lam * d * logp(s)).sum() / 6  # no reference model: A = lambda * d
    assert torch.allclose(out.loss, expected)


def test_teacher_mixing_replaces_only_verified_rollouts_and_stops_after_cold_start(tmp_path, monkeypatch):
    tok = tokenizer()
    ds = tiny_dataset(8)
    cfg = _cfg(tmp_path, method="sgopd", teacher_mix_rho0=1.0, teacher_mix_phase_fraction=0.5, teacher_num_generations=2, max_steps=10,
               top_p=0.9, top_k=7, log_completions=True)

    good = tok("5}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("7}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def verifier(prompts, completions, **kw):
        return [1.0 if c.startswith("5") else 0.0 for c in completions]

    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=ds, processing_class=tok, reward_funcs=verifier)
    tr.state.max_steps = 10
    B, P = 4, 3
    # teacher candidates per prompt (prompt b is filled with id 10 + b): 0 -> (bad, good); 1 -> (bad, bad);
    # 2, 3 -> (good, bad)
    by_prompt = {10: [bad, good], 11: [bad, bad], 12: [good, bad], 13: [good, bad]}

    configs = []

    def fake_generate(self, input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        configs.append(generation_config)
        rows = [by_prompt[int(r[0])][i % 2] for i, r in enumerate(input_ids)]
        L = max(map(len, rows))
        rows = [c + [tok.pad_token_id] * (L - len(c)) for c in rows]
        return torch.cat([input_ids, torch.tensor(rows)], dim=1)

    monkeypatch.setattr(type(tr.accelerator.unwrap_model(tr.teacher_model)), "generate", fake_generate)
    student_completion = torch.tensor([[9, 9, 9]] * B)
    output = {
        "prompt_ids": (10 + torch.arange(B))[:, None].repeat(1, P),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": student_completion.clone(),
        "completion_mask": torch.ones(B, 3, dtype=torch.long),
        "num_items_in_batch": torch.tensor(12),
    }
    inputs = [ds[i] for i in range(B)]
    tr.state.global_step = 0  # rho = 1: every prompt offered a teacher rollout
    tr._logs["completion"].extend(["9 9 9 (student)"] * B)  # as TRL logs them (a deque of the last batch)
    mix = tr._mix_teacher_rollouts(inputs, dict(output), [False] * B)
    out, correct, mixed = mix.output, mix.correct, mix.mixed
    assert mixed == [True, False, True, True]  # prompt 1 had no verified candidate: keeps the student's
    # the teacher sampled with the student's top_p / top_k (no teacher_top_p / teacher_top_k set)
    assert configs and all(c.do_sample and c.top_p == 0.9 and c.top_k == 7 for c in configs)
    # log_completions shows what is trained on: the mixed rollouts replace the student's
    trained = tok.batch_decode([ids[m.bool()].tolist() for ids, m in zip(out["completion_ids"], out["completion_mask"])],
                               skip_special_tokens=True)
    assert list(tr._logs["completion"]) == trained
    assert trained[0] == tok.decode(good, skip_special_tokens=True) != trained[1]
    assert correct == [True, False, True, True]
    assert out["completion_ids"][0, : len(good)].tolist() == good
    assert out["completion_ids"][1, :3].tolist() == [9, 9, 9]
    assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    tr.state.global_step = 5  # end of the cold start (50% of 10 steps): rho = 0, purely on-policy
    mix = tr._mix_teacher_rollouts(inputs, dict(output), [False] * B)
    out, correct, mixed = mix.output, mix.correct, mix.mixed
    assert mixed == [False] * B and torch.equal(out["completion_ids"], student_completion)


@pytest.mark.parametrize("method,estimator", [("opd", "full"), ("sead", "topk"), ("sgopd", "full"), ("sgopd", "sampled")])
def test_each_method_and_estimator_trains_and_updates_the_student(tmp_path, method, estimator):
    ds = tiny_dataset(16)
    student = tiny_model(0)
    before = [p.detach().clone() for p in student.parameters()]
    cfg = _cfg(tmp_path, method=method, estimator=estimator, max_steps=2, teacher_num_generations=2)
    tr = OPDTrainer(student, tiny_model(1), args=cfg, train_dataset=ds, processing_class=tokenizer())
    tr.train()
    changed = any(not torch.equal(a, b.detach()) for a, b in zip(before, tr.model.parameters()))
    assert changed
    assert all(math.isfinite(h["loss"]) for h in tr.state.log_history if "loss" in h)


def test_teacher_rollout_filters_default_to_the_students_and_are_checked(tmp_path):
    from sead.utils.errors import SeadError

    assert _cfg(tmp_path).teacher_sampling_filters() == (1.0, 0)
    assert _cfg(tmp_path, top_p=0.8, top_k=5).teacher_sampling_filters() == (0.8, 5)
    # generation_kwargs override the fields for the student's rollouts (TRL), so for the teacher's too
    assert _cfg(tmp_path, top_p=0.8, top_k=5, generation_kwargs={"top_k": 3}).teacher_sampling_filters() == (0.8, 3)
    assert _cfg(tmp_path, top_p=0.8, top_k=5, teacher_top_p=1.0, teacher_top_k=0).teacher_sampling_filters() == (1.0, 0)
    with pytest.raises(SeadError, match="teacher_top_p must be in"):
        _cfg(tmp_path, teacher_top_p=0.0)
    with pytest.raises(SeadError, match="teacher_top_k must be >= 0"):
        _cfg(tmp_path, teacher_top_k=-1)
