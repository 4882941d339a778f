"""LoRA students (peft) end to end (issue 30): the fused loss against the PeftModel's own forward, the adapters-off
SG-OPD reference, training with each method, the saved adapter, the refusals, the recipe fields and `sead plan`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from _tiny import (
    REPO,
    completion_logits,
    fixed_batch,
    parity_reward,
    standard_recipe,
    tiny_config,
    tiny_dataset,
    tiny_model,
    tokenizer,
)
from sead.losses.objective import logits_objective
from sead.training.lora import AdapterOffReference, peft_config_from, reference_side
from sead.training.trainer import OPDTrainer
from sead.utils.errors import SeadError

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora(**kw) -> LoraConfig:
    return LoraConfig(**{"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **kw})


def tied_model(seed: int = 0):
    """:func:`tiny_model` with its input embeddings and head tied (as SmolLM2 and Qwen3-1.7B are)."""
    from transformers import Qwen2ForCausalLM

    config = tiny_model(seed).config
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


#: adapter set-ups: (base model factory, LoraConfig fields). Every one is read exactly by the fused loss.
SETUPS = {
    "attention_and_mlp": (tiny_model, dict(target_modules=ALL_LINEAR)),
    "dora": (tiny_model, dict(target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True)),
    "head_modules_to_save": (tiny_model, dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])),
    "tied_embedding_lora": (tied_model, dict(target_modules=["q_proj", "embed_tokens"])),
    "tied_trainable_tokens": (tied_model, dict(target_modules=["q_proj"], trainable_token_indices=[5, 6, 7, 8])),
}


def peft_trainer(tmp_path, setup="attention_and_mlp", method="opd", **overrides):
    make, fields = SETUPS[setup]
    args = tiny_config(tmp_path / "out", method=method, max_steps=2, teacher_mix_rho0=1.0, **overrides)
    return OPDTrainer(make(0), tiny_model(1), args=args, train_dataset=tiny_dataset(16), processing_class=tokenizer(),
                      reward_funcs=parity_reward, peft_config=lora(**fields))  # fmt: skip


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model, which: str) -> dict[str, torch.Tensor]:
    """A copy of the adapter parameters (``"adapters"``: trainable) or of the base model's (``"base"``: frozen)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad == (which == "adapters")}


def perturb_adapters(model, seed=0, scale=0.3) -> None:
    """Every trainable parameter moved at random: LoRA's B is no longer 0, so the adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in trainable(model).values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# --------------------------------------------------------------------------- the fused loss is exact
CASES = [(setup, method, False) for setup in SETUPS for method in ("opd", "sgopd")]
CASES.append(("attention_and_mlp", "sgopd", True))  # activation checkpointing: the backward recomputes the layers


@pytest.mark.parametrize("setup,method,checkpointing", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_fused_loss_equals_the_peft_models_own_forward_in_value_and_gradient(tmp_path, setup, method, checkpointing):
    """The trainer's fused loss on an adapted student (adapters moved away from 0) against an independent reference:
    the PeftModel's own forward logits -> the full-logits objective; SG-OPD's reference logits from a fresh copy of
    the base weights (the initial student). The loss and its gradient w.r.t. every trainable parameter (LoRA A / B,
    DoRA magnitudes, the head's copy, the trainable token rows) agree."""
    trainer = peft_trainer(tmp_path, setup, method, activation_checkpointing=checkpointing)
    model = trainer.model
    model.train()
    if checkpointing:  # as the Trainer's train() turns it on
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs)
        assert model.base_model.model.model.gradient_checkpointing
    assert isinstance(model, PeftModel)
    perturb_adapters(model)
    inputs = fixed_batch()
    n_items = inputs["num_items_in_batch"].float()
    params = trainable(model)
    fused = trainer._compute_loss(model, inputs, n_items)[0]
    fused_grads = torch.autograd.grad(fused, list(params.values()), allow_unused=True)

    spec = trainer.step_spec()
    z_s = completion_logits(model, inputs)
    with torch.no_grad():
        z_t = completion_logits(trainer.teacher_model, inputs)
        z_r = completion_logits(SETUPS[setup][0](0), inputs) if method == "sgopd" else None
    naive = logits_objective(spec, z_s, z_t, inputs["completion_mask"], inputs["completion_ids"],
                             correct=inputs["correct"], ref_logits=z_r, num_items=spec.normaliser(n_items)).loss
    naive_grads = torch.autograd.grad(naive, list(params.values()), allow_unused=True)
    assert torch.isfinite(fused) and float(fused) > 0
    assert torch.allclose(fused, naive, rtol=1e-5, atol=1e-7), (float(fused), float(naive))
    for name, a, b in zip(params, fused_grads, naive_grads):
        assert b is not None and float(b.abs().max()) > 0, name  # every adapter parameter matters to the loss
        assert a is not None, f"{name}: no gradient from the fused loss"
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7), (name, float((a - b).abs().max()))


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("targets", [["q_proj", "lm_head"], r".*(q_proj|lm_head)"], ids=["list", "regex"])
def test_an_adapter_on_the_head_is_refused_by_name_before_loading(tmp_path, targets):
    args = tiny_config(tmp_path / "out", method="opd", max_steps=1)
    with pytest.raises(SeadError, match=r"`lm_head` in LoRA's target_modules.*Remove `lm_head`.*modules_to_save"):
        OPDTrainer(tiny_model(0), tiny_model(1), args=args, train_dataset=tiny_dataset(8), processing_class=tokenizer(),
                   peft_config=lora(target_modules=targets))  # fmt: skip
    # a PeftModel passed ready-made with an adapter on its head: the same refusal
    peft_student = get_peft_model(tiny_model(0), lora(target_modules=["q_proj", "lm_head"]))
    with pytest.raises(SeadError, match="output head"):
        OPDTrainer(peft_student, tiny_model(1), args=args, train_dataset=tiny_dataset(8), processing_class=tokenizer())


