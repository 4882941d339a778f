"""The device check: ``make gpu-check`` (``python -m sead.bench.gpu_check``), one script for one GPU, at most 8 minutes.

What it runs, on CUDA in bf16 (``--small``: the same on a CPU at toy sizes, for the tests):

1. **the losses at scale**: TRL's chunked loss (``trl.trainer.distillation_trainer._chunked_divergence_loss``, beta 1:
   reverse KL; its Triton kernels on a GPU) against sead's fused losses (vanilla OPD, SEAD with zones, SG-OPD with the
   sign gate and a reference head) at N = 16,384 tokens, V = 151,936 (Qwen2's vocabulary), H = 896: forward +
   backward time (median of 3 after a warm-up) and peak memory above the inputs (``torch.cuda.max_memory_allocated``);
   the OPD loss is checked against TRL's value (both the reverse KL over the full vocabulary, mean over tokens);
2. **one optimizer step per method** (OPD, SEAD, SG-OPD) of a random Qwen2-shaped pair (0.5B: hidden 896, 24 layers,
   14 heads, 2 KV heads, tied embeddings; teacher and student from different seeds) in bf16: the student's forward,
   the teacher's (and SG-OPD's reference's) without gradients, the fused loss from their hidden states and heads
   (:func:`sead.losses.fused.fused_objective`, what ``OPDTrainer`` calls), backward, one AdamW step; time and peak
   memory. The loss is checked against an fp32 reference: the same step's loss from fp32 copies of the three models
   on the same tokens.

It needs torch and transformers only; TRL is imported for the first part alone (a missing TRL is recorded, not
fatal: the device machine has no network, ``make gpu-check-wheels`` packs TRL for it). The trainer's glue
(``OPDTrainer``, accelerate, TRL's ``DistillationTrainer``) is not part of it: see docs/scaling.md for what that was
checked with. Writes JSON (``--out``); ``sead bench report`` puts it into BENCHMARKS.md's GPU section. Exits 1 when a
check fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["SIZES", "gpu_section", "main", "run_check"]

#: (full, small) sizes: loss tokens N, vocabulary V, hidden H; the model pair; rollouts B x (prompt + completion).
SIZES = {
    "full": {"N": 16384, "V": 151936, "H": 896, "layers": 24, "heads": 14, "kv_heads": 2, "inter": 4864,
             "B": 4, "prompt": 256, "completion": 1024},
    "small": {"N": 256, "V": 512, "H": 64, "layers": 2, "heads": 2, "kv_heads": 1, "inter": 128,
              "B": 2, "prompt": 8, "completion": 24},
}  # fmt: skip
REPEATS = 3
# fp32-reference tolerances of a bf16 step's loss, relative: vanilla OPD and SG-OPD are smooth in the logits; SEAD's
# zones are discrete (a near-tie may change a token's zone under bf16 rounding), hence its looser bound.
LOSS_RTOL = {"opd": 0.03, "sead": 0.08, "sgopd": 0.03}
TRL_RTOL = 0.02  # sead's fused OPD loss vs TRL's chunked reverse KL on the same bf16 inputs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int = REPEATS) -> dict[str, Any]:
    """``fn()`` once (warm-up), then ``repeats`` timed runs; on CUDA the peak allocated memory above what was
    allocated before the timed runs."""
    fn()
    _sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    return {"times_s": times, "median_s": statistics.median(times), "peak_mb": peak, "value": out}


# ---- 1. the losses at scale -------------------------------------------------------------------------------------
def _loss_inputs(size: dict, device, dtype, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    n, v, h = size["N"], size["V"], size["H"]

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    return {
        "h_s": rand(n, h).requires_grad_(),
        "w_s": rand(v, h, scale=h**-0.5).requires_grad_(),
        "h_t": rand(n, h),
        "w_t": rand(v, h, scale=1.5 * h**-0.5),
        "h_r": rand(n, h),
        "w_r": rand(v, h, scale=h**-0.5),
        "ids": torch.randint(0, v, (n,), generator=g).to(device),
        "correct": (torch.arange(n) % 2 == 0).to(device),
        "mask": torch.ones(n, device=device),
    }


def _loss_fns(x: dict) -> dict[str, Any]:
    from sead.losses.fused import LMHead, fused_objective
    from sead.losses.spec import LossSpec, ZoneSpec

    student, teacher = LMHead(x["h_s"], x["w_s"]), LMHead(x["h_t"], x["w_t"])
    sead = LossSpec(alpha=0.5, zones=ZoneSpec(), entropy_top_k=64, zone_precision="auto")
    fns = {
        "opd_fused": lambda: fused_objective(LossSpec(), student, teacher, x["mask"]).loss,
        "sead_fused": lambda: fused_objective(sead, student, teacher, x["mask"]).loss,
        "sgopd_fused": _sgopd_rollout(x),
    }
    try:
        from trl.trainer.distillation_trainer import _chunked_divergence_loss
    except Exception as err:  # noqa: BLE001 - recorded: the check goes on without TRL
        fns["trl_chunked"] = err
    else:
        fns["trl_chunked"] = lambda: _chunked_divergence_loss(
            x["h_s"].unsqueeze(0), x["h_t"].unsqueeze(0), x["w_s"], x["w_t"], x["mask"].unsqueeze(0), 1.0
        )[0]
    return fns


def _sgopd_rollout(x):
    """SG-OPD's loss (full estimator, sign gate, a reference head) over one rollout of N tokens: the hidden states
    shaped ``[1, N, H]`` like its mask, one verdict."""
    from sead.losses.fused import LMHead, fused_objective
    from sead.losses.spec import GateSpec, LossSpec

    shape = (1, *x["h_s"].shape)

    def call():
        return fused_objective(
            LossSpec(gate=GateSpec()), LMHead(x["h_s"].view(shape), x["w_s"]), LMHead(x["h_t"].view(shape), x["w_t"]),
            x["mask"].view(1, -1), x["ids"].view(1, -1), correct=x["correct"][:1],
            reference=LMHead(x["h_r"].view(shape), x["w_r"]),
        ).loss  # fmt: skip

    return call


def check_losses(size: dict, device, dtype) -> dict[str, Any]:
    x = _loss_inputs(size, device, dtype)
    rows, values = [], {}
    for impl, fn in _loss_fns(x).items():
        if isinstance(fn, Exception):
            rows.append({"impl": impl, "error": f"{type(fn).__name__}: {fn}"})
            continue

        def step(fn=fn):
            x["h_s"].grad = x["w_s"].grad = None
            loss = fn()
            loss.backward()
            return float(loss.detach())

        r = _timed(step, device)
        values[impl] = r.pop("value")
        rows.append({"impl": impl, "N": size["N"], "V": size["V"], "H": size["H"], "loss": values[impl], **r})
    checks = {}
    if "trl_chunked" in values:
        rel = abs(values["opd_fused"] - values["trl_chunked"]) / max(abs(values["trl_chunked"]), 1e-12)
        checks["opd_fused_vs_trl_rel_diff"] = rel
        checks["opd_fused_vs_trl_ok"] = rel <= TRL_RTOL
    return {"rows": rows, "checks": checks}


# ---- 2. one step per method ---------------------------------------------------------------------------------------
def _qwen2(size: dict, seed: int, dtype, device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=size["V"], hidden_size=size["H"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"], intermediate_size=size["inter"],
        max_position_embeddings=size["prompt"] + size["completion"], tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device(device):  # initialised where it runs (a 0.5B random init on the GPU takes no time)
        model = Qwen2ForCausalLM(config)
    return model.to(dtype=dtype)


def _completion_hidden(model, ids, completion: int) -> torch.Tensor:
    """The last hidden states that predict the completion tokens (TRL's ``_get_last_hidden_state`` slicing)."""
    h = model.model(input_ids=ids, use_cache=False).last_hidden_state
    return h[:, -completion - 1 : -1]


def _method_loss(method: str, student, teacher, reference, ids, completion: int, correct):
    from sead.losses.fused import LMHead, fused_objective
    from sead.losses.spec import GateSpec, LossSpec, ZoneSpec

    mask = torch.ones(ids.shape[0], completion, device=ids.device)
    h_s = _completion_hidden(student, ids, completion)
    with torch.no_grad():
        h_t = _completion_hidden(teacher, ids, completion)
        h_r = _completion_hidden(reference, ids, completion) if method == "sgopd" else None
    s_head = LMHead(h_s, student.get_output_embeddings().weight)
    t_head = LMHead(h_t, teacher.get_output_embeddings().weight)
    spec, tensors = LossSpec(), {}
    if method == "sead":
        spec = LossSpec(alpha=0.5, zones=ZoneSpec(), entropy_top_k=64, zone_precision="auto")
    elif method == "sgopd":
        spec = LossSpec(gate=GateSpec())
        tensors = {"correct": correct, "reference": LMHead(h_r, reference.get_output_embeddings().weight)}
    return fused_objective(spec, s_head, t_head, mask, ids[:, -completion:], **tensors).loss


def _one_step(method: str, size: dict, device, dtype, ids, correct) -> dict[str, Any]:
    """One optimizer step of ``method`` on a fresh random pair (and SG-OPD's reference, a frozen copy of the
    student), timed; the warm-up step's loss (the initial weights') against the fp32 copies' on the same tokens."""
    import copy

    C = size["completion"]
    student = _qwen2(size, 0, dtype, device).train()
    teacher = _qwen2(size, 1, dtype, device).eval().requires_grad_(False)
    reference = copy.deepcopy(student).eval().requires_grad_(False)
    with torch.no_grad():
        fp32 = [copy.deepcopy(m).float() for m in (student, teacher, reference)]
        ref_loss = float(_method_loss(method, *fp32, ids, C, correct))
        del fp32
    optim = torch.optim.AdamW(student.parameters(), lr=1e-5)
    losses = []

    def step():
        optim.zero_grad(set_to_none=True)
        loss = _method_loss(method, student, teacher, reference, ids, C, correct)
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))

    r = _timed(step, device)
    r.pop("value")
    rel = abs(losses[0] - ref_loss) / max(abs(ref_loss), 1e-12)
    params = sum(p.numel() for p in student.parameters())
    return {"method": method, "params": params, "tokens": int(ids.numel()), "loss_bf16": losses[0],
            "loss_fp32": ref_loss, "rel_diff": rel, **r}  # fmt: skip


