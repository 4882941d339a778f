"""Where the fused losses spend their time: ``python -m sead.bench.profiles.loss [N V H [ROUNDS]]``.

Runs ``torch.profiler`` over one forward+backward of the fused vanilla OPD loss and the fused SEAD loss
(zone entropies over the teacher's top-k or each model's own; zone pass in fp32 or bf16; after one
warm-up each) and prints total time, matmul time and the top operators; then times the variants
alternating in one process for ROUNDS rounds (default 5) and prints each one's median and its ratio to vanilla OPD's.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from sead.losses import fused_sead_loss

MATMULS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")  # fp32 and bf16 alike


def main(argv: list[str]) -> None:
    n, v, h, rounds = ([int(x) for x in argv] + [1024, 32768, 512, 5][len(argv) :])[:4]
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(n, h, generator=g).requires_grad_()
    w_s = (torch.randn(v, h, generator=g) * h**-0.5).requires_grad_()
    h_t, w_t, mask = torch.randn(n, h, generator=g), torch.randn(v, h, generator=g) * h**-0.5 * 1.5, torch.ones(n)
    sead = {"zones": True, "alpha": 0.5, "entropy_top_k": 64}
    variants = (
        ("opd_fused", {"zones": False}),
        ("sead_fused", sead | {"zone_precision": "exact"}),
        ("sead_fused_ownsupport", sead | {"zone_precision": "exact", "entropy_support": "own"}),
        ("sead_fused_bf16zones", sead | {"zone_precision": "bf16"}),
    )
    for name, kw in variants:
        fused_sead_loss(h_s, w_s, h_t, w_t, mask, **kw).loss.backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fused_sead_loss(h_s, w_s, h_t, w_t, mask, **kw).loss.backward()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        mm = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:6]
        tops = ", ".join(f"{e.key} {e.self_cpu_time_total / 1e6:.2f} s x{e.count}" for e in top)
        print(f"{name}: total {total / 1e6:.2f} s, matmul {mm / 1e6:.2f} s ({100 * mm / total:.0f}%); top: {tops}")
    # Paired timing without the profiler: the variants alternate in one process, so a slow stretch of a
    # shared machine hits them alike; ratios are to opd_fused.
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(rounds):
        for name, kw in variants:
            t0 = time.perf_counter()
            fused_sead_loss(h_s, w_s, h_t, w_t, mask, **kw).loss.backward()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["opd_fused"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"paired, {rounds} rounds: {name}: median {med:.2f} s, {med / base:.2f}x opd_fused")


if __name__ == "__main__":
    main(sys.argv[1:])