def test_prompt_learning_is_refused_and_all_linear_is_accepted(tmp_path):
    from peft import PromptTuningConfig

    args = tiny_config(tmp_path / "out", method="opd", max_steps=1)
    with pytest.raises(SeadError, match="prompt learning"):
        OPDTrainer(tiny_model(0), tiny_model(1), args=args, train_dataset=tiny_dataset(8), processing_class=tokenizer(),
                   peft_config=PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))  # fmt: skip
    trainer = OPDTrainer(tiny_model(0), tiny_model(1), args=args, train_dataset=tiny_dataset(8),
                         processing_class=tokenizer(), peft_config=lora(target_modules="all-linear"))  # fmt: skip
    assert not any("lm_head" in n for n in trainable(trainer.model))  # peft's all-linear leaves the head out


# --------------------------------------------------------------------------- SG-OPD's reference
def reference_logits(trainer, inputs) -> torch.Tensor:
    """The trainer's reference at the completion positions, as the loss reads it: hidden states times its head."""
    f = trainer.forwards
    model, hidden = reference_side(f, trainer.ref_model, f.sequences(inputs))
    head = model.get_output_embeddings()
    return torch.nn.functional.linear(hidden.float(), head.weight.float())


@pytest.mark.parametrize("setup", ["attention_and_mlp", "head_modules_to_save", "tied_trainable_tokens"])
def test_sgopd_reference_is_the_student_with_its_adapters_off_and_no_copy(tmp_path, monkeypatch, setup):
    """With a LoRA student the reference is the student itself with its adapters disabled: no copy is made (copying
    fails here), it holds no parameter of its own; at step 0 (B = 0) its logits are the student's, after training they
    are the base model's (a fresh copy of the base weights) while the student's have moved; the reference pass leaves
    the student's modes and trainable flags as they were."""
    import sead.training.lora
    import sead.training.trainer

    def no_copy(*a, **k):
        raise AssertionError("a copy of the student was made")

    monkeypatch.setattr(sead.training.lora, "frozen_copy", no_copy)
    monkeypatch.setattr(sead.training.trainer, "frozen_copy", no_copy)
    trainer = peft_trainer(tmp_path, setup, "sgopd", learning_rate=5e-2)
    model = trainer.model
    assert isinstance(trainer.ref_model, AdapterOffReference) and trainer.ref_model.student is model
    assert list(trainer.ref_model.parameters()) == []
    inputs = fixed_batch()
    with torch.no_grad():
        student_logits = completion_logits(model, inputs)
        assert torch.allclose(reference_logits(trainer, inputs), student_logits, atol=1e-5)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    reference_logits(trainer, inputs)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert modes == {n: m.training for n, m in model.named_modules()}

    base_before = snapshot(model, "base")
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(torch.equal(base_before[n], p) for n, p in snapshot(model, "base").items())
    with torch.no_grad():
        base = completion_logits(SETUPS[setup][0](0), inputs)
        ref = reference_logits(trainer, inputs)
        student = completion_logits(model, inputs)
    assert torch.allclose(ref, base, atol=1e-5), float((ref - base).abs().max())
    assert float((student - base).abs().max()) > 1e-3  # the student did move: the check above is not vacuous


