"""A plan as text: the table of strategies, the recommendation, the accelerate command."""


from __future__ import annotations

from typing import Any

from sead.plan.memory import STRATEGIES, STRATEGY_NAMES, GiB

__all__ = ["format_plan"]


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _format_teacher_server(server: dict[str, Any], inp: dict[str, Any]) -> str:
    head = (
        f"teacher server (vLLM on GPUs of its own, not counted above; nothing of the teacher on the training GPUs): "
        f"{server['weights'] / GiB:.1f} GiB of bf16 weights, {server['sequence_kv'] / GiB:.2f} GiB of KV cache per "
        f"full-length sequence, {server['sequences_per_step']} sequences to score per step;"
    )
    options = ", ".join(f"{tp}: {n}" for tp, n in server["sequences_at_once"].items())
    tp = server["tensor_parallel_size"]
    if tp is None:
        return f"{head} it does not fit {inp['gpu_memory_gib']:g} GiB GPUs at tensor parallel 1-8."
    return (
        f"{head} sequences at once by --tensor-parallel-size on {inp['gpu_memory_gib']:g} GiB GPUs: {options} "
        f"(smallest that fits: {tp}); start it with --max-model-len {server['max_model_len']} or more."
    )


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a plain-text table (GiB per GPU)."""
    inp, models = plan["inputs"], plan["models"]
    lines = []
    rec = plan.get("recipe", {})
    lines.append(
        f"method {rec.get('method', '?')}: student {rec.get('student', models['student']['name'])} "
        f"({_params(models['student']['num_params'])} params), teacher {rec.get('teacher', models['teacher']['name'])} "
        f"({_params(models['teacher']['num_params'])} params)"
    )
    rollouts = "HF generate"
    if inp["use_vllm"]:
        rollouts = f"vLLM {inp['vllm_mode']}"
    lines.append(
        f"{inp['gpus']} GPU(s) x {inp['gpu_memory_gib']:g} GiB (plan fits under {inp['usable_gib']:.1f} GiB); "
        f"{inp['prompts_per_step']} prompts/step = {inp['per_device_train_batch_size']} per device x "
        f"{inp['gradient_accumulation_steps']} accumulation x {inp['gpus']} GPUs; sequences {inp['prompt_tokens']} + "
        f"{inp['completion_tokens']} tokens; {'bf16/fp16 mixed' if inp['mixed_precision'] else 'fp32'}; "
        f"activation checkpointing {'on' if inp['activation_checkpointing'] else 'off'}; loss: {inp['loss']}; "
        f"rollouts: {rollouts}"
    )
    lines.append("")
    largest = max(
        v for k in STRATEGIES for name, v in plan["strategies"][k]["components"].items() if name != "runtime overhead"
    )
    unit, scale = ("GiB", GiB) if largest >= GiB / 10 else ("MiB", 1024**2)

    def _gib(x: float) -> str:
        return f"{x / scale:.1f}"

    header = [f"per GPU, {unit}"] + [STRATEGY_NAMES[k] for k in STRATEGIES]
    comps = list(plan["strategies"][STRATEGIES[0]]["components"])
    rows = []
    for comp in comps:
        values = [plan["strategies"][k]["components"][comp] for k in STRATEGIES]
        if not any(values):
            continue
        rows.append([comp] + [_gib(v) for v in values])
    rows.append(["rollout phase"] + [_gib(plan["strategies"][k]["rollout_phase"]) for k in STRATEGIES])
    rows.append(["training phase"] + [_gib(plan["strategies"][k]["train_phase"]) for k in STRATEGIES])
    rows.append(["PEAK"] + [_gib(plan["strategies"][k]["peak"]) for k in STRATEGIES])
    rows.append(["fits"] + ["yes" if plan["strategies"][k]["fits"] else "no" for k in STRATEGIES])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    sep_at = len(rows) - 4

    def fmt(row):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))

    lines.append(fmt(header))
    lines.append("-" * len(fmt(header)))
    for i, row in enumerate(rows):
        if i == sep_at:
            lines.append("-" * len(fmt(header)))
        lines.append(fmt(row))
    lines.append("")
    if plan["recommended"]:
        r = plan["recommended"]
        recipe_path = rec.get("config", "<recipe>")
        if inp["gpus"] == 1 and r == "ddp":
            lines.append(f"recommended: one GPU, no sharding  ->  sead train --config {recipe_path}")
        else:
            lines.append(
                f"recommended: {STRATEGY_NAMES[r]}  ->  accelerate launch --config_file {plan['accelerate_config']} "
                f"--num_processes {inp['gpus']} -m sead.cli train --config {recipe_path}"
            )
        if r in ("zero3", "fsdp2"):
            lines.append(
                "  caution: not run on GPUs. FSDP2 sharding of student, teacher and reference and DeepSpeed ZeRO-3 "
                "training ran on 2 CPU processes only (gloo; docs/scaling.md, 'What is sharded where')."
            )
    else:
        lines.append("recommended: none of DDP / ZeRO-2 / FSDP2 / ZeRO-3 fits.")
    for item in plan["advice"]:
        lines.append(f"  - {item}")
    server = plan.get("teacher_server")
    if server:
        lines.append(_format_teacher_server(server, inp))
    for note in plan["notes"]:
        lines.append(f"note: {note}")
    lines.append("Estimates from public architecture facts; not measured on a GPU (docs/scaling.md).")
    return "\n".join(lines)
