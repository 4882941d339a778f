"""Real vLLM engines on this machine (vLLM's CPU build, installed by `make install`), each run in a subprocess
script bounded by a timeout so that an engine crash cannot take pytest down:

- tests/_vllm_train.py: opd, sead and sgopd trained 3 steps with the student's rollouts in TRL's colocate engine,
  SG-OPD's cold-start teacher rollouts in a second engine of the teacher (two engines in one process);
- tests/_vllm_text.py: sead.engines.sampling's text callers (``sead eval``, ``sead difficulty``,
  ``estimate_difficulty``) on an engine and on a served model (``python -m vllm.entrypoints.openai.api_server``)
  next to HF generate, greedy, on the same tiny model; and TRL's server-mode client against that server.

How closely vLLM agrees with HF (asserted below): in fp32, exactly (every greedy token id, every eval answer, the
difficulty column, and seeded samples are reproducible). vLLM runs an fp32 checkpoint in bf16 on a CPU unless
``--dtype float32`` is given (eval and difficulty can: their engine never takes new weights); bf16 rounding
flips the argmax at near-ties, after which the answers diverge (measured: 6 of 8 eval answers equal). TRL's
colocate engine has no dtype setting and runs bf16: its log-probs are within 2e-3 of the fp32 student's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from _tiny import REPO, tiny_dataset, tiny_model, tokenizer, vllm_env
from sead.engines.student_vllm import check_student_vllm
from sead.training.config import OPDConfig
from sead.utils.errors import SeadError

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (`make install` installs it)"
)
SCRIPT_TIMEOUT_S = 600


def _run_script(name: str, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp(name.strip("_").removesuffix(".py"))
    out = root / "out.json"
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "tests" / name), str(root), str(out)], env=vllm_env(), cwd=str(root),
            capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or "")[-3000:] if isinstance(err.stdout, str) else ""
        pytest.fail(f"{name} ran past {SCRIPT_TIMEOUT_S} s:\n{tail}")
    if proc.returncode != 0 or not out.exists():
        pytest.fail(f"{name} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _run_script("_vllm_train.py", tmp_path_factory)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return _run_script("_vllm_text.py", tmp_path_factory)


# --------------------------------------------------------------------------- training with TRL's colocate engine
@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_training_with_rollouts_in_trls_colocate_engine(trained, method):
    r = trained[method]
    assert len(r["losses"]) == 3 and r["all_finite"]
    # every step's rollouts came from the engine (HF generate raised in that process)
    assert r["student_engine_calls"] == 3
    # the weights reached the engine: its log-probs are the trained student's up to bf16 rounding, far from the
    # initial student's (3 Adam steps at lr 1e-2 moved them by 0.3-0.5 nats)
    assert r["engine_dtype"] == "torch.bfloat16"
    assert r["gap_to_trained"] < 0.02 < 0.1 < r["gap_to_initial"]


@needs_vllm
@pytest.mark.slow
def test_sampled_estimator_gets_the_engines_sampled_token_logprobs(trained):
    """SG-OPD with the sampled estimator on vLLM rollouts: every micro-batch carries the engine's log-probs of its
    sampled tokens (the importance weights' q), and they are the trainer's p_S up to the engine's bf16 numerics."""
    r = trained["sgopd_sampled"]
    assert len(r["losses"]) == 3 and r["all_finite"]
    gaps = [g for g in r["sampler_logprob_gaps"] if g == g]
    assert len(r["sampler_logprob_gaps"]) >= 3 and gaps
    assert max(gaps) < 0.05  # bf16 engine vs fp32 trainer: close, so the weights stay near 1 (cap 3)
    assert trained["opd"]["sampler_logprob_gaps"] == []  # only the sampled estimator asks for them


@needs_vllm
@pytest.mark.slow
def test_sgopd_teacher_rollouts_come_from_a_second_engine(trained):
    r = trained["sgopd"]
    assert r["teacher_engine"] and r["teacher_engine_calls"] == 3  # rho = 1 at every step of the phase
    assert r["teacher_mixed_frac"][0] > 0  # endorsed teacher rollouts replaced student ones
    assert trained["opd"]["teacher_engine_calls"] == trained["sead"]["teacher_engine_calls"] == 0


# --------------------------------------------------------------------------- eval, difficulty, server
@needs_vllm
@pytest.mark.slow
def test_fp32_engine_and_server_greedy_equal_hf_generate(text):
    assert text["vllm_ids"] == text["hf_ids"] and text["server_ids"] == text["hf_ids"]
    assert len({tuple(ids) for ids in text["hf_ids"]}) > 1  # the model's greedy answers differ between prompts
    # seeded samples: the same again, 3 per prompt, and the engine's and the server's equal for one seed
    assert text["vllm_sampled"][0] == text["vllm_sampled"][1] and len(text["vllm_sampled"][0]) == 6
    assert text["server_sampled"][0] == text["server_sampled"][1] == text["vllm_sampled"][0]


@needs_vllm
@pytest.mark.slow
def test_sead_eval_backends_agree(text):
    ev = text["eval"]
    assert all(e["code"] == 0 for e in ev.values())
    assert ev["vllm_fp32"]["greedy"] == ev["hf"]["greedy"] == ev["server"]["greedy"]
    for e in ev.values():
        bench = e["results"]["benchmarks"]["gsm8k"]
        assert bench["num_questions"] == 8 and bench["sampled"]["k"] == 2
        assert all(len(s) == 2 for s in e["sampled"])
    # dtype auto: bf16 on a CPU; the answers agree with fp32 until a near-tie flips the argmax
    auto, hf = ev["vllm_auto"]["greedy"], ev["hf"]["greedy"]
    same = sum(a == b for a, b in zip(auto, hf))
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in zip(auto, hf)]
    print(f"bf16 engine vs HF fp32: {same}/{len(hf)} greedy answers equal; common prefixes {prefix} characters")
    assert len(auto) == len(hf)