def test_a_peft_student_with_trained_adapters_gets_a_frozen_copy_that_keeps_them(tmp_path):
    """A PeftModel whose adapters already change its outputs (trained before): the initial student is the adapted
    model, so the reference is a frozen copy of it (adapters included), not the base model."""
    student = get_peft_model(tiny_model(0), lora(target_modules=["q_proj", "v_proj"]))
    perturb_adapters(student)
    inputs = fixed_batch()
    with torch.no_grad():
        initial = completion_logits(student, inputs)
    args = tiny_config(tmp_path / "out", method="sgopd", max_steps=1, teacher_mix_rho0=1.0)
    trainer = OPDTrainer(student, tiny_model(1), args=args, train_dataset=tiny_dataset(16),
                         processing_class=tokenizer(), reward_funcs=parity_reward)  # fmt: skip
    assert not isinstance(trainer.ref_model, AdapterOffReference)
    assert trainer.accelerator.unwrap_model(trainer.ref_model) is not trainer.model
    trainer.train()
    with torch.no_grad():
        assert torch.allclose(reference_logits(trainer, inputs), initial, atol=1e-5)


# --------------------------------------------------------------------------- training end to end
@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_a_lora_student_trains_with_each_method(tmp_path, method):
    """HF generate rollouts, two steps: finite losses, every adapter parameter moved, no base parameter did."""
    trainer = peft_trainer(tmp_path, "head_modules_to_save", method, learning_rate=5e-2)
    adapters, base = snapshot(trainer.model, "adapters"), snapshot(trainer.model, "base")
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(float(x))) for x in losses)
    after = snapshot(trainer.model, "adapters")
    moved = [n for n in adapters if not torch.equal(adapters[n], after[n])]
    lora_b = [n for n in adapters if "lora_B" in n]
    assert lora_b and set(lora_b) <= set(moved), sorted(set(adapters) - set(moved))
    assert any("modules_to_save" in n for n in moved)  # the head's trained copy
    assert all(torch.equal(base[n], p) for n, p in snapshot(trainer.model, "base").items())


def test_the_saved_adapter_reloads_with_peft_and_gives_the_same_outputs(tmp_path):
    trainer = peft_trainer(tmp_path, "head_modules_to_save", "sead", learning_rate=5e-2)
    trainer.train()
    out = tmp_path / "adapter"
    trainer.save_model(str(out))
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny_model(0), str(out)).eval()
    inputs = fixed_batch(seed=3)
    trainer.model.eval()
    with torch.no_grad():
        a, b = completion_logits(trainer.model, inputs), completion_logits(reloaded, inputs)
        fresh = completion_logits(tiny_model(0), inputs)
    assert torch.allclose(a, b, atol=1e-6), float((a - b).abs().max())
    assert float((a - fresh).abs().max()) > 1e-3  # the adapter does something


# --------------------------------------------------------------------------- recipes
def test_recipe_lora_fields_build_trls_lora_config(tmp_path):
    from sead.commands.train import parse

    recipe = standard_recipe(tmp_path, use_peft=True, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                             lora_target_modules=["q_proj"], lora_modules_to_save=["lm_head"])  # fmt: skip
    script, _ = parse(["--config", recipe])
    config = peft_config_from(script)
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.0)
    assert config.target_modules == {"q_proj"} and config.modules_to_save == ["lm_head"]  # one name stays a name
    script, _ = parse(["--config", recipe, "--use_peft", "false"])
    with pytest.raises(SeadError, match="use_peft is false"):
        peft_config_from(script)
    script, _ = parse(["--config", standard_recipe(tmp_path)])
    assert peft_config_from(script) is None


def test_sead_train_builds_and_trains_a_lora_student_from_a_recipe(tmp_path):
    from sead.commands.train import parse
    from sead.training.recipe import build_trainer

    recipe = standard_recipe(tmp_path, method="sgopd", use_peft=True, lora_r=4, lora_alpha=8,
                             lora_target_modules=ALL_LINEAR, max_steps=1)  # fmt: skip
    script, cfg = parse(["--config", recipe])
    trainer = build_trainer(script, cfg, progress=False)
    assert isinstance(trainer.model, PeftModel) and isinstance(trainer.ref_model, AdapterOffReference)
    trainer.train()
    trainer.save_model(cfg.output_dir)
    saved = json.loads((Path(cfg.output_dir) / "adapter_config.json").read_text())
    assert saved["r"] == 4 and set(saved["target_modules"]) == set(ALL_LINEAR)