def check_steps(size: dict, device, dtype) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    B, P, C = size["B"], size["prompt"], size["completion"]
    ids = torch.randint(0, size["V"], (B, P + C), generator=g).to(device)
    correct = (torch.arange(B) % 2 == 0).to(device)
    rows, checks = [], {}
    for method in ("opd", "sead", "sgopd"):
        row = _one_step(method, size, device, dtype, ids, correct)
        rows.append(row)
        checks[f"{method}_loss_vs_fp32_ok"] = row["rel_diff"] <= LOSS_RTOL[method]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows, "checks": checks}


# ---- the whole check ----------------------------------------------------------------------------------------------
def _environment(device) -> dict[str, Any]:
    import transformers

    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device)}  # fmt: skip
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    try:
        import trl

        env["trl"] = trl.__version__
    except Exception as err:  # noqa: BLE001
        env["trl"] = f"unavailable ({type(err).__name__})"
    return env


def run_check(small: bool, device: str | None = None) -> dict[str, Any]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = SIZES["small" if small else "full"]
    dtype = torch.bfloat16
    t0 = time.perf_counter()
    result = {"small": small, "dtype": "bfloat16", "sizes": size, "environment": _environment(dev)}
    result["losses"] = check_losses(size, dev, dtype)
    result["steps"] = check_steps(size, dev, dtype)
    checks = {**result["losses"]["checks"], **result["steps"]["checks"]}
    result["passed"] = all(v for k, v in checks.items() if k.endswith("_ok"))
    result["wall_s"] = time.perf_counter() - t0
    return result


