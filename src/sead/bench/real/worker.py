"""``sead bench real``'s worker process: ``python -m sead.bench.real.worker train|sft|eval|mechanisms|serve ...``.

Each job prints one JSON line (``serve``: one job per stdin line, :func:`sead.experiments.worker.serve`), so the
parent (:mod:`sead.bench.real.compare`) runs two at a time, one torch thread each.

- ``train``: one method (opd, sead, sgopd) from the pruned student, the settings of
  ``recipes/smollm2-prune-distill.yaml`` (rollouts at temperature 0.7, 8 a step, at most 24 tokens; lr 1e-4 with a
  cosine decay to 0 at the last step), saving the student at ``--save-steps`` with its training time (wall seconds
  since training began, the saves' own time excluded).
- ``sft``: the off-policy baseline, sequence-level distillation: the teacher samples one answer (temperature 0.7, as
  the rollouts) to each of ``--pool`` training prompts, then the student is fine-tuned on them (cross-entropy on the
  completion tokens, EOS included; batch 8, AdamW at lr 1e-4, cosine to 0). Two runs from one generation: ``--steps``
  steps (equal steps), then as many steps as fit in ``--seconds`` (equal time: the generation's time counts), each
  with its own full schedule.
- ``eval``: greedy accuracy on the held-out prompts (:func:`sead.bench.real_pair.evaluate_pair`), with each
  prompt's verdict.
- ``mechanisms``: :func:`sead.bench.real.mechanisms.measure_real`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

from sead.utils.jsonl import read_jsonl

__all__ = ["LR", "METHOD_OVERRIDES", "build_parser", "dispatch", "main", "sft_batch", "sft_runs", "train_method"]

#: The recipe's learning rate (recipes/smollm2-prune-distill.yaml), for every method and the SFT baseline.
LR = 1e-4
#: SEAD without its curriculum: the curriculum needs a difficulty pre-pass of the student (``sead difficulty``:
#: 8 rollouts per prompt), which would cost more than a short run's training here; the zones and the anneal are on.
METHOD_OVERRIDES = {"opd": {}, "sead": {"curriculum": False}, "sgopd": {}}


def train_method(method: str, seed: int, steps: int, student: str, teacher: str, data: str, out: str,
                 save_steps: list[int]) -> dict:  # fmt: skip
    """Train ``method`` for ``steps`` steps; the student saved at each of ``save_steps`` (``out/step-N``)."""
    from transformers import AutoTokenizer, TrainerCallback

    from sead.data.datasets import load_train_dataset
    from sead.training.config import OPDConfig
    from sead.training.trainer import OPDTrainer

    saved: dict[str, dict] = {}

    class Save(TrainerCallback):
        def __init__(self):
            self.start, self.paused, self.logs = 0.0, 0.0, []

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, processing_class=None, **kw):
            if state.global_step in save_steps:
                t = time.perf_counter()
                path = Path(out) / f"step-{state.global_step}"
                model.save_pretrained(path)
                tok.save_pretrained(path)
                saved[str(state.global_step)] = {"dir": str(path), "seconds": t - self.start - self.paused}
                self.paused += time.perf_counter() - t

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append({"step": state.global_step, **{k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}})

    tok = AutoTokenizer.from_pretrained(student, padding_side="left")
    cfg = OPDConfig(
        output_dir=out, method=method, max_steps=steps, per_device_train_batch_size=8, max_completion_length=24,
        temperature=0.7, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, use_cpu=True, bf16=False,
        activation_checkpointing=False, report_to=[], save_strategy="no", logging_steps=5, disable_tqdm=True,
        seed=seed, **METHOD_OVERRIDES[method],
    )  # fmt: skip
    clock = Save()
    trainer = OPDTrainer(student, teacher, args=cfg, train_dataset=load_train_dataset(data), processing_class=tok,
                         callbacks=[clock])  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0 - clock.paused
    return {"method": method, "seed": seed, "steps": steps, "seconds": seconds, "checkpoints": saved,
            "overrides": METHOD_OVERRIDES[method], "log": clock.logs}  # fmt: skip


def _teacher_answers(teacher: str, prompts: list, seed: int, max_new_tokens: int = 24, batch: int = 64) -> list[str]:
    """One answer of ``teacher`` to each prompt, sampled at temperature 0.7 (full vocabulary)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(teacher, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    torch.manual_seed(seed)
    answers = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            enc = tok.apply_chat_template(prompts[start : start + batch], add_generation_prompt=True, padding=True,
                                          return_tensors="pt", return_dict=True)  # fmt: skip
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7, top_k=0,
                                 top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
            answers += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [a.strip() for a in answers]


def sft_batch(tok, prompts: list, answers: list[str]) -> dict:
    """Right-padded ``input_ids``/``attention_mask``/``labels``; only the answer and its EOS are labelled."""
    ids, labels = [], []
    for prompt, answer in zip(prompts, answers):
        p = list(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        c = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids.append(p + c)
        labels.append([-100] * len(p) + c)
    L = max(map(len, ids))
    input_ids_BL = torch.full((len(ids), L), tok.pad_token_id)
    labels_BL = torch.full((len(ids), L), -100)
    mask_BL = torch.zeros((len(ids), L), dtype=torch.long)
    for i, (x, y) in enumerate(zip(ids, labels)):
        input_ids_BL[i, : len(x)], labels_BL[i, : len(y)], mask_BL[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": input_ids_BL, "attention_mask": mask_BL, "labels": labels_BL}


def _sft(student: str, tok, prompts: list, answers: list[str], steps: int, seed: int, out: Path) -> dict:
    """``steps`` AdamW steps of batch 8 over the pool (reshuffled each epoch), lr cosine from :data:`LR` to 0."""
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(student)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=steps)
    order, rng, losses, times = [], random.Random(seed), [], []
    t0 = time.perf_counter()
    for step in range(steps):
        while len(order) < 8:
            epoch = list(range(len(prompts)))
            rng.shuffle(epoch)
            order += epoch
        pick, order = order[:8], order[8:]
        loss = model(**sft_batch(tok, [prompts[i] for i in pick], [answers[i] for i in pick])).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"SFT loss is {float(loss)} at step {step}: stopping (the learning rate is too high?)")
        loss.backward()
        opt.step()
        schedule.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"dir": str(out), "steps": steps, "train_seconds": seconds, "step_seconds": times,
            "loss_first": losses[:3], "loss_last": losses[-3:]}  # fmt: skip