def test_the_smollm2_lora_recipe_parses_with_its_lora_fields():
    from sead.commands.train import parse

    script, cfg = parse(["--config", str(REPO / "recipes" / "smollm2-lora.yaml")])
    config = peft_config_from(script)
    assert script.use_peft and isinstance(config, LoraConfig)
    assert "lm_head" not in config.target_modules and cfg.method == "sgopd" and cfg.use_reference_model


def test_the_smollm2_lora_recipe_trains_on_the_real_pair(smollm2, tmp_path):
    """recipes/smollm2-lora.yaml on the real pair (the conftest's 3-layer pruned SmolLM2 student, the 30-layer teacher),
    one step at CPU size: the LoRA student and its adapters-off reference are built from the recipe, the loss is
    finite, the adapters move and the frozen base does not."""
    from sead.commands.train import parse
    from sead.training.recipe import build_trainer

    script, cfg = parse(["--config", str(REPO / "recipes" / "smollm2-lora.yaml"),
                         "--model_name_or_path", smollm2["student"], "--teacher_model_name_or_path", smollm2["teacher"],
                         "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--per_device_train_batch_size", "2",
                         "--max_completion_length", "8", "--teacher_num_generations", "1", "--logging_steps", "1"])  # fmt: skip
    trainer = build_trainer(script, cfg, progress=False)
    assert isinstance(trainer.model, PeftModel) and isinstance(trainer.ref_model, AdapterOffReference)
    adapters, base = snapshot(trainer.model, "adapters"), snapshot(trainer.model, "base")
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert trainer.state.global_step == 1 and losses and all(torch.isfinite(torch.tensor(x)) for x in losses)
    after = snapshot(trainer.model, "adapters")
    assert any(not torch.equal(adapters[n], after[n]) for n in adapters if "lora_B" in n)
    assert all(torch.equal(base[n], p) for n, p in snapshot(trainer.model, "base").items())


