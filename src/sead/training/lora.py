"""LoRA students (peft): what sead's fused loss reads from an adapted student, SG-OPD's reference without a second
copy of the weights, and a recipe's LoRA fields.

The fused loss never calls the student's ``forward``: it takes the backbone's last hidden states (TRL's
``_get_last_hidden_state``, which runs the ``PeftModel``'s backbone with its adapters in place) and reads the output
head's ``weight`` (:func:`sead.training.forwards._lm_head`: ``get_output_embeddings().weight``). What that gives per
kind of adapter (each checked against the ``PeftModel``'s own forward in tests/test_lora.py):

================================================  =================================================================
adapter                                           the fused loss
================================================  =================================================================
LoRA / DoRA on attention and MLP projections,     exact: they act inside the backbone, so the hidden states carry them
LoRA on the input embeddings
``modules_to_save=["lm_head"]`` (the head         exact: peft's ``ModulesToSaveWrapper`` answers ``.weight`` with the
trained whole)                                    active copy's weight, which gets the gradient
``trainable_token_indices`` on a tied head        exact: peft's ``TrainableTokensWrapper`` answers ``.weight`` with the
                                                  base rows and the trained rows put in (a tensor with its gradient)
an adapter *on* the head (``lm_head`` in          refused (:func:`head_refusal`): ``.weight`` is then the frozen base
``target_modules``)                               weight; the adapter would get no gradient and the loss would not be
                                                  the model's (TRL refuses it too, trl PR #6530)
prompt learning (prompt / prefix tuning)          refused: the virtual tokens live in ``PeftModel.forward``
================================================  =================================================================

SG-OPD's reference (the frozen initial student) of a peft student is the student itself with its adapters disabled
(:class:`AdapterOffReference`, peft's ``disable_adapter()``), not a deep copy, whenever the adapters are no-ops at the
start (:func:`starts_as_base`: LoRA's default initialisation, ``B = 0``); a student whose adapters already change its
outputs (a ``PeftModel`` trained before) gets a frozen copy as any other student.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from sead.training.sharding import frozen_copy, is_partitioned, prepare_frozen, reload_model
from sead.utils.errors import SeadError

__all__ = [
    "LORA_FIELDS",
    "AdapterOffReference",
    "base_head",
    "check_peft_inputs",
    "copies_reference_first",
    "head_refusal",
    "is_peft_model",
    "peft_config_from",
    "reference_model",
    "reference_side",
    "starts_as_base",
]

#: A recipe's LoRA fields (``ScriptArguments``), named as TRL's ``ModelConfig`` names them; ``use_peft`` turns them on.
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save", "use_rslora",
               "use_dora")  # fmt: skip

#: peft's LoRA initialisations whose ``B`` starts at zero: the adapted student starts as its base model.
_ZERO_START_INITS = (True, "gaussian")


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a peft ``PeftModel`` (``False`` where peft is not installed)."""
    from accelerate.utils import is_peft_model as accelerate_is_peft_model

    return not isinstance(model, str) and model is not None and accelerate_is_peft_model(model)


def _head_name(model: Any) -> str:
    """The qualified name of ``model``'s output head (``lm_head`` for a model given by name, as in nearly every causal
    LM of transformers)."""
    if isinstance(model, torch.nn.Module):
        head = model.get_output_embeddings()
        for name, module in model.named_modules():
            if module is head and name:
                return name.removeprefix("base_model.model.")
    return "lm_head"


def head_refusal(model: Any = None, peft_config: Any = None) -> str | None:
    """Why the fused loss cannot train this peft set-up exactly (``None``: it can): an adapter on the output head,
    named by ``peft_config``'s ``target_modules`` (matched as peft matches them) or found on a loaded ``PeftModel``,
    or a prompt-learning method."""
    configs = [peft_config] if peft_config is not None else []
    if is_peft_model(model):
        configs += list(model.peft_config.values())
    if any(getattr(cfg, "is_prompt_learning", False) for cfg in configs):
        return ("prompt learning (prompt, prefix or p-tuning) is not supported: its virtual tokens are added by "
                "PeftModel.forward, which sead's loss does not call (it runs the backbone on the token ids). Use LoRA.")
    name, on_head = _head_name(model), False
    if is_peft_model(model):
        from peft.tuners.tuners_utils import BaseTunerLayer

        on_head = isinstance(model.get_output_embeddings(), BaseTunerLayer)
    if peft_config is not None and getattr(peft_config, "target_modules", None) is not None:
        from peft.tuners.tuners_utils import check_target_module_exists

        on_head = on_head or bool(check_target_module_exists(peft_config, name))
    if not on_head:
        return None
    return (
        f"an adapter on the output head (`{name}` in LoRA's target_modules) is not supported: sead's fused loss reads "
        f"the head's weight and never calls its forward, so the adapter would get no gradient and the loss would not "
        f"be the model's. Remove `{name}` from target_modules (lora_target_modules in a recipe), or train the whole "
        f"head with modules_to_save=[\"{name}\"] (lora_modules_to_save), which the loss reads exactly."
    )


