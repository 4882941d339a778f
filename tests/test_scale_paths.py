"""GPU-scale code paths that a CPU can still check: the teacher's vLLM engine in SG-OPD's teacher mixing,
FSDP2's sharded lm_head (a DTensor), and the opt-out of pass-rate grading."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from _tiny import tiny_dataset, tiny_model, tokenizer
from sead.engines.vllm_engine import choose_backend
from sead.training.config import OPDConfig
from sead.training.forwards import full_tensor as _full_tensor
from sead.training.trainer import OPDTrainer
from sead.utils.errors import SeadError


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, max_completion_length=6,
        learning_rate=1e-3, report_to=[], bf16=False, activation_checkpointing=False, save_strategy="no",
        use_cpu=True, disable_tqdm=True, logging_steps=1, seed=0,
    )  # fmt: skip
    base.update(kw)
    return OPDConfig(**base)


@pytest.mark.parametrize(
    "backend,installed,cuda,expected",
    [
        ("hf", True, True, False),
        ("auto", True, True, True),
        ("auto", True, False, False),
        ("auto", False, True, False),
        ("vllm", True, False, True),
    ],
)
def test_teacher_backend_choice(backend, installed, cuda, expected):
    assert (choose_backend(backend, installed=installed, cuda=cuda) == "vllm") is expected


def test_teacher_backend_vllm_without_vllm_is_refused_with_advice(tmp_path):
    with pytest.raises(SeadError, match="pip install vllm"):
        choose_backend("vllm", installed=False, cuda=True)
    with pytest.raises(SeadError, match="teacher_generation_backend"):
        _cfg(tmp_path, teacher_generation_backend="sglang")
    with pytest.raises(SeadError, match="teacher_vllm_gpu_memory_utilization"):
        _cfg(tmp_path, teacher_vllm_gpu_memory_utilization=0.0)


def test_the_trainer_refuses_a_vllm_teacher_when_vllm_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("sead.engines.vllm_engine.vllm_installed", lambda: False)
    cfg = _cfg(tmp_path, method="sgopd", teacher_generation_backend="vllm", teacher_num_generations=2)
    with pytest.raises(SeadError, match="vLLM is not installed"):
        OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8), processing_class=tokenizer())


def test_auto_backend_on_a_cpu_uses_hf_generate(tmp_path):
    cfg = _cfg(tmp_path, method="sgopd", teacher_num_generations=2)
    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8), processing_class=tokenizer())
    assert tr.teacher_mix.sample.engine is None and tr.teacher_mix.sample.local_teacher() is not None


class _FakeVLLM:
    """The slice of ``vllm.LLM`` the trainer uses: ``generate(requests, params, use_tqdm=...)``."""

    def __init__(self, by_prompt):
        self.by_prompt, self.calls = by_prompt, []

    def generate(self, requests, params, use_tqdm=False):
        self.calls.append((requests, params.kw))
        out = []
        for r in requests:
            choices = [types.SimpleNamespace(token_ids=ids) for ids in self.by_prompt[r["prompt_token_ids"][-1]]]
            out.append(types.SimpleNamespace(outputs=choices[: params.kw["n"]]))
        return out


def test_teacher_mixing_goes_through_the_teacher_engine(tmp_path, monkeypatch):
    tok = tokenizer()
    ds = tiny_dataset(8)
    cfg = _cfg(tmp_path, method="sgopd", teacher_mix_rho0=1.0, teacher_mix_phase_fraction=0.5,
               teacher_num_generations=2, max_steps=10, teacher_temperature=0.7)  # fmt: skip
    tr = OPDTrainer(
        tiny_model(0), tiny_model(1), args=cfg, train_dataset=ds, processing_class=tok,
        reward_funcs=lambda prompts, completions, **kw: [1.0 if c.startswith("5") else 0.0 for c in completions],
    )  # fmt: skip
    tr.state.max_steps = 10
    good = tok("5}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("7}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    engine = _FakeVLLM({10: [bad, good], 11: [bad, bad], 12: [good, bad], 13: [good, bad]})
    tr.teacher_mix.sample.engine = engine
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.SamplingParams = lambda **kw: types.SimpleNamespace(kw=kw)
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)

    def no_hf(*args, **kwargs):
        raise AssertionError("with an engine, the teacher's HF generate must not run")

    monkeypatch.setattr(type(tr.accelerator.unwrap_model(tr.teacher_model)), "generate", no_hf)
    B, pad_id = 4, tok.pad_token_id
    prompt_ids = torch.tensor([[pad_id, 3, 10], [4, 4, 11], [pad_id, pad_id, 12], [5, 6, 13]])
    output = {
        "prompt_ids": prompt_ids,
        "prompt_mask": (prompt_ids != pad_id).long(),
        "completion_ids": torch.full((B, 3), 9),
        "completion_mask": torch.ones(B, 3, dtype=torch.long),
        "num_items_in_batch": torch.tensor(12),
    }
    tr.state.global_step = 0
    mix = tr._mix_teacher_rollouts([ds[i] for i in range(B)], dict(output), [False] * B)
    out, correct, mixed = mix.output, mix.correct, mix.mixed
    assert mixed == [True, False, True, True] and correct == [True, False, True, True]
    assert out["completion_ids"][0, : len(good)].tolist() == good
    assert out["completion_mask"][0].sum() == len(good)  # cut after EOS: the pad after it is not a token
    (requests, kw), = engine.calls  # one engine call for every picked prompt
    # the engine gets each prompt without its left padding, once, with n = G samples
    assert sorted(r["prompt_token_ids"] for r in requests) == [[3, 10], [4, 4, 11], [5, 6, 13], [12]]
    assert kw["n"] == 2 and kw["temperature"] == 0.7 and kw["max_tokens"] == tr.max_completion_length
    assert kw["seed"] == 0 * 7919 + 0 * 131 + 0  # (seed, step, rank): a resumed run draws the same
    tr.state.global_step = 3
    tr._mix_teacher_rollouts([ds[i] for i in range(B)], dict(output), [False] * B)
    assert engine.calls[-1][1]["seed"] == 3 * 131


def test_full_tensor_gathers_a_sharded_lm_head_once_and_passes_gradients_back(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        w = torch.randn(12, 4, dtype=torch.float64)
        w_d = distribute_tensor(w, mesh, [Shard(0)]).requires_grad_(True)
        full = _full_tensor(w_d, torch.float32)
        assert type(full) is torch.Tensor and full.dtype == torch.float32
        assert torch.equal(full, w.float())
        h = torch.randn(3, 4)
        (h @ full.T).sum().backward()
        # d/dW sum(h W^T) = sum over rows of h, for every vocabulary row
        assert torch.allclose(w_d.grad.full_tensor(), h.sum(0).double().expand(12, 4))
        plain = torch.randn(5, 2)
        assert _full_tensor(plain, torch.float64) is plain and _full_tensor(None) is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("log_pass_rate", [True, False])
def test_vanilla_opd_grades_rollouts_only_when_asked(tmp_path, log_pass_rate):
    cfg = _cfg(tmp_path, method="opd", max_steps=2, log_pass_rate=log_pass_rate)
    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(16), processing_class=tokenizer())
    assert bool(tr.reward_funcs) is log_pass_rate
    tr.train()
    logged = [h for h in tr.state.log_history if "rollout/pass_rate" in h]
    assert bool(logged) is log_pass_rate


def test_components_that_need_verdicts_grade_even_without_pass_rate_logging(tmp_path):
    cfg = _cfg(tmp_path, method="sead", log_pass_rate=False)
    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(16), processing_class=tokenizer())
    assert tr.reward_funcs  # the curriculum needs the verifier's verdicts


def test_the_teacher_engine_is_built_once_from_the_teachers_path(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr("sead.components.teacher_rollouts.choose_backend", lambda backend, field: backend)
    monkeypatch.setattr("sead.components.teacher_rollouts.vllm_engine",
                        lambda source, **kw: built.append((source, kw)) or "engine")
    teacher = tiny_model(1)
    teacher.save_pretrained(tmp_path / "teacher")
    cfg = _cfg(tmp_path, method="sgopd", teacher_generation_backend="vllm", teacher_num_generations=2,
               teacher_vllm_gpu_memory_utilization=0.2, max_prompt_length=20)  # fmt: skip
    tr = OPDTrainer(tiny_model(0), str(tmp_path / "teacher"), args=cfg, train_dataset=tiny_dataset(8),
                    processing_class=tokenizer())  # fmt: skip
    assert tr.teacher_mix.sample.engine == "engine"
    (source, kw), = built
    assert source == str(tmp_path / "teacher")
    assert kw["gpu_memory_utilization"] == 0.2 and kw["max_model_len"] == 20 + 6 and kw["seed"] == 0
    assert kw["distributed_executor_backend"] is None  # one process: no external launcher
    # a teacher object without a path to build an engine from is refused with advice
    with pytest.raises(SeadError, match="hub id or local path"):
        OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8), processing_class=tokenizer())
    # opd / sead never build one
    cfg = _cfg(tmp_path, method="sead", teacher_generation_backend="vllm")
    tr = OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8), processing_class=tokenizer())
    assert tr.teacher_mix is None and len(built) == 1


@pytest.mark.slow
def test_fused_loss_under_real_fsdp2_sharding_on_two_cpu_processes(tmp_path):
    """FSDP2 (``fully_shard``, gloo): the teacher's lm_head is a sharded DTensor when the loss reads it; the loss and
    the student's gradients equal the unsharded ones (tests/_fsdp2_loss.py)."""
    import json
    import subprocess

    from _ports import retry_on_port_collision
    from _tiny import REPO, subprocess_env

    def launch(port: int) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(REPO / "tests" / "_fsdp2_loss.py"), str(tmp_path)]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300, cwd=REPO)

    proc = retry_on_port_collision(launch)  # again on a fresh port if another process took it meanwhile
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads((tmp_path / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    for r in results:
        assert r["world_size"] == 2
        assert r["teacher_head_was_sharded"] and r["student_head_is_dtensor_at_rest"]
        assert r["loss"] == pytest.approx(r["reference_loss"], rel=1e-6)
        assert r["max_grad_diff"] < 1e-6
        assert r["max_teacher_logits_diff"] < 1e-6