# --------------------------------------------------------------------------- sead plan
def test_plan_counts_only_the_adapters_as_trained_and_no_reference_copy():
    """OLMo-3 7B student, LoRA r = 16 on all seven projections, 8 GPUs, bf16 loaded: by hand, per launcher. The base
    weights stay (frozen, as each launcher holds frozen weights); gradients and AdamW states are the adapters' only
    (fp32 under DDP / FSDP2: peft upcasts them; DeepSpeed: its bf16 module + fp32 master and moments); SG-OPD's
    reference costs no weights (the student with its adapters off) but still its forward."""
    from sead.plan import PlanInputs, lookup_model, plan_memory
    from sead.plan.models import lora_trainable_params

    s, t = lookup_model("allenai/Olmo-3-7B-Think-SFT"), lookup_model("allenai/Olmo-3-32B-Think")
    h, inter, L = 4096, 11008, 32
    per_layer = 16 * ((h + h) * 4 + (h + inter) * 3)  # q, k, v, o: 4096 -> 4096 (32 KV heads); gate, up, down
    A, notes = lora_trainable_params(s, r=16, target_modules="all-linear")
    assert A == L * per_layer == 39_976_960 and notes == []
    P, N = s.num_params, 8
    base = dict(student=s, teacher=t, gpus=N, mixed_precision=True, student_load_bytes=2, teacher_load_bytes=2,
                sign_gate=True, reference_model=True, prompt_tokens=1024, completion_tokens=4096)  # fmt: skip
    full = plan_memory(PlanInputs(**base))
    plan = plan_memory(PlanInputs(**base, lora_params=A))
    expected = {  # (weights, gradients, optimizer)
        "ddp": (P * 2 + A * 4, A * 4, A * 8),
        "zero2": (P * 2 + A * 2, A * 2 // N, A * 12 // N),
        "zero3": (P * 2 // N + A * 2 // N, A * 2 // N, A * 12 // N),
        "fsdp2": (P * 2 // N + A * 4 // N, A * 4 // N, A * 8 // N),
    }
    for strategy, (w, g, o) in expected.items():
        c = plan["strategies"][strategy]["components"]
        assert (c["student weights"], c["student gradients"], c["optimizer (AdamW)"]) == (w, g, o), strategy
        assert c["reference weights"] == 0 and full["strategies"][strategy]["components"]["reference weights"] > 0
        assert c["reference forward"] == full["strategies"][strategy]["components"]["reference forward"] > 0
        assert plan["strategies"][strategy]["peak"] < full["strategies"][strategy]["peak"]


def test_plan_lora_counts_follow_peft_defaults_and_name_what_they_cannot_count():
    from sead.plan import lookup_model
    from sead.plan.models import lora_trainable_params

    s = lookup_model("Qwen/Qwen3-1.7B")  # H 2048, 16 heads x 128 = 2048 q, 8 KV heads x 128 = 1024 kv, V 151936
    A, notes = lora_trainable_params(s, r=8, target_modules=None)  # peft's default for Qwen / Llama: q_proj, v_proj
    assert A == 28 * 8 * ((2048 + 2048) + (2048 + 1024)) and any("q_proj, v_proj" in n for n in notes)
    A, _ = lora_trainable_params(s, r=8, target_modules=["q_proj"], modules_to_save=["lm_head"], use_dora=True)
    assert A == 28 * (8 * (2048 + 2048) + 2048) + 151936 * 2048  # DoRA's magnitudes, the head's trained copy
    A, notes = lora_trainable_params(s, r=8, target_modules=["q_proj", "lm_head", "mystery"])
    assert A == 28 * 8 * (2048 + 2048) and any("lm_head" in n and "refuses" in n for n in notes)
    assert any("mystery" in n for n in notes)


@pytest.mark.parametrize("fields", [dict(target_modules=ALL_LINEAR), dict(target_modules=["q_proj", "v_proj"]),
                                    dict(target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"]),
                                    dict(target_modules=["k_proj", "down_proj"], use_dora=True)])  # fmt: skip
def test_the_planners_lora_count_is_peft_s_own(fields):
    """The planner's adapter count equals the trainable parameters of the PeftModel peft builds (the tiny Qwen2)."""
    from sead.plan.models import facts_from_config, lora_trainable_params

    model = tiny_model(0)
    facts = facts_from_config(model.config.to_dict())
    peft_model = get_peft_model(model, lora(**fields))
    count, notes = lora_trainable_params(facts, 4, fields["target_modules"], fields.get("modules_to_save"),
                                         fields.get("use_dora", False))  # fmt: skip
    assert count == sum(p.numel() for p in trainable(peft_model).values()) and notes == []


def test_sead_plan_reads_the_recipes_lora_fields(tmp_path, capsys):
    from sead.cli import main

    recipe = (REPO / "recipes" / "olmo3-7b-32b-sgopd.yaml").read_text()
    path = tmp_path / "lora.yaml"
    path.write_text(recipe + "\nuse_peft: true\nlora_r: 16\nlora_target_modules: [all-linear]\n")
    results = []
    for config in (REPO / "recipes" / "olmo3-7b-32b-sgopd.yaml", path):
        assert main(["plan", "--config", str(config), "--gpus", "8", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    full, lora_plan = results
    c = lora_plan["strategies"]["fsdp2"]["components"]
    assert c["reference weights"] == 0 and full["strategies"]["fsdp2"]["components"]["reference weights"] > 0
    assert c["optimizer (AdamW)"] == 39_976_960 * 8 // 8  # 40M adapter parameters, fp32 moments, / 8 GPUs
    assert any("LoRA" in n and "39,976,960" in n for n in lora_plan["notes"])


# --------------------------------------------------------------------------- vLLM colocate rollouts
@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None,
                    reason="vLLM is not installed (`make install` installs it)")  # fmt: skip
def test_a_lora_student_trains_with_vllm_colocate_rollouts_of_its_merged_weights(tmp_path):
    """tests/_vllm_lora.py in a subprocess (an engine crash cannot take pytest down; about a minute here): SG-OPD, 3
    steps, every rollout from TRL's colocate engine (HF generate disabled). TRL merges the adapters into the base
    weights, pushes them into vLLM and unmerges them before each step's rollouts: the engine's log-probs are the
    trained student's (within the engine's bf16, as for a full student), far from the initial student's; the frozen
    base weights move only by the merge / unmerge rounding (fp32); the reference stays the adapters-off student."""
    import subprocess
    import sys

    from _tiny import vllm_env

    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_vllm_lora.py"), str(tmp_path), str(out)],
                          env=vllm_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and out.exists(), (proc.stdout + proc.stderr)[-6000:]
    ran = json.loads(out.read_text())
    assert ran["all_finite"] and len(ran["losses"]) == 3 and ran["student_engine_calls"] == 3
    assert ran["adapters_off_reference"]
    assert ran["gap_to_trained"] < 1e-2 < ran["gap_to_initial"], ran  # measured: 0.0025 and 0.91
    assert ran["base_drift"] < 1e-6, ran  # measured: 1.5e-8
