"""Issue 14: settings that used to train on something other than what was asked now work or are refused."""

from __future__ import annotations

import pytest
import torch

from _fused_problem import on_logits  # noqa: E402
from _tiny import tiny_config, tiny_dataset, tiny_model, tiny_trainer, tokenizer
from sead.training.config import OPDConfig
from sead.utils.errors import SeadError

CPU = {"use_cpu": True, "bf16": False, "report_to": []}



# ---- the sampled estimator needs on-policy rollouts at the loss temperature (item 3) --------------------------
@pytest.mark.parametrize(
    "sampling, named",
    [
        ({"generation_kwargs": {"temperature": 0.7}}, ["temperature 0.7", "temperature 1"]),
        ({"temperature": 0.8, "generation_kwargs": {"temperature": 1.0}}, ["temperature 1", "temperature 0.8"]),
        ({"top_p": 0.9}, ["top_p 0.9"]),
        ({"generation_kwargs": {"top_k": 20}}, ["top_k 20"]),
        ({"min_p": 0.05}, ["min_p 0.05"]),
    ],
)
def test_sampled_estimator_refuses_rollouts_not_drawn_from_the_loss_distribution(tmp_path, sampling, named):
    with pytest.raises(SeadError, match="estimator 'sampled'") as err:
        OPDConfig(output_dir=str(tmp_path), method="sgopd", estimator="sampled", **sampling, **CPU)
    for phrase in named:
        assert phrase in str(err.value)
    # the other estimators do not depend on how rollouts were drawn
    OPDConfig(output_dir=str(tmp_path), method="sgopd", estimator="topk", **sampling, **CPU)


def test_sampled_estimator_at_the_loss_temperature_is_accepted(tmp_path):
    cfg = OPDConfig(output_dir=str(tmp_path), method="sgopd", estimator="sampled", temperature=0.9,
                    generation_kwargs={"temperature": 0.9}, **CPU)
    assert cfg.sampling_settings()["temperature"] == 0.9


def test_sgopd_recipe_samples_at_temperature_one():
    from sead.commands.train import parse

    _, cfg = parse(["--config", "recipes/olmo3-7b-32b-sgopd.yaml", "--use_cpu", "true", "--bf16", "false"])
    assert cfg.estimator == "sampled"
    assert cfg.sampling_settings()["temperature"] == cfg.temperature == 1.0


# ---- gate defaults (item 6) --------------------------------------------------------------------------------
def test_gate_defaults_are_the_reported_best_configuration(tmp_path):
    cfg = OPDConfig(output_dir=str(tmp_path), method="sgopd", **CPU)
    assert (cfg.lambda_consensus, cfg.lambda_conflict) == (1.8, 1.0)
    assert OPDConfig(output_dir=str(tmp_path), method="sgopd", lambda_conflict=0.5, **CPU).lambda_conflict == 0.5


