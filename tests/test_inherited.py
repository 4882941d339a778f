"""Inherited TRL fields (issue 14): each one takes effect or is refused (sead.training.inherited).

Refused fields: a non-default value raises naming the field, its value and the knobs to use; the default
passes. Works fields: the table names where each takes effect; the ones whose path runs through sead's own
overrides (sampler, teacher mixing, generation through TRL, loss temperature) are exercised here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments
from trl import DistillationConfig

from _tiny import REPO, tiny_config, tiny_dataset, tiny_model, tiny_trainer, tokenizer
from sead.training.config import OPDConfig
from sead.training.inherited import INHERITED_FIELDS, check_inherited_fields, markdown_table
from sead.utils.errors import SeadError

REFUSED = [e for e in INHERITED_FIELDS if not e.works]

# A value each refused field would silently ignore; overrides needed for its condition.
BAD_VALUES = {
    "beta": (0.0, {}),
    "remove_unused_columns": (True, {}),
    "shuffle_dataset": (False, {"method": "sead"}),  # with the curriculum
    "max_tool_calling_iterations": (3, {}),
    "label_smoothing_factor": (0.1, {}),
    "average_tokens_across_devices": (False, {}),
    "train_sampling_strategy": ("sequential", {}),
    "length_column_name": ("n_tokens", {}),
    "data_seed": (7, {}),
    "include_num_input_tokens_seen": ("all", {}),
    "label_names": (["labels"], {}),
    "include_for_metrics": (["loss"], {}),
    "batch_eval_metrics": (True, {}),
}


def _trl_declared_fields() -> set[str]:
    """Fields DistillationConfig declares itself or overrides (TRL's _BaseConfig defaults)."""
    ours = {f.name for f in dataclasses.fields(DistillationConfig)} - {
        f.name for f in dataclasses.fields(TrainingArguments)
    }
    overridden = {
        name
        for name in ("learning_rate", "logging_steps", "gradient_checkpointing", "bf16", "lr_scheduler_kwargs",
                     "use_liger_kernel", "torch_empty_cache_steps", "remove_unused_columns")
        if DistillationConfig.__dataclass_fields__[name].default
        is not TrainingArguments.__dataclass_fields__[name].default
        or name in DistillationConfig.__annotations__
    }  # fmt: skip
    return ours | overridden


def test_every_trl_declared_field_has_a_verdict():
    names = {e.name for e in INHERITED_FIELDS}
    missing = _trl_declared_fields() - names
    assert not missing, f"fields of trl.DistillationConfig with no entry in sead.training.inherited: {sorted(missing)}"
    assert "beta" in names and len(_trl_declared_fields()) >= 36


def test_table_entries_are_real_fields_and_complete():
    opd_fields = {f.name for f in dataclasses.fields(OPDConfig)}
    for e in INHERITED_FIELDS:
        assert e.name in opd_fields, e.name
        assert e.where.strip(), e.name
        if not e.works:
            assert e.accepted and e.instead.strip(), e.name
            # the accepted value is the field's default: a config left alone is never refused
            field = OPDConfig.__dataclass_fields__[e.name]
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            assert default in e.accepted, (e.name, default)
    assert {e.name for e in REFUSED} == set(BAD_VALUES), "each refused field needs a case in BAD_VALUES"


@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_defaults_pass(tmp_path, method):
    cfg = tiny_config(tmp_path, method=method)
    check_inherited_fields(cfg)  # and OPDConfig.__post_init__ ran it already


@pytest.mark.parametrize("entry", REFUSED, ids=lambda e: e.name)
def test_refused_field_non_default_raises_naming_field_value_and_knobs(tmp_path, entry):
    value, extra = BAD_VALUES[entry.name]
    with pytest.raises(SeadError) as info:
        tiny_config(tmp_path, **{entry.name: value}, **extra)
    message = str(info.value)
    assert f"`{entry.name}: {value!r}`" in message
    assert entry.instead in message
    # the accepted value passes
    tiny_config(tmp_path, **{entry.name: entry.accepted[0]}, **extra)


def test_beta_message_names_the_divergence_knobs(tmp_path):
    with pytest.raises(SeadError) as info:
        tiny_config(tmp_path, method="opd", beta=0.0)
    for knob in ("`method`", "`alpha_start`/`alpha_end`", "`zones`"):
        assert knob in str(info.value)
    tiny_config(tmp_path, method="opd", beta=1.0)


def test_several_refused_fields_are_reported_together(tmp_path):
    with pytest.raises(SeadError) as info:
        tiny_config(tmp_path, beta=0.5, data_seed=3)
    assert "`beta: 0.5`" in str(info.value) and "`data_seed: 3`" in str(info.value)


def test_shuffle_dataset_false_is_refused_only_with_the_curriculum(tmp_path):
    with pytest.raises(SeadError, match="curriculum"):
        tiny_config(tmp_path, method="opd", curriculum=True, shuffle_dataset=False)
    assert tiny_config(tmp_path, method="opd", shuffle_dataset=False).shuffle_dataset is False


# ---------------------------------------------------------------------------------------------
# The premises: refused fields really do nothing; "works" fields really take effect
# ---------------------------------------------------------------------------------------------


def _batch(tr, B=2, P=3, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = tr.model.config.vocab_size
    return {
        "prompt_ids": torch.randint(3, V, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(3, V, (B, C), generator=g),
        "completion_mask": torch.ones(B, C, dtype=torch.long),
    }


def test_beta_is_read_by_nothing_in_the_loss_and_temperature_is(tmp_path):
    tr = tiny_trainer(tmp_path, method="opd", log_pass_rate=False)
    student = tr.accelerator.unwrap_model(tr.model)
    batch = _batch(tr)
    base = tr._compute_loss(student, batch, None)[0].item()
    tr.beta = 0.0  # what `beta: 0` would set (the config refuses it)
    assert tr._compute_loss(student, batch, None)[0].item() == base
    # TRL's `temperature` is the loss's too (its spec, built once from the config)
    hot = tiny_trainer(tmp_path / "hot", method="opd", log_pass_rate=False, temperature=2.0)
    assert hot.spec.temperature == 2.0
    hot_loss = hot._compute_loss(hot.accelerator.unwrap_model(hot.model), batch, None)[0].item()
    assert hot_loss != pytest.approx(base, rel=1e-4)


def test_shuffle_dataset_false_gives_dataset_order(tmp_path):
    tr = tiny_trainer(tmp_path, method="opd", shuffle_dataset=False, log_pass_rate=False, n=8)
    order = list(tr._get_train_sampler())
    assert order == list(range(8))
    shuffled = list(tiny_trainer(tmp_path, method="opd", log_pass_rate=False, n=8)._get_train_sampler())
    assert sorted(shuffled) == list(range(8)) and shuffled != order


def test_sampling_fields_reach_trls_generation_through_opdtrainer(tmp_path, monkeypatch):
    tr = tiny_trainer(
        tmp_path, method="opd", log_pass_rate=False, top_p=0.9, top_k=5, min_p=0.05, repetition_penalty=1.1,
        max_completion_length=5, generation_kwargs={"temperature": 0.7}, pad_to_multiple_of=4,
    )  # fmt: skip
    student = tr.accelerator.unwrap_model(tr.model)
    seen = {}
    real = type(student).generate

    def spy(self, *args, generation_config=None, **kwargs):
        seen["config"] = generation_config
        return real(self, *args, generation_config=generation_config, **kwargs)

    monkeypatch.setattr(type(student), "generate", spy)
    rows = [tr.train_dataset[i] for i in range(4)]
    out = tr._generate_and_score_completions(rows)
    config = seen["config"]
    assert (config.top_p, config.top_k, config.min_p, config.repetition_penalty) == (0.9, 5, 0.05, 1.1)
    assert config.temperature == 0.7 and config.max_new_tokens == 5
    assert out["completion_ids"].size(1) % 4 == 0 and out["prompt_ids"].size(1) % 4 == 0


def test_pad_to_multiple_of_survives_teacher_mixing(tmp_path, monkeypatch):
    tok = tokenizer()
    cfg = tiny_config(
        tmp_path, method="sgopd", teacher_mix_rho0=1.0, teacher_num_generations=2, max_steps=10,
        pad_to_multiple_of=16, max_completion_length=6,
    )  # fmt: skip
    from sead.training.trainer import OPDTrainer

    tr = OPDTrainer(
        tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8), processing_class=tok,
        reward_funcs=lambda prompts, completions, **kw: [1.0] * len(completions),
    )  # fmt: skip
    tr.state.max_steps = 10
    good = tok("5}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    def fake_generate(self, input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        return torch.cat([input_ids, torch.tensor([good] * input_ids.size(0))], dim=1)

    monkeypatch.setattr(type(tr.accelerator.unwrap_model(tr.teacher_model)), "generate", fake_generate)
    B = 4
    output = {
        "prompt_ids": torch.full((B, 16), 10),
        "prompt_mask": torch.ones(B, 16, dtype=torch.long),
        "completion_ids": torch.full((B, 16), 9),
        "completion_mask": torch.ones(B, 16, dtype=torch.long),
    }
    # rho = 1 at step 0: every prompt is offered (and, with this verifier, given) a teacher rollout
    tr.state.global_step = 0
    mix = tr._mix_teacher_rollouts([tr.train_dataset[i] for i in range(B)], dict(output), [False] * B)
    out, mixed = mix.output, mix.mixed
    assert all(mixed)
    assert out["completion_ids"].size(1) == 16 and out["completion_mask"].size(1) == 16  # not len(good)
    assert out["completion_ids"][0, : len(good)].tolist() == good
    assert out["completion_mask"].sum().item() == B * len(good)


# ---------------------------------------------------------------------------------------------
# Docs
# ---------------------------------------------------------------------------------------------


def test_docs_hold_the_table():
    text = (Path(REPO) / "docs" / "methods.md").read_text()
    assert markdown_table() in text, (
        "docs/methods.md's 'Inherited TRL fields' table is out of date: paste sead.training.inherited.markdown_table()"
    )
