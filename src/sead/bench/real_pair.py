"""Measurements of a real pair (BENCHMARKS.md, "Real checkpoints"): SmolLM2-135M-Instruct and a depth-pruned copy.

``python -m sead.bench.real_pair eval --model DIR [--teacher DIR] --data FILE.jsonl --out FILE.json``
    greedy accuracy (the project verifier, and strictly: a closed ``\\boxed{}`` holding the answer) of ``--model`` on
    the chat prompts of ``--data``, per ``split`` and ``op`` when the rows have them, and with ``--teacher`` its
    reverse KL to the teacher on its own greedy rollouts: the token mean of
    ``KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v))`` (under the student's distribution, the full
    49,152-token vocabulary, fp32) over the completion tokens, EOS included.
``python -m sead.bench.real_pair curve --run DIR --data FILE.jsonl --start DIR --teacher DIR --out FILE.json``
    the same greedy accuracy for ``--start`` (the student before training), every ``checkpoint-N`` of the training
    run ``--run`` (save the last step as a checkpoint too: the final model is not evaluated apart), and ``--teacher``; each checkpoint's wall time is its directory's time less the
    run's start (``--started``, a Unix time; default: the time of the run's first file); writes the results and
    ``FILE.png`` (accuracy against step and against training time, the teacher and the half-way line drawn).
``python -m sead.bench.real_pair step --student DIR --teacher DIR --data FILE.jsonl --rollouts hf|vllm --out FILE``
    the median time of an optimizer step of recipes/smollm2-prune-distill.yaml's settings (vanilla OPD, 8 rollouts of
    at most 24 tokens) with HF generate or TRL's vLLM colocate engine, and the process's peak memory (max RSS).
The fused loss at the real models' shapes (SmolLM2: V = 49,152, hidden 576; Gemma 3 270M: V = 262,144, hidden 640)
is part of ``sead bench loss`` (:data:`sead.bench.suite.LOSS_SHAPES_FULL`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from sead.utils.jsonl import read_jsonl

__all__ = ["accuracy_curve", "evaluate_pair", "plot_curve", "reference_lines", "step_time"]


def _rows(path: str, limit: int | None = None) -> list[dict]:
    rows = read_jsonl(path)
    return rows[:limit] if limit else rows


def evaluate_pair(model_dir: str, teacher_dir: str | None, data: str, max_new_tokens: int = 24, batch: int = 64,
                  limit: int | None = None) -> dict:  # fmt: skip
    """Greedy accuracy of ``model_dir`` on ``data`` (the project verifier; ``strict_accuracy``: its ``boxed`` mode, the
    last closed ``\\boxed{}`` holding the answer, no fallback to a bare number), per value of the rows' ``split`` and ``op`` columns when present, and, when ``teacher_dir``
    is given, its reverse KL to the teacher (see the module doc). Batched (left padding, KV cache)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sead.grading.verifier import grade

    rows = _rows(data, limit)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    teacher = None
    if teacher_dir is not None:
        same = Path(teacher_dir).resolve() == Path(model_dir).resolve()
        teacher = model if same else AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    kl_sum, tokens, texts, correct, strict = 0.0, 0, [], [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            part = rows[start : start + batch]
            enc = tok.apply_chat_template([r["prompt"] for r in part], add_generation_prompt=True, padding=True,
                                          return_tensors="pt", return_dict=True)  # fmt: skip
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=eos)  # fmt: skip
            P = enc["input_ids"].shape[1]
            comp = out[:, P:]
            # completion mask: up to and including the first EOS
            is_eos = comp == eos
            after = (is_eos.cumsum(1) - is_eos.long()) > 0
            mask_BT = (~after).long()
            tokens += int(mask_BT.sum())
            if teacher is not None:
                attn = torch.cat([enc["attention_mask"], mask_BT], 1)
                z_s = model(input_ids=out, attention_mask=attn).logits[:, P - 1 : -1].float()
                z_t = teacher(input_ids=out, attention_mask=attn).logits[:, P - 1 : -1].float()
                logp_s, logp_t = torch.log_softmax(z_s, -1), torch.log_softmax(z_t, -1)
                kl_BT = (logp_s.exp() * (logp_s - logp_t)).sum(-1)  # KL(p_S || p_T): under the student
                kl_sum += float((kl_BT * mask_BT).sum())
            for row, ids, m in zip(part, comp, mask_BT):
                text = tok.decode(ids[m.bool()], skip_special_tokens=True)
                texts.append(text)
                correct.append(bool(grade(text, row["answer"]).correct))
                strict.append(bool(grade(text, row["answer"], mode="boxed").correct))
    by: dict[str, list[bool]] = {}
    for row, ok in zip(rows, correct):
        for key in ("split", "op"):
            if key in row:
                by.setdefault(f"{key}={row[key]}", []).append(ok)
    return {
        "model": model_dir, "teacher": teacher_dir, "data": data, "n": len(rows),
        "greedy_accuracy": sum(correct) / len(rows), "strict_accuracy": sum(strict) / len(rows),
        "accuracy_by": {k: sum(v) / len(v) for k, v in sorted(by.items())},
        "reverse_kl": kl_sum / tokens if teacher is not None and tokens else None,
        "completion_tokens": tokens, "correct": [int(c) for c in correct],
        "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(), "examples": texts[:4],
    }  # fmt: skip


