"""Numerical faults: NaN or inf in teacher or student logits, in the loss or in the gradients is never
applied. ``nonfinite_policy="error"`` refuses it with a clear error; ``"skip"`` drops the step (no
parameter or optimizer-state change) and counts it. All-EOS and zero-length completions contribute no
gradient and do not crash."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import TrainerCallback

import sead.training.trainer as trainer_module
from _tiny import params, tiny_trainer, tokenizer
from sead.utils.errors import NonFiniteError

NAN, INF = float("nan"), float("inf")



class _Recorder(TrainerCallback):
    """Parameters and Adam moments after every optimizer step (index 0: before training)."""

    def __init__(self):
        self.trainer = None
        self.params, self.moments = [], []

    def _snap(self):
        t = self.trainer
        self.params.append(params(t.model))
        state = t.optimizer.state_dict()["state"] if t.optimizer is not None else {}
        self.moments.append(copy.deepcopy({k: v.get("exp_avg") for k, v in state.items()}))

    def on_train_begin(self, args, state, control, **kwargs):
        self._snap()

    def on_step_end(self, args, state, control, **kwargs):
        self._snap()


class _Fault(TrainerCallback):
    """Arms ``fault`` (an object with arm(trainer)/disarm(trainer)) during optimizer step ``step`` (1-based)."""

    def __init__(self, fault, step: int):
        self.fault, self.step, self.trainer = fault, step, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.fault.arm(self.trainer)

    def on_step_end(self, args, state, control, **kwargs):
        self.fault.disarm(self.trainer)


class _HookFault:
    """A forward hook on ``module_of(trainer)`` that poisons its output while armed (training forwards only:
    generation runs without grad and stays clean for the student)."""

    def __init__(self, module_of, value, grad_only=False):
        self.module_of, self.value, self.grad_only, self.handle = module_of, value, grad_only, None

    def arm(self, trainer):
        def hook(module, inputs, output):
            if self.grad_only and not torch.is_grad_enabled():
                return output
            out = output.clone()
            out.view(-1)[::7] = self.value
            return out

        self.handle = self.module_of(trainer).register_forward_hook(hook)

    def disarm(self, trainer):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


class _WeightFault:
    """Puts ``value`` into the teacher's lm_head weight while armed."""

    def __init__(self, value):
        self.value, self.saved = value, None

    def arm(self, trainer):
        w = trainer.teacher_model.get_output_embeddings().weight
        self.saved = w.detach().clone()
        with torch.no_grad():
            w[5, 0] = self.value

    def disarm(self, trainer):
        if self.saved is not None:
            with torch.no_grad():
                trainer.teacher_model.get_output_embeddings().weight.copy_(self.saved)
            self.saved = None


class _LossFault:
    """The loss function returns NaN while armed (finite inputs, non-finite loss)."""

    def __init__(self, monkeypatch):
        self.armed = False
        real = trainer_module.fused_objective

        def fused(*args, **kwargs):
            out = real(*args, **kwargs)
            if self.armed:
                out.loss = out.loss * NAN
            return out

        monkeypatch.setattr(trainer_module, "fused_objective", fused)

    def arm(self, trainer):
        self.armed = True

    def disarm(self, trainer):
        self.armed = False


class _GradFault:
    """Finite loss, NaN gradient on one student parameter while armed."""

    def __init__(self):
        self.handle = None

    def arm(self, trainer):
        p = trainer.model.get_output_embeddings().weight
        self.handle = p.register_hook(lambda g: g * NAN)

    def disarm(self, trainer):
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def _teacher_norm(t):
    return t.teacher_model.model.norm


def _student_norm(t):
    return t.model.model.norm


FAULTS = {
    "teacher-hidden-nan": (lambda mp: _HookFault(_teacher_norm, NAN), {}),
    "student-hidden-inf": (lambda mp: _HookFault(_student_norm, INF, grad_only=True), {}),
    "teacher-logits-inf-fused": (lambda mp: _WeightFault(INF), {}),
    # every estimator projects through the lm_head weight (fused): the fault sits in the weight
    "teacher-logits-nan-topk": (lambda mp: _WeightFault(NAN), {"estimator": "topk", "estimator_top_k": 4}),
    "student-hidden-inf-sampled": (
        lambda mp: _HookFault(_student_norm, -INF, grad_only=True), {"estimator": "sampled"},
    ),
    "loss-nan": (lambda mp: _LossFault(mp), {}),
    "grad-nan": (lambda mp: _GradFault(), {}),
}


