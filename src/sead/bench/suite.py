"""The three benchmarks and their JSON results; ``report.py`` turns them into BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .common import machine_facts, median, run_worker

LOSS_IMPLS = (
    "sead_fused",
    "sead_fused_bf16zones",
    "sead_fused_ownsupport",
    "opd_fused",
    "sgopd_fused",
    "trl_chunked",
    "naive",
    "sgopd_naive",
)
# One-setting variants of the fused SEAD loss and the full-logits SG-OPD reference, measured only at the goal
# shape (in --quick at its one shape).
LOSS_GOAL_SHAPE = (4096, 32768)
LOSS_EXTRA_IMPLS = ("sead_fused_bf16zones", "sead_fused_ownsupport", "sgopd_naive")
# Implementations that hold [N, V] logits: shrunk to NAIVE_MAX_ELEMENTS.
FULL_LOGITS_IMPLS = ("naive", "sgopd_naive")
# Shapes of the loss benchmark (hidden 512). The naive path needs several [N, V] fp32 tensors:
# at N=4096, V=131072 that is ~2 GB each, so it is measured at N=1024 there (said in the report).
LOSS_SHAPES_FULL = [(1024, 32768), (4096, 32768), (1024, 131072), (4096, 131072)]
LOSS_SHAPES_QUICK = [(1024, 32768)]
NAIVE_MAX_ELEMENTS = 4096 * 32768


def bench_loss(
    quick: bool = False, reps: int | None = None, threads: int = 2, progress: bool = True, shapes=None
) -> dict[str, Any]:
    """Forward+backward median time and peak memory of each loss implementation, side by side."""
    shapes = shapes or (LOSS_SHAPES_QUICK if quick else LOSS_SHAPES_FULL)
    reps = reps or (3 if quick else 5)
    rows, notes = [], []
    goal = shapes[0] if quick else LOSS_GOAL_SHAPE
    jobs = [(impl, n, v) for n, v in shapes for impl in LOSS_IMPLS if (n, v) == goal or impl not in LOSS_EXTRA_IMPLS]
    measured: dict[tuple[str, int, int], dict] = {}
    for impl, n, v in tqdm(jobs, desc="bench loss", disable=not progress):
        n_run = n
        if impl in FULL_LOGITS_IMPLS and n * v > NAIVE_MAX_ELEMENTS:
            n_run = NAIVE_MAX_ELEMENTS // v
            notes.append(f"{impl} at V={v}: measured at N={n_run} instead of N={n} (its [N, V] logits would not fit)")
        if (impl, n_run, v) not in measured:  # a shrunk naive shape may repeat one already measured
            res = run_worker(["loss", impl, "--n", str(n_run), "--v", str(v), "--reps", str(reps), "--threads", str(threads)])
            res.setdefault("impl", impl)
            measured[(impl, n_run, v)] = res
        rows.append({**measured[(impl, n_run, v)], "N": n_run, "V": v, "N_requested": n})
    return {"benchmark": "loss", "machine": machine_facts(), "reps": reps, "threads": threads, "rows": rows, "notes": notes}


# "opd_nograde": vanilla OPD with log_pass_rate=False, i.e. without the verifier grading that only feeds the
# rollout/pass_rate log: the same work per step as TRL's trainer.
# "sead_topk" / "sead_server": SEAD with the top-k estimator (k = 8), the teacher local / served by a vLLM server
# that the suite starts on 127.0.0.1 for the whole benchmark (sead.bench.served).
# "opd_vllm": vanilla OPD with the student's rollouts in TRL's vLLM colocate engine.
# "sead_microbatch": SEAD with zone_scope micro_batch (next to "sead", the default step scope: the pre-pass's cost).
STEP_TRAINERS = (
    "trl", "opd", "opd_nograde", "opd_vllm", "sead", "sead_microbatch", "sgopd", "sead_topk", "sead_server",
)


STEP_ROUNDS = 3


def _merge_rounds(name: str, runs: list[dict]) -> dict:
    """One row per trainer from its rounds: median of the round medians, the largest peak RSS."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    return {
        **ok[0],
        "trainer": name,
        "step_time_s": median([r["step_time_s"] for r in ok]),
        "round_step_times_s": [r["step_time_s"] for r in ok],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "rounds": len(ok),
    }