def check_peft_inputs(model: Any, peft_config: Any) -> None:
    """Refuse, before any weight is loaded, a peft set-up the loss cannot train exactly (:func:`head_refusal`)."""
    if peft_config is None and not is_peft_model(model):
        return
    reason = head_refusal(model, peft_config)
    if reason is not None:
        raise SeadError(reason)


def copies_reference_first(model: Any, peft_config: Any) -> bool:
    """Whether SG-OPD's reference is copied from ``model`` before TRL's ``__init__``: a whole model object without
    adapters. A peft student's reference is decided after loading (:func:`reference_model`)."""
    if isinstance(model, str) or peft_config is not None or is_peft_model(model):
        return False
    return not is_partitioned(model)


def base_head(model: Any) -> torch.nn.Module:
    """``model``'s output head as its base model has it: the original module under peft's ``modules_to_save`` /
    ``trainable_token_indices`` wrapper, the base layer under an adapter layer, else the head itself."""
    head = model.get_output_embeddings()
    if not is_peft_model(model):
        return head
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(head, AuxiliaryTrainingWrapper):
        return head.original_module
    return head.get_base_layer() if isinstance(head, BaseTunerLayer) else head


def _is_meta_or_partitioned(model: torch.nn.Module) -> bool:
    return is_partitioned(model) or any(p.is_meta for p in model.parameters())


def starts_as_base(student: torch.nn.Module, rtol: float | None = None) -> bool:
    """Whether a peft student's adapters are no-ops now, so that the student with its adapters disabled is the
    initial student: its logits on a few tokens (eval mode, no gradient) with and without the adapters agree within
    ``rtol`` of the largest logit (default ``1e-5`` in fp32, ``1e-2`` in bf16 / fp16; LoRA's default start gives 0).
    A partitioned or meta-device student (ZeRO-3's ``zero.Init``) cannot run here: every adapter must then be a LoRA
    with a zero-start initialisation (``init_lora_weights`` ``True`` or ``"gaussian"``: TRL just created it)."""
    if _is_meta_or_partitioned(student):
        return all(getattr(cfg, "init_lora_weights", None) in _ZERO_START_INITS for cfg in student.peft_config.values())
    weight = base_head(student).weight
    ids = torch.arange(min(8, weight.shape[0]), device=weight.device).unsqueeze(0)
    with _reference_mode(student, adapters=True), torch.no_grad():
        on = student(input_ids=ids, use_cache=False).logits.double()
    with _reference_mode(student, adapters=False), torch.no_grad():
        off = student(input_ids=ids, use_cache=False).logits.double()
    if rtol is None:
        rtol = 1e-2 if weight.dtype in (torch.bfloat16, torch.float16) else 1e-5
    return bool((on - off).abs().max() <= rtol * max(float(on.abs().max()), 1.0))


@contextlib.contextmanager
def _reference_mode(student: torch.nn.Module, adapters: bool) -> Iterator[None]:
    """Every module of ``student`` in eval mode inside the block (each module's own mode restored after); with
    ``adapters=False``, peft's ``disable_adapter()`` too (it restores the adapters' ``requires_grad`` on exit)."""
    modes = [(module, module.training) for module in student.modules()]
    student.eval()
    try:
        with student.disable_adapter() if not adapters else contextlib.nullcontext():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


