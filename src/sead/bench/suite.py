"""The benchmarks and their JSON results: the loss and the training step here, the quality benchmark in
:mod:`sead.bench.quality`, the learning-rate protocol in :mod:`sead.bench.rates` (both re-exported: ``sead bench``
reaches every benchmark through this module); ``report.py`` turns the results into BENCHMARKS.md."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from sead.bench.common import machine_facts, median, run_worker
from sead.bench.quality import (  # noqa: F401 - re-exported
    QUALITY_DEFAULT_VARIANTS,
    QUALITY_METRICS,
    QUALITY_QUICK_VARIANTS,
    QUALITY_SEEDS,
    QUALITY_VARIANTS,
    SEAD_COMPONENTS,
    TUNED,
    bench_quality,
    interaction_terms,
    merge_quality,
    pooled_intervals,
    prepared_facts,
    quality_tables,
    summarize_quality,
)
from sead.bench.rates import LR_GRID, bench_factorial, tune_learning_rates  # noqa: F401 - re-exported
from sead.utils.progress import progress_bar

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
LOSS_GOAL_SHAPE = (4096, 32768, 512)
LOSS_EXTRA_IMPLS = ("sead_fused_bf16zones", "sead_fused_ownsupport", "sgopd_naive")
# Implementations that hold [N, V] logits: shrunk to NAIVE_MAX_ELEMENTS.
FULL_LOGITS_IMPLS = ("naive", "sgopd_naive")
# Shapes of the loss benchmark, (N tokens, V vocabulary, H hidden): two at hidden 512, then the vocabularies and hidden
# sizes of two real checkpoints, SmolLM2-135M (V 49,152, H 576) and Gemma 3 270M (V 262,144, H 640), at fewer tokens
# (time grows as N x V x H: these two take about as long as the first). The naive path needs several [N, V] fp32
# tensors, so it is measured at fewer tokens where they would not fit (said in the report).
LOSS_SHAPES_FULL = [(1024, 32768, 512), (4096, 32768, 512), (1024, 49152, 576), (256, 262144, 640)]
LOSS_SHAPES_QUICK = [(1024, 32768, 512)]
#: The real checkpoint each (V, H) of LOSS_SHAPES_FULL comes from.
LOSS_SHAPE_MODELS = {(49152, 576): "SmolLM2-135M", (262144, 640): "Gemma 3 270M"}
NAIVE_MAX_ELEMENTS = 4096 * 32768


def bench_loss(
    quick: bool = False, reps: int | None = None, threads: int = 2, progress: bool = True, shapes=None
) -> dict[str, Any]:
    """Forward+backward median time and peak memory of each loss implementation, side by side."""
    shapes = shapes or (LOSS_SHAPES_QUICK if quick else LOSS_SHAPES_FULL)
    reps = reps or (3 if quick else 5)
    rows, notes = [], []
    shapes = [tuple(s) if len(s) == 3 else (*s, 512) for s in shapes]
    goal = shapes[0] if quick else LOSS_GOAL_SHAPE
    jobs = [(impl, *shape) for shape in shapes for impl in LOSS_IMPLS if shape == goal or impl not in LOSS_EXTRA_IMPLS]
    measured: dict[tuple[str, int, int, int], dict] = {}
    for impl, n, v, h in progress_bar(jobs, desc="bench loss", disable=not progress):
        n_run = n
        if impl in FULL_LOGITS_IMPLS and n * v > NAIVE_MAX_ELEMENTS:
            n_run = NAIVE_MAX_ELEMENTS // v
            notes.append(f"{impl} at V={v}: measured at N={n_run} instead of N={n} (its [N, V] logits would not fit)")
        if (impl, n_run, v, h) not in measured:  # a shrunk naive shape may repeat one already measured
            res = run_worker(
                ["loss", impl, "--n", str(n_run), "--v", str(v), "--h", str(h), "--reps", str(reps), "--threads", str(threads)]
            )
            res.setdefault("impl", impl)
            measured[(impl, n_run, v, h)] = res
        rows.append({**measured[(impl, n_run, v, h)], "N": n_run, "V": v, "H": h, "N_requested": n,
                     "model": LOSS_SHAPE_MODELS.get((v, h))})  # fmt: skip
    return {"benchmark": "loss", "machine": machine_facts(), "reps": reps, "threads": threads, "rows": rows, "notes": notes}


# "opd_nograde": vanilla OPD with log_pass_rate=False, i.e. without the verifier grading that only feeds the
# rollout/pass_rate log: the same work per step as TRL's trainer.
# "sead_topk" / "sead_server": SEAD with the top-k estimator (k = 8), the teacher local / served by a vLLM server
# that the suite starts on 127.0.0.1 for the whole benchmark (sead.bench.served).
# "opd_vllm": vanilla OPD with the student's rollouts in TRL's vLLM colocate engine.
# "sead_microbatch": SEAD with zone_scope micro_batch (next to "sead", the default step scope: the pre-pass's cost).
# "sead_nocache": SEAD's zone pass as before issue 29: a student forward (zone_student_hidden: forward) and the
# teacher's hidden states not kept (teacher_cache: off: the loss runs the teacher again).
STEP_TRAINERS = (
    "trl", "opd", "opd_nograde", "opd_vllm", "sead", "sead_nocache", "sead_microbatch", "sgopd", "sead_topk",
    "sead_server",
)
# The larger shape (sead.bench.worker.STEP_SHAPES["large"]: the loss and the forwards outweigh generation): the
# methods' rows only, fewer steps and rounds (a step takes about 20 s of one core here).
STEP_TRAINERS_LARGE = ("opd", "sead", "sead_nocache", "sgopd")
STEP_ROUNDS = 3
STEP_ROUNDS_LARGE = 2
STEP_STEPS_LARGE = 5


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
    from sead.bench.served import vllm_teacher_server
    from sead.bench.worker import SERVED_TOP_K, served_step_teacher

    folder = tmp / "served-teacher"
    served_step_teacher().save_pretrained(folder)
    from sead.tasks.arithmetic import build_tokenizer

    build_tokenizer().save_pretrained(folder)
    try:
        url = stack.enter_context(vllm_teacher_server(folder, name="teacher", max_logprobs=SERVED_TOP_K, max_model_len=64))
    except RuntimeError as err:
        return None, " ".join(str(err).split())[-500:]
    return url, None


def bench_step(quick: bool = False, threads: int = 1, progress: bool = True, shapes: tuple[str, ...] | None = None
               ) -> dict[str, Any]:
    """Median optimizer-step time and peak RSS of OPDTrainer vs TRL's DistillationTrainer, same models and batch, at
    each of ``shapes`` (default: ``tiny`` and, unless ``quick``, ``large``; :data:`sead.bench.worker.STEP_SHAPES`).
    Each row records its ``shape``."""
    shapes = tuple(shapes or (("tiny",) if quick else ("tiny", "large")))
    # Round-robin: every round runs each trainer once, in a rotated order, so a noisy stretch of the
    # machine hits all trainers alike; a trainer's step time is the median of its rounds' medians.
    plan = []  # (shape, trainers, rounds, steps)
    for shape in shapes:
        if shape == "large":
            plan.append((shape, STEP_TRAINERS_LARGE, 1 if quick else STEP_ROUNDS_LARGE, STEP_STEPS_LARGE))
        else:
            plan.append((shape, STEP_TRAINERS, 1 if quick else STEP_ROUNDS, 6 if quick else 14))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url, server_error = None, None
        if any("sead_server" in trainers for _, trainers, _, _ in plan):
            url, server_error = _start_step_teacher_server(stack, Path(tmp))
        total = sum(rounds * len(trainers) for _, trainers, rounds, _ in plan)
        bar = stack.enter_context(progress_bar(total=total, desc="bench step", disable=not progress))
        for shape, trainers, rounds, steps in plan:
            rows += _step_rounds(shape, trainers, rounds, steps, threads, Path(tmp), url, server_error, bar)
    return {"benchmark": "step", "machine": machine_facts(), "threads": threads, "rows": rows}


def _step_rounds(shape, trainers, rounds, steps, threads, tmp: Path, url, server_error, bar) -> list[dict]:
    """One shape's rows: ``rounds`` rounds of every trainer, in a rotated order."""
    by_name: dict[str, list[dict]] = {name: [] for name in trainers}
    order = list(trainers)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            args = ["step", name, "--shape", shape, "--steps", str(steps), "--threads", str(threads),
                    "--out", str(tmp / f"{shape}-{name}-{r}")]  # fmt: skip
            if name == "sead_server" and url is None:
                res = {"error": server_error}
            else:
                res = run_worker(args + (["--teacher-url", url] if name == "sead_server" else []),
                                 # a vLLM engine's KV cache: 1 GiB (the default share of the NUMA node does not fit beside training)
                                 env={"OMP_NUM_THREADS": str(threads),
                                      "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")})
            res.setdefault("trainer", name)
            res.setdefault("shape", {"name": shape})
            by_name[name].append(res)
            bar.update(1)
    return [_merge_rounds(name, runs) for name, runs in by_name.items()]


def save_json(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return path
