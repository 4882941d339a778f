"""Memory planner: per-GPU memory of a recipe under DDP, DeepSpeed ZeRO-2 / ZeRO-3 and FSDP2.

``sead plan --config recipes/X.yaml`` (see :mod:`sead.commands.plan`) reads a recipe, looks up the
student's and teacher's architecture (a table of public config facts for the recipes' models, a
``config.json`` given on the command line, a local checkpoint directory, or the built-in demo
task's model specs: nothing is downloaded) and adds up, per GPU:

- **static**: student weights, gradients and AdamW state (sharded as each strategy shards them), the
  frozen teacher, the frozen reference model (SG-OPD with ``use_reference_model``), a runtime overhead;
  a teacher served by vLLM (``teacher_server_url``) puts nothing of the teacher on the training GPUs: its own
  GPUs are sized separately (:func:`plan_teacher_server`);
- **rollout phase** (no gradients alive): the KV cache of HF ``generate`` for the local generation
  batch (or the vLLM colocate reservation), and SG-OPD's teacher rollouts;
- **training phase**: activations of one micro-batch (with or without activation checkpointing), the
  teacher's forward, and the loss's working set (fused chunked loss: ``chunk x V`` tiles; otherwise
  full ``[B*T, V]`` logits).

The peak is the larger phase. Everything here is an estimate from first principles (the
coefficients are listed in :data:`ASSUMPTIONS`); it was checked by hand, not against a GPU run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sead.plan.models import ModelFacts

__all__ = ["ACCELERATE_CONFIGS", "ASSUMPTIONS", "STRATEGIES", "STRATEGY_NAMES", "GiB", "PlanInputs", "frozen_bytes", "fsdp2_unsharded_grad_bytes", "plan_memory", "plan_teacher_server", "uses_fused_loss"]

GiB = 1024**3
STRATEGIES = ("ddp", "zero2", "fsdp2", "zero3")  # order of preference: simplest first
ACCELERATE_CONFIGS = {
    "ddp": "recipes/accelerate/ddp.yaml",
    "zero2": "recipes/accelerate/deepspeed_zero2.yaml",
    "zero3": "recipes/accelerate/deepspeed_zero3.yaml",
    "fsdp2": "recipes/accelerate/fsdp2.yaml",
}
STRATEGY_NAMES = {"ddp": "DDP", "zero2": "ZeRO-2", "zero3": "ZeRO-3", "fsdp2": "FSDP2"}

#: Coefficients of the estimate (documented in docs/scaling.md).
ASSUMPTIONS = {
    "runtime_overhead_gib": 2.0,  # CUDA context, NCCL buffers, allocator slack not counted elsewhere
    "usable_fraction": 0.92,  # a plan fits when its peak is at most this fraction of the GPU's memory
    "activation_elems_per_token_per_layer": "4*H + 2*q_dim + 2*kv_dim + 4*I (attention and gated-MLP tensors kept for backward; flash/SDPA attention, no T^2 scores)",
    "checkpointed_activations": "one H-vector per token per layer, plus one layer recomputed in backward",
    "naive_loss_tiles": 6,  # [B*T_c, V] fp32 tensors alive at once on the full-logits path (+1 with a reference model)
    "fused_loss_tiles": 4,  # [chunk, V] fp32 tiles per chunk (sead.losses.fused)
    "fused_sign_gate_loss_tiles": 9,  # [chunk, V] fp32 tiles per chunk of the fused sign-gated loss (three heads, gated target)
    "gathered_layers": 2,  # ZeRO-3 / FSDP2: unsharded layers alive at once (current + prefetch)
    "teacher_server_memory_utilization": 0.9,  # vLLM's default --gpu-memory-utilization on the server's GPUs
}


@dataclass
class PlanInputs:
    """Everything the estimate depends on (read from a recipe by :func:`plan_recipe`)."""

    student: ModelFacts
    teacher: ModelFacts
    gpus: int = 8
    gpu_memory_gib: float = 80.0
    per_device_batch: int = 1
    grad_accum: int = 1
    prompt_tokens: int = 512
    completion_tokens: int = 512
    mixed_precision: bool = True  # bf16 or fp16
    student_load_bytes: int = 4  # model_init_kwargs dtype (TRL's default: float32)
    teacher_load_bytes: int = 4  # teacher_model_init_kwargs dtype (transformers' default: float32)
    activation_checkpointing: bool = True
    fused_loss: bool = True
    sign_gate: bool = False
    loss_chunk_size: int | None = None
    reference_model: bool = False
    teacher_mixing: bool = False
    teacher_mix_rho0: float = 0.5
    teacher_num_generations: int = 8
    teacher_generation_batch_size: int | None = None  # HF teacher rollouts: sequences per generate call
    teacher_vllm: bool = False  # SG-OPD teacher rollouts through a vLLM engine in each training process
    teacher_vllm_gpu_memory_utilization: float = 0.3
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_sleep_mode: bool = False
    vllm_tensor_parallel_size: int = 1
    ds3_gather_for_generation: bool = True
    optimizer_8bit: bool = False
    sync_each_batch: bool = False  # accelerator_config.gradient_accumulation_kwargs.sync_each_batch
    teacher_served: bool = False  # teacher_server_url: no teacher on the training GPUs
    teacher_hidden_cache: bool = False  # SEAD's step zone pass keeps the teacher's hidden states (teacher_cache: device)
    teacher_server_top_k: int = 64
    # several teachers (OPDConfig.teachers): the ones after `teacher`, each (facts, load bytes); every process holds all
    other_teachers: tuple = ()
    lora_params: int = 0  # a LoRA student: its trainable parameters (adapters, modules_to_save); 0: full fine-tuning
    notes: list[str] = field(default_factory=list)

    @property
    def seq_len(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def local_generation_batch(self) -> int:
        """Prompts each GPU generates for at once (TRL's generation batch: micro-batch x accumulation)."""
        return self.per_device_batch * self.grad_accum

    @property
    def prompts_per_step(self) -> int:
        return self.per_device_batch * self.grad_accum * self.gpus


def _student_bytes_per_param(strategy: str, inp: PlanInputs) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per student parameter before sharding.

    DeepSpeed with bf16/fp16: a half-precision module, an fp32 master copy and two fp32 moments (2, 2, 4 + 8).
    DDP trains the parameters in their loaded dtype ``w`` (autocast computes in bf16): ``(w, w, 2w)``. FSDP2 under
    mixed precision trains fp32 shards whatever the loaded dtype: accelerate's ``fsdp2_prepare_model`` upcasts every
    trainable parameter to fp32 (its ``MixedPrecisionPolicy`` casts only the gathered copy to bf16): (4, 4, 8)."""
    deepspeed = strategy in ("zero2", "zero3")
    moments = 2 if inp.optimizer_8bit else None
    if deepspeed:
        if inp.mixed_precision:  # bf16 module + fp32 master copy and fp32 Adam moments in the optimizer
            return 2, 2, 4 + (moments or 8)
        return 4, 4, moments or 8
    w = inp.student_load_bytes
    if strategy == "fsdp2" and inp.mixed_precision:
        w = 4  # accelerate upcasts trainable parameters to fp32 under FSDP2 mixed precision
    return w, w, moments or 2 * w


def fsdp2_unsharded_grad_bytes(inp: PlanInputs) -> int:
    """Per-GPU bytes of FSDP2's unsharded gradients during gradient accumulation: ``P x b``, ``b`` = 2 under bf16 /
    fp16 mixed precision (the policy's ``param_dtype`` = ``reduce_dtype``, accelerate's setting) else the trained
    dtype; 0 with one micro-batch per step or ``sync_each_batch``.

    HF's Trainer runs every micro-batch but the last of an optimizer step under ``accelerator.no_sync``; for FSDP2
    that is ``set_requires_gradient_sync(False)``: no reduce-scatter, each unit keeps its *unsharded* gradient
    (accumulated in ``reduce_dtype``) until the step's last micro-batch. ``sync_each_batch: true``
    (``accelerator_config.gradient_accumulation_kwargs``) reduce-scatters every micro-batch instead: no unsharded
    copy, one gradient reduce-scatter per micro-batch instead of per step."""
    if inp.grad_accum <= 1 or inp.sync_each_batch:
        return 0
    b = 2 if inp.mixed_precision else _student_bytes_per_param("fsdp2", inp)[1]
    return _trained_params(inp) * b


def _trained_params(inp: PlanInputs) -> int:
    """The student's parameters that get gradients and optimizer states: all of them, or a LoRA student's adapters."""
    return inp.lora_params or inp.student.num_params


def _adapter_bytes_per_param(strategy: str, inp: PlanInputs) -> tuple[int, int, int]:
    """(weights, gradients, optimizer) bytes per trainable parameter of a LoRA student: DeepSpeed as for full
    training (its bf16 module, fp32 master copy and moments; TRL keeps ZeRO-3's adapters in the base dtype); DDP and
    FSDP2 fp32 (peft's ``autocast_adapter_dtype`` upcasts adapters of a bf16 / fp16 base)."""
    if strategy in ("zero2", "zero3"):
        return _student_bytes_per_param(strategy, inp)
    return 4, 4, 2 if inp.optimizer_8bit else 8


def _student_state(strategy: str, inp: PlanInputs, div: dict[str, int]) -> tuple[int, int, int]:
    """Per-GPU bytes of the student's (weights, gradients, optimizer state) under ``strategy``. A LoRA student keeps its
    whole base model frozen (held as the launcher holds frozen weights, :func:`frozen_bytes`) and trains the adapters
    only."""
    P = inp.student.num_params
    if not inp.lora_params:
        wb, gb, ob = _student_bytes_per_param(strategy, inp)
        return P * wb // div["weights"], P * gb // div["grads"], P * ob // div["optim"]
    A, (wb, gb, ob) = inp.lora_params, _adapter_bytes_per_param(strategy, inp)
    frozen = frozen_bytes(strategy, P, inp.student_load_bytes, inp.gpus, inp.mixed_precision)
    return frozen + A * wb // div["weights"], A * gb // div["grads"], A * ob // div["optim"]


def _shards(strategy: str, n: int) -> dict[str, int]:
    """Divisor of each static component per strategy (1: replicated on every GPU). The frozen models (teacher,
    reference) are placed by ``sead.training.sharding.prepare_frozen``: whole under DDP and ZeRO-2 (a stage-0 DeepSpeed
    engine), partitioned under ZeRO-3, ``fully_shard``-ed per layer under FSDP2."""
    return {
        "ddp": {"weights": 1, "grads": 1, "optim": 1, "teacher": 1, "reference": 1},
        "zero2": {"weights": 1, "grads": n, "optim": n, "teacher": 1, "reference": 1},
        "zero3": {"weights": n, "grads": n, "optim": n, "teacher": n, "reference": n},
        "fsdp2": {"weights": n, "grads": n, "optim": n, "teacher": n, "reference": n},
    }[strategy]


def frozen_bytes(strategy: str, num_params: int, load_bytes: int, gpus: int, mixed_precision: bool) -> int:
    """Per-GPU bytes of a frozen model (teacher or reference) of ``num_params`` parameters loaded in ``load_bytes``
    per parameter: ``num_params x b / d``, with ``d`` = ``gpus`` where it is sharded (ZeRO-3, FSDP2) else 1, and
    ``b`` = 2 under DeepSpeed with bf16/fp16 (its engine casts the module to the half dtype) else ``load_bytes``
    (DDP and FSDP2 keep the loaded dtype; FSDP2's mixed-precision policy casts only the gathered copy)."""
    b = 2 if strategy in ("zero2", "zero3") and mixed_precision else load_bytes
    return num_params * b // _shards(strategy, max(int(gpus), 1))["teacher"]


def uses_fused_loss(cfg) -> bool:
    """Whether a recipe's loss runs fused from hidden states (no ``[T, V]`` logits): ``use_fused_loss``, for every
    estimator, with or without the sign gate (``sead.losses.fused.fused_objective``). Must agree with
    ``sead.training.trainer.OPDTrainer._objective``."""
    return bool(cfg.use_fused_loss)


def _chunk_rows(vocab: int, chunk_size: int | None) -> int:
    from sead.losses.fused import auto_chunk_size

    return chunk_size or auto_chunk_size(vocab)


@dataclass
class _TrainingWorkingSet:
    """The training phase's working set on each GPU, the same under every strategy: the student's activations of
    one micro-batch, then the largest of the teacher's forward, the reference's forward and the loss."""

    activations: int
    teacher_forward: int
    reference_forward: int
    loss: int
    loss_kind: str

    @property
    def total(self) -> int:
        return self.activations + max(self.teacher_forward, self.reference_forward, self.loss)


@dataclass
class _Rollouts:
    """The rollout phase's buffers on each GPU, the same under every strategy."""

    student_gen: int  # HF generate: the student's KV cache and the last position's logits
    vllm_reserved: int  # the student's colocated vLLM engine (its share of the GPU)
    teacher_seqs: int  # SG-OPD's teacher rollouts: sequences per generate call
    teacher_kv: int  # their KV cache (HF generate)
    teacher_vllm: int  # the teacher's own vLLM engine in each training process


def teacher_hidden_cache_bytes(inp: PlanInputs) -> int:
    """SEAD's step zone pass keeps the local teacher's last hidden states at every completion position of the step's
    local rollouts for their losses (``teacher_cache: device``): ``[local generation batch, completion tokens,
    teacher hidden]`` in the forwards' dtype, held from the zone pass to the step's last micro-batch."""
    if not inp.teacher_hidden_cache or inp.teacher_served:
        return 0
    act_bytes = 2 if inp.mixed_precision else 4
    widest = max(f.hidden_size for f in (inp.teacher, *(f for f, _ in inp.other_teachers)))  # several: one tensor
    return inp.local_generation_batch * inp.completion_tokens * widest * act_bytes


def _student_activations(inp: PlanInputs) -> int:
    """The student's activations kept for backward over one micro-batch (with or without checkpointing)."""
    s = inp.student
    act_bytes = 2 if inp.mixed_precision else 4
    tokens = inp.per_device_batch * inp.seq_len
    per_layer = tokens * s.activation_elems_per_token * act_bytes
    if inp.activation_checkpointing:
        return s.num_layers * tokens * s.hidden_size * act_bytes + per_layer
    return s.num_layers * per_layer


def _frozen_forwards(inp: PlanInputs) -> tuple[int, int]:
    """``(teacher, reference)``: the frozen models' forward over one micro-batch (bf16). A served teacher's is its
    answer instead: ``[N, k]`` ids and log-probs and ``[N]`` sampled log-probs."""
    s, t = inp.student, inp.teacher
    tokens, loss_rows = inp.per_device_batch * inp.seq_len, inp.per_device_batch * inp.completion_tokens
    if inp.teacher_served:
        teacher = loss_rows * (inp.teacher_server_top_k * 12 + 4)
    else:  # several teachers run one at a time: the largest forward
        teacher = max(tokens * f.activation_elems_per_token * 2 + loss_rows * f.hidden_size * 2
                      for f in (t, *(f for f, _ in inp.other_teachers)))  # fmt: skip
    reference = (tokens * s.activation_elems_per_token * 2) if inp.reference_model else 0
    return teacher, reference


def _loss_working_set(inp: PlanInputs) -> tuple[int, str]:
    """``(bytes, description)`` of the loss: the fused chunked loss's fp32 tiles, heads and hidden states, or the
    full-logits path's ``[B*T, V]`` fp32 tensors."""
    s = inp.student
    V, loss_rows = s.vocab_size, inp.per_device_batch * inp.completion_tokens
    if not inp.fused_loss:
        tiles = ASSUMPTIONS["naive_loss_tiles"] + (1 if inp.reference_model else 0)
        return tiles * loss_rows * V * 4, f"full logits, {tiles} x [{loss_rows}, {V}] fp32"
    t_h = 0 if inp.teacher_served else inp.teacher.hidden_size  # a served teacher sends no hidden states
    chunk = _chunk_rows(V, inp.loss_chunk_size)
    ref_h = s.hidden_size if inp.reference_model else 0
    tiles = ASSUMPTIONS["fused_sign_gate_loss_tiles" if inp.sign_gate else "fused_loss_tiles"]
    loss = (
        tiles * min(chunk, loss_rows) * V * 4  # [chunk, V] fp32 tiles
        + V * (s.hidden_size + t_h + ref_h) * 4  # the heads cast to fp32
        + V * s.hidden_size * 4  # fp32 gradient of the student head
        + loss_rows * (2 * s.hidden_size + t_h + ref_h) * 4  # fp32 hidden states, student's gradient
    )
    return loss, f"fused{' sign-gated' if inp.sign_gate else ''}, {tiles} x {min(chunk, loss_rows)} x {V} tiles"


def _training_working_set(inp: PlanInputs) -> _TrainingWorkingSet:
    teacher_forward, reference_forward = _frozen_forwards(inp)
    loss, loss_kind = _loss_working_set(inp)
    return _TrainingWorkingSet(_student_activations(inp), teacher_forward, reference_forward, loss, loss_kind)


def _teacher_rollouts(inp: PlanInputs, notes: list[str]) -> tuple[int, int, int]:
    """``(sequences per call, KV cache, vLLM engine)`` of SG-OPD's teacher rollouts on each GPU (a served teacher
    samples on its own GPUs: nothing here); adds their notes."""
    t, T, G = inp.teacher, inp.seq_len, inp.local_generation_batch
    if inp.teacher_mixing and not inp.teacher_served:
        # the step's picks, the same number on every rank (at most ceil(rho0 x G)), generated in batches of
        # teacher_generation_batch_size sequences
        picked = math.ceil(inp.teacher_mix_rho0 * G)
        teacher_seqs = picked * inp.teacher_num_generations
        if inp.teacher_generation_batch_size:
            teacher_seqs = min(teacher_seqs, inp.teacher_generation_batch_size)
        teacher_kv = t.kv_cache_bytes(T, teacher_seqs, 2 if inp.mixed_precision else 4)
    else:
        teacher_seqs, teacher_kv = 0, 0
    # A vLLM engine for the frozen teacher holds its share of the GPU all run long (no sleep mode, no sync).
    teacher_vllm = 0
    if inp.teacher_mixing and inp.teacher_vllm and not inp.teacher_served:
        teacher_vllm = int(inp.teacher_vllm_gpu_memory_utilization * inp.gpu_memory_gib * GiB)
        teacher_kv = 0
        room = teacher_vllm - t.num_params * 2
        per_seq = t.kv_cache_bytes(T, 1, 2)
        if room < per_seq:
            notes.append(
                f"teacher vLLM engine: {inp.teacher_vllm_gpu_memory_utilization:g} x {inp.gpu_memory_gib:g} GiB leaves "
                f"{max(room, 0) / GiB:.1f} GiB after the teacher's bf16 weights, less than one {T}-token sequence's "
                f"KV cache ({per_seq / GiB:.1f} GiB): vLLM will refuse to start. Raise "
                "teacher_vllm_gpu_memory_utilization, or set teacher_generation_backend: hf."
            )
    if inp.teacher_mixing and not inp.teacher_vllm:
        notes.append(
            "SG-OPD teacher rollouts with HF generate: under ZeRO-3 / FSDP2 the teacher is sharded, so every decode "
            "step gathers it layer by layer over the GPUs (all ranks step together, synced_gpus): it fits, but "
            f"{teacher_seqs} sequences of up to {inp.completion_tokens} tokens per call are slow."
        )
    return teacher_seqs, teacher_kv, teacher_vllm


def _student_rollouts(inp: PlanInputs, notes: list[str]) -> tuple[int, int]:
    """``(HF generate's buffers, vLLM colocate reservation)`` of the student's rollouts on each GPU (vLLM server mode:
    neither, generation runs on other GPUs); adds the colocated engine's note."""
    s, T, G = inp.student, inp.seq_len, inp.local_generation_batch
    if not inp.use_vllm:
        return s.kv_cache_bytes(T, G, 2 if inp.mixed_precision else 4) + G * s.vocab_size * 4, 0
    if inp.vllm_mode != "colocate":
        return 0, 0
    vllm_reserved = int(inp.vllm_gpu_memory_utilization * inp.gpu_memory_gib * GiB)
    per_seq = s.kv_cache_bytes(T, 1, 2)
    room = vllm_reserved - s.num_params * 2 // max(inp.vllm_tensor_parallel_size, 1)
    at_once = int(room // per_seq) if per_seq else 0
    if at_once < 1:
        notes.append(
            f"vLLM colocate: {inp.vllm_gpu_memory_utilization:g} x {inp.gpu_memory_gib:g} GiB leaves "
            f"{max(room, 0) / GiB:.1f} GiB after the student's bf16 weights, less than one {T}-token sequence's "
            f"KV cache ({per_seq / GiB:.1f} GiB): vLLM will refuse to start. Raise vllm_gpu_memory_utilization "
            "or vllm_tensor_parallel_size, or lower vllm_max_model_length."
        )
    else:
        notes.append(
            f"vLLM colocate: {room / GiB:.1f} GiB of KV cache after the student's weights holds {min(at_once, G)} "
            f"of the {G} local rollouts at full length ({per_seq / GiB:.2f} GiB each) at once."
        )
    return 0, vllm_reserved


def _rollouts(inp: PlanInputs, notes: list[str]) -> _Rollouts:
    teacher_seqs, teacher_kv, teacher_vllm = _teacher_rollouts(inp, notes)
    student_gen, vllm_reserved = _student_rollouts(inp, notes)
    return _Rollouts(student_gen, vllm_reserved, teacher_seqs, teacher_kv, teacher_vllm)


def _usable_bytes(inp: PlanInputs) -> float:
    """A plan fits when its peak is at most this (the usable fraction of one GPU's memory)."""
    return ASSUMPTIONS["usable_fraction"] * inp.gpu_memory_gib * GiB


def _sharding_gather(strategy: str, inp: PlanInputs, student_weight_bytes: int) -> int:
    """ZeRO-3 / FSDP2: the layers gathered whole at once (the larger of the student's and the teacher's layer)."""
    if strategy not in ("zero3", "fsdp2"):
        return 0
    # the gathered copy: bf16 under mixed precision (ZeRO-3's module, FSDP2's param_dtype), else as held
    mixed = inp.mixed_precision
    t_bytes = 2 if mixed else inp.teacher_load_bytes
    s_bytes = 2 if mixed else student_weight_bytes
    teacher_layer = 0 if inp.teacher_served else inp.teacher.layer_params * t_bytes
    return ASSUMPTIONS["gathered_layers"] * max(inp.student.layer_params * s_bytes, teacher_layer)


def _strategy_components(strategy: str, inp: PlanInputs, train: _TrainingWorkingSet, roll: _Rollouts) -> dict[str, int]:
    """Per-GPU bytes of every component under ``strategy``: the student's weights, gradients and optimizer state
    (sharded as the strategy shards them), the frozen models, the buffers of both phases."""
    n = max(int(inp.gpus), 1)
    div = _shards(strategy, n)
    wb = _student_bytes_per_param(strategy, inp)[0]
    P, mixed = inp.student.num_params, inp.mixed_precision
    weights, grads, optim = _student_state(strategy, inp, div)
    # SG-OPD's reference: a frozen copy of the student; none for a LoRA student (its adapters off: sead.training.lora)
    reference = 0
    if inp.reference_model and not inp.lora_params:
        reference = frozen_bytes(strategy, P, inp.student_load_bytes, n, mixed)
    teacher = 0
    if not inp.teacher_served:
        teacher = frozen_bytes(strategy, inp.teacher.num_params, inp.teacher_load_bytes, n, mixed)
        teacher += sum(frozen_bytes(strategy, f.num_params, b, n, mixed) for f, b in inp.other_teachers)
    gen_extra = 0
    if strategy == "zero3" and not inp.use_vllm and inp.ds3_gather_for_generation:
        gen_extra = P * wb  # TRL gathers the whole student for HF generate under ZeRO-3
    return {
        "student weights": weights,
        "student gradients": grads,
        "FSDP2 unsharded gradients (no_sync)": fsdp2_unsharded_grad_bytes(inp) if strategy == "fsdp2" else 0,
        "optimizer (AdamW)": optim,
        "teacher weights": teacher,
        "reference weights": reference,
        "sharding gather buffers": _sharding_gather(strategy, inp, wb),
        "runtime overhead": int(ASSUMPTIONS["runtime_overhead_gib"] * GiB),
        "vLLM colocate reservation": roll.vllm_reserved,
        "rollout KV cache (HF generate)": roll.student_gen,
        "ZeRO-3 student gathered for generate": gen_extra,
        "teacher rollouts KV cache": roll.teacher_kv,
        "teacher vLLM engine": roll.teacher_vllm,
        "activations (student)": train.activations,
        "teacher forward": train.teacher_forward,
        "reference forward": train.reference_forward,
        "loss working set": train.loss,
        "teacher hidden states kept for the step": teacher_hidden_cache_bytes(inp),
    }


def _plan_strategy(strategy: str, inp: PlanInputs, train: _TrainingWorkingSet, roll: _Rollouts) -> dict[str, Any]:
    """One strategy's components, its two phases and its peak. Student and teacher rollouts run one after the
    other; with vllm_enable_sleep_mode TRL puts the student's engine to sleep (level 2: weights and KV cache
    released) right after its generation, so SG-OPD's teacher rollouts that follow do not share the GPU with it."""
    c = _strategy_components(strategy, inp, train, roll)
    wb, gb, ob = (_adapter_bytes_per_param if inp.lora_params else _student_bytes_per_param)(strategy, inp)  # trained
    vllm_in_train = 0 if inp.vllm_sleep_mode else roll.vllm_reserved
    student_gen = roll.vllm_reserved + roll.student_gen + c["ZeRO-3 student gathered for generate"]
    rollout_ws = max(student_gen, vllm_in_train + roll.teacher_kv)
    static = c["student weights"] + c["optimizer (AdamW)"] + c["teacher weights"] + c["reference weights"]
    static += c["runtime overhead"] + c["sharding gather buffers"]
    grads = c["student gradients"] + c["FSDP2 unsharded gradients (no_sync)"]
    rollout_phase = static + roll.teacher_vllm + rollout_ws
    train_phase = static + grads + vllm_in_train + roll.teacher_vllm + train.total
    train_phase += c["teacher hidden states kept for the step"]
    peak = max(rollout_phase, train_phase)
    return {
        "components": c,
        "bytes_per_param": {"weights": wb, "grads": gb, "optim": ob},
        "rollout_phase": rollout_phase,
        "train_phase": train_phase,
        "peak": peak,
        "fits": peak <= _usable_bytes(inp),
    }


def _strategy_notes(inp: PlanInputs, results: dict[str, Any]) -> list[str]:
    """Notes on how the strategies hold the student: FSDP2's unsharded gradients under accumulation, a bf16 student."""
    notes = []
    unsharded = results["fsdp2"]["components"]["FSDP2 unsharded gradients (no_sync)"]
    if unsharded:
        notes.append(
            f"FSDP2 with {inp.grad_accum} micro-batches per step: HF's Trainer runs all but the last under no_sync, "
            f"where FSDP2 keeps every gradient unsharded ({unsharded / GiB:.1f} GiB per GPU, counted in the training "
            "phase with the sharded ones: an upper bound). accelerator_config: {gradient_accumulation_kwargs: "
            f"{{sync_each_batch: true}}}} reduce-scatters every micro-batch instead: {unsharded / GiB:.1f} GiB less, "
            f"{inp.grad_accum} gradient reduce-scatters per step instead of one."
        )
    if inp.mixed_precision and inp.student_load_bytes == 2:
        notes.append(
            "the student loads in bf16: under DDP it trains in pure bf16 (bf16 weights, gradients and AdamW moments, "
            "no fp32 master weights); under FSDP2 accelerate upcasts its trainable parameters to fp32 (counted: 16 "
            "bytes per parameter / N); DeepSpeed keeps fp32 master weights."
        )
    return notes


def plan_memory(inp: PlanInputs) -> dict[str, Any]:
    """Per-GPU bytes of every component for each strategy, the peaks, and the recommendation."""
    s, t = inp.student, inp.teacher
    notes = list(inp.notes)
    train = _training_working_set(inp)
    roll = _rollouts(inp, notes)
    results = {strategy: _plan_strategy(strategy, inp, train, roll) for strategy in STRATEGIES}
    notes += _strategy_notes(inp, results)
    fitting = [k for k in STRATEGIES if results[k]["fits"]]
    recommended = fitting[0] if fitting else None
    return {
        "inputs": {
            "gpus": max(int(inp.gpus), 1),
            "gpu_memory_gib": inp.gpu_memory_gib,
            "usable_gib": _usable_bytes(inp) / GiB,
            "per_device_train_batch_size": inp.per_device_batch,
            "gradient_accumulation_steps": inp.grad_accum,
            "prompts_per_step": inp.prompts_per_step,
            "local_generation_batch": inp.local_generation_batch,
            "prompt_tokens": inp.prompt_tokens,
            "completion_tokens": inp.completion_tokens,
            "mixed_precision": inp.mixed_precision,
            "activation_checkpointing": inp.activation_checkpointing,
            "loss": train.loss_kind,
            "use_vllm": inp.use_vllm,
            "vllm_mode": inp.vllm_mode if inp.use_vllm else None,
            "teacher_rollout_sequences": roll.teacher_seqs,
        },
        "models": {
            "student": {**asdict(s), "num_params": s.num_params},
            "teacher": {**asdict(t), "num_params": t.num_params},
        },
        "strategies": results,
        "fits": fitting,
        "recommended": recommended,
        "accelerate_config": ACCELERATE_CONFIGS.get(recommended) if recommended else None,
        "advice": _advice(inp, results, recommended),
        "teacher_server": plan_teacher_server(t, inp.seq_len, inp.gpu_memory_gib, inp.prompts_per_step)
        if inp.teacher_served
        else None,
        "notes": notes,
        "assumptions": ASSUMPTIONS,
    }


def plan_teacher_server(t: ModelFacts, seq_len: int, gpu_memory_gib: float, prompts_per_step: int) -> dict[str, Any]:
    """GPUs of a vLLM server holding the teacher (``teacher_server_url``), apart from the training GPUs. For each
    tensor-parallel size (1, 2, 4, 8): the KV cache left after the bf16 weight shards and a runtime overhead at
    vLLM's default memory utilisation, in full-length sequences (the server scores each rollout as one prompt:
    ``prompt_logprobs`` and one generated token). ``tensor_parallel_size``: the smallest with room for one."""
    weights = t.num_params * 2
    per_seq = t.kv_cache_bytes(seq_len + 1, 1, 2)
    budget = ASSUMPTIONS["teacher_server_memory_utilization"] * gpu_memory_gib * GiB
    overhead = ASSUMPTIONS["runtime_overhead_gib"] * GiB
    at_once = {tp: max(int(tp * (budget - weights / tp - overhead) // per_seq), 0) for tp in (1, 2, 4, 8)}
    fitting = [tp for tp, n in at_once.items() if n >= 1]
    return {
        "tensor_parallel_size": fitting[0] if fitting else None,
        "sequences_at_once": at_once,
        "weights": weights,
        "sequence_kv": per_seq,
        "sequences_per_step": prompts_per_step,
        "max_model_len": seq_len + 1,
    }


def _advice(inp: PlanInputs, results: dict[str, Any], recommended: str | None) -> list[str]:
    out = []
    if recommended is None:
        best = min(STRATEGIES, key=lambda k: results[k]["peak"])
        comps = results[best]["components"]
        biggest = sorted(comps.items(), key=lambda kv: -kv[1])[:3]
        out.append(
            f"nothing fits; the smallest peak is {STRATEGY_NAMES[best]} at {results[best]['peak'] / GiB:.1f} GiB, "
            f"dominated by {', '.join(f'{k} ({v / GiB:.1f} GiB)' for k, v in biggest)}."
        )
        names = dict(biggest)
        if names.get("teacher rollouts KV cache"):
            out.append(
                "SG-OPD's cold-start teacher rollouts (HF generate) need fewer sequences at once: set "
                "teacher_generation_batch_size (sequences per generate call), or lower teacher_num_generations."
            )
        if names.get("rollout KV cache (HF generate)"):
            out.append("student rollouts: use vLLM (use_vllm: true, vllm_mode: server or colocate).")
        if names.get("activations (student)") and not inp.activation_checkpointing:
            out.append("turn on activation_checkpointing.")
        if names.get("loss working set") and not inp.fused_loss:
            out.append(
                "the full-logits loss path materialises [B*T, V] logits: lower per_device_train_batch_size "
                "(raise gradient_accumulation_steps to keep the batch), or use the fused loss (use_fused_loss with "
                "estimator: full or the sign gate)."
            )
        if names.get("teacher weights"):
            out.append("shard the teacher (ZeRO-3 / FSDP2) or use more / larger GPUs (--gpus, --gpu-memory).")
        if inp.reference_model:
            out.append("SG-OPD: use_reference_model: false drops the reference copy (A = lambda * d).")
        if names.get("teacher hidden states kept for the step"):
            out.append(
                "SEAD keeps the teacher's hidden states for the whole step on the GPU: teacher_cache: cpu offloads "
                "them (one micro-batch back at a time), teacher_cache: off runs the teacher again in each loss."
            )
    if inp.use_vllm and inp.vllm_mode == "server":
        out.append(
            f"vLLM server mode: start `trl vllm-serve --model <student>` on GPUs of its own; it holds the student "
            f"({inp.student.num_params * 2 / GiB:.1f} GiB in bf16, / tensor parallel size) plus its KV cache. "
            "This plan counts only the training GPUs."
        )
    return out


# ----------------------------------------------------------------------------------------------
# From a recipe
# ----------------------------------------------------------------------------------------------
