"""Where the frozen models live: the teacher and SG-OPD's reference sharded the way the student is.

TRL's ``DistillationTrainer`` prepares its teacher with ``accelerator.prepare_model(teacher, evaluation_mode=True)``
unless DeepSpeed runs. Under FSDP that neither wraps nor shards it (accelerate only applies mixed precision there):
a 32B bf16 teacher would sit whole (64 GB) on every GPU. :func:`prepare_frozen` places a frozen model per launcher:

========================  ===============================================================================
launcher                  frozen model (teacher, reference)
========================  ===============================================================================
DDP, one process          whole on every process (``prepare_model(..., evaluation_mode=True)``)
DeepSpeed ZeRO-0/1/2      whole on every GPU: a DeepSpeed engine of stage 0 (TRL's ``prepare_deepspeed``)
DeepSpeed ZeRO-3          partitioned over the GPUs: a stage-3 engine (TRL's ``prepare_deepspeed``)
FSDP2                     sharded over the GPUs: ``fully_shard`` per decoder layer, then at the root
                          (:func:`shard_frozen_fsdp2`)
FSDP1                     TRL's ``prepare_fsdp`` (``FullyShardedDataParallel`` with the plugin's wrap policy)
========================  ===============================================================================

TRL's own ``prepare_fsdp`` shards an FSDP2 model at the root only, which gathers the whole model for each forward and
moves it to the GPU whole before sharding it; :func:`shard_frozen_fsdp2` shards each decoder layer first (the
plugin's auto-wrap policy, as accelerate does for the student), so a 32B teacher is never whole on one GPU.

A launch that asks for FSDP or DeepSpeed (``accelerate launch`` with such a config sets ``ACCELERATE_USE_FSDP`` /
``ACCELERATE_USE_DEEPSPEED``; ``TrainingArguments.fsdp`` / ``deepspeed`` ask too) but would not run it is refused
(:func:`check_sharding`): accelerate silently runs FSDP as DDP and ignores DeepSpeed on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from sead.utils.errors import SeadError

__all__ = [
    "requested_sharding",
    "sharding_refusal",
    "check_sharding",
    "fsdp_offload_refusal",
    "deepspeed_stage",
    "prepare_frozen",
    "shard_frozen_fsdp2",
    "frozen_copy",
    "reload_model",
    "is_partitioned",
    "zero3_gathered",
    "reshard_fsdp2",
    "local_param_bytes",
    "full_param_bytes",
    "attach_teacher",
    "load_teacher_like_trl",
]

FSDP, DEEPSPEED = "FSDP", "DEEPSPEED"
_TRUE = ("1", "true", "yes", "on")


def _kind(distributed_type: Any) -> str:
    """``DistributedType.FSDP`` / ``"FSDP"`` / ``"DistributedType.FSDP"`` -> ``"FSDP"``."""
    return str(getattr(distributed_type, "value", distributed_type)).split(".")[-1].upper()


def requested_sharding(args, environ=None) -> str | None:
    """What the launch asks for: ``"DEEPSPEED"``, ``"FSDP"`` or ``None``, from ``accelerate launch``'s environment
    (``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_USE_FSDP``, set from the config file's ``distributed_type``) and
    from ``TrainingArguments.deepspeed`` / ``fsdp``."""
    env = os.environ if environ is None else environ
    if getattr(args, "deepspeed", None) or str(env.get("ACCELERATE_USE_DEEPSPEED", "false")).lower() in _TRUE:
        return DEEPSPEED
    if getattr(args, "fsdp", None) or str(env.get("ACCELERATE_USE_FSDP", "false")).lower() in _TRUE:
        return FSDP
    return None


def sharding_refusal(
    requested: str | None, distributed_type: Any, *, use_cpu: bool = False, final: bool = True
) -> str | None:
    """Why a run that asked for ``requested`` sharding would not be sharded (``None``: it will be, or none was asked).

    ``distributed_type`` is accelerate's decision: ``Accelerator.distributed_type`` (``final``), or before the
    accelerator exists ``PartialState``'s (``final=False``), which only tells the CPU case apart (accelerate turns
    FSDP on only over GPU-like devices, and DeepSpeed only without ``cpu``).
    """
    if requested is None:
        return None
    got = _kind(distributed_type)
    cpu = use_cpu or got == "MULTI_CPU"
    if got == requested or (not final and not cpu):
        return None
    name = {FSDP: "FSDP", DEEPSPEED: "DeepSpeed"}[requested]
    why = (
        f"accelerate runs {name} only on GPUs (or other accelerators); on CPU (use_cpu: true) it sets up {got}"
        if cpu
        else f"accelerate set up {got} instead"
    )
    return (
        f"the launch asks for {name} sharding, but {why}: the student, the teacher and the reference would be whole "
        f"on every process. Launch on GPUs with the {name} config, or launch without it (e.g. "
        "recipes/accelerate/ddp.yaml, or unset ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED) to run replicated "
        "knowingly; `sead plan` says what each strategy needs per GPU."
    )


def _offloads(cpu_offload: Any) -> bool:
    """Whether an FSDP plugin's ``cpu_offload`` keeps the parameter shards on the CPU (FSDP2: ``CPUOffloadPolicy``;
    FSDP1: ``CPUOffload(offload_params=True)``; ``OffloadPolicy()`` is FSDP2's no-offload)."""
    if isinstance(cpu_offload, bool):
        return cpu_offload
    if type(cpu_offload).__name__ == "CPUOffloadPolicy":
        return True
    return bool(getattr(cpu_offload, "offload_params", False))


