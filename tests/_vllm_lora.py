"""A LoRA student trained with rollouts from TRL's vLLM colocate engine, for tests/test_lora.py (not a test module).

``python tests/_vllm_lora.py ROOT OUT.json`` (environment: ``_tiny.vllm_env()``). Saves a tiny student and teacher
vLLM can run (head dimension 32) under ROOT and trains SG-OPD (its sign gate and reference, without the cold-start teacher rollouts) 3 steps with a LoRA student (``q_proj`` / ``v_proj``
adapters and the head trained whole, ``modules_to_save``) whose rollouts come from TRL's colocate engine: before each
step's rollouts TRL merges the adapters into the base weights, pushes the merged weights into vLLM and unmerges them.
HF ``generate`` is disabled for the whole run. Writes OUT.json: the losses, the engine's calls, how far the engine's
log-probs are from the trained (merged) student's after a last sync and from the initial student's, how far the
frozen base weights moved (merge + unmerge rounding), and whether the reference was the adapters-off student.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def main(root: Path, out_path: Path) -> None:
    import trl.generation.vllm_generation as trl_vllm
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from transformers.generation.utils import GenerationMixin

    from _tiny import VLLM_HEADS, parity_reward, save_models, tiny_config, tiny_dataset, tokenizer
    from _vllm_train import logprob_gap
    from sead.training.lora import AdapterOffReference
    from sead.training.trainer import OPDTrainer

    t0 = time.perf_counter()
    student_dir, teacher_dir = save_models(root, num_attention_heads=VLLM_HEADS)
    tok = tokenizer()
    calls = {"student": 0}
    build_engine = trl_vllm.LLM

    def counted_engine(**kwargs):
        llm = build_engine(**kwargs)
        generate = llm.generate

        def wrapper(*args, **kw):
            calls["student"] += 1
            return generate(*args, **kw)

        llm.generate = wrapper
        return llm

    trl_vllm.LLM = counted_engine

    def no_hf_generate(*args, **kwargs):
        raise AssertionError("HF generate ran: every rollout must come from the vLLM engine")

    GenerationMixin.generate = no_hf_generate
    initial = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    probe = [tok(p, add_special_tokens=False)["input_ids"] for p in ("12+34=46", "Q: 7*8=? A: 56", "3-9=-6")]
    cfg = tiny_config(
        root / "out", method="sgopd", max_steps=3, learning_rate=5e-2, use_vllm=True, vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.3, teacher_mixing=False,  # the gate and reference; no teacher rollouts
    )  # fmt: skip
    peft_config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                             modules_to_save=["lm_head"])  # fmt: skip
    trainer = OPDTrainer(student_dir, teacher_dir, args=cfg, train_dataset=tiny_dataset(16), processing_class=tok,
                         reward_funcs=[parity_reward], peft_config=peft_config)  # fmt: skip
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    built = time.perf_counter()
    trainer.train()
    trained = time.perf_counter()
    engine = trainer.vllm_generation
    engine.sync_weights()  # TRL syncs before each step's rollouts; once more for the weights after the last step
    student = trainer.accelerator.unwrap_model(trainer.model).eval()
    drift = max(float((p.detach() - base_before[n]).abs().max()) for n, p in student.named_parameters()
                if n in base_before)  # fmt: skip
    logs = [h for h in trainer.state.log_history if "loss" in h]
    results = {
        "losses": [h["loss"] for h in logs],
        "all_finite": all(math.isfinite(h["loss"]) for h in logs),
        "student_engine_calls": calls["student"],
        "adapters_off_reference": isinstance(trainer.ref_model, AdapterOffReference),
        "engine_dtype": str(engine.llm.llm_engine.model_config.dtype),
        "gap_to_trained": logprob_gap(engine.llm, student, probe),
        "gap_to_initial": logprob_gap(engine.llm, initial, probe),
        "base_drift": drift,
        "init_s": built - t0,
        "train_s": trained - built,
        "total_s": time.perf_counter() - t0,
    }
    print(json.dumps(results), flush=True)
    out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]), Path(sys.argv[2]))
