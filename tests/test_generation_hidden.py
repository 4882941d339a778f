"""``zone_student_hidden: generation``: the student's hidden states recorded at its lm_head while HF ``generate``
samples are those a no-grad forward over prompt and completion gives at the completion positions (to fp32
rounding), so SEAD's zone pass runs no student forward; the zone cuts and the losses match the forward's. Where
nothing is recorded (``forward``, teacher mixing) the zone pass runs the forward."""

from __future__ import annotations

import pytest
import torch

from _tiny import tiny_dataset, tiny_trainer
from sead.engines.generation_hidden import GenerationHidden


def _trainer(tmp_path, **fields):
    torch.set_num_threads(1)
    tr = tiny_trainer(tmp_path, method="sead", curriculum=False, max_steps=10, per_device_train_batch_size=4,
                      gradient_accumulation_steps=2, **fields)  # fmt: skip
    tr.model.train()
    return tr


class _Spy:
    """The trainer's zone pass: what ``step_heads`` was given, and how often the student's backbone ran."""

    def __init__(self, tr):
        self.given, self.student_forwards = [], 0
        step_heads = tr.forwards.step_heads

        def spy(output, size, wrapped, teacher_model, served, cache="device", student_hidden=None):
            self.given.append((dict(output), student_hidden))
            return step_heads(output, size, wrapped, teacher_model, served, cache, student_hidden)

        tr.forwards.step_heads = spy
        tr.model.model.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.student_forwards += 1


def test_recorded_hidden_states_are_the_forwards_at_the_completion_positions(tmp_path):
    tr = _trainer(tmp_path)
    assert isinstance(tr.generation_hidden, GenerationHidden)
    spy = _Spy(tr)
    rows = [tiny_dataset(8)[i] for i in range(8)]
    output = tr._generate_and_score_completions(rows)
    (batch, recorded), = spy.given
    B, T = batch["completion_ids"].shape
    assert recorded is not None and recorded.shape[:2] == (B, T)
    # the zone pass ran no student forward: the student's backbone ran only while generating (once per token)
    forwards_in_generation = spy.student_forwards
    student = tr.accelerator.unwrap_model(tr.model)
    seq = tr.forwards.sequences(batch)
    with torch.no_grad():
        _, reference = tr.forwards.hidden(tr.model, *seq, frozen=False)
    mask = batch["completion_mask"].bool()
    assert spy.student_forwards == forwards_in_generation + 1  # (the reference forward just taken)
    torch.testing.assert_close(recorded[mask], reference[mask], rtol=1e-4, atol=1e-5)
    assert not torch.equal(recorded[mask], torch.zeros_like(recorded[mask]))
    # the same cuts as a zone pass with the forward
    cuts = tr.zone_cuts.cuts_at(tr.state.global_step)
    tr.zone_cuts.start(tr.state.global_step)
    for heads, *_ in tr.forwards.step_heads(batch, 4, tr.model, tr.teacher_model, None, "off"):
        tr.zone_cuts.add(heads.student, heads.teacher, heads.mask_BT)
    again = tr.zone_cuts.finish().cuts
    assert again.teacher_entropy == pytest.approx(cuts.teacher_entropy, abs=1e-4)
    assert again.student_entropy_cut == pytest.approx(cuts.student_entropy_cut, abs=1e-4)
    assert output["zone_entropies"].shape == (B, T, 2)
    assert student is tr.accelerator.unwrap_model(tr.model)


@pytest.mark.parametrize("fields", [{"zone_student_hidden": "forward"}, {"teacher_mixing": True}])
def test_without_a_recording_the_zone_pass_runs_the_student(tmp_path, fields):
    from _tiny import parity_reward

    tr = _trainer(tmp_path, reward_funcs=parity_reward, **fields)
    assert tr.generation_hidden is None
    spy = _Spy(tr)
    tr._generate_and_score_completions([tiny_dataset(8)[i] for i in range(8)])
    ((_, recorded),) = spy.given
    assert recorded is None


def test_take_cuts_pads_and_refuses_other_rows():
    model = torch.nn.Module()
    head = torch.nn.Linear(3, 5, bias=False)
    model.get_output_embeddings = lambda: head
    rec = GenerationHidden()
    steps = [torch.randn(2, 1, 3) for _ in range(4)]
    with rec.recording(model):
        head(torch.randn(2, 6, 3))  # a prefill that kept every position: its last one counts
        for h in steps[1:]:
            head(h)
    head(torch.randn(2, 1, 3))  # after the block: not recorded
    with rec.recording(model):
        pass
    assert rec.take(2, 4) is None  # a new recording starts empty
    with rec.recording(model):
        for h in steps:
            head(h)
    got = rec.take(2, 6)
    assert got.shape == (2, 6, 3) and torch.equal(got[:, :4], torch.cat(steps, 1)) and not got[:, 4:].any()
    assert rec.take(2, 6) is None  # taken once
    with rec.recording(model):
        for h in steps:
            head(h)
    assert rec.take(2, 3).shape == (2, 3, 3)
    with rec.recording(model):
        head(steps[0])
    assert rec.take(3, 1) is None  # other rows than the batch's
