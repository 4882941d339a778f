"""The teacher and SG-OPD's reference sharded as the student is (sead.training.sharding), the refusal of launches that ask
for FSDP / DeepSpeed but would run replicated, and the rank-safe cold start (teacher_mix_picks).

The 2-process test runs tests/_shard_frozen.py with torchrun (gloo, CPU): accelerate does not set up FSDP on CPU, so
that script runs the trainer's own preparation with a stand-in FSDP2 accelerator holding a real accelerate plugin.
DeepSpeed is not installed here: its branch is checked against stand-ins only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from _ports import retry_on_port_collision
from _tiny import REPO, subprocess_env, tiny_model
from sead.components.teacher_mix import teacher_mix_picks
from sead.plan import facts_from_config, frozen_bytes
from sead.training.sharding import (
    check_sharding,
    frozen_copy,
    is_partitioned,
    prepare_frozen,
    requested_sharding,
    sharding_refusal,
)
from sead.utils.errors import SeadError


# --------------------------------------------------------------------------- what the launch asks for
@pytest.mark.parametrize(
    "env,args,expected",
    [
        ({}, {}, None),
        ({"ACCELERATE_USE_FSDP": "true"}, {}, "FSDP"),
        ({"ACCELERATE_USE_FSDP": "false"}, {}, None),
        ({"ACCELERATE_USE_DEEPSPEED": "True"}, {}, "DEEPSPEED"),
        ({}, {"fsdp": ["full_shard"]}, "FSDP"),
        ({}, {"deepspeed": "ds.json"}, "DEEPSPEED"),
    ],
)
def test_requested_sharding_reads_accelerate_launch_and_training_arguments(env, args, expected):
    assert requested_sharding(types.SimpleNamespace(**args), env) == expected


def test_a_launch_that_asks_for_sharding_but_would_run_replicated_is_refused():
    # accelerate on CPU: FSDP / DeepSpeed requested, MULTI_CPU set up
    reason = sharding_refusal("FSDP", "DistributedType.MULTI_CPU", use_cpu=True)
    assert "FSDP" in reason and "use_cpu" in reason and "ddp.yaml" in reason
    assert "DeepSpeed" in sharding_refusal("DEEPSPEED", "MULTI_CPU", final=False)
    # on GPUs the PartialState before the accelerator says MULTI_GPU: only the accelerator's final word counts
    assert sharding_refusal("FSDP", "MULTI_GPU", final=False) is None
    assert "set up MULTI_GPU instead" in sharding_refusal("FSDP", "MULTI_GPU")
    assert sharding_refusal("FSDP", "FSDP") is None and sharding_refusal(None, "MULTI_CPU") is None
    args = types.SimpleNamespace(use_cpu=True, fsdp=None, deepspeed=None)
    with pytest.raises(SeadError, match="accelerate runs FSDP only on GPUs"):
        check_sharding(args, "MULTI_CPU", {"ACCELERATE_USE_FSDP": "true"})
    check_sharding(args, "MULTI_CPU", {})  # nothing asked: DDP as launched


def test_fsdp_with_parameter_offload_is_refused_at_start_up(tmp_path, monkeypatch):
    """`fsdp_offload_params: true` keeps every shard in CPU memory; the loss gathers the lm_heads itself, outside
    their forwards, so it would gather CPU shards (and run on the CPU): refused, naming the field, from the launch's
    environment before loading and from the accelerator's plugin once it exists."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    args = types.SimpleNamespace(use_cpu=False, fsdp=None, deepspeed=None)
    with pytest.raises(SeadError, match="fsdp_offload_params: true is not supported"):
        check_sharding(args, "MULTI_GPU", {"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "true"}, final=False)
    check_sharding(args, "MULTI_GPU", {"ACCELERATE_USE_FSDP": "true", "FSDP_OFFLOAD_PARAMS": "false"}, final=False)
    offload = FullyShardedDataParallelPlugin(fsdp_version=2, cpu_offload=True)
    plain = FullyShardedDataParallelPlugin(fsdp_version=2, cpu_offload=False)
    with pytest.raises(SeadError, match="fsdp_offload_params"):
        check_sharding(args, "FSDP", {"ACCELERATE_USE_FSDP": "true"}, plugin=offload)
    check_sharding(args, "FSDP", {"ACCELERATE_USE_FSDP": "true"}, plugin=plain)
    fsdp1 = FullyShardedDataParallelPlugin(fsdp_version=1, cpu_offload=True)
    with pytest.raises(SeadError, match="fsdp_offload_params"):
        check_sharding(args, "FSDP", {}, plugin=fsdp1)


def test_the_trainer_refuses_fsdp_on_cpu(tmp_path, monkeypatch):
    from _tiny import tiny_trainer

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(SeadError, match="FSDP sharding"):
        tiny_trainer(tmp_path, method="opd")


# --------------------------------------------------------------------------- placement per launcher (stand-ins)
class _Accel:
    def __init__(self, kind, **state):
        self.distributed_type = kind
        self.state = types.SimpleNamespace(**state)
        self.calls = []

    def prepare_model(self, model, evaluation_mode=False):
        self.calls.append(("prepare_model", evaluation_mode))
        return model


def test_prepare_frozen_per_launcher(monkeypatch):
    import trl.models

    seen = []
    monkeypatch.setattr(trl.models, "prepare_deepspeed", lambda m, a: seen.append("deepspeed") or "engine")
    monkeypatch.setattr(trl.models, "prepare_fsdp", lambda m, a: seen.append("fsdp1") or "fsdp1")
    m = tiny_model(0)
    ddp = _Accel("DistributedType.MULTI_GPU")
    assert prepare_frozen(m, ddp) is m and ddp.calls == [("prepare_model", True)]
    assert not any(p.requires_grad for p in m.parameters()) and not m.training
    assert prepare_frozen(m, _Accel("DEEPSPEED")) == "engine"  # stage 3 partitions, else stage 0 (TRL)
    assert prepare_frozen(m, _Accel("FSDP", fsdp_plugin=types.SimpleNamespace(fsdp_version=1))) == "fsdp1"
    assert seen == ["deepspeed", "fsdp1"]


def test_a_partitioned_student_is_reloaded_for_the_reference_not_deep_copied():
    m = tiny_model(0)
    assert not is_partitioned(m)
    copy_ = frozen_copy(m)
    assert copy_ is not m and not any(p.requires_grad for p in copy_.parameters())
    next(m.parameters()).ds_id = 0  # as DeepSpeed's zero.Init marks a partitioned parameter
    assert is_partitioned(m)
    fresh = tiny_model(5)
    assert frozen_copy(m, load=lambda: fresh) is fresh
    with pytest.raises(SeadError, match="partitioned"):
        frozen_copy(m)


# --------------------------------------------------------------------------- the cold start's picks
def test_teacher_mix_picks_are_agreed_across_ranks_unbiased_and_pure():
    n, rho = 3, 0.2  # rho x n < 1: a rank drawing alone would often pick nothing while another picks one
    counts = []
    for step in range(400):
        per_rank = [teacher_mix_picks(rho, n, seed=3, step=step, rank=r) for r in range(4)]
        assert len({len(p) for p in per_rank}) == 1  # every rank generates, or none does
        for p in per_rank:
            assert len(set(p)) == len(p) and all(0 <= i < n for i in p)
        assert per_rank[0] == teacher_mix_picks(rho, n, seed=3, step=step, rank=0)  # (seed, step, rank) only
        counts.append(len(per_rank[0]))
    # E[k] = rho x n = 0.6; k in {0, 1}; 400 draws: standard error 0.024
    assert set(counts) == {0, 1} and abs(sum(counts) / 400 - 0.6) < 0.1
    assert sorted(teacher_mix_picks(1.0, 4, seed=0, step=0, rank=1)) == [0, 1, 2, 3]
    assert teacher_mix_picks(0.0, 4, seed=0, step=0, rank=0) == []


# --------------------------------------------------------------------------- two processes, sharded
@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shard")

    def launch(port: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(REPO / "tests" / "_shard_frozen.py"), str(out)]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=400, cwd=REPO)

    proc = retry_on_port_collision(launch)  # again on a fresh port if another process took it meanwhile
    assert proc.returncode == 0, proc.stderr[-6000:]
    return [json.loads((out / f"result-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sgopd", "sead"])
def test_teacher_and_reference_hold_half_their_bytes_per_rank_and_the_step_is_unchanged(sharded_run, method):
    """FSDP2 on 2 processes: teacher and reference keep ~1/2 of their parameter bytes per rank (the shards add up to
    the whole); `sead plan` counts exactly that per GPU (and the whole under DDP); the loss and every student
    gradient of one step equal the unsharded ones (fp32; tolerance 1e-6, measured 0)."""
    from _shard_frozen import model

    facts = facts_from_config(model(0).config.to_dict())
    roles = ["teacher", "reference"] if method == "sgopd" else ["teacher"]
    for r in (0, 1):
        rec = sharded_run[r][method]
        assert rec["distributed_type"].endswith("MULTI_CPU")
        for role in roles:
            ddp, fsdp = rec[f"ddp_{role}"], rec[f"fsdp2_{role}"]
            assert ddp["local"] == ddp["full"]  # DDP: whole on every rank
            assert facts.num_params == ddp["params"]
            assert frozen_bytes("ddp", facts.num_params, 4, 2, False) == ddp["local"]
            assert 0.45 < fsdp["local"] / fsdp["full"] < 0.55
            # the plan's per-GPU bytes: P x 4 / 2, against the measured shard (uneven rows: within 1%)
            assert frozen_bytes("fsdp2", facts.num_params, 4, 2, False) == pytest.approx(fsdp["local"], rel=0.01)
        assert rec["teacher_at_rest_is_sharded"]
        assert rec["student_at_rest_after_a_no_grad_loss_is_sharded"]  # what TRL's vLLM weight sync reads next
        assert rec["sharded_loss"] == pytest.approx(rec["unsharded_loss"], rel=1e-6, abs=1e-9)
        assert rec["max_grad_diff"] <= 1e-6 and rec["max_grad"] > 1e-4  # a real gradient, reproduced
    for role in roles:
        shards = [sharded_run[r][method][f"fsdp2_{role}"]["local"] for r in (0, 1)]
        assert sum(shards) == sharded_run[0][method][f"fsdp2_{role}"]["full"]


@pytest.mark.slow
def test_cold_start_on_a_sharded_teacher_finishes_when_one_rank_alone_would_draw_nothing(sharded_run):
    """rho ~ 0.3, 2 prompts per rank: the old per-rank draw had one rank generating while the other did not (a
    collective entered by one rank only: gloo aborts, NCCL hangs). Now both ranks generate at the same steps,
    with synced_gpus, and the run finishes."""
    steps = [sharded_run[r]["sgopd"]["cold_start"]["steps"] for r in (0, 1)]
    assert [s["generated"] for s in steps[0]] == [s["generated"] for s in steps[1]]
    assert any(s["generated"] for s in steps[0]) and not all(s["generated"] for s in steps[0])
    lonely = [i for i, (a, b) in enumerate(zip(*steps)) if (a["old_count"] == 0) != (b["old_count"] == 0)]
    assert lonely, "the test must cover a step where one rank alone would have drawn no prompt"
    for r in (0, 1):
        assert sharded_run[r]["sgopd"]["cold_start"]["synced_gpus"] == [True]
        assert all(s["rho"] * 2 < 1 for s in steps[r])