NOT_LENT = (
    "No GPU was lent to issue 24, which wrote this check (the project's device tool reported the task as not drawn), "
    "so nothing in this section ran on a GPU. The check is ready: `make gpu-check-wheels` here packs TRL and "
    "accelerate, then `make gpu-check` on one GPU machine (torch with CUDA, transformers; at most 8 minutes on one "
    "H200) writes `benchmarks/results/gpu_check.json`, from which `sead bench report` fills this section. What it "
    "runs: sead/bench/gpu_check.py; its CPU run at toy sizes is tests/test_gpu_check.py."
)


def gpu_section(res: dict[str, Any] | None) -> str:
    """BENCHMARKS.md's GPU section: the device check's results, or that none ran (``res`` is ``None`` or a
    ``--small`` run)."""
    head = "## GPU: the device check"
    if res is None or res.get("small"):
        return f"{head}\n\n{NOT_LENT}"
    env = res["environment"]
    rows = [r for r in res["losses"]["rows"] if "error" not in r]
    trl = next((r for r in rows if r["impl"] == "trl_chunked"), None)
    loss = ["| impl | N | V | time s | time / TRL | peak MB | peak / TRL |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['median_s'] / trl['median_s']:.2f}x" if trl else "-"
        m = f"{r['peak_mb'] / trl['peak_mb']:.2f}x" if trl and trl["peak_mb"] else "-"
        loss.append(f"| {r['impl']} | {r['N']} | {r['V']} | {r['median_s']:.3f} | {t} | {r['peak_mb']:.0f} | {m} |")
    for r in res["losses"]["rows"]:
        if "error" in r:
            loss.append(f"| {r['impl']} | - | - | not run: {r['error']} | - | - | - |")
    steps = ["| method | params | tokens | step s | peak MB | loss bf16 | loss fp32 | rel. diff | ok |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    checks = res["steps"]["checks"]
    for r in res["steps"]["rows"]:
        ok = "yes" if checks.get(f"{r['method']}_loss_vs_fp32_ok") else "**no**"
        steps.append(f"| {r['method']} | {r['params'] / 1e6:.0f}M | {r['tokens']} | {r['median_s']:.3f} | "
                     f"{r['peak_mb']:.0f} | {r['loss_bf16']:.5f} | {r['loss_fp32']:.5f} | {r['rel_diff']:.2e} | {ok} |")
    trl_check = res["losses"]["checks"].get("opd_fused_vs_trl_rel_diff")
    return "\n\n".join([
        head,
        f"Command: `make gpu-check` (`{res.get('command', 'python -m sead.bench.gpu_check')}`)  \nMachine: "
        f"{env['date']}, {env.get('gpu', env['device'])}, CUDA {env.get('cuda')}, torch {env['torch']}, "
        f"transformers {env['transformers']}, TRL {env['trl']}; bf16 inputs; median of {REPEATS} runs after a warm-up; "
        "peak = CUDA memory allocated above the inputs. Verdict: " + ("passed" if res["passed"] else "**FAILED**") + ".",
        "Losses, forward + backward:",
        "\n".join(loss),
        "" if trl_check is None else f"sead's vanilla OPD loss vs TRL's (the same reverse KL): relative difference "
        f"{trl_check:.1e}.",
        "One optimizer step per method (random Qwen2-shaped pair, bf16, AdamW), the loss against fp32 copies:",
        "\n".join(steps),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="sead's device check (docs/scaling.md)")
    ap.add_argument("--small", action="store_true", help="toy sizes (the CPU run of the tests)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = ap.parse_args(argv)
    result = run_check(args.small, args.device)
    result["command"] = "python -m sead.bench.gpu_check" + (" --small" if args.small else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"[gpu_check] {'passed' if result['passed'] else 'FAILED'} in {result['wall_s']:.0f} s; wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