def sft_runs(seed: int, steps: int, seconds: float, pool: int, student: str, teacher: str, data: str, out: str) -> dict:
    """The SFT baseline at equal steps (``steps``) and at equal time (``seconds``, generation included)."""
    from transformers import AutoTokenizer

    rows = read_jsonl(data)
    random.Random(seed).shuffle(rows)
    prompts = [r["prompt"] for r in rows[:pool]]
    t0 = time.perf_counter()
    answers = _teacher_answers(teacher, prompts, seed)
    gen_seconds = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(student, padding_side="right")
    same_steps = _sft(student, tok, prompts, answers, steps, seed, Path(out) / f"step-{steps}")
    per_step = sorted(b - a for a, b in zip([0.0] + same_steps["step_seconds"], same_steps["step_seconds"]))
    per_step = per_step[len(per_step) // 2]
    time_steps = max(steps, int((seconds - gen_seconds) / per_step))
    same_time = _sft(student, tok, prompts, answers, time_steps, seed, Path(out) / "equal-time")
    for run in (same_steps, same_time):
        run["seconds"] = gen_seconds + run["train_seconds"]  # sequence-level distillation pays the generation
        del run["step_seconds"]
    return {"method": "sft", "seed": seed, "pool": pool, "generation_seconds": gen_seconds, "budget_seconds": seconds,
            "equal_steps": same_steps, "equal_time": same_time, "example_answers": answers[:3]}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sead.bench.real.worker")
    sub = p.add_subparsers(dest="what", required=True)
    for name in ("train", "sft", "mechanisms"):
        q = sub.add_parser(name)
        q.add_argument("--seed", type=int, required=True)
        q.add_argument("--student", required=True)
        q.add_argument("--teacher", required=True)
        q.add_argument("--data", required=True, help="training prompts (JSON lines: prompt, answer)")
        q.add_argument("--threads", type=int, default=1)
        if name in ("train", "sft"):
            q.add_argument("--steps", type=int, required=True)
            q.add_argument("--out", required=True)
    sub.choices["train"].add_argument("--method", choices=sorted(METHOD_OVERRIDES), required=True)
    sub.choices["train"].add_argument("--save-steps", default="", help="comma-separated steps to save the student at")
    sub.choices["sft"].add_argument("--seconds", type=float, required=True, help="the equal-time run's budget")
    sub.choices["sft"].add_argument("--pool", type=int, required=True, help="training prompts the teacher answers")
    sub.choices["mechanisms"].add_argument("--prompts", type=int, default=128)
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True, help="held-out prompts")
    e.add_argument("--limit", type=int, default=None, help="the first LIMIT prompts only")
    e.add_argument("--threads", type=int, default=1)
    sub.add_parser("serve", help="run jobs (one JSON list of arguments per stdin line) until stdin closes")
    return p


def dispatch(a) -> dict:
    torch.set_num_threads(a.threads)
    if a.what == "train":
        save = sorted({int(x) for x in a.save_steps.split(",") if x.strip()} | {a.steps})
        return train_method(a.method, a.seed, a.steps, a.student, a.teacher, a.data, a.out, save)
    if a.what == "sft":
        return sft_runs(a.seed, a.steps, a.seconds, a.pool, a.student, a.teacher, a.data, a.out)
    if a.what == "eval":
        from sead.bench.real_pair import evaluate_pair

        return evaluate_pair(a.model, None, a.data, limit=a.limit)
    from sead.bench.real.mechanisms import measure_real

    return measure_real(a.student, a.teacher, a.data, num_prompts=a.prompts, seed=a.seed)


def main(argv=None) -> int:
    from sead.experiments.worker import worker_main

    return worker_main(build_parser(), dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
