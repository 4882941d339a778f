"""What the curriculum feeds the student: ``python -m sead.bench.profiles.quality [SEED [VARIANT ...]]``.

Runs one seed of the quality benchmark (``sead bench quality``: same prepared student, same data, same
steps) for the given variants (default ``opd curriculum sead``) and keeps the training logs. Prints a
markdown report:

- the training prompts' difficulty distribution (``d = 1 - pass rate`` of the initial student);
- per variant, the curriculum gate ``c(t)`` and open pool at a few steps, the share of the training
  draws that came from each difficulty value (draws are uniform over the open prompts, so the share
  at step ``t`` is ``#{d_i = v, d_i <= c(t)} / #{d_i <= c(t)}``; without the curriculum it is the
  dataset's share), the student's rollout pass rate early and late, and the final accuracy by level.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch


def draw_shares(difficulties: list[float], gates: list[float] | None) -> dict[float, float]:
    """Expected share of draws per difficulty value over training, given the gate at every step
    (``None``: no curriculum, every prompt open)."""
    values = sorted(set(difficulties))
    counts = Counter(difficulties)
    if not gates:
        n = len(difficulties)
        return {v: counts[v] / n for v in values}
    shares = dict.fromkeys(values, 0.0)
    for g in gates:
        open_counts = {v: counts[v] for v in values if v <= g}
        total = sum(open_counts.values())
        for v, c in open_counts.items():
            shares[v] += c / total / len(gates)
    return shares


def main(argv: list[str]) -> None:
    from sead.bench.suite import QUALITY_VARIANTS
    from sead.experiments.runs import run_variant
    from sead.experiments.seeds import prepare_demo
    from sead.experiments.settings import SIZES

    seed = int(argv[0]) if argv else 0
    variants = argv[1:] or ["opd", "curriculum", "sead"]
    torch.set_num_threads(1)
    size = dict(SIZES["full"])
    data = prepare_demo(size, seed, quick=False, cache_dir=None, progress=True)
    diff = [round(float(d), 4) for d in data.train["difficulty"]]
    values = sorted(set(diff))
    print(f"# Quality profile, seed {seed}, {size['steps']} steps of {size['batch']} prompts\n")
    print("Training prompts by difficulty d (1 - pass rate of the initial student over "
          f"{size['difficulty_rollouts']} rollouts):\n")
    print("| d | " + " | ".join(f"{v:g}" for v in values) + " |")
    print("|---|" + "---|" * len(values))
    print("| share of prompts | " + " | ".join(f"{100 * diff.count(v) / len(diff):.0f}%" for v in values) + " |\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in variants:
            res = run_variant(name, data, size, Path(tmp) / name, seed, size["steps"], dict(QUALITY_VARIANTS[name]),
                              progress=True)
            hist = [h for h in res["log_history"] if "curriculum/gate" in h or "rollout/pass_rate" in h]
            gates = [h["curriculum/gate"] for h in hist if "curriculum/gate" in h]
            pools = {h["step"]: h["curriculum/open_pool"] for h in hist if "curriculum/open_pool" in h}
            rates = [h["rollout/pass_rate"] for h in hist if "rollout/pass_rate" in h]
            shares = draw_shares(diff, gates or None)
            q = len(rates) // 5 or 1
            marks = [s for s in (1, 25, 50, 75, 100, 120) if s in pools]
            rows.append((name, shares, statistics.mean(rates[:q]) if rates else float("nan"),
                         statistics.mean(rates[-q:]) if rates else float("nan"),
                         ", ".join(f"{s}: {int(pools[s])}" for s in marks) or "all open",
                         res["accuracy"], res["accuracy_by_level"]))
    print("| variant | share of draws per d (" + " / ".join(f"{v:g}" for v in values)
          + ") | rollout pass rate, first / last fifth | open prompts at step | final acc | acc by level |")
    print("|---|---|---|---|---|---|")
    for name, shares, early, late, pools, acc, levels in rows:
        print(f"| {name} | " + " / ".join(f"{100 * shares.get(v, 0):.0f}%" for v in values)
              + f" | {100 * early:.0f}% / {100 * late:.0f}% | {pools} | {100 * acc:.1f}% | "
              + "/".join(f"{100 * levels[k]:.0f}" for k in sorted(levels)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
