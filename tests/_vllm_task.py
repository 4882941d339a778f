"""Subprocess of tests/test_task_vllm.py: each built-in task's teacher spec, saved untrained with its tokenizer,
loads in vLLM and decodes greedily exactly as transformers does. Prints one JSON line."""

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from vllm import LLM, SamplingParams

    from sead.engines.hf import generate_responses
    from sead.tasks import TASKS, get_task
    from sead.tasks.sft import build_model

    out = {}
    for name in TASKS:
        task = get_task(name)
        tok = task.build_tokenizer()
        spec = task.recipes()[0].model
        path = os.path.join(sys.argv[1], name)
        torch.manual_seed(0)
        model = build_model(spec, tok, seed=0).eval()
        model.save_pretrained(path)
        tok.save_pretrained(path)
        prompts = list(task.make_dataset(6, seed=0)["prompt"])
        hf = [r[0] for r in generate_responses(model, tok, prompts, max_new_tokens=8, batch_size=6)]
        llm = LLM(model=path, dtype="float32", max_model_len=spec.max_position_embeddings, gpu_memory_utilization=0.3)
        vl = [o.outputs[0].text for o in llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8))]
        out[name] = {"same": sum(a == b for a, b in zip(hf, vl)), "n": len(prompts), "head_dim": spec.head_dim}
        del llm
    print(json.dumps(out))


if __name__ == "__main__":
    main()
