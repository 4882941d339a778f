"""Run by ``torchrun --nproc_per_node 2`` from tests/test_sharding.py: the teacher and the SG-OPD reference sharded
by the trainer's own preparation (``OPDTrainer._shard_frozen_models`` -> ``sead.training.sharding.prepare_frozen``) on two
gloo CPU processes, and what that changes.

accelerate never sets up FSDP on CPU (it runs it as DDP), so the trainer is built as accelerate builds it here
(MULTI_CPU, gloo) and its preparation is then run once more with a stand-in accelerator that reports FSDP2 and holds
a real ``FullyShardedDataParallelPlugin`` (TRANSFORMER_BASED_WRAP, reshard after forward); the student is sharded by
accelerate's own ``fsdp2_prepare_model``. For SG-OPD and SEAD, on a batch that is the same on both ranks:

- per-rank parameter bytes of teacher and reference, before (DDP) and after (FSDP2) sharding;
- the loss and every student gradient of one ``compute_loss`` + backward, sharded vs. unsharded (same process, same
  trainer, same inputs: FSDP2 averages the two ranks' identical gradients);
- SG-OPD's cold start on the sharded teacher at a rho where rho x (prompts per rank) < 1, for several steps: the
  teacher-mix pick counts per rank, the old per-rank draw (for comparison), and whether ``generate`` ran with
  ``synced_gpus``.

Writes ``result-rank{R}.json`` into argv[1].
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

import torch.distributed as dist  # noqa: E402
from accelerate.utils import FullyShardedDataParallelPlugin  # noqa: E402
from accelerate.utils.fsdp_utils import fsdp2_prepare_model  # noqa: E402
from torch.distributed.tensor import DTensor  # noqa: E402
from transformers import GenerationMixin, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from _tiny import parity_reward, tiny_config, tiny_dataset, tokenizer  # noqa: E402
from sead.training.sharding import full_param_bytes, local_param_bytes  # noqa: E402
from sead.training.trainer import OPDTrainer  # noqa: E402
from sead.utils.distributed import exit_after_distributed_run  # noqa: E402

N_LAYERS = 2


def model(seed: int):
    """A 2-layer Qwen2 (two FSDP2 layer units plus the root), random weights from ``seed``."""
    tok = tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=N_LAYERS, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg)


class FSDP2Standin:
    """What ``prepare_frozen`` and ``fsdp2_prepare_model`` read of an FSDP2 accelerator."""

    distributed_type = "FSDP"
    torch_device_mesh = None
    mixed_precision = "no"
    is_main_process = False
    device = torch.device("cpu")

    def __init__(self):
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True
        )
        self.state = types.SimpleNamespace(fsdp_plugin=plugin)

    @staticmethod
    def unwrap_model(m):
        return m


def batch(device):
    """Three rows, left-padded prompts, right-padded completions; identical on every rank."""
    g = torch.Generator().manual_seed(11)
    tok = tokenizer()
    prompt_ids = torch.randint(5, len(tok), (3, 5), generator=g)
    prompt_mask = torch.ones(3, 5, dtype=torch.long)
    prompt_ids[0, :2], prompt_mask[0, :2] = tok.pad_token_id, 0
    completion_ids = torch.randint(5, len(tok), (3, 7), generator=g)
    completion_mask = torch.ones(3, 7, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_ids[1, 4:] = tok.pad_token_id
    n_tokens = float(completion_mask.sum()) * dist.get_world_size()  # global count: same rows on every rank
    return {
        "prompt_ids": prompt_ids.to(device),
        "prompt_mask": prompt_mask.to(device),
        "completion_ids": completion_ids.to(device),
        "completion_mask": completion_mask.to(device),
        "correct": torch.tensor([True, False, True], device=device),
        "num_items_in_batch": torch.tensor(n_tokens, device=device),
    }


def loss_and_grads(trainer, inputs):
    trainer.model.train()
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {}
    for name, p in trainer.model.named_parameters():
        g = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        grads[name] = g.detach().clone()
    return float(loss), grads


def per_rank_bytes(m) -> dict:
    return {"local": local_param_bytes(m), "full": full_param_bytes(m), "params": sum(p.numel() for p in m.parameters())}


def old_pick_count(rho: float, n: int, seed: int, step: int, rank: int) -> int:
    """The cold start's draw before it was agreed across ranks (each rank its own u)."""
    g = torch.Generator().manual_seed(seed * 7919 + step * 131 + rank)
    return int(math.floor(rho * n + torch.rand((), generator=g).item()))


