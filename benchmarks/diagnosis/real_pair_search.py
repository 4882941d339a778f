"""Search for a real (teacher, pruned student) pair on which distillation visibly raises accuracy (issue 31).

A first exploration tool, not the final benchmark. Four subcommands, all single-threaded by default (``--threads``):

``python benchmarks/diagnosis/real_pair_search.py data --out DIR``
    writes ``DIR/train.jsonl`` and ``DIR/test.jsonl``: chat prompts (one worked example, as sead.data.additions) asking
    one-digit sums and products ``a op b`` (a, b in 1..9) in several phrasings (:data:`TEMPLATES`). Per operation a
    fixed random 24 of the 81 pairs and 3 of the 8 phrasings are held out. train = train pairs x train phrasings;
    test = every prompt with a held-out pair or a held-out phrasing (or both), subsampled to ``--num-test`` (default
    320). Each test row says which (``split``: ``pair``, ``template`` or ``both``). No test prompt string is in train.
``python benchmarks/diagnosis/real_pair_search.py eval --model DIR --data FILE [--batch 64] [--out FILE.json]``
    batched greedy accuracy (left padding, KV cache, stops when every row hit EOS), per operation and per split.
``python benchmarks/diagnosis/real_pair_search.py heal --student DIR --teacher DIR --data train.jsonl --out DIR``
    a short "healing" SFT: the teacher's greedy answers to training prompts, cross-entropy on the completion tokens
    of the student (plain AdamW loop), then save_pretrained to ``--out``.
``python benchmarks/diagnosis/real_pair_search.py prune --model DIR --drop 25,26,27 --out DIR``
    ``sead prune --keep`` with the complement of ``--drop``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

# the worked examples (the first search used them without a system message)
from sead.data.phrasings import EXAMPLES

# 8 phrasings per operation; the last 3 of each are held out (never trained on).
TEMPLATES = {
    "+": [
        "What is {a} + {b}?",
        "Compute {a} + {b}.",
        "What is the sum of {a} and {b}?",
        "Add {a} and {b}.",
        "How much is {a} plus {b}?",
        "Calculate {a}+{b}.",
        "What do you get if you add {b} to {a}?",
        "Find the value of {a} + {b}.",
    ],
    "*": [
        "What is {a} * {b}?",
        "Compute {a} * {b}.",
        "What is the product of {a} and {b}?",
        "Multiply {a} by {b}.",
        "How much is {a} times {b}?",
        "Calculate {a}*{b}.",
        "What do you get if you multiply {a} by {b}?",
        "Find the value of {a} * {b}.",
    ],
}
N_HELD_TEMPLATES = 3
N_HELD_PAIRS = 24
PAIRS = [(a, b) for a in range(1, 10) for b in range(1, 10)]


def _row(op: str, ti: int, a: int, b: int, split: str) -> dict:
    q = TEMPLATES[op][ti].format(a=a, b=b)
    ans = a + b if op == "+" else a * b
    return {"prompt": [*EXAMPLES[op], {"role": "user", "content": q}], "answer": str(ans), "op": op,
            "template": ti, "a": a, "b": b, "split": split}  # fmt: skip


def make_data(out: str, num_test: int = 320, seed: int = 31) -> dict:
    rng = random.Random(seed)
    train, test = [], []
    for op in ("+", "*"):
        held_pairs = set(rng.sample(PAIRS, N_HELD_PAIRS))
        n_t = len(TEMPLATES[op])
        held_t = set(range(n_t - N_HELD_TEMPLATES, n_t))
        for ti in range(n_t):
            for a, b in PAIRS:
                hp, ht = (a, b) in held_pairs, ti in held_t
                if not hp and not ht:
                    train.append(_row(op, ti, a, b, "train"))
                else:
                    test.append(_row(op, ti, a, b, "both" if hp and ht else ("pair" if hp else "template")))
    rng.shuffle(train)
    rng.shuffle(test)
    test = test[:num_test]
    train_q = {json.dumps(r["prompt"]) for r in train}
    assert not any(json.dumps(r["prompt"]) in train_q for r in test)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (o / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    counts = {s: sum(r["split"] == s for r in test) for s in ("pair", "template", "both")}
    return {"train": len(train), "test": len(test), "test_splits": counts}


def _rows(path: str, limit: int | None = None) -> list[dict]:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    return rows[:limit] if limit else rows


@torch.no_grad()
def greedy(model, tok, prompts: list, max_new_tokens: int = 24, batch: int = 64) -> list[str]:
    """Greedy completions (text up to the first EOS), batched with left padding and the KV cache."""
    texts = []
    for s in range(0, len(prompts), batch):
        enc = tok.apply_chat_template(prompts[s : s + batch], add_generation_prompt=True, padding=True,
                                      return_tensors="pt", return_dict=True)  # fmt: skip
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, use_cache=True)  # fmt: skip
        texts += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


def evaluate(model_dir: str, data: str, batch: int = 64, limit: int | None = None, max_new_tokens: int = 24,
             model=None, tok=None) -> dict:  # fmt: skip
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sead.grading.verifier import grade

    rows = _rows(data, limit)
    if tok is None:  # a trainer checkpoint may lack the tokenizer files: fall back to the run's output dir
        tdir = model_dir if (Path(model_dir) / "tokenizer_config.json").exists() else str(Path(model_dir).parent)
        tdir = tdir if (Path(tdir) / "tokenizer_config.json").exists() else "/work/results/real31/teacher"
        tok = AutoTokenizer.from_pretrained(tdir, padding_side="left")
    tok.padding_side = "left"
    model = model or AutoModelForCausalLM.from_pretrained(model_dir).eval()
    t0 = time.perf_counter()
    texts = greedy(model, tok, [r["prompt"] for r in rows], max_new_tokens, batch)
    secs = time.perf_counter() - t0
    ok = [bool(grade(t, r["answer"]).correct) for t, r in zip(texts, rows)]
    # strict: a closed \boxed{} holding exactly the answer (the verifier above falls back to the last number)
    strict = [re.search(r"\\boxed\{\s*(-?\d+)\s*\}", t) is not None
              and re.search(r"\\boxed\{\s*(-?\d+)\s*\}", t).group(1) == r["answer"] for t, r in zip(texts, rows)]
    by = {}
    for key in ("op", "split"):
        for v in sorted({r[key] for r in rows}):
            idx = [i for i, r in enumerate(rows) if r[key] == v]
            by[f"{key}={v}"] = round(sum(ok[i] for i in idx) / len(idx), 4)
    wrong = [(rows[i]["prompt"][-1]["content"], texts[i]) for i in range(len(rows)) if not ok[i]][:4]
    right = [(rows[i]["prompt"][-1]["content"], texts[i]) for i in range(len(rows)) if ok[i]][:2]
    return {"model": model_dir, "data": data, "n": len(rows), "accuracy": sum(ok) / len(rows),
            "strict_boxed_accuracy": sum(strict) / len(rows), "by": by, "texts": texts,
            "seconds": round(secs, 1), "batch": batch, "threads": torch.get_num_threads(),
            "wrong_examples": wrong, "right_examples": right}  # fmt: skip


def heal(student: str, teacher: str, data: str, out: str, steps: int = 60, batch: int = 8, lr: float = 5e-5,
         seed: int = 0, max_new_tokens: int = 24) -> dict:  # fmt: skip
    """SFT of ``student`` on ``teacher``'s greedy answers to the training prompts (only completion tokens count)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sead.bench.real.worker import sft_batch

    torch.manual_seed(seed)
    rows = _rows(data)
    rng = random.Random(seed)
    need = steps * batch
    picked = [rows[rng.randrange(len(rows))] for _ in range(need)]
    tok = AutoTokenizer.from_pretrained(teacher, padding_side="left")
    t0 = time.perf_counter()
    cache = Path(data).with_suffix(f".teacher-greedy-{steps}x{batch}-s{seed}.json")
    if cache.exists():  # the teacher's answers to the same draw (several students heal on one generation)
        answers = json.loads(cache.read_text())
    else:
        tmodel = AutoModelForCausalLM.from_pretrained(teacher).eval()
        answers = greedy(tmodel, tok, [r["prompt"] for r in picked], max_new_tokens, 64)
        cache.write_text(json.dumps(answers))
        del tmodel
    t_gen = time.perf_counter() - t0
    model = AutoModelForCausalLM.from_pretrained(student)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    tok.padding_side = "right"
    losses = []
    for s in range(steps):
        part = picked[s * batch : (s + 1) * batch]
        ans = answers[s * batch : (s + 1) * batch]
        loss = model(**sft_batch(tok, [r["prompt"] for r in part], ans)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(out)
    tok.padding_side = "left"
    tok.save_pretrained(out)
    return {"student": student, "teacher": teacher, "out": out, "steps": steps, "batch": batch, "lr": lr,
            "teacher_gen_s": round(t_gen, 1), "seconds": round(time.perf_counter() - t0, 1),
            "loss_first": losses[:3], "loss_last": losses[-3:], "example_answer": answers[0]}  # fmt: skip


def prune(model: str, drop: str, out: str, n_layers: int = 30) -> dict:
    dropped = {int(x) for x in drop.split(",") if x}
    keep = ",".join(str(i) for i in range(n_layers) if i not in dropped)
    cmd = [str(Path(sys.executable).parent / "sead"), "prune", "--model", model, "--keep", keep, "--out", out]
    subprocess.run(cmd, check=True)
    return {"model": model, "drop": sorted(dropped), "keep": keep, "out": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="real_pair_search.py")
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("data")
    d.add_argument("--out", required=True)
    d.add_argument("--num-test", type=int, default=320)
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True, nargs="+")
    e.add_argument("--data", required=True)
    e.add_argument("--batch", type=int, default=64)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--out", default=None)
    h = sub.add_parser("heal")
    h.add_argument("--student", required=True)
    h.add_argument("--teacher", required=True)
    h.add_argument("--data", required=True)
    h.add_argument("--out", required=True)
    h.add_argument("--steps", type=int, default=60)
    h.add_argument("--batch", type=int, default=8)
    h.add_argument("--lr", type=float, default=5e-5)
    r = sub.add_parser("prune")
    r.add_argument("--model", required=True)
    r.add_argument("--drop", required=True)
    r.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.what == "data":
        res = make_data(a.out, a.num_test)
    elif a.what == "eval":
        res = [evaluate(m, a.data, a.batch, a.limit) for m in a.model]
        for x in res:
            print(json.dumps({k: x[k] for k in ("model", "n", "accuracy", "strict_boxed_accuracy", "by", "seconds")}), flush=True)
        res = res if len(res) > 1 else res[0]
    elif a.what == "heal":
        res = heal(a.student, a.teacher, a.data, a.out, a.steps, a.batch, a.lr)
    else:
        res = prune(a.model, a.drop, a.out)
    if getattr(a, "out", None) and a.what == "eval":
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
