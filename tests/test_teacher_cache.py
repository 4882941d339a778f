"""``teacher_cache``: the step's zone pass keeps a local teacher's hidden states for the losses of the step's
micro-batches, so the teacher runs one forward per rollout per step. The loss and the student's gradients from the
kept hidden states equal those of a fresh teacher forward (the same micro-batch: bit for bit; other row groupings:
to fp32 rounding); the teacher's forwards are counted; a completion-less step and the refusal of unknown values."""

from __future__ import annotations

import pytest
import torch

from _tiny import tiny_trainer, tokenizer
from sead.training.forwards import TEACHER_HIDDEN_KEY
from sead.utils.errors import SeadError


def _trainer(tmp_path, **fields):
    torch.set_num_threads(1)
    tr = tiny_trainer(tmp_path, method="sead", curriculum=False, max_steps=10, per_device_train_batch_size=2,
                      gradient_accumulation_steps=2, **fields)  # fmt: skip
    tr.model.train()
    tr.state.global_step = 3
    return tr


def _batch(width: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer())
    mask = torch.ones(4, width, dtype=torch.long)
    if width:
        mask[0, 2:], mask[3, 4:] = 0, 0
    return {"prompt_ids": torch.randint(5, vocab, (4, 5), generator=g), "prompt_mask": torch.ones(4, 5, dtype=torch.long),
            "completion_ids": torch.randint(5, vocab, (4, width), generator=g), "completion_mask": mask}  # fmt: skip


def _loss_and_grads(tr, micro: dict[str, torch.Tensor], n: float):
    student = tr.accelerator.unwrap_model(tr.model)
    params = [p for p in student.parameters() if p.requires_grad]
    loss = tr._compute_loss(student, micro, torch.tensor(n))[0]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


class _Count:
    """Forwards of a model's backbone (TRL's ``_get_last_hidden_state`` runs ``model.model``)."""

    def __init__(self, model):
        self.calls = 0
        model.model.register_forward_pre_hook(self)

    def __call__(self, *_):
        self.calls += 1


@pytest.mark.parametrize("cache", ["device", "cpu"])
def test_kept_hidden_states_give_the_fresh_forwards_loss_and_gradients(tmp_path, cache):
    tr = _trainer(tmp_path, teacher_cache=cache)
    batch = _batch()
    n = float(batch["completion_mask"].sum())
    teacher = _Count(tr.teacher_model)
    tr._step_zone_cuts(batch)
    assert teacher.calls == 2  # the zone pass: one forward per micro-batch
    kept = batch[TEACHER_HIDDEN_KEY]
    assert kept.shape == (4, 7, tr.teacher_model.config.hidden_size) and kept.device.type == "cpu"
    assert not kept.requires_grad
    for rows in (slice(0, 2), slice(2, 4), [0, 3], [2, 1]):  # the zone pass's micro-batches, then other groupings
        micro = {k: v[rows] for k, v in batch.items()}
        fresh = {k: v for k, v in micro.items() if k != TEACHER_HIDDEN_KEY}
        calls = teacher.calls
        loss, grads = _loss_and_grads(tr, micro, n)
        assert teacher.calls == calls  # read from the cache: no teacher forward
        ref_loss, ref_grads = _loss_and_grads(tr, fresh, n)
        assert teacher.calls == calls + 1  # without it the loss runs the teacher
        assert float(ref_loss) != 0.0
        exact = isinstance(rows, slice)  # the zone pass ran the teacher on exactly these rows
        tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(loss, ref_loss, **tol)
        for g, r in zip(grads, ref_grads):
            if r is None:
                assert g is None
            else:
                torch.testing.assert_close(g, r, **tol)


def test_off_keeps_nothing_and_the_loss_runs_the_teacher(tmp_path):
    tr = _trainer(tmp_path, teacher_cache="off")
    batch = _batch()
    teacher = _Count(tr.teacher_model)
    tr._step_zone_cuts(batch)
    assert TEACHER_HIDDEN_KEY not in batch and teacher.calls == 2
    _loss_and_grads(tr, {k: v[:2] for k, v in batch.items()}, 8.0)
    assert teacher.calls == 3


