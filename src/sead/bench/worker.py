"""One measurement per process: ``python -m sead.bench.worker loss|step ...`` prints one JSON line (``serve``: jobs
from stdin, :mod:`sead.experiments.workers`).

Peak memory is the process's peak resident set (``ru_maxrss``) minus the resident set just before
the measured work (after the inputs exist), so it counts what the implementation itself allocates.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from sead.experiments.worker import serve
from sead.losses.fused import fast_bf16_matmul

# A warm-up run longer than this (seconds) is timed as the first of the runs (see bench_loss).
LONG_RUN_S = 10.0
# Runs whose warm-up takes over SLOW_RUN_S are timed SLOW_RUN_REPS times at most (make bench's 90-minute budget:
# 8 of the loss part's 26 minutes on 2026-12-01 were the 4th and 5th runs of implementations over 5 s; at over
# 2 s, and with warm-ups over 10 s counted as a timed run, about 11 of the 26 are saved).
SLOW_RUN_S = 2.0
SLOW_RUN_REPS = 3


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- loss kernels ------------------------------------------------------------------------------
# Fused SEAD loss rows: "sead_fused" runs the trainer's defaults (zone pass precision "auto": bf16 only
# where bf16 matmuls are native; entropies over the teacher's top-k); the others change one setting.
SEAD_FUSED_VARIANTS = {
    "sead_fused": {},
    "sead_fused_bf16zones": {"zone_precision": "bf16"},
    "sead_fused_ownsupport": {"entropy_support": "own"},
}


# SG-OPD rows: the sgopd preset's loss (full estimator, sign gate, frozen reference head, zones off), on
# rollouts of ROLLOUT_TOKENS tokens each (the gate reads one verdict per rollout), half of them correct.
ROLLOUT_TOKENS = 512


def _sgopd_inputs(h_s, w_s, mask, g):
    """The reference head (a perturbed copy of the student's), sampled ids and per-rollout verdicts, with every
    per-position input reshaped to ``[B, T]`` rollouts."""
    n, h = h_s.shape
    b = n // ROLLOUT_TOKENS if n % ROLLOUT_TOKENS == 0 and n >= ROLLOUT_TOKENS else 1
    h_r = (h_s.detach() + 0.1 * torch.randn(n, h, generator=g)).view(b, n // b, h)
    w_r = w_s.detach() + 0.1 * torch.randn(w_s.shape, generator=g) * h**-0.5
    ids = torch.randint(0, w_s.shape[0], (b, n // b), generator=g)
    correct = torch.arange(b) % 2 == 0
    return h_r, w_r, ids, correct, mask.view(b, n // b)


def _sgopd_fn(impl, h_s, w_s, h_t, w_t, mask, g):
    from sead.losses.fused import LMHead, fused_objective
    from sead.losses.objective import logits_objective
    from sead.losses.spec import GateSpec, LossSpec

    h_r, w_r, ids, correct, mask_BT = _sgopd_inputs(h_s, w_s, mask, g)
    shape = (*mask_BT.shape, -1)
    spec = LossSpec(estimator="full", gate=GateSpec())  # the SG-OPD preset: full estimator, sign gate, no zones
    if impl == "sgopd_fused":
        return lambda: fused_objective(
            spec, LMHead(h_s.view(shape), w_s), LMHead(h_t.view(shape), w_t), mask_BT, ids, correct=correct,
            reference=LMHead(h_r, w_r),
        ).loss  # fmt: skip
    # the full-logits path: student, teacher and reference logits [B, T, V] in fp32
    return lambda: logits_objective(
        spec, h_s.view(shape) @ w_s.T, h_t.view(shape) @ w_t.T, mask_BT, ids, correct=correct, ref_logits=h_r @ w_r.T
    ).loss


def _loss_fn(impl: str, h_s, w_s, h_t, w_t, mask, g=None):
    if impl in ("sgopd_fused", "sgopd_naive"):
        return _sgopd_fn(impl, h_s, w_s, h_t, w_t, mask, g)
    if impl == "trl_chunked":
        from trl.trainer.distillation_trainer import _chunked_divergence_loss

        return lambda: _chunked_divergence_loss(h_s, h_t, w_s, w_t, mask, 1.0)[0]
    from sead.losses import fused_sead_loss, sead_loss

    if impl in SEAD_FUSED_VARIANTS:
        # the same SEAD loss with the trainer's defaults ("sead_fused"), or one setting changed
        kw = {"zone_precision": "auto", "entropy_support": "teacher"} | SEAD_FUSED_VARIANTS[impl]
        return lambda: fused_sead_loss(h_s, w_s, h_t, w_t, mask, alpha=0.5, zones=True, entropy_top_k=64, **kw).loss
    if impl == "opd_fused":
        return lambda: fused_sead_loss(h_s, w_s, h_t, w_t, mask, zones=False).loss
    if impl == "naive":
        # vanilla OPD on full logits: reverse KL over the vocabulary, mean over tokens
        return lambda: sead_loss(h_s @ w_s.T, (h_t @ w_t.T).detach(), mask, zones=False).loss
    if impl == "sead_naive":
        return lambda: sead_loss(h_s @ w_s.T, (h_t @ w_t.T).detach(), mask, alpha=0.5, entropy_top_k=64).loss
    raise SystemExit(f"unknown impl {impl}")




def bench_loss(impl: str, n: int, v: int, h: int, reps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(n, h, generator=g).requires_grad_()
    w_s = (torch.randn(v, h, generator=g) * h**-0.5).requires_grad_()
    h_t = torch.randn(n, h, generator=g)
    w_t = torch.randn(v, h, generator=g) * h**-0.5 * 1.5
    mask = torch.ones(n)
    fn = _loss_fn(impl, h_s, w_s, h_t, w_t, mask, g)
    base = _rss_mb()
    times = []
    warmup_timed = False
    for i in range(reps + 1):  # the first run warms up and is not timed ...
        h_s.grad = w_s.grad = None
        t0 = time.perf_counter()
        loss = fn()
        loss.backward()
        dt = time.perf_counter() - t0
        del loss
        if i == 0 and dt > SLOW_RUN_S:  # a slow implementation: its spread is small next to its time
            reps = min(reps, SLOW_RUN_REPS)
        if i == 0 and dt > LONG_RUN_S:
            # ... unless it is long: warm-up effects (first allocations) are then a negligible part of it,
            # and it counts as the first of the `reps` timed runs.
            warmup_timed = True
        if i > 0 or warmup_timed:
            times.append(dt)
        if len(times) == reps:
            break
    return {
        "impl": impl,
        "N": n,
        "V": v,
        "H": h,
        "time_s": sorted(times)[len(times) // 2],
        "times_s": times,
        "peak_mb": max(_peak_mb() - base, 0.0),
        "warmup_timed": warmup_timed,
        "bf16_matmul_native": fast_bf16_matmul("cpu"),
    }


# ---- training step -----------------------------------------------------------------------------
# The rows with a top-k teacher ("sead_topk": local, "sead_server": served by vLLM) use k = 8 of the 25-token
# vocabulary, and a teacher with 2 attention heads (head_dim 80: vLLM's CPU attention has no head_dim 40).
SERVED_TOP_K = 8


# The step benchmark's shapes. "tiny": generation dominates the step. "large": the loss and the forwards outweigh
# generation (issue 29): a student of hidden 512 and 8 layers, a teacher 4x its size (hidden 1024, 8 layers), a
# 32k vocabulary (the task's tokens plus filler tokens no prompt uses) and 128 completion tokens per rollout.
STEP_SHAPES = {
    "tiny": {"student": (64, 2, 2), "teacher": (160, 4, 4), "vocab": None, "completion_tokens": 12, "batch": 16,
             "gradient_accumulation_steps": 1, "max_positions": 64},
    "large": {"student": (512, 8, 8), "teacher": (1024, 8, 16), "vocab": 32768, "completion_tokens": 128, "batch": 4,
              "gradient_accumulation_steps": 2, "max_positions": 256},
}  # fmt: skip


def step_tokenizer(shape: str = "tiny"):
    """The arithmetic tokenizer, grown to the shape's vocabulary with filler tokens (``<x0>``, ``<x1>``, ...)."""
    from sead.tasks.arithmetic import build_tokenizer

    tok = build_tokenizer()
    size = STEP_SHAPES[shape]
    if size["vocab"]:
        tok.add_tokens([f"<x{i}>" for i in range(size["vocab"] - len(tok))])
    tok.model_max_length = size["max_positions"]
    return tok


def step_model(hidden: int, layers: int, seed: int, heads: int = 4, shape: str = "tiny"):
    """A random Qwen2 over the step tokenizer (the step benchmark's student and teachers)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = step_tokenizer(shape)
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=2, intermediate_size=3 * hidden, max_position_embeddings=STEP_SHAPES[shape]["max_positions"],
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    return Qwen2ForCausalLM(cfg)


def served_step_teacher():
    """The teacher of the "sead_topk" and "sead_server" rows (the one the suite serves with vLLM)."""
    return step_model(160, 4, 1, heads=2)


def bench_step(trainer_name: str, steps: int, batch: int | None, completion: int | None, threads: int, out: str,
               teacher_url: str | None = None, shape: str = "tiny") -> dict:
    """Median optimizer-step time of one trainer on random models of ``shape`` (:data:`STEP_SHAPES`; the same
    models, data and seed for all trainers). ``batch`` / ``completion``: the shape's unless given."""
    torch.set_num_threads(threads)
    from sead.tasks.arithmetic import make_dataset
    from sead.training.config import OPDConfig

    size = STEP_SHAPES[shape]
    batch = batch or size["batch"]
    completion = completion or size["completion_tokens"]
    accumulation = size["gradient_accumulation_steps"]
    tok = step_tokenizer(shape)

    def model(hidden, layers, seed, heads=4):
        return step_model(hidden, layers, seed, heads=heads, shape=shape)

    ds = make_dataset(max(256, batch * (steps + 1)), seed=0)
    ds = ds.add_column("difficulty", [(lv - 1) / 3 for lv in ds["level"]])
    method = {"trl": "opd", "opd_nograde": "opd", "opd_vllm": "opd", "sead_topk": "sead", "sead_server": "sead",
              "sead_microbatch": "sead", "sead_nocache": "sead"}.get(trainer_name, trainer_name)
    topk = {}
    if trainer_name in ("sead_topk", "sead_server"):  # the same SEAD step with a top-k teacher, local or served
        # max_prompt_length: prompt + completion + the one token a scoring request generates fit the 64 positions
        topk = dict(estimator="topk", estimator_top_k=SERVED_TOP_K, entropy_top_k=SERVED_TOP_K, max_prompt_length=48)
    if trainer_name == "sead_server":
        if not teacher_url:
            raise SystemExit("sead_server needs --teacher-url (the suite starts the server)")
        topk.update(teacher_server_url=teacher_url, teacher_server_model="teacher", teacher_server_startup_timeout=60)
    changed = {}  # settings of the rows that change one thing of the "sead" row (the same models)
    if trainer_name == "sead_microbatch":  # zone percentiles per micro-batch: no step pre-pass (its cost)
        changed["zone_scope"] = "micro_batch"
    if trainer_name == "sead_nocache":  # the zone pass as before issue 29: the student's forward, the teacher twice
        changed.update(teacher_cache="off", zone_student_hidden="forward")
    vllm = trainer_name == "opd_vllm"  # the student's rollouts in TRL's vLLM colocate engine, not HF generate
    # vLLM names the minimum length min_tokens; HF generate min_new_tokens
    min_length = {"min_tokens": completion} if vllm else {"min_new_tokens": completion}
    cfg = OPDConfig(
        output_dir=out, method=method, max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_completion_length=completion, learning_rate=1e-4, logging_steps=1, report_to=[], bf16=False,
        activation_checkpointing=False, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        competence_window=batch * accumulation, teacher_num_generations=4, generation_kwargs=min_length,
        log_pass_rate=trainer_name != "opd_nograde",  # "opd_nograde": the same work as TRL's step (no grading)
        use_vllm=vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
        **topk,
        **changed,
    )
    # the student's 2 heads: head dimension 32, which vLLM's CPU attention takes (16 it does not)
    (s_hidden, s_layers, s_heads), (t_hidden, t_layers, t_heads) = size["student"], size["teacher"]
    student, teacher = model(s_hidden, s_layers, 0, heads=s_heads), model(t_hidden, t_layers, 1, heads=t_heads)
    if topk:
        teacher = None if trainer_name == "sead_server" else served_step_teacher()
    if vllm:  # TRL builds the engine from the student's folder
        student.save_pretrained(f"{out}/student")
        tok.save_pretrained(f"{out}/student")
        student = f"{out}/student"
    if trainer_name == "trl":
        from trl import DistillationTrainer

        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=ds, processing_class=tok)
    else:
        from sead.training.trainer import OPDTrainer

        trainer = OPDTrainer(student, teacher, args=cfg, train_dataset=ds, processing_class=tok)
    base = _rss_mb()
    trainer.train()
    step_times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    timed = step_times[2:] or step_times  # the first steps warm up allocators and caches
    return {
        "trainer": trainer_name,
        "shape": {"name": shape, **{k: v for k, v in size.items() if k not in ("batch", "completion_tokens")},
                  "vocab": len(tok), "student_params": sum(p.numel() for p in trainer.model.parameters())},
        "steps": steps,
        "batch": batch,
        "gradient_accumulation_steps": accumulation,
        "completion_tokens": completion,
        "step_time_s": sorted(timed)[len(timed) // 2],
        "step_times_s": step_times,
        "peak_rss_mb": _peak_mb(),
        "peak_rss_delta_mb": max(_peak_mb() - base, 0.0),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sead.bench.worker")
    sub = p.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("loss")
    lp.add_argument("impl")
    lp.add_argument("--n", type=int, required=True)
    lp.add_argument("--v", type=int, required=True)
    lp.add_argument("--h", type=int, default=512)
    lp.add_argument("--reps", type=int, default=5)
    lp.add_argument("--threads", type=int, default=2)
    sp = sub.add_parser("step")
    sp.add_argument("trainer")
    sp.add_argument("--steps", type=int, default=12)
    sp.add_argument("--batch", type=int, default=None, help="rollouts per micro-batch (default: the shape's)")
    sp.add_argument("--completion", type=int, default=None, help="completion tokens (default: the shape's)")
    sp.add_argument("--shape", choices=sorted(STEP_SHAPES), default="tiny")
    sp.add_argument("--threads", type=int, default=1)
    sp.add_argument("--out", default="/tmp/sead-bench-step")
    sp.add_argument("--teacher-url", default=None, help="sead_server: the vLLM server holding the teacher")
    sub.add_parser("serve", help="run jobs (one JSON list of arguments per stdin line) until stdin closes")
    a = p.parse_args(argv)
    if a.what == "serve":
        return serve(p, _dispatch)
    print(json.dumps(_dispatch(a)))
    return 0


def _dispatch(a) -> dict:
    if a.what == "loss":
        return bench_loss(a.impl, a.n, a.v, a.h, a.reps, a.threads)
    if a.what == "step":
        return bench_step(a.trainer, a.steps, a.batch, a.completion, a.threads, a.out, a.teacher_url, a.shape)
    raise SystemExit(f"unknown measurement {a.what!r}")


if __name__ == "__main__":
    sys.exit(main())