def fsdp_offload_refusal(args, environ=None, plugin=None) -> str | None:
    """Why an FSDP launch with parameter offload (``fsdp_offload_params: true``: ``FSDP_OFFLOAD_PARAMS`` from
    ``accelerate launch``, ``TrainingArguments.fsdp`` with ``offload``, or the plugin's ``cpu_offload``) is refused.

    With offload every FSDP shard lives in CPU memory between forwards. FSDP copies a unit's shards to the GPU for
    its own forward, but sead's loss gathers the ``lm_head`` weights itself, outside their forwards
    (``full_tensor()`` in :mod:`sead.training.forwards`): the gather would start from CPU shards (NCCL takes GPU
    tensors only) and the loss would run where the gathered head lies, on the CPU."""
    env = os.environ if environ is None else environ
    asked = str(env.get("FSDP_OFFLOAD_PARAMS", "false")).lower() in _TRUE
    asked = asked or "offload" in str(getattr(args, "fsdp", "") or "")
    asked = asked or (plugin is not None and _offloads(getattr(plugin, "cpu_offload", None)))
    if not asked:
        return None
    return (
        "fsdp_offload_params: true is not supported: the FSDP shards of the student, the teacher and the reference "
        "would live in CPU memory, and sead's loss gathers the lm_head weights itself, outside their forwards "
        "(the gather would start from CPU shards, and the loss would run on the CPU). Set fsdp_offload_params: "
        "false in the accelerate config (recipes/accelerate/fsdp2.yaml); `sead plan` says what FSDP2 needs per GPU "
        "without it."
    )


def check_sharding(args, distributed_type: Any, environ=None, final: bool = True, plugin=None) -> None:
    """Raise :class:`SeadError` with :func:`sharding_refusal`'s reason when the launch's sharding would not happen,
    or :func:`fsdp_offload_refusal`'s for an FSDP launch with parameter offload (``plugin``: the accelerator's FSDP
    plugin, once it exists)."""
    requested = requested_sharding(args, environ)
    reason = sharding_refusal(
        requested,
        distributed_type,
        use_cpu=bool(getattr(args, "use_cpu", False)),
        final=final,
    )
    if reason is None and (requested == FSDP or plugin is not None):
        reason = fsdp_offload_refusal(args, environ, plugin)
    if reason:
        raise SeadError(reason)


