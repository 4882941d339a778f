"""A recipe's plan: its models and settings read from the YAML, the estimate for every strategy, the advice."""


from __future__ import annotations

import json
from typing import Any

from sead.components.teachers import parse_teachers
from sead.plan.memory import PlanInputs, plan_memory, uses_fused_loss
from sead.plan.models import _dtype_bytes, builtin_facts, lookup_model, lora_trainable_params

__all__ = ["plan_recipe"]


def _init_dtype_bytes(kwargs: Any, auto_bytes: int, default: int) -> int:
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError:
            kwargs = {}
    dtype = (kwargs or {}).get("dtype", (kwargs or {}).get("torch_dtype"))
    if dtype == "auto":
        return auto_bytes
    return _dtype_bytes(dtype, default)


def _sync_each_batch(cfg) -> bool:
    """``accelerator_config.gradient_accumulation_kwargs.sync_each_batch`` of a parsed config (an ``AcceleratorConfig``
    or a dict)."""
    acc = getattr(cfg, "accelerator_config", None)
    kwargs = acc.get("gradient_accumulation_kwargs") if isinstance(acc, dict) else getattr(
        acc, "gradient_accumulation_kwargs", None)  # fmt: skip
    return bool((kwargs or {}).get("sync_each_batch", False))


def _lora_params(script, student, notes: list[str]) -> int:
    """A LoRA student's trainable parameters from the recipe's TRL ``ModelConfig`` fields (``use_peft``, ``lora_*``;
    0 without ``use_peft``), with its notes."""
    if not getattr(script, "use_peft", False):
        return 0
    count, lora_notes = lora_trainable_params(student, script.lora_r, script.lora_target_modules,
                                              script.lora_modules_to_save, script.use_dora)  # fmt: skip
    notes += lora_notes
    notes.append(
        f"LoRA student (r={script.lora_r}): {count:,} trainable parameters ({100 * count / student.num_params:.2f}% of "
        f"{student.num_params:,}); the base model is held frozen, gradients and AdamW states are the adapters' only, "
        "and SG-OPD's reference is the student with its adapters off (no copy)."
    )
    return count


def _other_teachers(cfg, student, notes: list[str]) -> tuple:
    """Several teachers (``teachers``): every one after the first, as ``(facts, load bytes)``."""
    out = []
    for e in parse_teachers(cfg.teachers)[1:]:
        if e.served:  # nothing of it on the training GPUs
            notes.append(f"teacher {e.name} is served at {e.url}: its own GPUs are not counted here.")
            continue
        facts = lookup_model(e.model, None, role=f"teacher {e.name}")
        if facts.vocab_size != student.vocab_size:
            notes.append(f"teacher {e.name}: vocab {facts.vocab_size} != the student's {student.vocab_size}.")
        kwargs = cfg.teacher_model_init_kwargs if e.init_kwargs is None else e.init_kwargs
        out.append((facts, _init_dtype_bytes(kwargs, facts.dtype_bytes, 4)))
    return tuple(out)