class AdapterOffReference:
    """SG-OPD's reference for a peft student whose adapters started as no-ops: the student itself with its adapters
    disabled, in eval mode and without gradient. No second copy of the weights; what it computes is the base model,
    i.e. the frozen initial student, at every step.

    It stands where the trainer holds a frozen reference model (``OPDTrainer.ref_model``): its side of the loss is
    :meth:`side` (:func:`reference_side`), its head :meth:`get_output_embeddings` (the base head, read outside the
    disabled block by :meth:`sead.training.forwards.ModelForwards.heads`).

    Args:
        student: the unwrapped ``PeftModel`` being trained.
    """

    def __init__(self, student: torch.nn.Module):
        self.student = student

    @property
    def config(self):
        return self.student.config

    def get_output_embeddings(self) -> torch.nn.Module:
        """The base model's head (:func:`base_head`): not the trained ``modules_to_save`` copy."""
        return base_head(self.student)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """None of its own: its weights are the student's (counted there)."""
        return iter(())

    def eval(self) -> AdapterOffReference:
        return self

    def side(self, forwards, input_ids, attention_mask, logits_to_keep) -> tuple[AdapterOffReference, torch.Tensor]:
        """``(self, last hidden states at the completions)``: the student's backbone run as the loss runs the
        student's (``forwards.last_hidden_state``, inside the student's own forward: the launcher's wrapper has
        gathered what it needs), with the adapters disabled, in eval mode, without gradient, under the launch's
        mixed precision."""
        with torch.no_grad(), _reference_mode(self.student, adapters=False), forwards.autocast():
            hidden = forwards.last_hidden_state(self.student, input_ids, attention_mask, logits_to_keep)
        return self, hidden


def reference_side(forwards, ref, sequence) -> tuple[Any, torch.Tensor]:
    """The reference's side of the loss, ``(model, hidden states)``: a frozen model's forward through its wrapper
    (:meth:`~sead.training.forwards.ModelForwards.hidden`), or the adapters-off student's (:class:`AdapterOffReference`)."""
    if isinstance(ref, AdapterOffReference):
        return ref.side(forwards, *sequence)
    return forwards.hidden(ref, *sequence)


def reference_model(student: torch.nn.Module, ref: torch.nn.Module | None, args, accelerator):
    """SG-OPD's reference, the frozen initial student, placed as the launcher places frozen models
    (:func:`~sead.training.sharding.prepare_frozen`): ``ref`` when it was copied before TRL's ``__init__``
    (:func:`copies_reference_first`); for a peft student whose adapters are no-ops now (:func:`starts_as_base`), the
    student with its adapters disabled (:class:`AdapterOffReference`: no copy); otherwise a frozen copy of the
    student (``deepcopy``; a partitioned student without adapters is loaded again from its path)."""
    if ref is not None:
        return prepare_frozen(ref, accelerator)
    if not is_peft_model(student):
        return prepare_frozen(frozen_copy(student, load=lambda: reload_model(student, args)), accelerator)
    if starts_as_base(student):
        return AdapterOffReference(student)
    if _is_meta_or_partitioned(student):
        raise SeadError(
            "SG-OPD's reference is the initial student, but this peft student's adapters do not start as no-ops "
            "(an init_lora_weights other than True / 'gaussian') and its parameters are partitioned, so it can be "
            "neither compared with its base model here nor copied. Use LoRA's default initialisation, or set "
            "use_reference_model: false."
        )
    return prepare_frozen(frozen_copy(student), accelerator)  # trained adapters: the reference keeps them


def peft_config_from(script) -> Any:
    """The student's peft config from a recipe's TRL ``ModelConfig`` fields (``use_peft`` and :data:`LORA_FIELDS`,
    ``ScriptArguments``), built by TRL's ``get_peft_config``; ``None`` without ``use_peft``. A ``lora_*`` field set
    without ``use_peft`` is refused (it would be ignored)."""
    from trl import ModelConfig
    from trl.trainer.utils import get_peft_config

    if not getattr(script, "use_peft", False):
        defaults = ModelConfig()
        named = [f for f in LORA_FIELDS if getattr(script, f, getattr(defaults, f)) != getattr(defaults, f)]
        if named:
            raise SeadError(f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} set but use_peft is false: "
                            "set use_peft: true to train a LoRA adapter, or remove them.")  # fmt: skip
        return None
    fields = {f: getattr(script, f) for f in LORA_FIELDS}
    model_args = ModelConfig(use_peft=True, **fields)
    targets = fields["lora_target_modules"]
    if isinstance(targets, (list, tuple)) and len(targets) == 1 and targets[0] != "all-linear":
        # TRL turns a one-name list into a string, which peft reads as a regex of the whole module path
        model_args.lora_target_modules = list(targets)
    return get_peft_config(model_args)
