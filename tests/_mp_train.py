"""`sead train` with per-rank records, for tests/test_multiprocess.py (not a test module itself).

Launched as ``accelerate launch --multi_gpu --num_processes 2 tests/_mp_train.py --config R.yaml [--field value]
[--parity_reward]`` with ``use_cpu: true`` in the recipe (two CPU processes, gloo).
Builds the trainer exactly as ``sead train`` does (``sead.commands.train.parse`` + ``sead.training.recipe.build_trainer``)
and writes ``OUTPUT_DIR/record-rank{R}.json``: per step, the curriculum gate, open pool, global draw and
this rank's rows, the bucket and window after the update, and the loss normaliser this rank received
next to its local valid-token count.
"""

from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)

from transformers import TrainerCallback  # noqa: E402

from sead.commands.train import _resume_target, parse  # noqa: E402
from sead.training.recipe import build_trainer  # noqa: E402
from sead.utils.distributed import exit_after_distributed_run  # noqa: E402


class _Record(TrainerCallback):
    def __init__(self):
        self.steps: dict[int, dict] = {}

    def row(self, step: int) -> dict:
        return self.steps.setdefault(step, {"step": step})


def _parity_reward(prompts, completions, **columns):
    return [1.0 if len(c) % 2 == 0 else 0.0 for c in completions]


def main(argv: list[str]) -> None:
    parity = "--parity_reward" in argv  # a verifier random models pass half the time: the gate moves
    argv = [a for a in argv if a != "--parity_reward"]
    script, cfg = parse(argv)
    record = _Record()
    trainer = build_trainer(script, cfg, callbacks=[record], progress=False)
    if parity:
        trainer.grader.funcs = [_parity_reward]
    rank = trainer.accelerator.process_index

    cur = trainer.curriculum
    if cur is not None:
        draw = cur.draw  # the trainer's draw from the open pool: the global draw and this rank's slice of it

        def recorded_draw(step, total, n, repeat=1):
            indices = draw(step, total, n, repeat)
            row = record.row(step + 1)
            row["gate"] = cur.gate(step, total)
            row["open_pool"] = cur.open_indices(step, total).tolist()
            row["global_draw"] = list(indices)
            k = n // trainer.accelerator.num_processes
            row["local_prompts"] = [trainer.train_dataset[i]["prompt"] for i in indices[rank * k : (rank + 1) * k]]
            return indices

        cur.draw = recorded_draw

    compute = trainer._compute_loss

    def compute_loss(unwrapped, inputs, num_items_in_batch):
        row = record.row(trainer.state.global_step + 1)
        row.setdefault("num_items_in_batch", []).append(float(num_items_in_batch))
        row.setdefault("normaliser", []).append(float(trainer.spec.normaliser(num_items_in_batch)))
        row.setdefault("local_tokens", []).append(int(inputs["completion_mask"].sum()))
        return compute(unwrapped, inputs, num_items_in_batch)

    trainer._compute_loss = compute_loss

    cuts = trainer._step_zone_cuts  # zone_scope: step: the step's cuts, from every rank's gathered entropies

    def step_zone_cuts(output):
        cuts(output)
        step = trainer.state.global_step
        got = trainer.zone_cuts.cuts_at(step)
        record.row(step + 1)["zone_cuts"] = [got.teacher_entropy, got.student_entropy_cut]
        if len(trainer.teachers) > 1:  # several teachers: each one's cuts
            record.row(step + 1)["zone_cuts_by_teacher"] = {
                str(k): [c.teacher_entropy, c.student_entropy_cut] for k, c in trainer.zone_cuts.cuts_by.items()
            }

    trainer._step_zone_cuts = step_zone_cuts

    def on_step_end(args, state, control, **kwargs):
        row = record.row(state.global_step)
        if trainer.curriculum is not None:
            row["curriculum_state"] = trainer.curriculum.state_dict()
        row["counters"] = dict(trainer.sead_counters)

    record.on_step_end = on_step_end
    trainer.train(resume_from_checkpoint=_resume_target(cfg.resume_from_checkpoint, cfg.output_dir))
    trainer.save_model(cfg.output_dir)
    out = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "steps": [record.steps[k] for k in sorted(record.steps)],
    }
    with open(os.path.join(cfg.output_dir, f"record-rank{rank}.json"), "w") as f:
        json.dump(out, f)
    trainer.accelerator.end_training()  # destroys the process group on every rank before exit (as `sead train`)
    exit_after_distributed_run(0)  # and past the C++ teardown that can still abort a finished rank


if __name__ == "__main__":
    main(sys.argv[1:])
