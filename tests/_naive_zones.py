"""The naive reference of SEAD's zones (METHODS.md 1a) for the tests: flat Python lists, written out.

Zone codes: 0 skip, 1 RKL, 2 FKL, -1 masked.
"""

from __future__ import annotations

import math

SKIP, RKL, FKL, MASKED = 0, 1, 2, -1


def ref_quantile(values, q):
    """Linear-interpolation quantile (numpy/torch default), written out."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    w = pos - lo
    return v[lo] + w * (v[hi] - v[lo])


def ref_zones(ht, hs, mask, q, s):
    """Flat lists in, flat list of zone codes out: FKL where ``H_T`` is at or above its ``q`` quantile over the
    valid positions; of the rest, the ``floor(s * n_valid)`` lowest ``H_S`` (ties broken by position) skip, the
    others RKL."""
    n = len(mask)
    zones = [MASKED] * n
    valid = [i for i in range(n) if mask[i]]
    if not valid:
        return zones
    th = ref_quantile([ht[i] for i in valid], q)
    others = []
    for i in valid:
        if ht[i] >= th:
            zones[i] = FKL
        else:
            others.append(i)
    n_skip = min(math.floor(s * len(valid)), len(others))
    others.sort(key=lambda i: (hs[i], i))
    for j, i in enumerate(others):
        zones[i] = SKIP if j < n_skip else RKL
    return zones