def plan_recipe(
    script,
    cfg,
    *,
    gpus: int = 8,
    gpu_memory_gib: float = 80.0,
    model_config: str | None = None,
    teacher_config: str | None = None,
    prompt_tokens: int | None = None,
) -> dict[str, Any]:
    """:func:`plan_memory` for a parsed recipe (``ScriptArguments``, ``OPDConfig``)."""
    notes: list[str] = []
    if script.builtin_task and not (model_config or teacher_config):
        student, teacher = builtin_facts(script.builtin_task, bool(script.builtin_quick))
        default_prompt = 32
    else:
        student = lookup_model(script.model_name_or_path, model_config, role="model")
        # a served teacher: its served name is, by vLLM's default, the hub id it was started with
        teacher_name = cfg.teacher_model_name_or_path or cfg.teacher_server_model
        entries = parse_teachers(cfg.teachers)  # several teachers: every one is held by every process
        if entries:  # the first one's facts (a served one's: by its served name, as vLLM names it by default)
            teacher_name = entries[0].served_model if entries[0].served else entries[0].model
        teacher = lookup_model(teacher_name, teacher_config, role="teacher")
        default_prompt = 512
    if student.vocab_size != teacher.vocab_size:
        notes.append(
            f"student vocab {student.vocab_size} != teacher vocab {teacher.vocab_size}: the trainer refuses this pair."
        )
    if prompt_tokens is None:
        prompt_tokens = cfg.max_prompt_length or default_prompt
        notes.append(
            f"prompt length: {prompt_tokens} tokens ({'max_prompt_length' if cfg.max_prompt_length else 'assumed; set --prompt-tokens'})."
        )
    mixed = bool(cfg.bf16 or cfg.fp16)
    student_bytes = _init_dtype_bytes(cfg.model_init_kwargs, student.dtype_bytes, 4)
    if script.builtin_task:
        student_bytes = 4
    first = parse_teachers(cfg.teachers)[:1]  # several teachers: the first one's own init kwargs, if it has them
    kwargs = first[0].init_kwargs if first and first[0].init_kwargs is not None else cfg.teacher_model_init_kwargs
    teacher_bytes = _init_dtype_bytes(kwargs, teacher.dtype_bytes, 4)
    served = bool(cfg.teacher_server_url) or any(e.served for e in parse_teachers(cfg.teachers)[:1])
    if teacher_bytes == 4 and mixed and not script.builtin_task and not served:
        notes.append(
            "the teacher loads in float32 (no dtype in teacher_model_init_kwargs): set teacher_model_init_kwargs: "
            "{dtype: bfloat16} to halve it."
        )
    ckpt = getattr(cfg, "activation_checkpointing", None)
    if ckpt is None:
        ckpt = cfg.gradient_checkpointing
    # a served teacher's loss is the fused loss over its sparse log-probs (no [N, V] teacher logits)
    fused = uses_fused_loss(cfg) or served
    inp = PlanInputs(
        student=student,
        teacher=teacher,
        gpus=gpus,
        gpu_memory_gib=gpu_memory_gib,
        per_device_batch=cfg.per_device_train_batch_size,
        grad_accum=cfg.gradient_accumulation_steps,
        prompt_tokens=int(prompt_tokens),
        completion_tokens=int(cfg.max_completion_length),
        mixed_precision=mixed,
        student_load_bytes=student_bytes,
        teacher_load_bytes=teacher_bytes,
        activation_checkpointing=bool(ckpt),
        fused_loss=fused,
        sign_gate=bool(cfg.sign_gate),
        loss_chunk_size=cfg.loss_chunk_size,
        reference_model=bool(cfg.sign_gate and cfg.use_reference_model),
        teacher_mixing=bool(cfg.teacher_mixing),
        teacher_mix_rho0=cfg.teacher_mix_rho0,
        teacher_num_generations=cfg.teacher_num_generations,
        teacher_generation_batch_size=cfg.teacher_generation_batch_size,
        # "auto" takes vLLM on a GPU machine where it is installed: a recipe that uses vLLM for the student has it
        teacher_vllm=cfg.teacher_generation_backend == "vllm"
        or (cfg.teacher_generation_backend == "auto" and bool(cfg.use_vllm)),
        teacher_vllm_gpu_memory_utilization=cfg.teacher_vllm_gpu_memory_utilization,
        use_vllm=bool(cfg.use_vllm),
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_sleep_mode=bool(cfg.vllm_enable_sleep_mode),
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        ds3_gather_for_generation=bool(cfg.ds3_gather_for_generation),
        optimizer_8bit="8bit" in str(getattr(cfg.optim, "value", cfg.optim)),
        sync_each_batch=_sync_each_batch(cfg),
        teacher_served=served,
        teacher_hidden_cache=bool(cfg.zones and cfg.zone_scope == "step" and cfg.teacher_cache == "device"),
        teacher_server_top_k=cfg.teacher_server_top_k,
        lora_params=_lora_params(script, student, notes),
        other_teachers=_other_teachers(cfg, student, notes),
        notes=notes,
    )
    out = plan_memory(inp)
    out["recipe"] = {
        "student": script.model_name_or_path or f"builtin:{script.builtin_task}",
        "teacher": cfg.teacher_model_name_or_path
        or (", ".join(f"{e.name}: {e.model}" for e in parse_teachers(cfg.teachers)) or None)
        or (f"{cfg.teacher_server_model or '?'} served at {cfg.teacher_server_url}" if served else None)
        or f"builtin:{script.builtin_task}",
        "method": cfg.method,
    }
    return out