def run(method: str, out_dir: str, **overrides) -> dict:
    cfg = tiny_config(Path(out_dir) / method, method=method, max_steps=100, **overrides)
    trainer = OPDTrainer(
        model(0), model(1), args=cfg, train_dataset=tiny_dataset(16), processing_class=tokenizer(),
        reward_funcs=parity_reward,
    )  # fmt: skip
    rec = {"distributed_type": str(trainer.accelerator.distributed_type)}
    rec["ddp_teacher"] = per_rank_bytes(trainer.teacher_model)
    if trainer.ref_model is not None:
        rec["ddp_reference"] = per_rank_bytes(trainer.ref_model)
    inputs = batch(trainer.accelerator.device)
    rec["unsharded_loss"], ref_grads = loss_and_grads(trainer, inputs)

    # The trainer's own preparation, as it runs under an FSDP2 launch; then the student as accelerate shards it.
    real = trainer.accelerator
    trainer.accelerator = FSDP2Standin()
    try:
        trainer._shard_frozen_models(None)
        trainer.model = fsdp2_prepare_model(trainer.accelerator, trainer.model)
    finally:
        trainer.accelerator = real
    rec["fsdp2_teacher"] = per_rank_bytes(trainer.teacher_model)
    if trainer.ref_model is not None:
        rec["fsdp2_reference"] = per_rank_bytes(trainer.ref_model)
    rec["teacher_params_are_dtensors"] = all(isinstance(p, DTensor) for p in trainer.teacher_model.parameters())
    rec["sharded_loss"], grads = loss_and_grads(trainer, inputs)
    rec["max_grad_diff"] = max(float((grads[k] - ref_grads[k]).abs().max()) for k in ref_grads)
    rec["max_grad"] = max(float(g.abs().max()) for g in ref_grads.values())
    rec["teacher_at_rest_is_sharded"] = all(isinstance(p, DTensor) for p in trainer.teacher_model.parameters())
    # an evaluation's loss (no backward follows): FSDP2 keeps its root unit gathered unless the trainer reshards it
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, inputs)
    rec["student_at_rest_after_a_no_grad_loss_is_sharded"] = all(
        isinstance(p, DTensor) for p in trainer.model.parameters()
    )
    trainer.model.train()
    if method == "sgopd":
        rec["cold_start"] = cold_start(trainer)
    return rec


def cold_start(trainer) -> dict:
    """Several cold-start steps on the sharded teacher: 2 prompts per rank, rho ~ 0.3, so rho x 2 < 1."""
    seen_synced: list[bool] = []
    original = GenerationMixin._has_unfinished_sequences

    def spy(self, this_peer_finished, synced_gpus, device):
        seen_synced.append(bool(synced_gpus))
        return original(self, this_peer_finished, synced_gpus, device)

    GenerationMixin._has_unfinished_sequences = spy
    tok, ds = tokenizer(), tiny_dataset(16)
    rank = trainer.accelerator.process_index
    rows = [ds[2 * rank], ds[2 * rank + 1]]  # each rank its own prompts
    enc = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    width = max(len(e) for e in enc)
    prompt_ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
    steps = []
    try:
        for step in range(12):
            trainer.state.global_step = step
            output = {
                "prompt_ids": prompt_ids,
                "prompt_mask": (prompt_ids != tok.pad_token_id).long(),
                "completion_ids": torch.full((2, 3), 7),
                "completion_mask": torch.ones(2, 3, dtype=torch.long),
            }
            rho = trainer.schedules.rho(step, trainer.total_steps)
            n_before = len(seen_synced)
            mixed = trainer._mix_teacher_rollouts(rows, output, [False, False]).mixed
            steps.append({
                "step": step, "rho": rho, "generated": len(seen_synced) > n_before, "mixed": sum(mixed),
                "old_count": old_pick_count(rho, 2, trainer.args.seed, step, rank),
            })  # fmt: skip
    finally:
        GenerationMixin._has_unfinished_sequences = original
    return {"steps": steps, "synced_gpus": sorted(set(seen_synced))}


def main(out_dir: str) -> None:
    results = {
        "sgopd": run("sgopd", out_dir, teacher_mix_rho0=0.3, teacher_mix_phase_fraction=1.0, teacher_num_generations=2,
                     teacher_generation_batch_size=3, per_device_train_batch_size=2),
        "sead": run("sead", out_dir),
    }  # fmt: skip
    results["rank"], results["world_size"] = dist.get_rank(), dist.get_world_size()
    Path(out_dir, f"result-rank{results['rank']}.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()  # before the interpreter exits, on every rank
    exit_after_distributed_run(0)


if __name__ == "__main__":
    main(sys.argv[1])
