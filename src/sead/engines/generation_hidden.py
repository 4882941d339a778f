"""The student's last hidden states at every position HF ``generate`` samples, recorded while it samples.

Each step of HF ``generate`` projects the last position's hidden state through the student's lm_head (``[B, 1,
H]``; the prefill's last position predicts the first completion token). A forward pre-hook on the lm_head records
it. Put side by side, the steps give ``[B, T, H]``: at each completion position the hidden state that predicted its
token, which is what a no-grad forward of the student over prompt and completion computes there (up to the
rounding of generation's KV cache). SEAD's zone pass reads the student's zone entropies from these
(``zone_student_hidden: generation``) instead of running the student again. Rows that finished early keep being
padded by ``generate``: their later steps are recorded too and fall on masked positions.

Nothing is recorded where the student does not sample through its own head in this process (a vLLM engine): the
zone pass then runs the student's forward, as with ``zone_student_hidden: forward``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sead.utils.tensors import to_width

__all__ = ["GenerationHidden"]


class GenerationHidden:
    """Records the inputs of a model's lm_head while :meth:`recording`; :meth:`take` gives them as ``[B, T, H]``."""

    def __init__(self):
        self._steps_B1H: list[torch.Tensor] = []

    @contextlib.contextmanager
    def recording(self, model) -> Iterator[GenerationHidden]:
        """Record every lm_head call of ``model`` (the unwrapped student) inside the block; earlier records are
        dropped when it starts."""
        self._steps_B1H = []
        head = model.get_output_embeddings()

        def hook(_module, args):
            hidden = args[0]
            if torch.is_tensor(hidden) and hidden.dim() == 3:
                self._steps_B1H.append(hidden[:, -1:].detach())  # a prefill without logits_to_keep: its last position

        handle = head.register_forward_pre_hook(hook)
        try:
            yield self
        finally:
            handle.remove()

    def take(self, rows: int, width: int) -> torch.Tensor | None:
        """The recorded hidden states as ``[rows, width, H]`` (cut or zero-padded to ``width`` completion positions,
        the generation batch's), then forgotten; ``None`` when nothing was recorded or the rows do not match (the
        caller then runs the forward)."""
        steps, self._steps_B1H = self._steps_B1H, []
        if not steps or any(s.shape[0] != rows for s in steps):
            return None
        return to_width(torch.cat(steps, dim=1), width)
