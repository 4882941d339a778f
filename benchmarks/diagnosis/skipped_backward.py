"""Issue 29: do skipped tokens cost nothing in the backward pass at the step benchmark's large shape?

The large shape's loss inputs (N = 1,024 completion tokens: 8 rollouts x 128; V = 32,768; student hidden 512,
teacher 1,024), random heads. Timed (forward + backward, median of 5 after a warm-up, one thread): vanilla OPD's
fused loss, and SEAD's fused loss as the trainer now calls it (the zone pass's entropies given: no pass A) with
skip_fraction 0, 0.5 and 0.9. If skipped rows cost nothing, SEAD's time falls in proportion to the kept rows.
Usage: ``python benchmarks/diagnosis/skipped_backward.py OUT.json``.
"""
import json, statistics, sys, time
import torch
from sead.losses.fused import LMHead, fused_objective, fused_zone_entropies
from sead.losses.spec import LossSpec

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
N, V, Hs, Ht = 1024, 32768, 512, 1024
h_s = torch.randn(8, 128, Hs, generator=g)
w_s = torch.randn(V, Hs, generator=g) * Hs**-0.5
h_t = torch.randn(8, 128, Ht, generator=g)
w_t = torch.randn(V, Ht, generator=g) * Ht**-0.5 * 1.5
mask = torch.ones(8, 128)


def timed(spec, entropies=None):
    times = []
    for i in range(6):
        hs = h_s.clone().requires_grad_()
        ws = w_s.clone().requires_grad_()
        t0 = time.perf_counter()
        out = fused_objective(spec, LMHead(hs, ws), LMHead(h_t, w_t), mask, zone_entropies=entropies)
        out.loss.backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


rows = {"opd": timed(LossSpec.from_options(zones=False))}
for skip in (0.0, 0.5, 0.9):
    spec = LossSpec.from_options(zones=True, alpha=0.5, entropy_top_k=64, skip_fraction=skip)
    entropies = fused_zone_entropies(spec, LMHead(h_s, w_s), LMHead(h_t, w_t), mask)
    rows[f"sead_skip_{skip}"] = timed(spec, entropies)
result = {"seconds": rows, "vs_opd": {k: v / rows["opd"] for k, v in rows.items()},
          "shape": {"N": N, "V": V, "student_hidden": Hs, "teacher_hidden": Ht}, "threads": 1,
          "command": "python benchmarks/diagnosis/skipped_backward.py OUT.json", "date": "2026-12-07"}
print(json.dumps(result))
if len(sys.argv) > 1:
    json.dump(result, open(sys.argv[1], "w"), indent=1)
