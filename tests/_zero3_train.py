"""Run by ``torchrun --nproc_per_node 2`` from tests/test_zero3.py: ``OPDTrainer`` under real DeepSpeed ZeRO-3 on two
gloo CPU processes (``DS_ACCELERATOR=cpu``), the student, the teacher and (SG-OPD) the reference all partitioned.

accelerate sets up DeepSpeed only where it finds an accelerator: on this CPU its backend choice would be "no
distributed run" while DeepSpeed itself joins the two processes. The one stand-in here: accelerate's backend choice
answers what it answers on a GPU node, with gloo in place of NCCL (``_prepare_backend``). Everything else is
accelerate's, TRL's, DeepSpeed's and sead's own code: ``TrainingArguments.deepspeed`` = :data:`DS_CONFIG`, the
student wrapped in a ZeRO-3 engine by the Trainer, the teacher and reference in stage-3 engines by TRL's
``prepare_deepspeed``. The persistence threshold is 0 so that even these tiny parameters are partitioned (empty
outside their modules' forwards), as a 7B model's ``lm_head`` is.

Per rank it writes into ``OUT/METHOD/``: ``w0.pt`` (the student before training), ``inputs-step{S}.pt`` (what the loss
saw at step S: the batch and the normaliser), ``w-step{S}.pt`` (the student after step S, gathered), and
``record.json`` (counters, whether the heads were empty at rest). At step :data:`NAN_STEP` rank 1's teacher hidden
states are NaN (``nonfinite_policy: skip``): that step must not be applied on either rank.

argv: OUT METHOD
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

import accelerate.state  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from _tiny import parity_reward, tiny_config, tiny_dataset, tiny_model, tokenizer  # noqa: E402
from sead.utils.distributed import exit_after_distributed_run  # noqa: E402

DS_CONFIG = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
}
STEPS = 3
NAN_STEP = 3
LR = 0.5

_prepare_backend = accelerate.state.PartialState._prepare_backend


def _gpu_node_backend(self, cpu=False, sagemaker_dp=False, backend=None):
    """accelerate's choice on a GPU node (a distributed run whose device has a backend), with gloo for NCCL."""
    if not cpu:
        return "gloo", DistributedType.MULTI_CPU
    return _prepare_backend(self, cpu, sagemaker_dp, backend)


accelerate.state.PartialState._prepare_backend = _gpu_node_backend


def _head_is_empty(model) -> bool:
    w = model.get_output_embeddings().weight
    return hasattr(w, "ds_id") and w.numel() == 0


def _gathered_state(model) -> dict[str, torch.Tensor]:
    from deepspeed.runtime.zero import GatheredParameters

    params = list(model.parameters())
    with GatheredParameters(params, modifier_rank=None):
        return {k: v.detach().clone() for k, v in model.named_parameters()}


class _Record(TrainerCallback):
    def __init__(self, trainer, out: Path):
        self.trainer, self.out = trainer, out
        self.rest = {}

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        unwrapped = t.accelerator.unwrap_model(t.model_wrapped)
        if state.global_step == 1:  # at rest between steps: every head partitioned
            self.rest = {"student": _head_is_empty(unwrapped), "teacher": _head_is_empty(
                t.accelerator.unwrap_model(t.teacher_model))}
            if t.ref_model is not None:
                self.rest["reference"] = _head_is_empty(t.accelerator.unwrap_model(t.ref_model))
        state_dict = _gathered_state(unwrapped)
        if t.accelerator.process_index == 0:
            torch.save(state_dict, self.out / f"w-step{state.global_step}.pt")


def main(out: str, method: str) -> None:
    from sead.training.trainer import OPDTrainer

    out_dir = Path(out) / method
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(
        out_dir, method=method, use_cpu=False, deepspeed=DS_CONFIG, max_steps=STEPS, optim="sgd", learning_rate=LR,
        max_grad_norm=0.0, per_device_train_batch_size=2, nonfinite_policy="skip", teacher_mixing=False,
    )  # fmt: skip
    student = tiny_model(0)
    trainer = OPDTrainer(student, tiny_model(1), args=cfg, train_dataset=tiny_dataset(16), processing_class=tokenizer(),
                         reward_funcs=parity_reward)  # fmt: skip
    rank = trainer.accelerator.process_index
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in student.named_parameters()}, out_dir / "w0.pt")
    record = _Record(trainer, out_dir)
    trainer.add_callback(record)

    compute, hidden = trainer._compute_loss, trainer._get_last_hidden_state

    def compute_loss(unwrapped, inputs, num_items_in_batch):
        step = trainer.state.global_step + 1
        kept = {k: v.detach().cpu().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        zones = trainer.step_spec().zones  # zone_scope: step: the cuts of the whole step (both ranks' tokens)
        cuts = None if zones is None or zones.cuts is None else [zones.cuts.teacher_entropy, zones.cuts.student_entropy_cut]
        torch.save({"inputs": kept, "num_items": float(num_items_in_batch), "zone_cuts": cuts},
                   out_dir / f"inputs-step{step}-rank{rank}.pt")
        return compute(unwrapped, inputs, num_items_in_batch)

    def last_hidden_state(model, *args, **kwargs):
        # NaN in the teacher's hidden states: the student's stand-in loss then has an exactly zero gradient, so only
        # the guard can keep rank 0's half of the step from being applied
        h = hidden(model, *args, **kwargs)
        teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
        if rank == 1 and trainer.state.global_step + 1 == NAN_STEP and model is teacher and trainer.model.training:
            h = h * float("nan")
        return h

    trainer._compute_loss = compute_loss
    trainer._get_last_hidden_state = last_hidden_state
    trainer.train()
    result = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "engine": type(trainer.model_wrapped).__name__,
        "heads_empty_at_rest": record.rest,
        "counters": dict(trainer.sead_counters),
        "global_step": trainer.state.global_step,
    }
    (out_dir / f"record-rank{rank}.json").write_text(json.dumps(result))
    trainer.accelerator.end_training()
    exit_after_distributed_run(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