@needs_vllm
@pytest.mark.slow
def test_difficulty_backends_agree(text):
    expected = text["expected_difficulty"]
    assert 0.0 in expected and 1.0 in expected
    assert text["library_difficulty_vllm"] == expected  # sead.data.difficulty.estimate_difficulty on a VLLMSampler
    for backend in ("hf", "vllm", "server"):
        d = text["difficulty"][backend]
        assert d["code"] == 0 and d["column"] == expected, backend


# --------------------------------------------------------------------------- TRL's server mode
@needs_vllm
@pytest.mark.slow
def test_trl_server_mode_generates_but_cannot_sync_weights_without_cuda(text):
    assert len(text["trl_client_completions"]) == 4  # 2 prompts x n=2 through TRL's VLLMClient
    assert text["trl_init_communicator"].startswith("NotImplementedError: Weight synchronization runs on vLLM's NCCL")


def test_server_mode_is_refused_at_start_up_without_cuda(tmp_path):
    cfg = OPDConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], use_vllm=True,
                    vllm_mode="server", vllm_server_timeout=1)  # fmt: skip
    with pytest.raises(SeadError, match="vllm_mode: server needs CUDA.*vllm_mode: colocate"):
        from sead.training.trainer import OPDTrainer

        OPDTrainer(tiny_model(0), tiny_model(1), args=cfg, train_dataset=tiny_dataset(8), processing_class=tokenizer())
    gpu = OPDConfig(output_dir=str(tmp_path), bf16=False, report_to=[], use_vllm=True, vllm_mode="server")
    gpu.use_cpu = False
    check_student_vllm(gpu, cuda=True)  # with CUDA, TRL's own set-up runs
    with pytest.raises(SeadError, match="NCCL"):
        check_student_vllm(gpu, cuda=False)
    gpu.vllm_mode = "colocate"
    check_student_vllm(gpu, cuda=False)  # colocate runs on a CPU
    gpu.use_vllm, gpu.vllm_mode = False, "server"
    check_student_vllm(gpu, cuda=False)  # without use_vllm the mode is not used
