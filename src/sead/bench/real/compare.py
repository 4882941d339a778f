"""``sead bench real``: the methods compared on real pretrained weights (BENCHMARKS.md, "Real pair: the methods").

The pair of ``recipes/smollm2-prune-distill.yaml``: SmolLM2-135M-Instruct (``sead fetch``, cached) teaches its copy
without layers 26-27 (``sead prune --drop 26,27``, cached), on :mod:`sead.data.phrasings` (798 training prompts, 320
held-out ones). From that one start, per seed: vanilla OPD, SEAD and SG-OPD for ``steps`` steps (the recipe's
settings, :mod:`sead.bench.real.worker`), and the off-policy baseline users weigh OPD against, SFT on the teacher's
sampled answers to as many training prompts as OPD's run sees (sequence-level distillation), at equal steps and at
equal time (vanilla OPD's median training time; the teacher's generation counts). Every student is evaluated greedy
on the 320 held-out prompts at ``mid`` steps and at the end; the mechanisms are measured on the start.

Two runs at a time, one torch thread each (two worker processes). Differences to vanilla OPD come with two 95%
intervals: paired over seeds (Student's t, ``S - 1`` degrees of freedom: wide with 2 seeds) and paired over the
held-out prompts (each prompt's verdict difference averaged over the seeds, t over the prompts: the test set's
sampling noise, not the seeds').
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from sead.bench.common import machine_facts
from sead.bench.stats import paired_by_prompt, paired_difference

__all__ = ["DEFAULT_STEPS", "METHODS", "bench_real", "plot_real", "prepare_pair", "real_markdown", "summarize_real"]

#: The methods trained with the trainer; ``sft`` is the off-policy baseline.
METHODS = ("opd", "sead", "sgopd")
#: Steps per run: what fits the 45-minute budget on 2 cores with 2 seeds, every run evaluated at its middle and end.
DEFAULT_STEPS = 16
TEACHER = "smollm2-135m-instruct"
DROP = (26, 27)
WORKER = "sead.bench.real.worker"


def prepare_pair(cache_dir: str | None = None) -> dict[str, str]:
    """The teacher (fetched once), the pruned student and the data files (written once), in the cache."""
    from sead.checkpoints.fetch import fetch_checkpoint
    from sead.checkpoints.prune import prune_checkpoint
    from sead.data.phrasings import write_files
    from sead.utils.cache import default_cache_dir

    teacher = fetch_checkpoint(TEACHER, cache_dir, quiet=False)
    root = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "real"
    student = root / f"{TEACHER}-drop{'-'.join(map(str, DROP))}"
    if not (student / "config.json").exists():
        prune_checkpoint(str(teacher), str(student), drop=list(DROP))
    train, test = write_files(root / "data")
    return {"teacher": str(teacher), "student": str(student), "train": str(train), "test": str(test)}


def bench_real(steps: int = DEFAULT_STEPS, seeds: int = 2, mid: int | None = None, jobs: int = 2,
               cache_dir: str | None = None, out_dir: str | None = None, progress: bool = True,
               pair: dict[str, str] | None = None, limit: int | None = None, mechanism_prompts: int = 128) -> dict[str, Any]:  # fmt: skip
    """Run the benchmark (module doc); the results as :func:`summarize_real` reads them. ``pair`` (``teacher``,
    ``student``, ``train``, ``test``) replaces the prepared pair, ``limit`` evaluates the first ``limit`` held-out
    prompts only (both for tests)."""
    import tempfile

    from sead.experiments.workers import run_workers

    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    mid = mid or steps // 2
    pair = pair or prepare_pair(cache_dir)
    out = Path(out_dir or tempfile.mkdtemp(prefix="sead-bench-real-"))
    t0 = time.perf_counter()
    common = ["--student", pair["student"], "--teacher", pair["teacher"], "--data", pair["train"]]

    def evaluate(key: str, model: str) -> tuple[str, list[str]]:
        return key, ["eval", "--model", model, "--data", pair["test"], *(["--limit", str(limit)] if limit else [])]

    first = [evaluate("teacher", pair["teacher"]), evaluate("start", pair["student"]),
             ("mechanisms", ["mechanisms", "--seed", "0", "--prompts", str(mechanism_prompts), *common])]  # fmt: skip
    for seed in range(seeds):
        for method in METHODS:
            first.append((f"{method}/{seed}", ["train", "--method", method, "--seed", str(seed), "--steps", str(steps),
                                               "--save-steps", str(mid), "--out", str(out / f"{method}-{seed}"), *common]))  # fmt: skip
    done = _checked(run_workers(first, jobs, progress, "real: runs", timeout=None, module=WORKER))
    budget = statistics.median(done[f"opd/{s}"]["seconds"] for s in range(seeds))
    sft = [(f"sft/{s}", ["sft", "--seed", str(s), "--steps", str(steps), "--seconds", f"{budget:.1f}", "--pool",
                         str(8 * steps), "--out", str(out / f"sft-{s}"), *common]) for s in range(seeds)]  # fmt: skip
    done.update(_checked(run_workers(sft, jobs, progress, "real: sft", timeout=None, module=WORKER)))
    evals = []
    for seed in range(seeds):
        for method in METHODS:
            for step, point in done[f"{method}/{seed}"]["checkpoints"].items():
                evals.append(evaluate(f"{method}/{seed}@{step}", point["dir"]))
        for arm in ("equal_steps", "equal_time"):
            evals.append(evaluate(f"sft/{seed}@{arm}", done[f"sft/{seed}"][arm]["dir"]))
    scores = _checked(run_workers(evals, jobs, progress, "real: evaluations", timeout=None, module=WORKER))
    res = {
        "benchmark": "real", "pair": pair, "steps": steps, "mid": mid, "seeds": seeds, "jobs": jobs,
        "threads_per_job": 1, "teacher": _brief(done["teacher"]), "start": _brief(done["start"]),
        "num_test": done["start"]["n"], "mechanisms": done["mechanisms"],
        "runs": {k: v for k, v in done.items() if "/" in k}, "scores": {k: _brief(v) for k, v in scores.items()},
        "sft_budget_seconds": budget, "total_seconds": time.perf_counter() - t0, "machine": machine_facts(),
    }  # fmt: skip
    res.update(summarize_real(res))
    return res


def _checked(results: dict[str, dict]) -> dict[str, dict]:
    failed = {k: v["error"] for k, v in results.items() if "error" in v}
    if failed:
        raise RuntimeError("sead bench real: " + "; ".join(f"{k}: {e}" for k, e in failed.items()))
    return results


def _brief(r: dict) -> dict:
    return {"accuracy": r["greedy_accuracy"], "strict_accuracy": r["strict_accuracy"], "n": r["n"],
            "accuracy_by": r["accuracy_by"], "correct": r["correct"], "eval_seconds": r["seconds"],
            "examples": r["examples"]}  # fmt: skip


def _arms(res: dict) -> dict[str, dict]:
    """``{arm: {"points": [(step, seconds, [acc per seed])...], "final_key": per-seed score keys}}``."""
    seeds, steps, mid = res["seeds"], res["steps"], res["mid"]
    arms = {}
    for method in METHODS:
        pts = []
        for step in (mid, steps):
            keys = [f"{method}/{s}@{step}" for s in range(seeds)]
            secs = [res["runs"][f"{method}/{s}"]["checkpoints"][str(step)]["seconds"] for s in range(seeds)]
            pts.append({"step": step, "seconds": statistics.median(secs), "keys": keys})
        arms[method] = {"points": pts, "final": pts[-1]["keys"]}
    for arm, label in (("equal_steps", "sft"), ("equal_time", "sft_equal_time")):
        keys = [f"sft/{s}@{arm}" for s in range(seeds)]
        runs = [res["runs"][f"sft/{s}"][arm] for s in range(seeds)]
        arms[label] = {"points": [{"step": statistics.median(r["steps"] for r in runs),
                                   "seconds": statistics.median(r["seconds"] for r in runs), "keys": keys}],
                       "final": keys}  # fmt: skip
    return arms


def summarize_real(res: dict) -> dict:
    """Each arm's final accuracy (per seed, mean), the gap closed, its training time, and its paired difference to
    vanilla OPD (over seeds, and over the held-out prompts)."""
    start, teacher = res["start"]["accuracy"], res["teacher"]["accuracy"]
    scores = res["scores"]
    arms = _arms(res)
    opd_keys = arms["opd"]["final"]
    summary = {}
    for name, arm in arms.items():
        accs = [scores[k]["accuracy"] for k in arm["final"]]
        mean = statistics.mean(accs)
        row = {
            "accuracy": accs, "mean": mean, "gap_closed": (mean - start) / (teacher - start) if teacher > start else None,
            "steps": arm["points"][-1]["step"], "seconds": arm["points"][-1]["seconds"],
            "curve": [{"step": p["step"], "seconds": p["seconds"], "mean": statistics.mean(scores[k]["accuracy"] for k in p["keys"])}
                      for p in arm["points"]],
        }  # fmt: skip
        if name != "opd":
            row["vs_opd_seeds"] = paired_difference(accs, [scores[k]["accuracy"] for k in opd_keys])
            row["vs_opd_prompts"] = paired_by_prompt([scores[k]["correct"] for k in arm["final"]],
                                                     [scores[k]["correct"] for k in opd_keys])  # fmt: skip
        summary[name] = row
    return {"start_accuracy": start, "teacher_accuracy": teacher, "final": summary}


def plot_real(res: dict, path: str | Path) -> Path:
    """Mean accuracy over seeds against step and against training time per arm (teacher and half-way dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sead.bench.real_pair import reference_lines

    start, teacher = res["start_accuracy"], res["teacher_accuracy"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {"opd": ("C0", "o", "vanilla OPD"), "sead": ("C1", "s", "SEAD (no curriculum)"), "sgopd": ("C2", "^", "SG-OPD"),
              "sft": ("C3", "D", "SFT on teacher samples, equal steps"), "sft_equal_time": ("C4", "v", "SFT, equal time")}  # fmt: skip
    for ax, key, scale, label in ((axes[0], "step", 1, "optimizer step"), (axes[1], "seconds", 60, "training time (min)")):
        for name, row in res["final"].items():
            color, marker, text = styles[name]
            xs = [0] + [p[key] / scale for p in row["curve"]]
            ys = [100 * start] + [100 * p["mean"] for p in row["curve"]]
            ls = "-" if name in METHODS else "none"
            ax.plot(xs[1:] if ls == "none" else xs, ys[1:] if ls == "none" else ys, ls=ls, marker=marker, color=color, label=text)
        reference_lines(ax, start, teacher)
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"greedy accuracy (%), mean of {res['seeds']} seeds")
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="lower center", ncol=5, frameon=False)
    fig.suptitle(f"SmolLM2-135M-Instruct (30 layers) -> its copy without layers 26-27: {res['num_test']} held-out prompts")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(d: dict | None) -> str:
    if not d or d.get("ci_low") is None:
        return "-"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def real_markdown(res: dict, png: str) -> str:
    """The BENCHMARKS.md section of a ``sead bench real`` run."""
    m = res["machine"]
    rows = []
    names = {"opd": "vanilla OPD", "sead": "SEAD (zones + anneal; no curriculum)", "sgopd": "SG-OPD",
             "sft": "SFT on the teacher's samples, equal steps", "sft_equal_time": "SFT, equal time"}  # fmt: skip
    for name, row in res["final"].items():
        rows.append(f"| {names[name]} | {row['steps']:g} | {row['seconds'] / 60:.1f} | "
                    f"{' / '.join(_pct(a) for a in row['accuracy'])} | **{_pct(row['mean'])}** | {_pct(row['gap_closed'])} | "
                    f"{_ci(row.get('vs_opd_seeds'))} | {_ci(row.get('vs_opd_prompts'))} |")  # fmt: skip
    mech = res["mechanisms"]
    z, g = mech["zones"], mech["sign_gate"]
    return "\n".join([
        "### Real pair: the methods compared (`sead bench real`)",
        "",
        f"Command: `{res.get('command', 'sead bench real')}`. Machine: {m['cores']} cores ({m['cpu']}), {m['date']}, "
        f"torch {m['torch']}, trl {m['trl']}; two runs at a time, one torch thread each; {res['total_seconds'] / 60:.1f} min in all. "
        f"The pair of recipes/smollm2-prune-distill.yaml, its settings (rollouts at 0.7, lr 1e-4 cosine to 0, batch 8), "
        f"{res['steps']} steps per run, {res['seeds']} seeds, greedy accuracy on the {res['num_test']} held-out prompts. "
        f"Start {_pct(res['start_accuracy'])}, teacher {_pct(res['teacher_accuracy'])}. Differences to vanilla OPD "
        "(points) with 95% intervals paired over seeds (t with 1 degree of freedom at 2 seeds: wide) and over the "
        "held-out prompts (the test set's noise). Results: `benchmarks/results/real_quality.json`.",
        "",
        "| arm | steps | time (min) | accuracy per seed | mean | gap closed | vs OPD, seeds | vs OPD, prompts |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"![accuracy against step and time]({png})",
        "",
        f"Mechanisms on the start ({mech['rollouts']} student rollouts at 0.7, {mech['tokens']} tokens, pass rate "
        f"{_pct(mech['pass_rate'])}; digits are {_pct(mech['digit_token_share'])} of the tokens): teacher entropy "
        f"{mech['mean_h_t']:.3f} nats/token on average, {mech['mean_h_t_uncertain']:.3f} at its uncertain positions "
        f"(SEAD's FKL zone, the top 10%), {mech['mean_h_t_rest']:.3f} elsewhere; both models below 0.1 nats on "
        f"{_pct(mech['both_confident_share'])} of tokens. The skip zone holds {_pct(z['skip']['token_share'])} of "
        f"tokens, {_pct(z['skip']['share_of_digits'])} of the digit tokens, disagreement rate "
        f"{_pct(z['skip']['disagree_rate'])} (RKL zone {_pct(z['rkl']['disagree_rate'])}, FKL zone "
        f"{_pct(z['fkl']['disagree_rate'])}); its commonest tokens: "
        + ", ".join(f"`{s.strip() or repr(s)}` ({c})" for s, c in z["skip"]["commonest"][:6])
        + f". SG-OPD's gate sides with the verifier on {_pct(g['consensus'])} of tokens: passed rollouts "
        f"{_pct(g['passed_digit']['consensus'])} of digit / {_pct(g['passed_text']['consensus'])} of text tokens, "
        f"failed rollouts {_pct(g['failed_digit']['consensus'])} / {_pct(g['failed_text']['consensus'])}.",
    ])  # fmt: skip
