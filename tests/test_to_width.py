"""``to_width``: a per-position tensor cut or padded on the right of dim 1 to the batch's width (hand values)."""

import torch

from sead.utils.tensors import to_width


def test_cut_pad_and_unchanged_by_hand():
    t = torch.arange(6.0).view(2, 3)
    assert to_width(t, 3) is t
    assert to_width(t, 2).tolist() == [[0.0, 1.0], [3.0, 4.0]]
    assert to_width(t, 5, value=-1.0).tolist() == [[0.0, 1.0, 2.0, -1.0, -1.0], [3.0, 4.0, 5.0, -1.0, -1.0]]
    k = torch.ones(1, 0, 2, dtype=torch.long)  # [B, T, k] with no positions: one padded column of zeros
    assert to_width(k, 1).tolist() == [[[0, 0]]] and to_width(k, 1).dtype == torch.long
