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
"""

from __future__ import annotations

import torch

from .errors import SeadError

__all__ = ["check_student_vllm", "enable_cpu_weight_sync"]


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
