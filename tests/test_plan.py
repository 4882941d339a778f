"""`sead plan`: parameter counts, the memory arithmetic written out by hand, and the CLI on every recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sead.cli import main
from sead.plan import (
    KNOWN_MODELS,
    PlanInputs,
    facts_from_config,
    lookup_model,
    plan_memory,
)

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
GiB = 1024**3



# --------------------------------------------------------------------------- parameter counts
def test_known_model_parameter_counts_by_hand():
    # Qwen3-8B: H=4096, 36 layers, 32 heads, 8 KV heads, head_dim 128, I=12288, V=151936, untied.
    attn = 4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096  # q, k, v, o = 41,943,040
    layer = attn + 2 * 128 + 3 * 4096 * 12288 + 2 * 4096  # + q/k norms, MLP, two RMSNorms = 192,946,432
    assert layer == 192_946_432
    total = 36 * layer + 2 * 151936 * 4096 + 4096  # + embedding and lm_head, final norm
    assert total == 8_190_735_360
    assert lookup_model("Qwen/Qwen3-8B").num_params == total

    # Qwen3-1.7B: H=2048, 28 layers, 16 heads, 8 KV heads, head_dim 128, I=6144, tied embeddings.
    layer = (2048 * 2048 + 2 * 2048 * 1024 + 2048 * 2048) + 2 * 128 + 3 * 2048 * 6144 + 2 * 2048
    assert lookup_model("Qwen/Qwen3-1.7B").num_params == 28 * layer + 151936 * 2048 + 2048 == 1_720_574_976

    # OLMo-3 7B: H=4096, 32 layers, 32 heads = 32 KV heads, I=11008, V=100278, untied, QK-norm over q and k.
    layer = 4 * 4096 * 4096 + (4096 + 4096) + 3 * 4096 * 11008 + 2 * 4096
    assert lookup_model("allenai/Olmo-3-7B-Think-SFT").num_params == 32 * layer + 2 * 100278 * 4096 + 4096
    # OLMo-3 32B: H=5120, 64 layers, 40 heads, 8 KV heads, I=27648.
    layer = 2 * 5120 * 5120 + 2 * 5120 * 1024 + (5120 + 1024) + 3 * 5120 * 27648 + 2 * 5120
    assert lookup_model("allenai/Olmo-3-32B-Think").num_params == 64 * layer + 2 * 100278 * 5120 + 5120


def test_lookup_matches_hub_ids_used_by_the_recipes():
    for name in (
        "allenai/Olmo-3-1025-7B",
        "allenai/Olmo-3-7B-Think-SFT",
        "allenai/Olmo-3-7B-Instruct",
        "allenai/Olmo-3-1125-32B",
        "allenai/Olmo-3-32B-Think",
        "Qwen/Qwen3-1.7B",
        "qwen/qwen3-8b",
    ):
        assert lookup_model(name).vocab_size in (100278, 151936)
    assert len(KNOWN_MODELS) == 4


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "olmo3"])
def test_config_facts_count_exactly_the_parameters_of_a_real_model(family):
    """The formula against `sum(p.numel())` of tiny models of each family (biases, QK-norms, tying)."""
    import transformers

    kw = dict(
        vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48,
    )  # fmt: skip
    if family == "qwen2":
        config = transformers.Qwen2Config(**kw)
        model = transformers.Qwen2ForCausalLM(config)
    elif family == "qwen3":
        config = transformers.Qwen3Config(head_dim=16, tie_word_embeddings=True, **kw)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.Olmo3Config(sliding_window=8, eos_token_id=1, pad_token_id=0, **kw)
        model = transformers.Olmo3ForCausalLM(config)
    facts = facts_from_config(config.to_dict())
    assert facts.num_params == sum(p.numel() for p in model.parameters())
    if family == "olmo3":
        assert (facts.num_sliding_layers, facts.sliding_window) == (3, 8)


def test_kv_cache_counts_sliding_window_layers_at_their_window():
    facts = lookup_model("allenai/Olmo-3-7B-Think-SFT")  # 8 full-attention layers, 24 with a 4096 window
    per_position = 2 * 32 * 128 * 2  # K and V, 32 KV heads x 128, bf16
    assert facts.kv_cache_bytes(10_000, 3) == per_position * (8 * 10_000 + 24 * 4096) * 3
    assert facts.kv_cache_bytes(1000, 1) == per_position * 32 * 1000


# --------------------------------------------------------------------------- the estimate, by hand
def test_plan_memory_matches_hand_computation():
    """Qwen3-1.7B <- Qwen3-8B, 4 GPUs, 2 x 2048-token sequences per micro-batch, full-logits loss."""
    s, t = lookup_model("Qwen/Qwen3-1.7B"), lookup_model("Qwen/Qwen3-8B")
    inp = PlanInputs(
        student=s, teacher=t, gpus=4, gpu_memory_gib=80, per_device_batch=2, grad_accum=4,
        prompt_tokens=512, completion_tokens=1536, mixed_precision=True, student_load_bytes=4,
        teacher_load_bytes=2, activation_checkpointing=True, fused_loss=False,
    )  # fmt: skip
    plan = plan_memory(inp)
    P, Pt = 1_720_574_976, 8_190_735_360
    overhead = 2 * GiB

    # activations, checkpointed: one H-vector per token per layer + one layer recomputed
    tokens = 2 * 2048
    a_s = 4 * 2048 + 2 * 2048 + 2 * 1024 + 4 * 6144  # = 38,912 elements per token per layer
    activations = 28 * tokens * 2048 * 2 + tokens * a_s * 2
    assert activations == 788_529_152
    # teacher forward (no grad): one layer's tensors + its last hidden states for the completion tokens
    a_t = 4 * 4096 + 2 * 4096 + 2 * 1024 + 4 * 12288  # = 75,776
    teacher_forward = tokens * a_t * 2 + 2 * 1536 * 4096 * 2
    # full-logits loss: 6 fp32 [B*T_c, V] tensors
    loss = 6 * (2 * 1536) * 151936 * 4
    assert loss == 11_201_937_408
    train_ws = activations + max(teacher_forward, loss)
    # HF-generate rollouts: KV cache of the 8 local sequences (28 full layers, 8 KV heads x 128, bf16) + last logits
    kv = 2 * 1024 * 2 * (28 * 2048) * 8 + 8 * 151936 * 4

    ddp = plan["strategies"]["ddp"]
    # DDP, fp32-loaded student under autocast: weights 4 + grads 4 + AdamW 8 bytes/param; bf16 teacher 2
    assert ddp["components"]["student weights"] == P * 4
    assert ddp["components"]["optimizer (AdamW)"] == P * 8
    assert ddp["components"]["teacher weights"] == Pt * 2
    assert ddp["train_phase"] == P * 16 + Pt * 2 + overhead + train_ws == 58_048_620_544
    assert ddp["rollout_phase"] == P * 12 + Pt * 2 + overhead + kv
    assert ddp["peak"] == 58_048_620_544  # 54.06 GiB: fits 0.92 x 80 GiB
    assert ddp["fits"]

    z2 = plan["strategies"]["zero2"]
    # ZeRO-2, bf16: bf16 weights whole (2), bf16 grads / 4, fp32 master + 2 moments (12) / 4; teacher whole
    assert z2["train_phase"] == P * 2 + P * 2 // 4 + P * 12 // 4 + Pt * 2 + overhead + train_ws

    z3 = plan["strategies"]["zero3"]
    gather = 2 * max(s.layer_params * 2, t.layer_params * 2)  # two unsharded layers
    static = P * 2 // 4 + P * 12 // 4 + Pt * 2 // 4 + overhead + gather
    assert z3["train_phase"] == static + P * 2 // 4 + train_ws
    assert z3["rollout_phase"] == static + kv + P * 2  # HF generate gathers the whole student under ZeRO-3
    assert plan["recommended"] == "ddp" and plan["fits"] == ["ddp", "zero2", "fsdp2", "zero3"]
    assert plan["inputs"]["prompts_per_step"] == 2 * 4 * 4


def test_fused_loss_working_set_and_reference_and_teacher_rollouts():
    s, t = lookup_model("Qwen/Qwen3-1.7B"), lookup_model("Qwen/Qwen3-8B")
    base = dict(student=s, teacher=t, gpus=2, per_device_batch=1, grad_accum=6, prompt_tokens=100,
                completion_tokens=900, teacher_load_bytes=2)  # fmt: skip
    fused = plan_memory(PlanInputs(**base, fused_loss=True, loss_chunk_size=256))
    V = 151936
    expected = 4 * 256 * V * 4 + V * (2048 + 4096) * 4 + V * 2048 * 4 + 900 * (2 * 2048 + 4096) * 4
    assert fused["strategies"]["ddp"]["components"]["loss working set"] == expected

    sg = plan_memory(PlanInputs(**base, fused_loss=False, reference_model=True, teacher_mixing=True,
                                teacher_mix_rho0=0.5, teacher_num_generations=8))  # fmt: skip
    comps = sg["strategies"]["ddp"]["components"]
    assert comps["reference weights"] == s.num_params * 4
    assert comps["loss working set"] == 7 * 900 * V * 4  # + the reference logits
    # ceil(0.5 x 6 local prompts) = 3 picked, x G=8 teacher sequences of 1000 tokens
    assert comps["teacher rollouts KV cache"] == t.kv_cache_bytes(1000, 24, 2)
    assert sg["inputs"]["teacher_rollout_sequences"] == 24
    assert sg["strategies"]["fsdp2"]["components"]["reference weights"] == s.num_params * 4 // 2


def test_teacher_vllm_engine_replaces_the_hf_teacher_kv_cache_and_is_held_all_run():
    s, t = lookup_model("Qwen/Qwen3-1.7B"), lookup_model("Qwen/Qwen3-8B")
    base = dict(student=s, teacher=t, gpus=2, per_device_batch=1, grad_accum=6, prompt_tokens=100,
                completion_tokens=900, teacher_load_bytes=2, teacher_mixing=True)  # fmt: skip
    hf = plan_memory(PlanInputs(**base))
    eng = plan_memory(PlanInputs(**base, teacher_vllm=True, teacher_vllm_gpu_memory_utilization=0.3))
    c_hf, c = hf["strategies"]["ddp"]["components"], eng["strategies"]["ddp"]["components"]
    assert c["teacher rollouts KV cache"] == 0 and c["teacher vLLM engine"] == int(0.3 * 80 * GiB)
    assert c_hf["teacher vLLM engine"] == 0
    # held during the update too (the HF teacher's KV cache is not)
    assert eng["strategies"]["ddp"]["train_phase"] - hf["strategies"]["ddp"]["train_phase"] == int(0.3 * 80 * GiB)
    # 8B teacher: 16.4 GB of bf16 weights; 0.15 x 80 GiB = 12 GiB cannot hold them
    small = plan_memory(PlanInputs(**base, teacher_vllm=True, teacher_vllm_gpu_memory_utilization=0.15))
    assert any("teacher vLLM engine" in n and "refuse to start" in n for n in small["notes"])
    assert not any("teacher vLLM engine" in n for n in eng["notes"])


def test_vllm_colocate_reserves_memory_and_server_mode_does_not():
    s, t = lookup_model("allenai/Olmo-3-7B-Think-SFT"), lookup_model("allenai/Olmo-3-32B-Think")
    base = dict(student=s, teacher=t, gpus=8, per_device_batch=1, grad_accum=12, prompt_tokens=1024,
                completion_tokens=16384, teacher_load_bytes=2)  # fmt: skip
    co = plan_memory(PlanInputs(**base, use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.45))
    assert co["strategies"]["fsdp2"]["components"]["vLLM colocate reservation"] == int(0.45 * 80 * GiB)
    assert co["strategies"]["fsdp2"]["components"]["rollout KV cache (HF generate)"] == 0
    assert any("vLLM colocate" in n for n in co["notes"])
    server = plan_memory(PlanInputs(**base, use_vllm=True, vllm_mode="server"))
    assert server["strategies"]["fsdp2"]["components"]["vLLM colocate reservation"] == 0
    assert any("trl vllm-serve" in a for a in server["advice"])
    hf = plan_memory(PlanInputs(**base))
    assert hf["strategies"]["fsdp2"]["components"]["rollout KV cache (HF generate)"] == s.kv_cache_bytes(
        17408, 12, 2
    ) + 12 * 100278 * 4


def test_served_teacher_puts_nothing_on_the_training_gpus_and_sizes_the_server():
    """teacher_server_url: no teacher weights, forward, gather buffers or rollouts on the training GPUs; the loss is
    the fused one without a teacher head (plus the sparse answer); the server's GPUs are sized apart, by hand."""
    s, t = lookup_model("allenai/Olmo-3-7B-Think-SFT"), lookup_model("allenai/Olmo-3-32B-Think")
    base = dict(student=s, teacher=t, gpus=6, per_device_batch=1, grad_accum=16, prompt_tokens=1024,
                completion_tokens=16384, teacher_load_bytes=2, fused_loss=True, loss_chunk_size=128,
                teacher_mixing=True, teacher_vllm=True)  # fmt: skip
    local = plan_memory(PlanInputs(**base))
    served = plan_memory(PlanInputs(**base, teacher_served=True, teacher_server_top_k=64))
    for k in ("ddp", "fsdp2"):
        c = served["strategies"][k]["components"]
        assert c["teacher weights"] == c["teacher rollouts KV cache"] == c["teacher vLLM engine"] == 0
        assert c["teacher forward"] == 16384 * (64 * 12 + 4)  # [N, 64] ids (8 B) and log-probs (4 B), [N] log-probs
    assert local["strategies"]["fsdp2"]["components"]["teacher weights"] == t.num_params * 2 // 6
    # two student layers gathered, in bf16 (FSDP2's mixed-precision param_dtype) though the shards are fp32
    assert served["strategies"]["fsdp2"]["components"]["sharding gather buffers"] == 2 * s.layer_params * 2
    V = 100278
    assert served["strategies"]["ddp"]["components"]["loss working set"] == (
        4 * 128 * V * 4 + V * 4096 * 4 + V * 4096 * 4 + 16384 * 2 * 4096 * 4
    )
    server = served["teacher_server"]
    weights, per_seq = t.num_params * 2, t.kv_cache_bytes(17409, 1, 2)
    budget, overhead = 0.9 * 80 * GiB, 2 * GiB
    assert server["sequences_at_once"] == {
        tp: max(int(tp * (budget - weights / tp - overhead) // per_seq), 0) for tp in (1, 2, 4, 8)
    }
    # 64.5 GB = 60.0 GiB of weights: TP 1 leaves 10 GiB (5 sequences of 1.81 GiB); TP 2 leaves 2 x 40 GiB
    assert server["tensor_parallel_size"] == 1 and server["sequences_at_once"][1] == 5
    assert server["sequences_at_once"][2] == 44
    assert local["teacher_server"] is None


# --------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_sead_plan_runs_on_every_recipe(recipe, capsys, request):
    args = ["plan", "--config", str(recipe)]
    if recipe.name.startswith("smollm2"):  # local checkpoints (`sead fetch`, `sead prune`): their config.json files
        pair = request.getfixturevalue("smollm2")
        args += ["--model-config", str(Path(pair["student"]) / "config.json"),
                 "--teacher-config", str(Path(pair["teacher"]) / "config.json")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PEAK" in out and "DDP" in out and "FSDP2" in out


def test_sead_plan_json_and_overrides(capsys):
    recipe = REPO / "recipes" / "olmo3-7b-32b-sead.yaml"
    assert main(["plan", "--config", str(recipe), "--gpus", "8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["inputs"]["prompts_per_step"] == 96
    assert plan["inputs"]["completion_tokens"] == 16384
    assert plan["recommended"] in ("fsdp2", "zero3")  # the 32B teacher must be sharded on 80 GiB GPUs
    assert not plan["strategies"]["ddp"]["fits"]
    assert main(["plan", "--config", str(recipe), "--json", "--gpus", "16", "--gradient_accumulation_steps", "6"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["inputs"]["prompts_per_step"] == 96 and plan["inputs"]["local_generation_batch"] == 6


def test_sead_plan_unknown_model_needs_its_config(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model_name_or_path: someone/unknown-3b\nteacher_model_name_or_path: Qwen/Qwen3-8B\n"
        "dataset_name: x.jsonl\noutput_dir: runs/x\nbf16: true\n"
    )
    assert main(["plan", "--config", str(recipe)]) == 2
    assert "--model-config" in capsys.readouterr().err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "model_type": "qwen3", "hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 9728, "vocab_size": 151936,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }))  # fmt: skip
    assert main(["plan", "--config", str(recipe), "--model-config", str(config), "--json", "--gpus", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["models"]["student"]["num_params"] == 36 * (
        2560 * 4096 + 2 * 2560 * 1024 + 4096 * 2560 + 256 + 3 * 2560 * 9728 + 2 * 2560
    ) + 151936 * 2560 + 2560  # Qwen3-4B: 4.02B
    assert any("teacher loads in float32" in n for n in plan["notes"])


def test_sead_plan_counts_the_served_teacher_recipe(capsys):
    recipe = REPO / "recipes" / "olmo3-7b-32b-sead-served.yaml"
    assert main(["plan", "--config", str(recipe), "--gpus", "6"]) == 0
    out = capsys.readouterr().out
    assert "teacher weights" not in out and "served at http://127.0.0.1:8100" in out
    assert "teacher server (vLLM on GPUs of its own" in out and "--max-model-len 17409" in out
    assert main(["plan", "--config", str(recipe), "--gpus", "6", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recommended"] == "zero2" and plan["inputs"]["prompts_per_step"] == 96
    assert plan["teacher_server"]["tensor_parallel_size"] == 1


def test_sead_plan_check_flag_fails_when_nothing_fits(capsys):
    recipe = REPO / "recipes" / "olmo3-7b-32b-sead.yaml"
    assert main(["plan", "--config", str(recipe), "--gpus", "1", "--check"]) == 1
    assert "none of" in capsys.readouterr().out


# --------------------------------------------------------------------------- frozen models per launcher
def test_teacher_and_reference_per_gpu_as_the_trainer_places_them():
    """By hand, per launcher (sead.training.sharding.prepare_frozen): DDP and ZeRO-2 keep both whole, ZeRO-3 and FSDP2 divide
    them by N; a DeepSpeed engine with bf16 holds them in bf16, DDP / FSDP2 in the loaded dtype."""
    s, t = lookup_model("allenai/Olmo-3-7B-Think-SFT"), lookup_model("allenai/Olmo-3-32B-Think")
    P, Pt, N = s.num_params, t.num_params, 8
    # teacher loaded in float32 (no dtype), student in float32 (TRL's default), bf16 mixed precision
    plan = plan_memory(PlanInputs(student=s, teacher=t, gpus=N, teacher_load_bytes=4, student_load_bytes=4,
                                  reference_model=True, mixed_precision=True))  # fmt: skip
    expected = {
        "ddp": (Pt * 4, P * 4),
        "zero2": (Pt * 2, P * 2),  # stage-0 engine: whole, cast to bf16
        "zero3": (Pt * 2 // N, P * 2 // N),  # stage-3 engine: partitioned, bf16
        "fsdp2": (Pt * 4 // N, P * 4 // N),  # fully_shard per layer: 1/N in the loaded dtype
    }
    for strategy, (teacher, reference) in expected.items():
        comps = plan["strategies"][strategy]["components"]
        assert (comps["teacher weights"], comps["reference weights"]) == (teacher, reference), strategy


def test_teacher_rollouts_in_bounded_batches_and_the_fused_sign_gated_loss():
    s, t = lookup_model("allenai/Olmo-3-7B-Think-SFT"), lookup_model("allenai/Olmo-3-32B-Think")
    base = dict(student=s, teacher=t, gpus=8, per_device_batch=1, grad_accum=12, prompt_tokens=1024,
                completion_tokens=16384, teacher_load_bytes=2, teacher_mixing=True, teacher_num_generations=8,
                reference_model=True, sign_gate=True, fused_loss=True, loss_chunk_size=128)  # fmt: skip
    whole = plan_memory(PlanInputs(**base))
    bounded = plan_memory(PlanInputs(**base, teacher_generation_batch_size=16))
    # ceil(0.5 x 12) = 6 picked prompts x G = 8: 48 sequences of 17408 tokens at once, or 16 per generate call
    assert whole["inputs"]["teacher_rollout_sequences"] == 48
    c_whole, c = whole["strategies"]["fsdp2"]["components"], bounded["strategies"]["fsdp2"]["components"]
    assert c_whole["teacher rollouts KV cache"] == t.kv_cache_bytes(17408, 48, 2)
    assert c["teacher rollouts KV cache"] == t.kv_cache_bytes(17408, 16, 2)
    V, Hs, Ht = 100278, 4096, 5120
    # 9 [128, V] fp32 tiles, three heads in fp32, the student head's fp32 gradient, hidden states of the three models
    loss = 9 * 128 * V * 4 + V * (Hs + Ht + Hs) * 4 + V * Hs * 4 + 16384 * (2 * Hs + Ht + Hs) * 4
    assert c["loss working set"] == loss
    assert "fused sign-gated" in bounded["inputs"]["loss"]


@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_the_olmo3_paper_recipes_fit_one_node_of_8_x_80_gib(method, capsys):
    recipe = REPO / "recipes" / f"olmo3-7b-32b-{method}.yaml"
    assert main(["plan", "--config", str(recipe), "--gpus", "8", "--gpu-memory", "80", "--json", "--check"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["recommended"] == "fsdp2"
    # the recipe's header names the launcher and the verdict the plan gives
    header = recipe.read_text().split("\n\n")[0]
    assert "recipes/accelerate/fsdp2.yaml" in header and "--gpus 8 --gpu-memory 80" in header


# --------------------------------------------------------------------------- FSDP2: no_sync and the fp32 upcast
def test_student_state_per_launcher_by_hand_with_fsdp2_no_sync_and_upcast():
    """A bf16-loaded OLMo-3 7B student, bf16 mixed precision, 12 micro-batches per step, 8 GPUs, by hand per launcher:

    - DDP trains the bf16 parameters as loaded (autocast): 2 + 2 + 4 bytes per parameter;
    - ZeRO-2 / ZeRO-3: bf16 module + fp32 master and moments (2 + 2 + 12), sharded as each stage shards;
    - FSDP2: accelerate upcasts the trainable parameters to fp32 (4 + 4 + 8, / N), and during accumulation HF's
      `no_sync` leaves FSDP2 holding every gradient unsharded in bf16 (P x 2, whole on every GPU), which
      `sync_each_batch` or a single micro-batch removes."""
    s, t = lookup_model("allenai/Olmo-3-7B-Think-SFT"), lookup_model("allenai/Olmo-3-32B-Think")
    P, N = s.num_params, 8
    base = dict(student=s, teacher=t, gpus=N, grad_accum=12, mixed_precision=True, student_load_bytes=2,
                teacher_load_bytes=2, prompt_tokens=1024, completion_tokens=4096)  # fmt: skip
    plan = plan_memory(PlanInputs(**base))
    expected = {  # (weights, gradients, optimizer, unsharded gradients)
        "ddp": (P * 2, P * 2, P * 4, 0),
        "zero2": (P * 2, P * 2 // N, P * 12 // N, 0),
        "zero3": (P * 2 // N, P * 2 // N, P * 12 // N, 0),
        "fsdp2": (P * 4 // N, P * 4 // N, P * 8 // N, P * 2),
    }
    for strategy, (w, g, o, u) in expected.items():
        r = plan["strategies"][strategy]
        c = r["components"]
        got = (c["student weights"], c["student gradients"], c["optimizer (AdamW)"],
               c["FSDP2 unsharded gradients (no_sync)"])  # fmt: skip
        assert got == (w, g, o, u), strategy
        # the training phase holds all of them (and the rollout phase none of the gradients)
        working = max(c["teacher forward"], c["reference forward"], c["loss working set"])
        static = (w + o + c["teacher weights"] + c["reference weights"] + c["runtime overhead"]
                  + c["sharding gather buffers"])  # fmt: skip
        assert r["train_phase"] == static + g + u + c["activations (student)"] + working, strategy
    assert P * 2 / GiB == pytest.approx(13.6, abs=0.05)  # the 7B's unsharded bf16 gradients
    # the gathered FSDP2 / ZeRO-3 layers are bf16 copies under mixed precision: two of the larger layer
    assert plan["strategies"]["fsdp2"]["components"]["sharding gather buffers"] == 2 * max(s.layer_params * 2,
                                                                                           t.layer_params * 2)
    assert any("sync_each_batch: true" in n and "13.6 GiB" in n for n in plan["notes"])
    for fields in ({"sync_each_batch": True}, {"grad_accum": 1}):
        other = plan_memory(PlanInputs(**{**base, **fields}))["strategies"]["fsdp2"]
        assert other["components"]["FSDP2 unsharded gradients (no_sync)"] == 0
    fp32 = plan_memory(PlanInputs(**{**base, "mixed_precision": False, "student_load_bytes": 4}))
    assert fp32["strategies"]["fsdp2"]["components"]["FSDP2 unsharded gradients (no_sync)"] == P * 4


def test_sead_plan_reads_sync_each_batch_from_the_recipe(tmp_path, capsys):
    recipe = (REPO / "recipes" / "olmo3-7b-32b-sead.yaml").read_text()
    path = tmp_path / "sync.yaml"
    path.write_text(recipe + "\naccelerator_config:\n  gradient_accumulation_kwargs:\n    sync_each_batch: true\n")
    for config, unsharded in ((REPO / "recipes" / "olmo3-7b-32b-sead.yaml", 13.6), (path, 0.0)):
        assert main(["plan", "--config", str(config), "--json"]) == 0
        fsdp2 = json.loads(capsys.readouterr().out)["strategies"]["fsdp2"]
        assert fsdp2["components"]["FSDP2 unsharded gradients (no_sync)"] / GiB == pytest.approx(unsharded, abs=0.05)


def test_sead_plan_counts_the_teacher_hidden_states_kept_for_the_step(capsys):
    """SEAD's zone pass keeps the 32B teacher's last hidden states for the step's losses (``teacher_cache``):
    12 local rollouts x 16,384 completion tokens x hidden 5,120 x 2 bytes (bf16) on each GPU, in the training phase;
    nothing with ``teacher_cache: cpu`` or ``off``, and nothing for vanilla OPD."""
    recipe = REPO / "recipes" / "olmo3-7b-32b-sead.yaml"
    key = "teacher hidden states kept for the step"
    assert main(["plan", "--config", str(recipe), "--gpus", "8", "--json"]) == 0
    kept = json.loads(capsys.readouterr().out)
    assert kept["strategies"]["fsdp2"]["components"][key] == 12 * 16384 * 5120 * 2  # 1.9 GiB
    assert main(["plan", "--config", str(recipe), "--gpus", "8", "--json", "--teacher_cache", "cpu"]) == 0
    offloaded = json.loads(capsys.readouterr().out)
    for strategy in ("ddp", "fsdp2", "zero3"):
        assert offloaded["strategies"][strategy]["components"][key] == 0
        diff = kept["strategies"][strategy]["train_phase"] - offloaded["strategies"][strategy]["train_phase"]
        assert diff == 12 * 16384 * 5120 * 2, strategy
    opd = REPO / "recipes" / "olmo3-7b-32b-opd.yaml"
    assert main(["plan", "--config", str(opd), "--gpus", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strategies"]["fsdp2"]["components"][key] == 0