def _run(tmp_path, monkeypatch, fault_name, policy, steps=3, bad_step=2):
    make_fault, extra = FAULTS[fault_name]
    recorder, fault = _Recorder(), _Fault(make_fault(monkeypatch), bad_step)
    trainer = tiny_trainer(tmp_path, method="sead", max_steps=steps, nonfinite_policy=policy,
                           reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(completions)],
                           callbacks=[recorder, fault], **extra)
    recorder.trainer = fault.trainer = trainer
    return trainer, recorder


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("fault", FAULTS, ids=FAULTS)
def test_nonfinite_skip_drops_exactly_that_step(tmp_path, monkeypatch, fault):
    trainer, rec = _run(tmp_path, monkeypatch, fault, "skip")
    trainer.train()
    assert trainer.state.global_step == 3
    assert trainer.sead_counters["nonfinite_skipped_steps"] == 1
    p = rec.params
    assert not _same(p[0], p[1])  # step 1 applied
    assert _same(p[1], p[2])  # step 2 skipped: no parameter change ...
    assert all(torch.equal(rec.moments[1][k], rec.moments[2][k]) for k in rec.moments[1])  # ... nor Adam moments
    assert not _same(p[2], p[3])  # step 3 applied again
    assert all(torch.isfinite(v).all() for v in p[3].values())
    logged = [e for e in trainer.state.log_history if "counters/nonfinite_skipped_steps" in e and "loss" in e]
    assert [e["counters/nonfinite_skipped_steps"] for e in logged] == [0, 1, 1]


@pytest.mark.parametrize("fault", ["teacher-hidden-nan", "student-hidden-inf", "loss-nan", "grad-nan",
                                   "teacher-logits-inf-fused"])
def test_nonfinite_error_refuses_and_never_applies(tmp_path, monkeypatch, fault):
    trainer, rec = _run(tmp_path, monkeypatch, fault, "error")
    with pytest.raises(NonFiniteError, match=r"step 2: .*The step was not applied.*nonfinite_policy: skip"):
        trainer.train()
    assert trainer.state.global_step == 1
    assert _same(params(trainer.model), rec.params[1])
    assert all(torch.isfinite(v).all() for v in rec.params[1].values())


# ------------------------------------------------------------------------------ EOS / empty completions
def test_all_eos_completions_train_without_crash(tmp_path):
    eos = tokenizer().eos_token_id
    only_eos = [i for i in range(len(tokenizer())) if i != eos]
    for method in ("sead", "opd"):
        trainer = tiny_trainer(tmp_path / method, method=method, max_steps=2,
                               generation_kwargs={"suppress_tokens": only_eos},
                               reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(completions)])
        trainer.train()
        logged = [e for e in trainer.state.log_history if "loss" in e]
        assert [e["completions/mean_length"] for e in logged] == [1.0, 1.0]
        assert all(e["loss"] == e["loss"] and abs(e["loss"]) < 1e3 for e in logged)
        assert trainer.sead_counters["nonfinite_skipped_steps"] == 0


def _batch(lengths, width=6, fill=None):
    """Left-padded prompts plus right-padded completions with the given valid lengths; positions past a
    completion's length hold ``fill`` (default: EOS, as models whose pad token is EOS produce)."""
    tok = tokenizer()
    g = torch.Generator().manual_seed(0)
    prompts = tok(["Q: 3+5=? A:", "Q: 47+38=? A:", "Q: 9-4=? A:", "Q: 12*3=? A:"][: len(lengths)],
                  padding=True, return_tensors="pt")
    ids = torch.randint(5, len(tok), (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        if n < width:
            ids[row, n:] = tok.eos_token_id if fill is None else fill
    return {"prompt_ids": prompts["input_ids"], "prompt_mask": prompts["attention_mask"],
            "completion_ids": ids, "completion_mask": mask}


def _rows(batch, rows):
    return {k: v[rows] for k, v in batch.items()}


def _loss_and_grads(trainer, inputs, num_items):
    trainer.model.zero_grad(set_to_none=True)
    loss, _, _ = trainer._compute_loss(trainer.model, inputs, torch.tensor(float(num_items)))
    loss.backward()
    grads = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for k, p in trainer.model.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize("method", ["sead", "opd"])
def test_zero_length_and_eos_padded_rows_contribute_nothing(tmp_path, method):
    trainer = tiny_trainer(tmp_path, method=method, max_steps=1)
    trainer.model.train()
    batch = _batch([3, 0, 5, 0])  # rows 1 and 3: zero-length completions, all EOS padding
    full_loss, full_grads = _loss_and_grads(trainer, batch, 8)
    kept_loss, kept_grads = _loss_and_grads(trainer, _rows(batch, [0, 2]), 8)
    assert torch.isfinite(full_loss) and full_loss > 0
    assert torch.allclose(full_loss, kept_loss, rtol=1e-5, atol=1e-7)
    for k in full_grads:
        assert torch.allclose(full_grads[k], kept_grads[k], rtol=1e-4, atol=1e-7), k
    # the garbage behind the masks does not matter either
    other = _batch([3, 0, 5, 0], fill=7)
    other_loss, _ = _loss_and_grads(trainer, other, 8)
    assert torch.allclose(full_loss, other_loss, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("estimator", ["full", "topk", "sampled"])
def test_batch_of_only_empty_completions_gives_zero_loss_and_no_gradient(tmp_path, estimator):
    trainer = tiny_trainer(tmp_path, method="sead", estimator=estimator, estimator_top_k=4, max_steps=1)
    trainer.model.train()
    for batch in (_batch([0, 0, 0, 0]), _batch([0, 0, 0, 0], width=0)):
        loss, grads = _loss_and_grads(trainer, batch, 1)
        assert float(loss) == 0.0
        assert all(float(g.abs().max()) == 0.0 for g in grads.values())
    assert trainer.nonfinite.reason is None