def _start_step_teacher_server(stack: contextlib.ExitStack, tmp: Path) -> tuple[str | None, str | None]:
    """The "sead_server" row's teacher in a vLLM server for the whole benchmark: ``(url, None)``, or
    ``(None, why)`` when vLLM is missing or the server does not start."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None, "vLLM is not installed (the sead_server row needs a vLLM server for its teacher)"
    from .served import vllm_teacher_server
    from .worker import SERVED_TOP_K, served_step_teacher

    folder = tmp / "served-teacher"
    served_step_teacher().save_pretrained(folder)
    from ..tasks.arithmetic import build_tokenizer

    build_tokenizer().save_pretrained(folder)
    try:
        url = stack.enter_context(vllm_teacher_server(folder, name="teacher", max_logprobs=SERVED_TOP_K, max_model_len=64))
    except RuntimeError as err:
        return None, " ".join(str(err).split())[-500:]
    return url, None


def bench_step(quick: bool = False, threads: int = 1, progress: bool = True) -> dict[str, Any]:
    """Median optimizer-step time and peak RSS of OPDTrainer vs TRL's DistillationTrainer, same models and batch."""
    steps = 6 if quick else 14
    rounds = 1 if quick else STEP_ROUNDS
    # Round-robin: every round runs each trainer once, in a rotated order, so a noisy stretch of the
    # machine hits all trainers alike; a trainer's step time is the median of its rounds' medians.
    by_name: dict[str, list[dict]] = {name: [] for name in STEP_TRAINERS}
    order = list(STEP_TRAINERS)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url, server_error = _start_step_teacher_server(stack, Path(tmp))
        bar = stack.enter_context(tqdm(total=rounds * len(order), desc="bench step", disable=not progress))
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                args = ["step", name, "--steps", str(steps), "--threads", str(threads), "--out", str(Path(tmp) / f"{name}-{r}")]
                if name == "sead_server" and url is None:
                    res = {"error": server_error}
                else:
                    res = run_worker(args + (["--teacher-url", url] if name == "sead_server" else []),
                                     # a vLLM engine's KV cache: 1 GiB (the default share of the NUMA node does not fit beside training)
                                     env={"OMP_NUM_THREADS": str(threads),
                                          "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")})
                res.setdefault("trainer", name)
                by_name[name].append(res)
                bar.update(1)
    rows = [_merge_rounds(name, runs) for name, runs in by_name.items()]
    return {"benchmark": "step", "machine": machine_facts(), "threads": threads, "rows": rows}


# The methods and the SEAD factorial ablation (zones, anneal, curriculum; all three = SEAD).
QUALITY_VARIANTS: dict[str, dict[str, Any]] = {
    "trl": {"method": "opd"},
    "opd": {"method": "opd"},
    "sgopd": {"method": "sgopd"},
    "zones": {"method": "opd", "zones": True},
    "anneal": {"method": "opd", "anneal": True},
    "curriculum": {"method": "opd", "curriculum": True},
    "zones+anneal": {"method": "opd", "zones": True, "anneal": True},
    "zones+curriculum": {"method": "opd", "zones": True, "curriculum": True},
    "anneal+curriculum": {"method": "opd", "anneal": True, "curriculum": True},
    "sead": {"method": "sead"},
}
QUALITY_QUICK_VARIANTS = ("trl", "opd", "sead", "sgopd")


def _trl_trainer(student, teacher, cfg, dataset, tokenizer, callbacks):
    from trl import DistillationTrainer

    return DistillationTrainer(
        model=student, teacher_model=teacher, args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )


def bench_quality(
    quick: bool = False,
    seeds: int | None = None,
    steps: int | None = None,
    variants: tuple[str, ...] | None = None,
    threads: int = 1,
    progress: bool = True,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Held-out accuracy after the same steps from the same start, several seeds, every variant."""
    import torch

    from ..demo import SIZES, prepare_demo, run_variant
    from ..tasks import arithmetic

    torch.set_num_threads(threads)
    size = dict(SIZES["quick" if quick else "full"])
    steps = steps or size["steps"]
    seeds = seeds or (1 if quick else 3)
    variants = variants or (QUALITY_QUICK_VARIANTS if quick else tuple(QUALITY_VARIANTS))
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    start_acc = {}
    with tempfile.TemporaryDirectory() as tmp:
        bar = tqdm(total=seeds * len(variants), desc="bench quality", disable=not progress)
        for seed in range(seeds):
            data = prepare_demo(size, seed, quick, cache_dir, progress=False)
            tok = data.prepared.tokenizer
            start_acc[seed] = arithmetic.evaluate_accuracy(data.prepared.load_student(), tok, data.test, batch_size=512)["accuracy"]
            curve_start = arithmetic.evaluate_accuracy(data.prepared.load_student(), tok, data.curve, batch_size=512)["accuracy"]
            for name in variants:
                t0 = time.perf_counter()
                res = run_variant(
                    name,
                    data,
                    size,
                    Path(tmp) / f"{name}-{seed}",
                    seed,
                    steps,
                    dict(QUALITY_VARIANTS[name]),
                    trainer_cls=_trl_trainer if name == "trl" else None,
                    progress=False,
                )
                res["curve"] = [[0, curve_start], *res["curve"]]
                steps_, accs = zip(*res["curve"])
                from ..demo import _normalized_auc

                res["auc"] = _normalized_auc(list(steps_), list(accs))
                res.pop("log_history", None)
                res["seed"], res["seconds"] = seed, time.perf_counter() - t0
                runs[name].append(res)
                bar.update(1)
        bar.close()
    summary = {}
    for name, rs in runs.items():
        accs = [r["accuracy"] for r in rs]
        aucs = [r["auc"] for r in rs if r["auc"] is not None]
        summary[name] = {
            "accuracy_mean": statistics.mean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "auc_mean": statistics.mean(aucs) if aucs else None,
            "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
            "wall_seconds_median": median([r["wall_seconds"] for r in rs]),
        }
    return {
        "benchmark": "quality",
        "machine": machine_facts(),
        "steps": steps,
        "seeds": seeds,
        "size": size,
        "student_start": start_acc,
        "summary": summary,
        "runs": runs,
    }


def save_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path
