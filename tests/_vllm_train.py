"""opd, sead and sgopd trained a few steps with real vLLM engines, for tests/test_vllm.py (not a test module).

``python tests/_vllm_train.py ROOT OUT.json`` (environment: ``_tiny.vllm_env()``). Saves a tiny student and
teacher vLLM can run (head dimension 32) under ROOT and trains each method 3 steps with the student's rollouts
in TRL's colocate engine (``use_vllm=True, vllm_mode="colocate"``); SG-OPD also draws its cold-start teacher
rollouts from a vLLM engine of the teacher (``teacher_generation_backend="vllm"``): two engines in one process.
HF ``generate`` is disabled for the whole run, so every rollout comes from vLLM.

The three trainers share one colocate engine (``trl.generation.vllm_generation.LLM`` returns the engine built for
the same model folder): each trainer's first step pushes its own student's weights into it, as TRL does at
every step, so sharing changes nothing but the start-up time. Writes OUT.json: per method the losses, the
engine calls, and how far the engine's log-probs are from the trained student's (after a last sync) and from
the initial student's.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def logprob_gap(llm, model, sequences) -> float:
    """max |log p_vLLM(x_t | x_<t) - log p_HF(x_t | x_<t)| over the tokens of ``sequences`` (after the first)."""
    from vllm import SamplingParams

    outs = llm.generate([{"prompt_token_ids": s} for s in sequences],
                        SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0), use_tqdm=False)  # fmt: skip
    gap = 0.0
    with torch.no_grad():
        for seq, out in zip(sequences, outs):
            logp_TV = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
            for t in range(1, len(seq)):
                engine = out.prompt_logprobs[t][seq[t]].logprob
                gap = max(gap, abs(engine - float(logp_TV[t - 1, seq[t]])))
    return gap


def main(root: Path, out_path: Path) -> None:
    import trl.generation.vllm_generation as trl_vllm
    from transformers import AutoModelForCausalLM
    from transformers.generation.utils import GenerationMixin

    import sead.components.teacher_rollouts
    from _tiny import VLLM_HEADS, parity_reward, save_models, tiny_config, tiny_dataset, tokenizer
    from sead.training.trainer import OPDTrainer

    t0 = time.perf_counter()
    student_dir, teacher_dir = save_models(root, num_attention_heads=VLLM_HEADS)
    tok = tokenizer()
    calls = {"student": 0, "teacher": 0}

    def counted(llm, who):
        generate = llm.generate

        def wrapper(*args, **kwargs):
            calls[who] += 1
            return generate(*args, **kwargs)

        llm.generate = wrapper
        return llm

    engines: dict[str, object] = {}
    build_student_engine = trl_vllm.LLM

    def shared_student_engine(**kwargs):
        if kwargs["model"] not in engines:
            engines[kwargs["model"]] = counted(build_student_engine(**kwargs), "student")
        return engines[kwargs["model"]]

    trl_vllm.LLM = shared_student_engine
    build_teacher_engine = sead.components.teacher_rollouts.vllm_engine
    sead.components.teacher_rollouts.vllm_engine = lambda source, **kw: counted(build_teacher_engine(source, **kw),
                                                                                  "teacher")

    def no_hf_generate(*args, **kwargs):
        raise AssertionError("HF generate ran: every rollout must come from a vLLM engine")

    GenerationMixin.generate = no_hf_generate

    initial = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    probe = [tok(p, add_special_tokens=False)["input_ids"] for p in ("12+34=46", "Q: 7*8=? A: 56", "3-9=-6")]
    results: dict[str, dict] = {"setup_s": time.perf_counter() - t0}
    for run in ("opd", "sead", "sgopd", "sgopd_sampled"):
        method = run.removesuffix("_sampled")
        start = time.perf_counter()
        before = dict(calls)
        extra = {"estimator": "sampled"} if run.endswith("_sampled") else {}
        cfg = tiny_config(
            root / f"out-{run}", method=method, max_steps=3, **extra, use_vllm=True, vllm_mode="colocate",
            vllm_gpu_memory_utilization=0.3, teacher_generation_backend="vllm", teacher_num_generations=2,
            teacher_mix_rho0=1.0, teacher_mix_phase_fraction=1.0, teacher_vllm_gpu_memory_utilization=0.3,
        )  # fmt: skip
        trainer = OPDTrainer(student_dir, teacher_dir, args=cfg, train_dataset=tiny_dataset(16),
                             processing_class=tok, reward_funcs=[parity_reward])  # fmt: skip
        sampler_gaps = []  # |log q(y_t) - log p_S(y_t)|: the engine's sampled-token log-probs vs the trainer's
        compute = trainer._compute_loss

        def recording_loss(unwrapped, inputs, num_items, _compute=compute, _gaps=sampler_gaps):
            q = inputs.get("sampler_logprobs")
            if q is not None:
                ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
                attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
                width = inputs["completion_ids"].shape[1]
                with torch.no_grad():
                    logits = unwrapped(input_ids=ids, attention_mask=attn).logits[:, -width - 1 : -1].float()
                s = torch.log_softmax(logits, -1).gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
                valid = inputs["completion_mask"].bool() & ~torch.isnan(q)
                _gaps.append(float((q - s)[valid].abs().max()) if valid.any() else float("nan"))
            return _compute(unwrapped, inputs, num_items)

        trainer._compute_loss = recording_loss
        built = time.perf_counter()
        trainer.train()
        trained = time.perf_counter()
        engine = trainer.vllm_generation
        engine.sync_weights()  # TRL syncs before each step's rollouts; once more for the weights after the last step
        student = trainer.accelerator.unwrap_model(trainer.model).eval()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        results[run] = {
            "sampler_logprob_gaps": sampler_gaps,
            "losses": [h["loss"] for h in logs],
            "teacher_mixed_frac": [h.get("sgopd/teacher_mixed_frac") for h in logs],
            "student_engine_calls": calls["student"] - before["student"],
            "teacher_engine_calls": calls["teacher"] - before["teacher"],
            "teacher_engine": trainer.teacher_mix is not None and trainer.teacher_mix.sample.engine is not None,
            "engine_dtype": str(engine.llm.llm_engine.model_config.dtype),
            "gap_to_trained": logprob_gap(engine.llm, student, probe),
            "gap_to_initial": logprob_gap(engine.llm, initial, probe),
            "all_finite": all(math.isfinite(x) for x in (h["loss"] for h in logs)),
            "init_s": built - start,
            "train_s": trained - built,
        }
        print(run, json.dumps(results[run]), flush=True)
    results["total_s"] = time.perf_counter() - t0
    out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]), Path(sys.argv[2]))
