"""A model's output transform: what its forward applies to ``lm_head(h)`` before returning logits.

Both loss paths project hidden states through ``lm_head`` themselves, so they must apply what the
model's own forward applies after it. The transforms known here, and how a config declares them
(the reading rules and the order are TRL's ``DistillationTrainer._compute_loss``)::

    z = lm_head(h)                          (h W^T + b)
    z = scale * z                           scale: Cohere `logit_scale`, else `output_multiplier`, else
                                            Falcon-H1 `lm_head_multiplier`, else Granite / MiniCPM3
                                            `1 / logits_scaling` (HyperCLOVA X: `logits_scaling`)
    z = c * tanh(z / c)                     c: Gemma 2/3 `final_logit_softcapping` (when set)
    p = softmax(z / tau)                    the loss's temperature comes last

A model whose forward applies anything else is refused by name at start-up
(:func:`check_output_transform`), never guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LogitTransform", "IDENTITY", "logit_transform_of", "check_output_transform"]


@dataclass(frozen=True)
class LogitTransform:
    """``T(z) = c tanh(s z / c)`` with ``s = scale`` and ``c = softcap`` (``T(z) = s z`` without a softcap).

    ``T'(z) = s (1 - tanh^2(s z / c)) = s (1 - (T(z) / c)^2)``: the derivative can be formed from the
    transformed logits alone (:meth:`derivative_from_output`), so the fused loss keeps no raw logits.
    """

    scale: float = 1.0
    softcap: float | None = None

    def __post_init__(self):
        if not math.isfinite(self.scale):
            raise ValueError(f"logit scale must be finite, got {self.scale}")
        if self.softcap is not None and not (math.isfinite(self.softcap) and self.softcap > 0):
            raise ValueError(f"final_logit_softcapping must be > 0 (or None for none), got {self.softcap}")

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``T(logits)``, out of place and differentiable."""
        z = logits * self.scale if self.scale != 1.0 else logits
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        return z

    def apply_(self, z: torch.Tensor) -> torch.Tensor:
        """``T(z)`` in place (a tile of the fused loss, no autograd)."""
        if self.scale != 1.0:
            z.mul_(self.scale)
        if self.softcap is not None:
            z.div_(self.softcap).tanh_().mul_(self.softcap)
        return z

    def derivative_from_output(self, y: torch.Tensor) -> torch.Tensor | float:
        """``dT/dz`` given ``y = T(z)``: ``s (1 - (y / c)^2)``, or the constant ``s`` without a softcap."""
        if self.softcap is None:
            return self.scale
        t = y / self.softcap
        return t.mul_(t).neg_().add_(1.0).mul_(self.scale)


IDENTITY = LogitTransform()


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def logit_transform_of(config) -> LogitTransform:
    """The output transform a model's config declares (TRL's reading rules, in TRL's order).

    ``scale``: ``logit_scale`` (Cohere; ``None`` reads as unset, a real 0.0 is kept), else
    ``output_multiplier``, else ``lm_head_multiplier`` (Falcon-H1), else ``1 / logits_scaling`` (Granite,
    MiniCPM3) or ``logits_scaling`` itself for ``model_type == "hyperclovax"``; 1.0 when none is set.
    ``softcap``: ``final_logit_softcapping`` (Gemma 2/3), ``None`` when unset. On multimodal configs the
    text config is read (``get_text_config()``).
    """
    cfg = _text_config(config)
    scale = getattr(cfg, "logit_scale", None)
    if scale is None:
        scale = getattr(cfg, "output_multiplier", None)
    if scale is None:
        scale = getattr(cfg, "lm_head_multiplier", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        ls = cfg.logits_scaling
        scale = ls if getattr(cfg, "model_type", None) == "hyperclovax" else 1.0 / ls
    softcap = getattr(cfg, "final_logit_softcapping", None)
    return LogitTransform(scale=1.0 if scale is None else float(scale), softcap=None if softcap is None else float(softcap))


def _backbone(model):
    """The model without its output head (TRL's choice: ``base_model``; PEFT wrappers unwrapped)."""
    inner = getattr(getattr(model, "base_model", None), "model", None)
    if inner is not None and hasattr(model, "peft_config"):
        model = inner
    backbone = getattr(model, "base_model", None)
    if backbone is None or backbone is model:
        backbone = getattr(model, "model", None)
    if backbone is None:
        raise ValueError(f"{type(model).__name__}: no backbone (`base_model` / `model`) to take the last hidden state from")
    return model, backbone


@torch.no_grad()
def check_output_transform(
    model,
    transform: LogitTransform | None = None,
    input_ids: torch.Tensor | None = None,
    rtol: float | None = None,
) -> LogitTransform:
    """Refuse a model whose output logits are not ``transform(lm_head(last hidden state))``.

    Runs ``model`` on a few tokens (``input_ids``, default ``[[0, 1, ..., 7]]``) in eval mode (the
    training mode is restored) and compares ``model(input_ids).logits`` with
    ``transform(get_output_embeddings()(base_model(input_ids).last_hidden_state))``, ``transform``
    defaulting to :func:`logit_transform_of` of the model's config. The largest difference must be
    within ``rtol`` of the largest logit (default ``1e-3`` in fp32/fp64, ``3e-2`` in bf16/fp16).

    Returns the transform when they agree; raises ``ValueError`` naming the model type otherwise (the
    loss does not know that model's output transform, and guessing would train on wrong logits).
    """
    config = getattr(model, "config", None)
    model_type = getattr(_text_config(config), "model_type", None) or type(model).__name__
    if transform is None:
        transform = logit_transform_of(config)
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"model type {model_type!r}: get_output_embeddings() is None; the loss needs an lm_head")
    device = head.weight.device
    if input_ids is None:
        vocab = head.weight.shape[0]
        input_ids = torch.arange(min(8, vocab), device=device).unsqueeze(0)
    input_ids = input_ids.to(device)
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=input_ids, use_cache=False).logits
        _, backbone = _backbone(model)
        hidden = backbone(input_ids=input_ids, use_cache=False).last_hidden_state
        ours = transform(head(hidden.to(head.weight.dtype)))
    finally:
        model.train(was_training)
    if logits.shape != ours.shape:
        raise ValueError(
            f"model type {model_type!r}: its forward returns logits shaped {tuple(logits.shape)} but lm_head of the last "
            f"hidden state gives {tuple(ours.shape)}; the loss cannot use this model's head"
        )
    if rtol is None:
        rtol = 3e-2 if logits.dtype in (torch.bfloat16, torch.float16) else 1e-3
    ref, ours = logits.double(), ours.double()
    err = float((ref - ours).abs().max())
    size = max(float(ref.abs().max()), 1e-6)
    if not err <= rtol * size:
        raise ValueError(
            f"model type {model_type!r}: its forward's logits differ from transform(lm_head(last hidden state)) by up to "
            f"{err:.3g} (largest logit {size:.3g}; transform read from its config: scale={transform.scale}, "
            f"softcap={transform.softcap}). Its forward applies an output transform the loss does not know, so the "
            "loss would train on different logits than the model's own. Supported: `logit_scale` / `output_multiplier` / "
            "`lm_head_multiplier` / `logits_scaling` and `final_logit_softcapping` (sead.method.logit_transforms)."
        )
    return transform