# ---- tool results and images (item 7) ----------------------------------------------------------------------
def _batch(B=3, P=4, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer())
    mask = torch.ones(B, C, dtype=torch.long)
    mask[2, 4:] = 0
    return {
        "prompt_ids": torch.randint(5, vocab, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(5, vocab, (B, C), generator=g),
        "completion_mask": mask,
        "correct": torch.tensor([True, False, True]),
    }


@pytest.mark.parametrize("method, fused", [("opd", True), ("opd", False), ("sead", True)])
def test_tool_result_tokens_get_no_loss(tmp_path, method, fused):
    tr = tiny_trainer(tmp_path, method=method, use_fused_loss=fused, curriculum=False, max_steps=10)
    batch = _batch()
    tool_BT = torch.ones_like(batch["completion_mask"])
    tool_BT[0, 1:3] = 0  # two tool-result tokens inside the first completion
    tool_BT[1, 5] = 0
    loss_mask = batch["completion_mask"] * tool_BT
    n_items = loss_mask.sum().float()
    loss = tr._compute_loss(tr.model, {**batch, "tool_mask": tool_BT}, n_items)[0]

    # reference: both models on the whole sequence (tool tokens are context), the loss over model tokens only
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    C = batch["completion_ids"].shape[1]
    with torch.no_grad():
        s = tr.model(input_ids=ids, attention_mask=attn).logits[:, -C - 1 : -1]
        t = tr.teacher_model(input_ids=ids, attention_mask=attn).logits[:, -C - 1 : -1]
    # by hand, at step 0 of 10: SEAD's anneal starts at alpha_start 0.8 and divides by the expected kept count,
    # (1 - skip_fraction 0.5) x the valid tokens; vanilla OPD is pure reverse KL over the valid tokens
    sead = method == "sead"
    ref = on_logits(s, t, loss_mask, batch["completion_ids"], zones=sead, alpha=0.8 if sead else 0.0,
                    entropy_top_k=64, num_items=n_items * 0.5 if sead else n_items)
    assert float(loss) == pytest.approx(float(ref.loss), rel=1e-5, abs=1e-7)
    plain = tr._compute_loss(tr.model, batch, batch["completion_mask"].sum().float())[0]
    assert float(plain) != pytest.approx(float(loss), rel=1e-4)  # the mask really changed what is trained


def test_image_inputs_are_refused(tmp_path):
    tr = tiny_trainer(tmp_path, method="opd")
    with pytest.raises(SeadError, match="image inputs \\(pixel_values\\)"):
        tr._compute_loss(tr.model, {**_batch(), "pixel_values": torch.zeros(3, 3, 8, 8)}, None)
    ds = tiny_dataset(8).add_column("image", ["x.png"] * 8)
    with pytest.raises(SeadError, match="image column"):
        tiny_trainer(tmp_path / "b", method="opd", dataset=ds)


# ---- curriculum start-up check and window (item 8) ---------------------------------------------------------
def test_curriculum_that_would_open_everything_at_step_0_is_said(tmp_path):
    import warnings

    ds = tiny_dataset(16, difficulty=False).add_column("difficulty", [1.0] * 16)
    with pytest.warns(UserWarning, match="opens all 16 prompts at step 0"):
        tiny_trainer(tmp_path, method="sead", dataset=ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        tiny_trainer(tmp_path / "ok", method="sead")  # spread difficulties: no warning


def test_planned_total_steps_is_known_before_training(tmp_path):
    tr = tiny_trainer(tmp_path, method="sead", max_steps=-1, num_train_epochs=2, per_device_train_batch_size=4,
                      n=16, competence_window=4)
    planned = tr.planned_total_steps()
    assert planned > 0
    tr.train()
    assert tr.state.max_steps == planned == tr.state.global_step
    assert tiny_trainer(tmp_path / "b", method="sead", max_steps=7).planned_total_steps() == 7


def test_competence_window_defaults_to_one_step_of_rollouts(tmp_path):
    cfg = tiny_config(tmp_path, method="sead", per_device_train_batch_size=8, gradient_accumulation_steps=12)
    assert cfg.competence_window is None
    from sead.training.trainer import OPDTrainer

    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(16),
                    processing_class=tokenizer())
    assert tr.curriculum.window_size == 96  # the paper's 96 rollouts per step, not the old fixed 64
    small = tiny_trainer(tmp_path / "s", method="sead", per_device_train_batch_size=4)
    assert small.curriculum.window_size == 64  # at least 64
    assert tiny_trainer(tmp_path / "e", method="sead", competence_window=5).curriculum.window_size == 5


@pytest.mark.parametrize("estimator", ["full", "topk", "sampled"])
def test_sgopd_training_never_builds_full_logits(tmp_path, estimator, monkeypatch):
    """Issue 12: a sign-gated run projects hidden states chunk by chunk; no `[B, T, V]` logits of student, teacher
    or reference. Every lm_head call (generation's, one position at a time) is recorded; the logits path is
    made to fail."""
    import sead.training.trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the full-logits objective was called")

    monkeypatch.setattr(sead.training.trainer, "logits_objective", refuse)
    trainer = tiny_trainer(tmp_path, method="sgopd", estimator=estimator, estimator_top_k=4, max_steps=2,
                           teacher_mix_rho0=1.0)
    shapes = []
    models = {"student": trainer.model, "teacher": trainer.teacher_model, "reference": trainer.ref_model}
    assert models["reference"] is not None  # SG-OPD's frozen reference is in play
    for model in models.values():
        trainer.accelerator.unwrap_model(model).get_output_embeddings().register_forward_hook(
            lambda module, inp, out: shapes.append(tuple(out.shape))
        )
    trainer.train()
    assert trainer.state.global_step == 2
    assert shapes, "generation calls lm_head: the hooks must have seen it"
    assert all(s[1] == 1 for s in shapes), sorted(set(shapes))  # one position per call: decoding only