def test_a_step_without_completion_tokens_keeps_one_masked_column(tmp_path):
    tr = _trainer(tmp_path)
    batch = _batch(width=0)
    tr._step_zone_cuts(batch)
    assert batch[TEACHER_HIDDEN_KEY].shape[:2] == (4, 1)  # the zone pass's one masked column, every row
    teacher = _Count(tr.teacher_model)
    loss, grads = _loss_and_grads(tr, {k: v[:2] for k, v in batch.items()}, 1.0)
    assert teacher.calls == 0 and float(loss) == 0.0


def test_an_unknown_teacher_cache_is_refused_by_name(tmp_path):
    from _tiny import tiny_config

    with pytest.raises(SeadError, match="teacher_cache must be one of 'device', 'cpu', 'off'; got 'gpu'"):
        tiny_config(tmp_path, teacher_cache="gpu")


# --------------------------------------------------------------------------- the zone pass's entropies, reused
@pytest.mark.parametrize("estimator", ["full", "topk", "sampled"])
@pytest.mark.parametrize("support", ["teacher", "own"])
def test_given_zone_entropies_replace_pass_a_with_the_same_loss_and_gradient(estimator, support, monkeypatch):
    from _fused_problem import make_problem, spec_of
    from sead.losses.fused import LMHead, fused_objective, fused_zone_entropies
    from sead.losses.passes import FusedObjective

    p = make_problem(7, B=4, T=9, V=40)
    spec, _ = spec_of(estimator=estimator, zones=True, alpha=0.3, entropy_top_k=8, entropy_support=support,
                      estimator_top_k=5)  # fmt: skip

    def run(given):
        hs = p["hs"].clone().requires_grad_()
        out = fused_objective(spec, LMHead(hs, p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"], p["ids"],
                              zone_entropies=given)  # fmt: skip
        (g,) = torch.autograd.grad(out.loss, hs)
        return out, g

    measured = fused_zone_entropies(spec, LMHead(p["hs"], p["ws"]), LMHead(p["ht"], p["wt"]), p["mask"])
    ref, ref_g = run(None)
    calls = []
    monkeypatch.setattr(FusedObjective, "zone_entropies", lambda self, gate: calls.append(1))
    got, got_g = run(measured)
    assert not calls  # pass A did not run
    assert torch.equal(got.zones, ref.zones) and float(got.loss) == float(ref.loss) and torch.equal(got_g, ref_g)
    # the given entropies decide the zones: reversed student entropies skip other tokens
    h_t, h_s = measured
    flipped, _ = run((h_t, -h_s))
    assert not torch.equal(flipped.zones, ref.zones)
    with pytest.raises(ValueError, match="zone_entropies must be"):
        run((h_t[:, :3], h_s))


def test_the_step_keeps_each_positions_entropies_and_the_losses_read_them(tmp_path, monkeypatch):
    from sead.components.zone_cuts import ZONE_ENTROPIES_KEY
    from sead.losses.passes import FusedObjective

    tr = _trainer(tmp_path)
    batch = _batch()
    tr._step_zone_cuts(batch)
    kept = batch[ZONE_ENTROPIES_KEY]
    assert kept.shape == (4, 7, 2)
    assert torch.all(kept[batch["completion_mask"] == 0] == 0)
    n = float(batch["completion_mask"].sum())
    micro = {k: v[:2] for k, v in batch.items()}
    fresh = {k: v for k, v in micro.items() if k != ZONE_ENTROPIES_KEY}
    ref_loss, ref_grads = _loss_and_grads(tr, fresh, n)  # pass A measures them again
    calls = []
    original = FusedObjective.zone_entropies
    monkeypatch.setattr(FusedObjective, "zone_entropies", lambda self, gate: calls.append(1) or original(self, gate))
    loss, grads = _loss_and_grads(tr, micro, n)
    assert not calls and float(loss) == float(ref_loss)
    for g, r in zip(grads, ref_grads):
        assert (g is None and r is None) or torch.equal(g, r)
