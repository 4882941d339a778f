"""``num_generations`` (issue 28, SG-OPD's setting): G rollouts of each prompt at the same rollouts per step."""

from __future__ import annotations

import pytest

from _tiny import tiny_trainer
from sead.utils.errors import SeadError


def test_the_sampler_serves_each_prompt_g_times_in_a_row(tmp_path):
    tr = tiny_trainer(tmp_path, n=16, num_generations=2, per_device_train_batch_size=4)
    order = list(tr._get_train_sampler())
    assert len(order) == 32  # one epoch: every prompt, each twice in a row (two prompts per 4-rollout batch)
    pairs = [order[i : i + 2] for i in range(0, 32, 2)]
    assert all(a == b for a, b in pairs)
    assert sorted(a for a, _ in pairs) == list(range(16))
    plain = list(tiny_trainer(tmp_path / "p", n=16, per_device_train_batch_size=4)._get_train_sampler())
    assert sorted(plain) == list(range(16))  # G = 1: every prompt once


def test_the_curriculum_draws_g_times_fewer_prompts_and_repeats_them(tmp_path):
    tr = tiny_trainer(tmp_path, n=16, num_generations=2, per_device_train_batch_size=4, method="opd", curriculum=True,
                      max_steps=1)
    seen = []
    inner = tr.curriculum.draw
    tr.curriculum.draw = lambda step, total, k, repeat=1: seen.append((k, repeat)) or inner(step, total, k, repeat)
    tr.train()
    assert seen and seen[0] == (4, 2)  # 4 rollouts a step: 2 prompts, each twice
    drawn = tr.curriculum_draw
    assert len(drawn) == 4 and drawn[0] == drawn[1] and drawn[2] == drawn[3]


def test_g_must_divide_the_rollouts_of_a_step(tmp_path):
    with pytest.raises(SeadError, match="num_generations"):
        tiny_trainer(tmp_path, num_generations=3, per_device_train_batch_size=4)
    with pytest.raises(SeadError, match="num_generations"):
        tiny_trainer(tmp_path / "z", num_generations=0)
