"""SG-OPD and SEAD taken apart on the real pair (BENCHMARKS.md, "Real pair: what the methods' numbers say").

``python benchmarks/diagnosis/real_sgopd_parts.py gate|mixing|sead-no-fkl --seed 0 --steps 16 --out FILE.json``: one
method with a component removed, the settings of ``sead bench real`` (sead.bench.real.worker.train_method), then the
greedy accuracy on the 320 held-out prompts. ``gate``: SG-OPD's sign gate (consensus lambda 1.8) without the teacher's
rollouts mixed in; ``mixing``: the mixed teacher rollouts with the gate neutral (lambda 1 on consensus and conflict:
the teacher's own target everywhere); ``sead-no-fkl``: SEAD (no curriculum, as the benchmark runs it) with the FKL
zone's weight at 0 (``fkl_zone_lambda: 0``: skip zone and RKL zone only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch

from sead.bench.real import prepare_pair
from sead.bench.real import worker as W
from sead.bench.real_pair import evaluate_pair

PARTS = {"gate": ("sgopd", {"teacher_mixing": False}), "mixing": ("sgopd", {"lambda_consensus": 1.0}),
         "sead-no-fkl": ("sead", {"curriculum": False, "fkl_zone_lambda": 0.0})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("part", choices=sorted(PARTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    pair = prepare_pair()
    method, overrides = PARTS[a.part]
    W.METHOD_OVERRIDES[method] = overrides
    run = W.train_method(method, a.seed, a.steps, pair["student"], pair["teacher"], pair["train"],
                         tempfile.mkdtemp(prefix=f"{a.part}-"), [a.steps])  # fmt: skip
    score = evaluate_pair(run["checkpoints"][str(a.steps)]["dir"], None, pair["test"])
    res = {"part": a.part, "method": method, "overrides": overrides, "seed": a.seed, "steps": a.steps, "train_seconds": run["seconds"],
           "accuracy": score["greedy_accuracy"], "strict_accuracy": score["strict_accuracy"], "examples": score["examples"],
           "pass_rate_log": [(x["step"], x.get("rollout/pass_rate")) for x in run["log"]],
           "command": "python benchmarks/diagnosis/real_sgopd_parts.py " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
