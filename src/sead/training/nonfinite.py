"""Never apply an optimizer step with non-finite values (METHODS: numerical faults), on every launcher.

The decision is taken once per optimizer step, on every rank together: did any rank see NaN or inf this step, in
the hidden states or the loss (flagged by the trainer's ``_compute_loss`` through :meth:`NonFiniteGuard.stand_in`,
which then trains on a stand-in loss) or in the
accumulated gradients? If so the step is dropped on every rank: ``nonfinite_policy: error`` stops training with a
:class:`~sead.utils.errors.NonFiniteError`, ``skip`` counts it in ``nonfinite_skipped_steps`` and goes on.

Where the step can still be stopped differs by launcher:

- **DDP, FSDP, one process**: the Trainer calls ``on_pre_optimizer_step`` before ``optimizer.step()``. The guard
  drops the gradients there (``zero_grad(set_to_none=True)``: the optimizer skips parameters without a gradient, no
  update, no change to its moments). The stand-in loss of a flagged micro-batch is an exact zero.
- **DeepSpeed** (every ZeRO stage): accelerate's ``DeepSpeedEngineWrapper.backward`` runs ``engine.step()`` inside
  ``accelerator.backward`` on the last micro-batch, *before* ``on_pre_optimizer_step``, and ``p.grad`` is ``None``
  under ZeRO (the gradients live in DeepSpeed's partitions). The only place that can still drop the step is
  DeepSpeed's own overflow check inside ``engine.step()``, which skips a step whose gradient norm is not finite on
  any rank (it all-reduces the norm) and clears the gradients. So the stand-in loss of a flagged micro-batch has a
  NaN gradient (:func:`stand_in_loss`, ``poison=True``): the step's gradient norm is NaN on every rank and DeepSpeed
  drops it. The guard then reads ``engine.was_step_applied()``: a flagged step that was applied anyway (a DeepSpeed
  config that checks nothing, :func:`deepspeed_refusal`) stops training; a step DeepSpeed dropped for non-finite
  gradients that no rank flagged (an overflow in backward) is counted or raised like any other.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from sead.utils.errors import NonFiniteError, SeadError

__all__ = ["NonFiniteGuard", "deepspeed_refusal", "stand_in_loss"]


def stand_in_loss(h_s: torch.Tensor, head_params, poison: bool) -> torch.Tensor:
    """The loss a flagged micro-batch trains on: ``sum(0 * h_s) + sum(0 * p)`` over the student head's trainable
    parameters ``p``, so every trainable parameter gets a gradient (DDP expects one for each), exactly zero.

    ``poison`` (DeepSpeed): ``sum(0 * h_s) + sum(nan * p)`` instead, whose gradient is NaN at the head, so that
    DeepSpeed's overflow check drops the step on every rank (see the module's docstring). Its value is NaN."""
    zero = (h_s * 0).sum()
    factor = float("nan") if poison else 0.0
    for p in head_params:
        if p.requires_grad:
            zero = zero + (p * factor).sum()
    return zero if poison else torch.nan_to_num(zero, nan=0.0, posinf=0.0, neginf=0.0)


def deepspeed_refusal(ds_config: dict[str, Any] | None) -> str | None:
    """Why a DeepSpeed config would apply a step with non-finite gradients (``None``: it drops it).

    DeepSpeed (0.16 and later) checks the gradient norm before every step and drops a step whose norm is not
    finite, except where the config turns the check off: ``bf16.check_grad_overflow: false`` (ZeRO-1/2 in bf16),
    and ``zero_optimization.compute_grad_norm: false`` outside fp16/bf16."""
    if not ds_config:
        return None
    zero = ds_config.get("zero_optimization") or {}
    bf16 = ds_config.get("bf16") or ds_config.get("bfloat16") or {}
    stage = int(zero.get("stage", 0) or 0)
    if bf16.get("enabled") in (True, "true") and stage < 3 and bf16.get("check_grad_overflow") in (False, "false"):
        return (
            "the DeepSpeed config sets bf16.check_grad_overflow: false, so DeepSpeed would apply a step whose "
            "gradients hold NaN or inf, and sead could no longer drop it (under DeepSpeed the step runs inside "
            "the backward pass). Remove the setting (DeepSpeed's default is true)."
        )
    fp16 = (ds_config.get("fp16") or {}).get("enabled") in (True, "true")
    if zero.get("compute_grad_norm") in (False, "false") and not fp16 and stage < 3:
        return (
            "the DeepSpeed config sets zero_optimization.compute_grad_norm: false, so DeepSpeed would apply a step "
            "whose gradients hold NaN or inf, and sead could no longer drop it. Remove the setting."
        )
    return None


class NonFiniteGuard(TrainerCallback):
    """Never applies a step with non-finite values (see the module's docstring): the trainer's callback."""

    def __init__(self, trainer):
        self.trainer = trainer
        #: what the current step's first non-finite micro-batch held, on this rank (``None``: nothing so far)
        self.reason: str | None = None

    def stand_in(self, reason: str, h_s: torch.Tensor, head_s: torch.nn.Module, mask_BT: torch.Tensor):
        """A micro-batch with non-finite values (``reason``): the ``(loss, entropy sum, token count)`` it trains on.

        The loss is a stand-in that reaches every trainable parameter (DDP expects a gradient for each): an exact
        zero, or under DeepSpeed one with a NaN gradient, which DeepSpeed's own check drops (:func:`stand_in_loss`);
        the step is then dropped on every rank, or training stops, per ``nonfinite_policy``. In evaluation with
        ``nonfinite_policy: error`` it raises at once."""
        t = self.trainer
        training = t.model.training
        if not training and t.args.nonfinite_policy == "error":
            raise NonFiniteError(f"non-finite values during evaluation at step {t.state.global_step}: {reason}")
        if training and self.reason is None:
            self.reason = reason
        poison = training and bool(getattr(t, "is_deepspeed_enabled", False))
        loss = stand_in_loss(h_s, head_s.parameters(), poison=poison)
        return loss, torch.zeros_like(loss).detach(), mask_BT.sum()

    def on_train_begin(self, args, state, control, **kwargs):
        engine = self._deepspeed_engine()
        if engine is not None:
            reason = deepspeed_refusal(_plugin_config(self.trainer))
            if reason:
                raise SeadError(reason)

    def _deepspeed_engine(self):
        t = self.trainer
        if not getattr(t, "is_deepspeed_enabled", False):
            return None
        engine = getattr(t, "model_wrapped", None)
        return engine if hasattr(engine, "was_step_applied") else None

    def _local_reason(self, engine) -> str | None:
        t = self.trainer
        reason = self.reason
        if reason is not None:
            return reason
        if engine is not None:
            # DeepSpeed dropped the step for a non-finite gradient norm (all ranks agree: the norm is all-reduced).
            # Under fp16 that is loss-scale calibration, which DeepSpeed handles; not a fault.
            if not engine.was_step_applied() and not engine.fp16_enabled():
                return "the gradients contain NaN or inf (DeepSpeed dropped the step)"
            return None
        grads = [p.grad for p in t.model.parameters() if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return "the gradients contain NaN or inf"
        return None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        t = self.trainer
        engine = self._deepspeed_engine()
        reason = self._local_reason(engine)
        flag = torch.tensor(0.0 if reason is None else 1.0, device=t.accelerator.device)
        if t.accelerator.num_processes > 1:
            flag = t.accelerator.reduce(flag, reduction="sum")
        self.reason = None
        if flag.item() == 0:
            return
        if engine is not None:
            if engine.was_step_applied():
                raise NonFiniteError(
                    f"non-finite values at step {state.global_step + 1} ({reason or 'on another process'}), and "
                    "DeepSpeed applied the step anyway: its config does not check the gradients. Set "
                    "bf16.check_grad_overflow: true (and do not set zero_optimization.compute_grad_norm: false)."
                )
        else:
            t.model.zero_grad(set_to_none=True)
        if t.args.nonfinite_policy == "error":
            raise NonFiniteError(
                f"non-finite values at step {state.global_step + 1}: "
                f"{reason or 'on another process'}. The step was not applied. Lower the learning rate, check "
                "the teacher and the data, or set `nonfinite_policy: skip` to drop such steps and go on."
            )
        t.sead_counters["nonfinite_skipped_steps"] += 1


def _plugin_config(trainer) -> dict[str, Any] | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else plugin.deepspeed_config