def accuracy_curve(run_dir: str, data: str, start: str, teacher: str, started: float | None = None,
                   limit: int | None = None) -> dict:  # fmt: skip
    """Greedy accuracy (:func:`evaluate_pair`) of ``start``, of each ``checkpoint-N`` in ``run_dir`` and of
    ``teacher``, with each checkpoint's step and wall seconds since ``started`` (module doc)."""
    run = Path(run_dir)
    checkpoints = sorted((int(p.name.split("-")[1]), p) for p in run.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    if not checkpoints:
        raise SystemExit(f"{run_dir}: no checkpoint-N directory; train with save_strategy: steps")
    if started is None:
        started = min(p.stat().st_mtime for p in run.iterdir())
    scores = {name: evaluate_pair(path, None, data, limit=limit) for name, path in (("start", start), ("teacher", teacher))}
    points = [{"step": 0, "seconds": 0.0, **_brief(scores["start"])}]
    for step, path in checkpoints:
        seconds = (path / "config.json").stat().st_mtime - started
        points.append({"step": step, "seconds": seconds, **_brief(evaluate_pair(str(path), None, data, limit=limit))})
    start_acc, teacher_acc = scores["start"]["greedy_accuracy"], scores["teacher"]["greedy_accuracy"]
    for point in points:
        point["gap_closed"] = (point["accuracy"] - start_acc) / (teacher_acc - start_acc) if teacher_acc > start_acc else None
    return {"run": run_dir, "data": data, "start": _brief(scores["start"]), "teacher": _brief(scores["teacher"]),
            "points": points}  # fmt: skip


def _brief(result: dict) -> dict:
    return {"accuracy": result["greedy_accuracy"], "strict_accuracy": result["strict_accuracy"], "n": result["n"],
            "accuracy_by": result["accuracy_by"], "eval_seconds": result["seconds"], "examples": result["examples"]}  # fmt: skip


def reference_lines(ax, start: float, teacher: float) -> None:
    """The teacher's accuracy (dashed) and half-way from ``start`` to it (dotted), labelled, and a light grid."""
    ax.axhline(100 * teacher, ls="--", color="gray", lw=1)
    ax.text(0, 100 * teacher, " teacher", va="bottom", color="gray", fontsize=8)
    ax.axhline(100 * (start + teacher) / 2, ls=":", color="gray", lw=1)
    ax.text(0, 100 * (start + teacher) / 2, " half-way", va="bottom", color="gray", fontsize=8)
    ax.grid(alpha=0.3)


def plot_curve(curve: dict, path: str) -> None:
    """Accuracy against step and against training time, side by side (teacher and the half-way line dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, start, teacher = curve["points"], curve["start"]["accuracy"], curve["teacher"]["accuracy"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, label in ((axes[0], "step", "optimizer step"), (axes[1], "seconds", "training time (min)")):
        xs = [p[key] / (60 if key == "seconds" else 1) for p in points]
        ax.plot(xs, [100 * p["accuracy"] for p in points], marker="o", label="student (vanilla OPD)")
        reference_lines(ax, start, teacher)
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"greedy accuracy (%), {points[0]['n']} held-out prompts")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Prune, then distill: SmolLM2-135M-Instruct (30 layers) -> 28 layers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_time(student: str, teacher: str, data: str, rollouts: str, steps: int = 4, out_dir: str = "/tmp/sead-real-step") -> dict:
    """Median optimizer-step time and peak memory of the recipe's settings with ``rollouts`` = ``hf`` or ``vllm``."""
    from transformers import AutoTokenizer, TrainerCallback

    from sead.data.datasets import load_train_dataset
    from sead.training.config import OPDConfig
    from sead.training.trainer import OPDTrainer

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t)

    vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3} if rollouts == "vllm" else {}
    cfg = OPDConfig(
        output_dir=out_dir, method="opd", max_steps=steps, per_device_train_batch_size=8, max_completion_length=24,
        learning_rate=1e-4, lr_scheduler_type="constant", use_cpu=True, bf16=False, activation_checkpointing=False,
        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, **vllm,
    )  # fmt: skip
    clock = Clock()
    start = time.perf_counter()
    trainer = OPDTrainer(student, teacher, args=cfg, train_dataset=load_train_dataset(data),
                         processing_class=AutoTokenizer.from_pretrained(student, padding_side="left"),
                         callbacks=[clock])  # fmt: skip
    built = time.perf_counter()
    trainer.train()
    times = clock.times[1:] or clock.times  # the first step warms up
    return {
        "rollouts": rollouts, "steps": steps, "init_s": built - start, "step_times_s": clock.times,
        "median_step_s": sorted(times)[len(times) // 2], "peak_rss_mb": _max_rss_mb(),
        "threads": torch.get_num_threads(),
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sead.bench.real_pair")
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--teacher", default=None, help="also the student's reverse KL to this teacher")
    e.add_argument("--data", required=True)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--max-new-tokens", type=int, default=24)
    e.add_argument("--out", required=True)
    c = sub.add_parser("curve")
    c.add_argument("--run", required=True)
    c.add_argument("--data", required=True)
    c.add_argument("--start", required=True)
    c.add_argument("--teacher", required=True)
    c.add_argument("--started", type=float, default=None)
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--out", required=True)
    s = sub.add_parser("step")
    s.add_argument("--student", required=True)
    s.add_argument("--teacher", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--rollouts", choices=["hf", "vllm"], required=True)
    s.add_argument("--steps", type=int, default=4)
    s.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.what == "eval":
        res = evaluate_pair(a.model, a.teacher, a.data, max_new_tokens=a.max_new_tokens, limit=a.limit)
    elif a.what == "curve":
        res = accuracy_curve(a.run, a.data, a.start, a.teacher, a.started, a.limit)
        plot_curve(res, str(Path(a.out).with_suffix(".png")))
    else:
        res = step_time(a.student, a.teacher, a.data, a.rollouts, a.steps)
    from sead.bench.common import machine_facts

    res["machine"] = machine_facts()
    res["command"] = "python -m sead.bench.real_pair " + " ".join(sys.argv[1:] if argv is None else argv)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
