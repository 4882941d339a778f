"""Mixed precision reaches the forwards sead runs itself (bf16 autocast on this CPU, as under DDP on GPUs).

accelerate applies ``mixed_precision: bf16`` by wrapping a prepared model's instance ``forward`` in autocast; TRL's
``_ForwardRedirection`` replaces that ``forward`` for the redirected call and runs the backbone directly, so before
the fix every linear layer inside the loss's forwards (student, teacher, reference, and the zone-cut pre-pass)
returned fp32. The probe: forward hooks on every ``nn.Linear`` of the backbones, live only while the loss (or the
pre-pass) runs, record the dtype each returns.
"""

from __future__ import annotations

import pytest
import torch

from _tiny import parity_reward, tiny_trainer


def _probe(trainer):
    seen: dict[str, set[str]] = {}
    hooks = []
    models = {"student": trainer.model, "teacher": trainer.teacher_model}
    if trainer.ref_model is not None:
        models["reference"] = trainer.ref_model
    live = {"on": False}

    def hook(role):
        def record(module, args, out):
            if live["on"]:
                seen.setdefault(role, set()).add(str(out.dtype).removeprefix("torch."))

        return record

    for role, model in models.items():
        for name, module in trainer.accelerator.unwrap_model(model).named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":  # lm_head never runs: the loss projects
                hooks.append(module.register_forward_hook(hook(role)))

    def during(fn):
        def wrapped(*args, **kwargs):
            live["on"] = True
            try:
                return fn(*args, **kwargs)
            finally:
                live["on"] = False

        return wrapped

    trainer._compute_loss = during(trainer._compute_loss)
    trainer._step_zone_cuts = during(trainer._step_zone_cuts)
    return seen


@pytest.mark.parametrize("method", ["sead", "sgopd"])
def test_the_loss_forwards_run_in_bf16_under_bf16_mixed_precision(tmp_path, method):
    trainer = tiny_trainer(tmp_path, method=method, bf16=True, max_steps=1, reward_funcs=parity_reward,
                           teacher_mixing=False)  # fmt: skip
    assert trainer.accelerator.native_amp and trainer.accelerator.mixed_precision == "bf16"
    seen = _probe(trainer)
    trainer.train()
    roles = {"student", "teacher"} | ({"reference"} if method == "sgopd" else set())
    assert seen == {role: {"bfloat16"} for role in roles}
    assert trainer.state.global_step == 1 and trainer.sead_counters["nonfinite_skipped_steps"] == 0


def test_without_mixed_precision_the_forwards_stay_fp32(tmp_path):
    trainer = tiny_trainer(tmp_path, method="sead", bf16=False, max_steps=1)
    seen = _probe(trainer)
    trainer.train()
    assert seen == {"student": {"float32"}, "teacher": {"float32"}}