def deepspeed_stage(accelerator) -> int | None:
    """The ZeRO stage of the run (``None`` without DeepSpeed)."""
    if _kind(accelerator.distributed_type) != DEEPSPEED:
        return None
    plugin = accelerator.state.deepspeed_plugin
    return int(plugin.deepspeed_config["zero_optimization"]["stage"])


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are DeepSpeed ZeRO-3 partitions (``ds_id``) or FSDP2 shards (``DTensor``),
    i.e. a ``deepcopy`` would not give a whole model."""
    from torch.distributed.tensor import DTensor

    return any(hasattr(p, "ds_id") or isinstance(p, DTensor) for p in model.parameters())


def _zero3_available(p: torch.Tensor) -> bool:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return p.ds_status == ZeroParamStatus.AVAILABLE


@contextlib.contextmanager
def zero3_gathered(params: Iterable[torch.Tensor | None], owner: torch.nn.Module | None = None) -> Iterator[None]:
    """Every DeepSpeed ZeRO-3 partition among ``params`` whole on this rank for the ``with`` block; any other
    parameter (whole, an FSDP2 ``DTensor``, ``None``) as it is.

    Under ZeRO-3 a partitioned parameter's data is ``torch.empty(0)`` outside its module's forward, and sead's loss
    reads the ``lm_head`` weights without calling ``lm_head.forward``. Inside the block the partitions not gathered
    now are gathered read-only (``deepspeed.zero.GatheredParameters(..., modifier_rank=None)``, a collective: every
    rank enters the block together) and partitioned again on exit.

    ``owner``: the module whose forward runs the block and whose loss's gradient reaches ``params`` (the student,
    whose ``_compute_loss`` runs inside its root module's forward). The parameters are registered as its external
    parameters (``deepspeed.zero.register_external_parameter``, DeepSpeed's route for a parameter used outside its
    module's forward): ZeRO-3 then gathers them with ``owner``'s own parameters for every later forward and for the
    backward, and reduce-scatters their gradient. Those already gathered by ``owner``'s forward are left alone
    (partitioning them inside it would break it).
    """
    zero = [p for p in params if p is not None and hasattr(p, "ds_id")]
    if not zero:
        yield
        return
    from deepspeed.runtime.zero import GatheredParameters, register_external_parameter

    if owner is not None:
        for p in zero:
            register_external_parameter(owner, p)  # a no-op when already registered
    missing = [p for p in zero if not _zero3_available(p)]
    if not missing:
        yield
        return
    with GatheredParameters(missing, modifier_rank=None):
        yield


def reshard_fsdp2(model: torch.nn.Module) -> None:
    """Every FSDP2 unit of ``model`` back to its shards (``FSDPModule.reshard()``; nothing for any other model).

    FSDP2 keeps the root unit (embeddings, final norm, ``lm_head``) gathered after its forward, to be used at once by
    the backward, which reshards it. After a forward without a backward (evaluation) it stays gathered: whole on
    every rank until the next training backward, and plain ``Parameter``s where every other code path (TRL's vLLM
    weight sync calls ``full_tensor()`` on each parameter, a sharded checkpoint) expects ``DTensor`` shards."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def frozen_copy(model: torch.nn.Module, load=None) -> torch.nn.Module:
    """A frozen (eval, no grad) copy of ``model``: ``deepcopy`` of a whole model; for a partitioned one (ZeRO-3's
    ``zero.Init``), ``load()`` (loading it again from its path, as TRL's GRPO builds its reference under DeepSpeed)."""
    if is_partitioned(model):
        if load is None:
            raise SeadError(
                "the student's parameters are already partitioned (DeepSpeed ZeRO-3 / FSDP) and there is no path to "
                "load the reference model from: pass the student as a hub id or local path, or set "
                "`use_reference_model: false`."
            )
        copy_ = load()
    else:
        copy_ = copy.deepcopy(model)
    return copy_.eval().requires_grad_(False)


def prepare_frozen(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """Place a frozen model (teacher, reference) as the run's launcher shards (see the module's table). Returns the
    model to call: a DeepSpeed engine, the sharded module itself (FSDP2: ``fully_shard`` works in place) or the
    prepared module."""
    model.eval().requires_grad_(False)
    kind = _kind(accelerator.distributed_type)
    if kind == DEEPSPEED:
        from trl.models import prepare_deepspeed

        return prepare_deepspeed(model, accelerator)
    if kind == FSDP:
        plugin = accelerator.state.fsdp_plugin
        if int(getattr(plugin, "fsdp_version", 1)) == 2:
            mesh = getattr(accelerator, "torch_device_mesh", None)
            if mesh is not None:
                mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
            return shard_frozen_fsdp2(model, plugin, mesh=mesh)
        from trl.models import prepare_fsdp

        return prepare_fsdp(model, accelerator)
    return accelerator.prepare_model(model, evaluation_mode=True)


def shard_frozen_fsdp2(model: torch.nn.Module, plugin, mesh=None) -> torch.nn.Module:
    """``fully_shard`` a frozen model per decoder layer (``plugin``'s auto-wrap policy, read with accelerate's
    ``fsdp2_prepare_auto_wrap_policy``; ``TRANSFORMER_BASED_WRAP`` takes the model's ``_no_split_modules``), then at
    the root (embeddings, final norm, ``lm_head``). Every unit reshards after its forward (nothing to keep for a
    backward), so between calls each rank holds 1/N of every parameter, and a forward holds one layer gathered at a
    time. The plugin's mixed-precision and offload policies apply as to the student.

    The model is marked as FSDP-managed (``_is_fsdp_managed_module``, what transformers' ``generate`` reads), so
    its ``generate`` runs with ``synced_gpus=True`` over several processes: every rank keeps stepping (and joining
    the all-gathers) until every rank's sequences are done.
    """
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return model
    plugin.set_auto_wrap_policy(model)
    kwargs = {
        "reshard_after_forward": True,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        "mesh": mesh,
    }
    if plugin.cpu_offload is not None:
        kwargs["offload_policy"] = plugin.cpu_offload
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    if policy is not None:
        for module in reversed(list(model.modules())[1:]):  # bottom-up: each layer moves to the device alone
            if policy(module) and not isinstance(module, FSDPModule):
                fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    model._is_fsdp_managed_module = True
    return model.eval()


def reload_model(model: torch.nn.Module, args) -> torch.nn.Module:
    """``model`` loaded again from its path with ``args.model_init_kwargs``, as TRL's GRPO builds its reference
    model (under ZeRO-3 the load is partitioned by ``zero.Init``, as the student's was)."""
    from trl.trainer.utils import create_model_from_path, get_config_model_id

    kwargs = dict(args.model_init_kwargs or {})
    state = getattr(args, "distributed_state", None)
    if state is not None and _kind(state.distributed_type) in ("MULTI_GPU", DEEPSPEED):
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    kwargs.setdefault("dtype", model.dtype)
    kwargs.setdefault("attn_implementation", model.config._attn_implementation)
    return create_model_from_path(get_config_model_id(model.config), **kwargs)


def _local(p: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if isinstance(p, DTensor):
        return p.to_local()
    ds = getattr(p, "ds_tensor", None)  # DeepSpeed ZeRO-3: this rank's partition
    return ds if ds is not None else p


def local_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters held by this process (its FSDP2 shards / ZeRO-3 partitions, or all of
    them when whole). Tied parameters count once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        t = _local(p)
        total += t.numel() * t.element_size()
    return total


def full_param_bytes(model: torch.nn.Module) -> int:
    """Bytes of ``model``'s parameters when whole (global shapes). Tied parameters count once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        numel = int(getattr(p, "ds_numel", 0)) or p.numel()  # DTensor.numel() is the global numel
        total += numel * p.element_size()
    return total


def load_teacher_like_trl(teacher, args, init_kwargs: dict | None = None) -> torch.nn.Module:
    """The teacher loaded as TRL's ``DistillationTrainer.__init__`` loads one given by name (``dtype`` from
    ``teacher_model_init_kwargs`` as a torch dtype, ``teacher_model_revision``, ``device_map=None`` under DDP /
    DeepSpeed, ``trust_remote_code``); a loaded model is returned as it is. ``init_kwargs``: instead of
    ``teacher_model_init_kwargs`` (one of several teachers, with its own)."""
    if not isinstance(teacher, str):
        return teacher
    from trl.trainer.utils import create_model_from_path

    kwargs = dict((args.teacher_model_init_kwargs if init_kwargs is None else init_kwargs) or {})
    dtype = kwargs.get("dtype")
    kwargs["dtype"] = dtype if dtype in ("auto", None) or not isinstance(dtype, str) else getattr(torch, dtype)
    if args.teacher_model_revision is not None:
        kwargs.setdefault("revision", args.teacher_model_revision)
    state = getattr(args, "distributed_state", None)
    if state is not None and _kind(state.distributed_type) in ("MULTI_GPU", DEEPSPEED):
        kwargs["device_map"] = None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return create_model_from_path(teacher, **kwargs)


def attach_teacher(teacher: torch.nn.Module, accelerator, deepspeed: bool) -> torch.nn.Module:
    """A teacher sead loaded itself (:func:`load_teacher_like_trl`), prepared as TRL's ``__init__`` prepares its own:
    DeepSpeed: ``prepare_deepspeed``; otherwise ``prepare_model(evaluation_mode=True)``."""
    if deepspeed:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(teacher, accelerator)
    return accelerator.prepare_model(teacher, evaluation_mode=True)
