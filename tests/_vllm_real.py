"""The real pair with real vLLM engines, for tests/test_real_vllm.py (not a test module).

``python tests/_vllm_real.py TEACHER STUDENT ROOT OUT.json`` (environment: ``_tiny.vllm_env()``):

1. opd, sead and sgopd train 2 steps each on arithmetic chat prompts (``_real.chat_dataset``) with the student's
   rollouts in TRL's colocate engine (one engine shared by the three trainers, as tests/_vllm_train.py does: each
   trainer's first step pushes its own student's weights into it); SG-OPD's teacher rollouts with HF generate (a
   second 30-layer engine would double the start-up).
2. ``sead train`` (the command, in this process) runs recipes/smollm2-prune-distill.yaml for one step with vLLM
   colocate rollouts; the student it saves is loaded by ``AutoModelForCausalLM`` and decodes two prompts greedily.
3. ``python tests/_vllm_real.py --serve OUT.json``: the saved student in a fresh vLLM engine (``dtype=float32``, a
   process of its own), greedy on the same prompts.

Writes OUT.json: per method the losses and engine calls; the saved student's greedy token ids from HF and vLLM.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def main(teacher: str, student: str, root: Path, out_path: Path) -> None:
    import trl.generation.vllm_generation as trl_vllm
    from transformers import AutoTokenizer

    from _real import ADDITIONS, REPO, chat, chat_dataset, real_config
    from sead.training.trainer import OPDTrainer

    t0 = time.perf_counter()
    calls = {"student": 0}
    engines: dict[str, object] = {}
    build = trl_vllm.LLM

    def shared_engine(**kwargs):
        if kwargs["model"] not in engines:
            llm = build(**kwargs)
            generate = llm.generate

            def counted(*a, **k):
                calls["student"] += 1
                return generate(*a, **k)

            llm.generate = counted
            engines[kwargs["model"]] = llm
        return engines[kwargs["model"]]

    trl_vllm.LLM = shared_engine
    tok = AutoTokenizer.from_pretrained(student)
    results: dict = {}
    for method in ("opd", "sead", "sgopd"):
        before = calls["student"]
        extra = {"teacher_mix_rho0": 1.0, "teacher_mix_phase_fraction": 1.0} if method == "sgopd" else {}
        cfg = real_config(root / f"out-{method}", method=method, max_steps=2, use_vllm=True, vllm_mode="colocate",
                          vllm_gpu_memory_utilization=0.3, teacher_generation_backend="hf", **extra)  # fmt: skip
        trainer = OPDTrainer(student, teacher, args=cfg, train_dataset=chat_dataset(8), processing_class=tok)
        start = time.perf_counter()
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        model = trainer.accelerator.unwrap_model(trainer.model)
        results[method] = {
            "steps": trainer.state.global_step,
            "losses": [h["loss"] for h in logs],
            "all_finite": all(math.isfinite(h["loss"]) for h in logs),
            "engine_calls": calls["student"] - before,
            "tied": model.get_output_embeddings().weight is model.get_input_embeddings().weight,
            "train_s": time.perf_counter() - start,
        }
        print(method, json.dumps(results[method]), flush=True)

    # `sead train` on the recipe, then the saved student in HF and in a fresh vLLM engine
    from sead.cli import main as sead_main

    saved = root / "recipe-out"
    rc = sead_main([
        "train", "--config", str(REPO / "recipes" / "smollm2-prune-distill.yaml"), "--model_name_or_path", student,
        "--teacher_model_name_or_path", teacher, "--dataset_name", str(REPO / "recipes" / "data" / "additions-train.jsonl"),
        "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_completion_length", "8",
        "--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3",
        "--output_dir", str(saved),
    ])  # fmt: skip
    results["sead_train_rc"] = rc
    from transformers import AutoModelForCausalLM

    prompts = [list(tok.apply_chat_template(chat(q), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for q, _ in ADDITIONS[:2]]  # fmt: skip
    hf = AutoModelForCausalLM.from_pretrained(saved).eval()
    results["reloaded_tied"] = hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    hf_ids = []
    with torch.no_grad():
        for p in prompts:
            out = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)  # fmt: skip
            hf_ids.append(out[0, len(p):].tolist())
    results["saved"] = str(saved)
    results["prompts"] = prompts
    results["hf_greedy"] = hf_ids
    results["total_s"] = time.perf_counter() - t0
    out_path.write_text(json.dumps(results, indent=1))


def serve(results_path: Path) -> None:
    """The saved student in a fresh vLLM engine (a process of its own: ``sead train`` ended the first one's
    process group), fp32, greedy on the same prompts; adds ``vllm_greedy`` to the results."""
    from vllm import LLM, SamplingParams

    results = json.loads(results_path.read_text())
    llm = LLM(model=results["saved"], dtype="float32", gpu_memory_utilization=0.3, seed=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in results["prompts"]],
                        SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)  # fmt: skip
    results["vllm_greedy"] = [list(o.outputs[0].token_ids) for o in outs]
    results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if sys.argv[1] == "--serve":
        serve(Path(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
