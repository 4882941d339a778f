"""A random loss problem shared by the fused-objective tests: student, teacher and reference heads, a mask,
sampled ids and verdicts (float64)."""

from __future__ import annotations

import torch


def _rand(shape, g, scale=1.0):
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale


def make_problem(seed, B=3, T=7, V=13, Hs=5, Ht=6, bias=False, p_mask=0.8, scale=1.5):
    """Student, teacher and reference heads, a mask, sampled ids and verdicts (reference = a perturbed student)."""
    g = torch.Generator().manual_seed(seed)
    hs, ws = _rand((B, T, Hs), g, scale), _rand((V, Hs), g, scale)
    ht, wt = _rand((B, T, Ht), g, scale), _rand((V, Ht), g, scale)
    hr, wr = hs + 0.3 * _rand((B, T, Hs), g), ws + 0.3 * _rand((V, Hs), g)
    bs, bt, br = (_rand((V,), g) if bias else None for _ in range(3))
    mask = (torch.rand((B, T), generator=g) < p_mask).long()
    mask[0, 0] = 1
    ids = torch.randint(0, V, (B, T), generator=g)
    correct = torch.rand(B, generator=g) < 0.5
    correct[0], correct[-1] = True, False
    return dict(hs=hs, ws=ws, bs=bs, ht=ht, wt=wt, bt=bt, hr=hr, wr=wr, br=br, mask=mask, ids=ids, correct=correct)


# The per-call tensors of the objectives; every other keyword is a spec option (LossSpec.from_options).
TENSOR_KEYS = ("correct", "reference", "ref_logits", "sampler_logprobs", "num_items")


def spec_of(**options):
    """A spec from flat keyword options, and the per-call tensors among them: ``(spec, tensors)``."""
    from sead.losses.spec import LossSpec

    tensors = {k: options.pop(k) for k in TENSOR_KEYS if k in options}
    return LossSpec.from_options(**options), tensors


def fused(student, teacher, mask, completion_ids=None, **options):
    """``fused_objective`` with flat keyword options (as the tests write them)."""
    from sead.losses.fused import fused_objective

    spec, tensors = spec_of(**options)
    return fused_objective(spec, student, teacher, mask, completion_ids, **tensors)


def on_logits(student_logits, teacher_logits, mask, completion_ids=None, **options):
    """``logits_objective`` with flat keyword options."""
    from sead.losses.objective import logits_objective

    spec, tensors = spec_of(**options)
    return logits_objective(spec, student_logits, teacher_logits, mask, completion_ids, **tensors)


def zone_entropies_of(student, teacher, mask, **options):
    """``fused_zone_entropies`` with flat keyword options."""
    from sead.losses.fused import fused_zone_entropies

    spec, _ = spec_of(**options)
    return fused_zone_entropies(spec, student, teacher, mask)
