"""TRL's vLLM engine for the student's rollouts (``use_vllm``): what sead checks and adds around it.

TRL 1.16 builds the engine (``vllm_mode="colocate"``: a ``vllm.LLM`` inside each training process;
``"server"``: a client of a separate server) and pushes the student's weights into it before each step's
rollouts. Two things it does not handle, both met on machines without a GPU:

- **Server mode needs CUDA.** TRL's ``VLLMClient.init_communicator`` runs at start-up in server mode and syncs
  weights over vLLM's NCCL weight-transfer engine; on any other device it raises ``NotImplementedError``
  (after waiting up to ``vllm_server_timeout`` seconds for the server when none is up). There is no server
  mode without weight sync in TRL. :func:`check_student_vllm` refuses it at once, before TRL waits.
- **Colocate weight sync on vLLM's CPU backend.** vLLM-CPU repacks each linear layer's weight for its GEMM
  kernels (oneDNN, or AMX) and drops the ``Parameter`` that held it, so TRL's per-tensor
  ``model.load_weights`` fails: ``'Parameter' object has no attribute 'weight_loader'``. (Where the repacking
  falls back to ``torch.nn.functional.linear``, e.g. bf16 on a CPU without AVX-512 BF16, the weights stay
  and the sync works as it is.) vLLM's own answer is its layerwise reload (what ``reload_weights`` of its
  model runner does): restore the layers' checkpoint-format parameters, load, then re-run each layer's
  processing. :func:`enable_cpu_weight_sync` wraps TRL's ``sync_weights`` in exactly that, on CPU only.

And one thing sead needs from it: **the engine's log-probs of the tokens it sampled.** The sampled estimator's
gradient ``-sg(A_t) log pi_S(y_t)`` is unbiased only for ``y ~ pi_S``; vLLM samples from its own numerics (a bf16
engine, other kernels), so sead weights each token by ``min(pi_S(y_t) / q(y_t), cap)`` as TRL's GRPO does.
TRL's distillation trainer asks vLLM for no log-probs and drops them; :class:`SamplerLogprobs` asks for the
sampled token's (``logprobs=0``) and keeps the last call's.
"""

from __future__ import annotations

import torch

from sead.utils.errors import SeadError

__all__ = ["SamplerLogprobs", "check_student_vllm", "enable_cpu_weight_sync"]


def check_student_vllm(args, *, cuda: bool | None = None) -> None:
    """Refuse ``use_vllm`` with ``vllm_mode="server"`` where CUDA is missing (TRL syncs weights over NCCL)."""
    if not getattr(args, "use_vllm", False) or getattr(args, "vllm_mode", "colocate") != "server":
        return
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda or getattr(args, "use_cpu", False):
        raise SeadError(
            "vllm_mode: server needs CUDA: TRL 1.16 pushes the student's weights to the vLLM server over NCCL "
            "(VLLMClient.init_communicator) at start-up and after every step, and NCCL runs on CUDA devices only. "
            "On this machine use `vllm_mode: colocate` (the engine inside the training process) or "
            "`use_vllm: false` (HF generate)."
        )


def _model_runner(llm):
    return llm.llm_engine.model_executor.driver_worker.model_runner


def enable_cpu_weight_sync(vllm_generation) -> bool:
    """Make TRL's colocate ``sync_weights`` work on vLLM's CPU backend (see the module docstring); returns whether
    it was wrapped (colocate mode on vLLM's CPU platform only; idempotent)."""
    if getattr(vllm_generation, "mode", None) != "colocate" or getattr(vllm_generation, "_sead_cpu_sync", False):
        return False
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    sync = vllm_generation.sync_weights

    def sync_weights():
        runner = _model_runner(vllm_generation.llm)
        initialize_layerwise_reload(runner.model)  # checkpoint-format parameters with their weight loaders back
        try:
            sync()  # TRL's own loop: model.load_weights([(name, param)]) for every parameter
        finally:
            finalize_layerwise_reload(runner.model, runner.model_config)  # re-packs every layer from what was loaded

    vllm_generation.sync_weights = sync_weights
    vllm_generation._sead_cpu_sync = True
    return True


class SamplerLogprobs:
    """Records the sampled tokens' log-probs of TRL's student vLLM engine (``VLLMGeneration``).

    ``attach(vllm_generation)`` sets its ``logprobs`` to 0 (the sampled token's only; vLLM returns them after its
    sampling transforms, TRL's ``logprobs_mode="processed_logprobs"``) and wraps its ``generate``; after each call
    :meth:`take` returns ``[B, T]`` log-probs aligned with ``completion_ids`` (NaN where none), then forgets them.
    """

    def __init__(self):
        self._last = None

    @classmethod
    def attached_to(cls, vllm_generation) -> SamplerLogprobs:
        recorder = cls()
        recorder.attach(vllm_generation)
        return recorder

    def attach(self, vllm_generation) -> None:
        vllm_generation.logprobs = 0
        generate = vllm_generation.generate

        def recording_generate(*args, **kwargs):
            out = generate(*args, **kwargs)
            self._last = out[2]  # (prompt_ids, completion_ids, logprobs, logprob_token_ids)
            return out

        vllm_generation.generate = recording_generate

    def take(self, width: int, device=None) -> torch.Tensor | None:
        """The last call's log-probs as a ``[B, width]`` tensor (NaN where the engine gave none, and beyond each
        completion's end), or ``None`` when nothing was recorded since the last ``take``."""
        rows, self._last = self._last, None
        if rows is None:
            return None
        out = torch.full((len(rows), width), float("nan"), dtype=torch.float32)
        for i, row in enumerate(rows):
            values = [float("nan") if lp is None or lp[0] is None else float(lp[0]) for lp in row[:width]]
            if values:
                out[i, : len(values)] = torch.tensor(values, dtype=torch.float32)
        return out.to(device) if device is not None else out
