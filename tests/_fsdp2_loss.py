"""Run by ``torchrun --nproc_per_node 2`` from tests/test_scale_paths.py: the fused SEAD loss under real FSDP2
sharding (``fully_shard``, gloo, CPU), called the way ``OPDTrainer._compute_loss`` calls it.

Both models are sharded per layer and at the root (as accelerate's TRANSFORMER_BASED_WRAP does). The teacher's
forward runs through TRL's ``_ForwardRedirection`` and reshards afterwards, so its ``lm_head.weight`` is a sharded
DTensor when the loss reads it; the student's loss runs inside its own redirected forward. Every rank gets the same
batch, so the gradient FSDP2 averages over ranks must equal the gradient of the unsharded student. Writes
``result-rank{R}.json`` into the directory given as argv[1].
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).parent))
from trl.models.utils import _ForwardRedirection  # noqa: E402

from _tiny import tiny_model  # noqa: E402
from sead.losses.fused import LMHead, fused_sead_loss  # noqa: E402
from sead.training.forwards import full_tensor as _full_tensor  # noqa: E402
from sead.utils.distributed import exit_after_distributed_run  # noqa: E402


def loss_of(student, teacher, ids_BT, mask_BT, redirect=None):
    """The trainer's loss call: hidden states of both models, lm_head weights as plain tensors, fused SEAD."""

    def teacher_hidden():
        return teacher.model(input_ids=ids_BT).last_hidden_state

    def student_loss():
        h_s = student.model(input_ids=ids_BT).last_hidden_state
        head_s, head_t = student.get_output_embeddings(), teacher.get_output_embeddings()
        sharded = isinstance(head_t.weight, DTensor)
        w_s, w_t = _full_tensor(head_s.weight, h_s.dtype), _full_tensor(head_t.weight, h_t.dtype)
        out = fused_sead_loss(h_s, w_s, h_t, w_t, mask_BT, alpha=0.5, entropy_top_k=None, skip_fraction=0.5)
        # the full-logits path (use_fused_loss: false): the gathered weight's logits, as the trainer projects them
        # (values only: no autograd graph left across the gather when the processes exit)
        with torch.no_grad():
            teacher_logits = LMHead(h_t, w_t, _full_tensor(head_t.bias)).full_logits()
        return out.loss, sharded, teacher_logits

    with torch.no_grad():
        h_t = redirect(teacher, teacher, teacher_hidden) if redirect else teacher_hidden()
    return redirect(student, student, student_loss) if redirect else student_loss()


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    student, teacher = tiny_model(0), tiny_model(1)
    reference = copy.deepcopy(student)
    g = torch.Generator().manual_seed(7)
    ids_BT = torch.randint(5, student.config.vocab_size, (3, 12), generator=g)
    mask_BT = torch.ones(3, 12, dtype=torch.long)
    mask_BT[1, 8:] = 0

    ref_loss, _, ref_teacher_logits = loss_of(reference, teacher, ids_BT, mask_BT)
    ref_loss.backward()

    for model in (student, teacher):
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model, reshard_after_forward=True)
    loss, teacher_head_was_sharded, teacher_logits = loss_of(
        student, teacher, ids_BT, mask_BT, redirect=_ForwardRedirection()
    )
    loss.backward()

    max_diff = 0.0
    for p, p_ref in zip(student.parameters(), reference.parameters()):
        grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        max_diff = max(max_diff, float((grad - p_ref.grad).abs().max()))
    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "loss": loss.item(),
        "reference_loss": ref_loss.item(),
        "max_grad_diff": max_diff,
        "max_teacher_logits_diff": float((teacher_logits - ref_teacher_logits).abs().max()),
        "teacher_head_was_sharded": teacher_head_was_sharded,
        "student_head_is_dtensor_at_rest": isinstance(student.get_output_embeddings().weight, DTensor),
    }
    Path(out_dir, f"result-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
    exit_after_distributed_run(0)


if __name__ == "__main__":
    main(sys.argv[1])
