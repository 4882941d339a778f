"""How far each top-k convention is from the exact full-vocabulary KL: ``python -m sead.bench.profiles.topk_conventions``.

On random logits of ``V`` ids, teacher ``z_T`` from one of two families, the student ``z_S = z_T + delta * g'``
(``g' ~ N(0, 1)``): ``gaussian`` ``z_T = sigma * g`` (``g ~ N(0, 1)``; larger ``sigma`` = more peaked), and
``zipf`` ``z_T(v) = -a log rank(v)`` over a random ranking (``p_T`` of the r-th id ``~ r^-a``: LM-like heavy
tails; larger ``a`` = more peaked). For each setting and each convention (``sead.method.divergences.topk_forward_kl`` /
``topk_reverse_kl``): the mean relative error of the per-token value against the exact KL over the
vocabulary, ``mean_t |KL_k(t) - KL(t)| / KL(t)``, and the cosine between the per-token gradients w.r.t.
the student's logits and the exact KL's (1 = same direction). Prints a markdown table (docs/methods.md).
"""

from __future__ import annotations

import argparse
import sys

import torch

from sead.method.divergences import TOPK_CONVENTIONS, forward_kl, reverse_kl, topk_forward_kl, topk_reverse_kl

SETTINGS = (("gaussian", 2.0), ("gaussian", 4.0), ("gaussian", 8.0), ("zipf", 1.0), ("zipf", 1.5), ("zipf", 2.0))


def teacher_logits(family: str, param: float, n: int, v: int, g: torch.Generator) -> torch.Tensor:
    """``[n, v]`` float64 teacher logits of ``family`` (``gaussian``: ``param * N(0, 1)``; ``zipf``: ``-param log rank``)."""
    if family == "gaussian":
        return param * torch.randn(n, v, generator=g, dtype=torch.float64)
    if family == "zipf":
        ranks = torch.argsort(torch.rand(n, v, generator=g), dim=-1).double() + 1.0
        return -param * ranks.log()
    raise ValueError(f"family must be 'gaussian' or 'zipf', got {family!r}")


def _value_and_grad(fn, z_s, z_t):
    z = z_s.clone().requires_grad_(True)
    value = fn(z, z_t)
    (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad


def measure(settings=SETTINGS, n: int = 256, v: int = 32768, k: int = 64, delta: float = 1.0, seed: int = 0) -> list[dict]:
    """One row per (setting, direction): the teacher's top-k mass, the exact KL's mean, and per convention the
    mean relative value error and the mean gradient cosine to the exact KL (float64)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for family, param in settings:
        z_t = teacher_logits(family, param, n, v, g)
        z_s = z_t + delta * torch.randn(n, v, generator=g, dtype=torch.float64)
        mass = float(torch.softmax(z_t, -1).topk(min(k, v), dim=-1).values.sum(-1).mean())
        for direction, exact_fn, topk_fn in (("FKL", forward_kl, topk_forward_kl), ("RKL", reverse_kl, topk_reverse_kl)):
            exact, g_exact = _value_and_grad(exact_fn, z_s, z_t)
            row = {"teacher": f"{family} {param:g}", "direction": direction, "teacher_topk_mass": mass,
                   "exact_mean": float(exact.mean())}
            for conv in TOPK_CONVENTIONS:
                est, g_est = _value_and_grad(lambda a, b, c=conv, f=topk_fn: f(a, b, k, 1.0, c), z_s, z_t)
                row[f"{conv}_rel_err"] = float(((est - exact).abs() / exact.clamp(min=1e-300)).mean())
                cos = torch.nn.functional.cosine_similarity(g_est, g_exact, dim=-1)
                row[f"{conv}_grad_cos"] = float(cos.nan_to_num(0.0).mean())
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ["teacher logits", "KL", "teacher top-k mass", "exact KL (mean)"]
    head += [f"{c}: rel. error / grad cos" for c in TOPK_CONVENTIONS]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["teacher"], r["direction"], f"{r['teacher_topk_mass']:.3f}", f"{r['exact_mean']:.3f}"]
        cells += [f"{r[f'{c}_rel_err']:.3f} / {r[f'{c}_grad_cos']:.3f}" for c in TOPK_CONVENTIONS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sead.bench.profiles.topk_conventions", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="tokens per setting")
    p.add_argument("--v", type=int, default=32768, help="vocabulary size")
    p.add_argument("--k", type=int, default=64, help="top-k")
    p.add_argument("--delta", type=float, default=1.0, help="student = teacher + delta * N(0, 1) noise on the logits")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rows = measure(SETTINGS, a.n, a.v, a.k, a.delta, a.seed)
    print(f"N={a.n} tokens per row, V={a.v}, k={a.k}, student = teacher + {a.delta:g} N(0, 1), float64\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
