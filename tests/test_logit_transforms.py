"""Output transforms (``sead.method.logit_transforms``): the reading rules by hand, the derivative against autograd,
the loss on tiny real models whose forward transforms the logits (Gemma2 softcapping, Cohere ``logit_scale``,
Granite ``logits_scaling``, Falcon-H1 ``lm_head_multiplier``) against the KL computed from ``model(...).logits``
on both loss paths, and the start-up probe that refuses a model whose transform the loss does not know."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from _fused_problem import fused, on_logits  # noqa: E402
from sead.losses.fused import LMHead
from sead.method.logit_transforms import IDENTITY, LogitTransform, check_output_transform, logit_transform_of


@pytest.mark.parametrize("fields,expected", [
    ({}, LogitTransform()),
    ({"logit_scale": None}, LogitTransform()),  # MPT-like: None reads as unscaled
    ({"logit_scale": 0.25}, LogitTransform(scale=0.25)),  # Cohere
    ({"logit_scale": 0.0}, LogitTransform(scale=0.0)),  # a real 0.0 is kept
    ({"output_multiplier": 2.0}, LogitTransform(scale=2.0)),
    ({"lm_head_multiplier": 3.0}, LogitTransform(scale=3.0)),  # Falcon-H1
    ({"logits_scaling": 4.0, "model_type": "granite"}, LogitTransform(scale=0.25)),  # Granite divides
    ({"logits_scaling": 4.0, "model_type": "hyperclovax"}, LogitTransform(scale=4.0)),  # HyperCLOVA X multiplies
    ({"final_logit_softcapping": 30.0}, LogitTransform(softcap=30.0)),  # Gemma 2/3
    ({"final_logit_softcapping": None}, LogitTransform()),
    # TRL's order of precedence: logit_scale, output_multiplier, lm_head_multiplier, logits_scaling
    ({"logit_scale": 0.5, "output_multiplier": 2.0, "lm_head_multiplier": 3.0, "logits_scaling": 4.0},
     LogitTransform(scale=0.5)),
    ({"output_multiplier": 2.0, "lm_head_multiplier": 3.0}, LogitTransform(scale=2.0)),
    ({"lm_head_multiplier": 3.0, "logits_scaling": 4.0}, LogitTransform(scale=3.0)),
])
def test_reading_rules_by_hand(fields, expected):
    assert logit_transform_of(SimpleNamespace(**fields)) == expected


def test_multimodal_configs_are_read_through_their_text_config():
    text = SimpleNamespace(final_logit_softcapping=30.0)
    outer = SimpleNamespace(final_logit_softcapping=None, get_text_config=lambda: text)
    assert logit_transform_of(outer) == LogitTransform(softcap=30.0)


def test_transform_values_and_derivative_match_autograd():
    z = torch.linspace(-9, 9, 37, dtype=torch.float64, requires_grad=True)
    for tf in (LogitTransform(scale=0.7), LogitTransform(softcap=3.0), LogitTransform(scale=2.0, softcap=5.0)):
        y = tf(z)
        expected = tf.softcap * torch.tanh(tf.scale * z / tf.softcap) if tf.softcap else tf.scale * z
        torch.testing.assert_close(y, expected)
        (dy,) = torch.autograd.grad(y.sum(), z)
        d = tf.derivative_from_output(y.detach().clone())
        torch.testing.assert_close(torch.as_tensor(d, dtype=torch.float64).expand_as(dy), dy)
        torch.testing.assert_close(tf.apply_(z.detach().clone()), y.detach())
    assert IDENTITY.is_identity and not LogitTransform(scale=2.0).is_identity
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        LogitTransform(softcap=0.0)


COMMON = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _tiny(kind: str, seed: int, **extra):
    """A tiny float64 model of ``kind`` with random weights, its transform set to a value that changes its logits."""
    import transformers as tr

    torch.manual_seed(seed)
    if kind == "gemma2":
        model = tr.Gemma2ForCausalLM(tr.Gemma2Config(**COMMON, head_dim=8, final_logit_softcapping=0.3, **extra))
    elif kind == "cohere":
        model = tr.CohereForCausalLM(tr.CohereConfig(**COMMON, logit_scale=0.25, **extra))
    elif kind == "granite":
        model = tr.GraniteForCausalLM(tr.GraniteConfig(**COMMON, logits_scaling=4.0, **extra))
    elif kind == "falcon_h1":
        model = tr.FalconH1ForCausalLM(tr.FalconH1Config(
            **COMMON, head_dim=8, lm_head_multiplier=3.0, mamba_d_ssm=16, mamba_n_heads=2, mamba_d_head=8,
            mamba_d_state=4, mamba_chunk_size=4, mamba_n_groups=1, **extra))
    elif kind == "qwen2":
        model = tr.Qwen2ForCausalLM(tr.Qwen2Config(**COMMON, **extra))
    else:
        raise AssertionError(kind)
    return model.double().eval()


KINDS = ["gemma2", "cohere", "granite", "falcon_h1"]


def _inputs():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    return ids, mask


def _param_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", ["fused", "logits"])
def test_loss_equals_the_kl_from_the_models_own_logits(kind, path):
    student, teacher = _tiny(kind, 0), _tiny(kind, 1)
    tf_s, tf_t = logit_transform_of(student.config), logit_transform_of(teacher.config)
    assert not tf_s.is_identity
    ids, mask = _inputs()
    kw = dict(zones=True, alpha=0.3, entropy_top_k=8, teacher_quantile=0.75, skip_fraction=0.3, temperature=0.9)
    # the reference: the objective on the models' own output logits
    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits
    ref = on_logits(student(input_ids=ids).logits, t_logits, mask, ids, **kw)
    ref_grads = _param_grads(student, ref.loss)
    # ours: hidden states and heads, each model's transform read from its config
    h_s = student.base_model(input_ids=ids).last_hidden_state
    with torch.no_grad():
        h_t = teacher.base_model(input_ids=ids).last_hidden_state
    head_s, head_t = student.get_output_embeddings(), teacher.get_output_embeddings()
    if path == "fused":
        out = fused(LMHead(h_s, head_s.weight, head_s.bias, tf_s), LMHead(h_t, head_t.weight, head_t.bias, tf_t),
                              mask, ids, chunk_size=5, **kw)
    else:
        out = on_logits(tf_s(head_s(h_s)), tf_t(head_t(h_t)), mask, ids, **kw)
    assert torch.equal(out.zones, ref.zones)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-9, atol=1e-12)
    for a, b in zip(_param_grads(student, out.loss), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    # and without the transform the loss would be a different one
    wrong = fused(LMHead(h_s.detach(), head_s.weight), LMHead(h_t, head_t.weight), mask, ids, **kw)
    assert abs(float(wrong.loss.detach()) - float(ref.loss.detach())) > 1e-4


@pytest.mark.parametrize("kind", [*KINDS, "qwen2"])
def test_probe_accepts_the_transforms_it_knows(kind):
    model = _tiny(kind, 2)
    model.train()
    assert check_output_transform(model) == logit_transform_of(model.config)
    assert model.training  # the probe runs in eval mode and restores the mode


def test_probe_refuses_a_model_with_an_unknown_transform_by_name():
    model = _tiny("qwen2", 3)
    forward = model.forward

    def doubled(*args, **kwargs):  # a forward that scales its logits, which its config does not declare
        out = forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out

    model.forward = doubled
    with pytest.raises(ValueError, match="model type 'qwen2'.*output transform the loss does not know"):
        check_output_transform(model)


def test_probe_refuses_a_transform_that_does_not_match_the_model():
    model = _tiny("gemma2", 4)
    with pytest.raises(ValueError, match="model type 'gemma2'"):
        check_output_transform(model, IDENTITY)  # a loss that ignores Gemma2's softcapping
