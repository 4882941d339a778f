"""The served teacher's client and its trainer wiring, against a fake vLLM server (tests/_teacher_server.py) in
this process: answers, faults and retries, start-up checks, config refusals, a training step, and a server fault
mid-run that saves a checkpoint from which the run resumes exactly. The real vLLM server: test_teacher_server_vllm.py.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
import torch.nn.functional as F

from _ports import free_port, retry_on_port_collision
from _teacher_server import FakeVLLM
from _tiny import max_abs_diff, params, tiny_config, tiny_dataset, tiny_model, tokenizer
from sead.engines.teacher_server import TeacherServer, TeacherServerError, parse_prompt_logprobs
from sead.engines.vllm_server import sample_from_server
from sead.training.trainer import OPDTrainer
from sead.utils.errors import SeadError

K = 8



@pytest.fixture
def teacher():
    return tiny_model(seed=1)


@pytest.fixture
def server(teacher):
    with FakeVLLM(teacher, tokenizer(), max_logprobs=K) as srv:
        yield srv


def _client(url, **kw):
    kw = {"model": "tiny-teacher", "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **kw}
    return TeacherServer(url, kw.pop("model"), **kw)


# ---- parsing --------------------------------------------------------------------------------------
def test_parse_prompt_logprobs_by_hand():
    """k = 2: a position whose token is in the top-2 has 2 entries, one whose token is not has 3."""
    answer = [
        None,
        {"5": {"logprob": -0.5, "rank": 1}, "7": {"logprob": -1.5, "rank": 2}},  # token 7 is in the top-2
        {"3": {"logprob": -4.0, "rank": 9}, "1": {"logprob": -0.1, "rank": 1}, "2": {"logprob": -2.5, "rank": 2}},
    ]
    ids, lps, sampled = parse_prompt_logprobs(answer, [9, 7, 3], start=1, top_k=2)
    assert ids == [[5, 7], [1, 2]]
    assert lps == [[-0.5, -1.5], [-0.1, -2.5]]
    assert sampled == [-1.5, -4.0]


@pytest.mark.parametrize(
    "answer, why",
    [
        ([None, {"5": {"logprob": -0.5, "rank": 1}}], "positions"),  # 2 positions for 3 tokens
        ([None, None, {"3": {"logprob": -0.1, "rank": 1}, "1": {"logprob": -2.0, "rank": 2}}], "dict"),
        ([None, {"1": {"logprob": -0.1, "rank": 1}, "2": {"logprob": -1.0, "rank": 2}}, {"3": {"logprob": -0.1, "rank": 1}, "1": {"logprob": -2.0, "rank": 2}}], "no log-prob"),
        ([None, {"7": {"logprob": float("nan"), "rank": 1}, "2": {"logprob": -1.0, "rank": 2}}, {"3": {"logprob": -0.1, "rank": 1}, "1": {"logprob": -2.0, "rank": 2}}], "finite"),
        ([None, {"7": {"logprob": -0.1, "rank": 1}}, {"3": {"logprob": -0.1, "rank": 1}, "1": {"logprob": -2.0, "rank": 2}}], "expected 2 or 3"),
        ([None, {"7": {"logprob": -0.1, "rank": 1}, "99": {"logprob": -3.0, "rank": 2}}, {"3": {"logprob": -0.1, "rank": 1}, "1": {"logprob": -2.0, "rank": 2}}], "outside the vocabulary"),
    ],
)
def test_parse_refuses_malformed_answers(answer, why):
    with pytest.raises(ValueError, match=why):
        parse_prompt_logprobs(answer, [9, 7, 3], start=1, top_k=2, vocab_size=25)


def test_sparse_teacher_matches_hf_forward(server, teacher):
    """Layout: rows are the valid completion positions in row-major order; top-k ids and log-probs are the HF
    teacher's log_softmax at the position before each completion token; padding on both sides is dropped."""
    tok = tokenizer()
    client = _client(server.url)
    prompts = [tok("Q: 1+2=? A:")["input_ids"], tok("Q: 33+4=? A:")["input_ids"]]
    P = max(map(len, prompts))
    prompt_ids = torch.full((2, P), tok.pad_token_id)
    prompt_mask = torch.zeros((2, P), dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding
        prompt_ids[b, P - len(p):], prompt_mask[b, P - len(p):] = torch.tensor(p), 1
    completion_ids = torch.tensor([[6, 7, tok.eos_token_id, tok.pad_token_id], [8, 9, 10, 11]])
    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    sparse = client.sparse_teacher(prompt_ids, prompt_mask, completion_ids, completion_mask, K)
    assert sparse.token_ids.shape == (2, 4, K) and sparse.logprobs.shape == (2, 4, K) and sparse.sampled_logprobs.shape == (2, 4)
    valid = completion_mask.bool()
    top_ids, top_lps, sampled = sparse.token_ids[valid], sparse.logprobs[valid], sparse.sampled_logprobs[valid]
    rows = []
    with torch.no_grad():
        for b in range(2):
            seq = prompts[b] + completion_ids[b, : int(completion_mask[b].sum())].tolist()
            logp = F.log_softmax(teacher(torch.tensor([seq])).logits[0].float(), -1)
            for j in range(int(completion_mask[b].sum())):
                pos = len(prompts[b]) + j
                rows.append((logp[pos - 1], seq[pos]))
    for n, (lp, y) in enumerate(rows):
        top = lp.topk(K)
        assert top_ids[n].tolist() == top.indices.tolist()
        torch.testing.assert_close(top_lps[n], top.values, atol=1e-6, rtol=0)
        assert abs(sampled[n].item() - lp[y].item()) < 1e-6


# ---- faults and retries -----------------------------------------------------------------------------
def test_refused_connection_retries_then_stops_with_clear_error():
    sleeps = []
    client = _client(f"http://127.0.0.1:{free_port()}", max_retries=3, backoff=0.5, sleep=sleeps.append)
    with pytest.raises(TeacherServerError, match=r"failed 4 time\(s\).*could not connect"):
        client.sparse_logprobs([[1, 2, 3]], [1], K)
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff


def test_refused_connection_then_the_server_comes_up(teacher):
    """The server starts while the client retries: the answer arrives, nothing is lost."""

    def attempt(port: int):
        srv = FakeVLLM(teacher, tokenizer(), max_logprobs=K, port=port)
        start_failed = []

        def start():
            try:
                srv.start()
            except OSError as err:  # another process took the port meanwhile: retried on a fresh one
                start_failed.append(err)

        starter = threading.Timer(0.3, start)
        starter.start()
        try:
            client = _client(f"http://127.0.0.1:{port}", max_retries=20, backoff=0.1)
            return client.sparse_logprobs([[5, 6, 7]], [1], K)
        except Exception:
            starter.join()
            if start_failed:
                raise start_failed[0] from None
            raise
        finally:
            starter.join()
            srv.stop()

    out = retry_on_port_collision(attempt)
    assert len(out[0][2]) == 2


@pytest.mark.parametrize("fault", ["500", "malformed", "short", "timeout"])
def test_one_fault_then_success(server, fault):
    server.faults = [fault]
    server.slow_seconds = 1.0
    client = _client(server.url, timeout=0.3)
    expected = _client(server.url).sparse_logprobs([[5, 6, 7, 8]], [1], K)
    server.completions_requests = 0
    server.faults = [fault]
    assert client.sparse_logprobs([[5, 6, 7, 8]], [1], K) == expected
    assert server.completions_requests == 2  # the faulty answer, then the retry


@pytest.mark.parametrize("fault, cause", [("500", "HTTP 500"), ("malformed", "malformed answer"), ("timeout", "no answer within")])
def test_persistent_fault_stops_with_the_cause(server, fault, cause):
    server.faults = [fault] * 10
    server.slow_seconds = 0.5
    client = _client(server.url, timeout=0.2, max_retries=2)
    with pytest.raises(TeacherServerError, match=cause):
        client.sparse_logprobs([[5, 6, 7]], [1], K)


def test_a_4xx_is_not_retried(server):
    client = _client(server.url, max_retries=5)
    with pytest.raises(TeacherServerError, match=r"HTTP 400.*greater than max allowed: 8"):
        client.sparse_logprobs([[5, 6, 7]], [1], K + 1)
    assert server.completions_requests == 1


# ---- start-up checks ----------------------------------------------------------------------------------
def test_check_probes_max_logprobs(server):
    with pytest.raises(TeacherServerError, match=r"at most 8 log-probs.*needs 9.*--max-logprobs 9"):
        _client(server.url).check(K + 1)
    assert _client(server.url).check(K)["top_k"] == K


def test_check_names_the_model_and_the_context(server):
    client = _client(server.url, model=None)
    assert client.check(K)["model"] == "tiny-teacher"  # the only model served
    with pytest.raises(TeacherServerError, match="'other' is not served.*tiny-teacher"):
        _client(server.url, model="other").check(K)
    with pytest.raises(TeacherServerError, match=r"context \(128 tokens.*--max-model-len 201"):
        _client(server.url).check(K, max_sequence_length=200)


def test_check_refuses_a_teacher_with_another_tokenizer(teacher):
    with FakeVLLM(teacher, tokenizer(), max_logprobs=K, tokenize_shift=1) as srv:
        with pytest.raises(TeacherServerError, match="tokenizes text differently"):
            _client(srv.url).check(K, tokenizer=tokenizer())
        _client(srv.url).check(K)  # without a tokenizer to compare, no check


def test_a_server_started_with_skip_tokenizer_init_is_accepted_with_a_warning(teacher):
    """`--skip-tokenizer-init` (the server decodes no returned token to text: the cheaper answers,
    docs/scaling.md) has no /tokenize: the tokenizer cannot be compared, which is said, and the run goes on."""
    with FakeVLLM(teacher, tokenizer(), max_logprobs=K, skip_tokenizer_init=True) as srv:
        with pytest.warns(UserWarning, match="skip-tokenizer-init"):
            _client(srv.url).check(K, tokenizer=tokenizer())


def test_wait_until_ready_times_out_with_advice():
    client = _client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TeacherServerError, match=r"did not answer /health within 0.2 s.*teacher_server_startup_timeout"):
        client.wait_until_ready(0.2)


def test_sample_is_prompt_major_and_sends_plain_sampling(server):
    server.sample_fn = lambda prompt, n, seed: [[prompt[-1], j, seed] for j in range(n)]
    # SG-OPD's cold-start rollouts from the served teacher go through the sampling layer's server client
    out = sample_from_server(server.url, "tiny-teacher", [[5, 6], [7, 8, 9]], 3, 0.7, 4, 11, stop_token_ids=[2])
    assert out == [[6, 0, 11], [6, 1, 11], [6, 2, 11], [9, 0, 11], [9, 1, 11], [9, 2, 11]]
    sent = server.requests[-1][1]
    assert (sent["n"], sent["temperature"], sent["top_p"], sent["top_k"], sent["stop_token_ids"]) == (3, 0.7, 1.0, -1, [2])


# ---- config ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(estimator="full"), "estimator: full.*topk"),
        (dict(estimator="topk", temperature=0.7), "temperature 0.7.*generation_kwargs"),
        (dict(estimator="topk", method="sead", entropy_top_k=0), "entropy_top_k"),
        (dict(estimator="topk", teacher_model_name_or_path="x"), "both set"),
        (dict(estimator="topk", teacher_server_url="localhost:8000"), "http"),
        (dict(estimator="topk", teacher_server_max_retries=-1), "teacher_server_max_retries"),
    ],
)
def test_config_refuses_what_a_server_cannot_do(tmp_path, fields, match):
    fields = {"teacher_server_url": "http://127.0.0.1:1", **fields}
    with pytest.raises(SeadError, match=match):
        tiny_config(tmp_path, **fields)


def test_config_top_k_is_the_larger_need(tmp_path):
    cfg = tiny_config(tmp_path, teacher_server_url="http://127.0.0.1:1", estimator="topk", estimator_top_k=4,
                      method="sead", entropy_top_k=16)
    assert cfg.teacher_server_top_k == 16
    cfg = tiny_config(tmp_path, teacher_server_url="http://127.0.0.1:1", estimator="sampled", estimator_top_k=4,
                      method="opd", entropy_top_k=16)
    assert cfg.teacher_server_top_k == 4  # no zones: only the estimator's k


# ---- the stand-in loss is the top-k estimator -----------------------------------------------------------------
# ---- trainer ----------------------------------------------------------------------------------------------
def _served_trainer(tmp_path, url, **overrides):
    fields = dict(method="sead", curriculum=False, estimator="topk", estimator_top_k=K, entropy_top_k=K,
                  teacher_server_url=url, teacher_server_backoff=0.01, teacher_server_max_retries=1,
                  teacher_server_startup_timeout=5)
    fields.update(overrides)
    return OPDTrainer(tiny_model(0), None, args=tiny_config(tmp_path, **fields), train_dataset=tiny_dataset(16),
                      processing_class=tokenizer())


def _inputs(trainer):
    """One micro-batch as the trainer holds it after generation: left-padded prompts, right-padded completions."""
    tok = tokenizer()
    rows = tiny_dataset(4)["prompt"]
    prompt_ids, prompt_mask, _ = trainer._tokenize_prompts(list(rows))
    P = max(map(len, prompt_ids))
    pids = torch.full((4, P), tok.pad_token_id)
    pmask = torch.zeros((4, P), dtype=torch.long)
    for b, p in enumerate(prompt_ids):
        pids[b, P - len(p):], pmask[b, P - len(p):] = torch.tensor(p), 1
    g = torch.Generator().manual_seed(3)
    cids = torch.randint(4, len(tok), (4, 6), generator=g)
    cmask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] + [0] * 5])
    return {"prompt_ids": pids, "prompt_mask": pmask, "completion_ids": cids, "completion_mask": cmask}


def test_trainer_holds_no_teacher_and_refuses_a_local_one(tmp_path, server):
    trainer = _served_trainer(tmp_path, server.url)
    assert trainer.teacher_model is None and trainer.served.server.model == "tiny-teacher"
    with pytest.raises(SeadError, match="either served or local"):
        OPDTrainer(tiny_model(0), tiny_model(1), args=trainer.args, train_dataset=tiny_dataset(16),
                   processing_class=tokenizer())


def test_trainer_start_refuses_too_few_logprobs(tmp_path, server):
    with pytest.raises(TeacherServerError, match="--max-logprobs 12"):
        _served_trainer(tmp_path, server.url, estimator_top_k=12, entropy_top_k=12)


@pytest.mark.parametrize("method", ["sead", "opd"])
def test_served_loss_equals_the_local_teacher_topk_loss(tmp_path, server, teacher, method):
    """Same micro-batch, same top-k: the trainer's loss against the server equals the local teacher's topk loss
    (the logits path), zones and anneal included. The fake server computes in fp32 with the same model."""
    served = _served_trainer(tmp_path / "s", server.url, method=method, curriculum=False, max_steps=10)
    local = OPDTrainer(tiny_model(0), teacher, train_dataset=tiny_dataset(16), processing_class=tokenizer(),
                       args=tiny_config(tmp_path / "l", method=method, curriculum=False, estimator="topk",
                                        estimator_top_k=K, entropy_top_k=K, max_steps=10))
    inputs = _inputs(served)
    n = inputs["completion_mask"].sum()
    student_s, student_l = (t.accelerator.unwrap_model(t.model) for t in (served, local))
    loss_s, *_ = served._compute_loss(student_s, inputs, n)
    loss_l, *_ = local._compute_loss(student_l, inputs, n)
    assert math.isfinite(loss_s.item()) and loss_s.item() > 0
    assert abs(loss_s.item() - loss_l.item()) <= 1e-5 * max(1.0, abs(loss_l.item()))
    assert served._metrics["train"]["sead/mean_h_t"] == pytest.approx(local._metrics["train"]["sead/mean_h_t"], abs=1e-5)


def test_served_step_trains(tmp_path, server):
    trainer = _served_trainer(tmp_path, server.url, max_steps=2)
    before = params(trainer.model)
    trainer.train()
    assert max_abs_diff(before, params(trainer.model)) > 0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)


def test_sgopd_cold_start_rollouts_come_from_the_server(tmp_path, server):
    """rho = 1: every prompt asks the server for G rollouts ("12" + EOS: even length, endorsed by the parity
    verifier), which replace the student's."""
    from _tiny import parity_reward

    args = tiny_config(tmp_path, method="sgopd", sign_gate=False, estimator="sampled", estimator_top_k=K,
                       teacher_server_url=server.url, teacher_mix_rho0=1.0, teacher_mix_phase_fraction=1.0,
                       teacher_num_generations=3, max_steps=1, teacher_top_p=0.9, teacher_top_k=5)
    trainer = OPDTrainer(tiny_model(0), None, args=args, train_dataset=tiny_dataset(16), processing_class=tokenizer(),
                         reward_funcs=parity_reward)
    trainer.train()
    samples = [p for path, p in server.requests if path == "/v1/completions" and p.get("n", 1) == 3]
    assert samples and all(p["max_tokens"] == 8 and "prompt_logprobs" not in p for p in samples)
    assert all((p["top_p"], p["top_k"]) == (0.9, 5) for p in samples)  # the teacher's own filters
    assert trainer.state.log_history[0]["sgopd/teacher_mixed_frac"] == 1.0


def test_server_fault_mid_run_saves_a_checkpoint_and_resumes_exactly(tmp_path, server):
    """The server dies in step 3 (of 4): training stops with a TeacherServerError naming checkpoint-2, whose
    contents are those of step 2's end; resuming from it with the server back ends where an uninterrupted run
    ends (parameters equal to 1e-6)."""
    full = _served_trainer(tmp_path / "full", server.url, max_steps=4)
    full.train()
    requests_per_step = server.completions_requests // 4

    server.completions_requests = 0
    server.fail_from = 2 * requests_per_step + 1
    broken = _served_trainer(tmp_path / "run", server.url, max_steps=4, save_strategy="no")
    server.completions_requests = 0  # the start-up probe counted too
    with pytest.raises(TeacherServerError, match=r"HTTP 500.*stopped at step 2.*checkpoint-2"):
        broken.train()
    assert (tmp_path / "run" / "checkpoint-2" / "sead_state.json").is_file()

    server.fail_from = None
    resumed = _served_trainer(tmp_path / "run", server.url, max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert max_abs_diff(params(full.model), params(resumed.model)) <= 1e-6


def test_server_fault_in_the_first_step_saves_nothing(tmp_path, server):
    trainer = _served_trainer(tmp_path, server.url, max_steps=2)
    server.fail_from = 1
    with pytest.raises(TeacherServerError, match="nothing was saved"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))


def test_sead_train_exits_4_with_a_checkpoint_when_the_server_fails(tmp_path, server, capsys):
    """`sead train` with a served teacher: the server fails in step 2 of 3 -> status 4, a message naming
    checkpoint-1; `--resume_from_checkpoint last` with the server back finishes (status 0)."""
    import yaml

    from _tiny import standard_recipe
    from sead.cli import main

    path = standard_recipe(tmp_path, method="opd", estimator="topk", estimator_top_k=K, entropy_top_k=K, max_steps=3,
                           teacher_server_url=server.url, teacher_server_backoff=0.01, teacher_server_max_retries=1)
    recipe = yaml.safe_load(open(path))
    del recipe["teacher_model_name_or_path"]
    yaml.safe_dump(recipe, open(path, "w"))
    server.fail_from = 3  # the start-up probe, step 1's loss request, then step 2's
    assert main(["train", "--config", path]) == 4
    err = capsys.readouterr().err
    assert "HTTP 500" in err and "stopped at step 1" in err and "checkpoint-1" in err
    assert (tmp_path / "out" / "checkpoint-1" / "trainer_state.json").is_file()
    server.fail_from = None
    assert main(["train", "--config", path, "--resume_from_checkpoint", "last"]) == 0
    assert "done, 3 steps" in capsys.readouterr().out


def _counted_agreements(trainer) -> dict[str, int]:
    """Count the served teacher's requests that join the ranks' agreement (``ServedTeacher.agreed``)."""
    calls = {"n": 0}
    ask = trainer.served.agreed

    def counted(*args):
        calls["n"] += 1
        return ask(*args)

    trainer.served.agreed = counted
    return calls


def _inputs_of_width(trainer, width: int):
    """:func:`_inputs` (width 6), or the same rows without completion tokens (width 0); the student in training."""
    output = _inputs(trainer)
    if width == 0:
        output["completion_ids"] = output["completion_ids"][:, :0]
        output["completion_mask"] = output["completion_mask"][:, :0]
    trainer.model.train()
    return output


@pytest.mark.parametrize("width", [6, 0])
def test_a_rank_whose_completions_are_all_empty_asks_the_server_as_often_as_the_others(tmp_path, server, width):
    """zone_scope: step prefetches the served log-probs with the step's rollouts; every server request joins a
    collective (`ServedTeacher.agreed`: one fault for every rank). A rank whose completions all have width 0 must
    then ask exactly as often as a rank with text: once per micro-batch in the pre-pass, never again in the loss
    (before, it dropped the prefetched answers and asked again inside the loss, alone: a hang under NCCL)."""
    trainer = _served_trainer(tmp_path, server.url, zone_scope="step", max_steps=10)
    calls, output = _counted_agreements(trainer), _inputs_of_width(trainer, width)
    trainer._step_zone_cuts(output)
    assert calls["n"] == 1  # one micro-batch of 4 rows
    student = trainer.accelerator.unwrap_model(trainer.model)
    loss, *_ = trainer._compute_loss(student, output, max(int(output["completion_mask"].sum()), 1))
    assert calls["n"] == 1  # the loss used the prefetched answers
    assert math.isfinite(loss.item()) and (loss.item() == 0.0) == (width == 0)


def test_the_parser_equals_the_per_entry_loop_it_replaced_on_random_answers():
    """The parser reads vLLM's order (most likely first) without sorting when it is strictly decreasing, and sorts
    by (-logprob, rank, id) otherwise: the same output as the per-entry loop (sead.bench.served keeps it to time
    against) on answers with ties, shuffled entries, and the sequence's token inside or outside the top-k."""
    import random

    from sead.bench.served import parse_prompt_logprobs_loop

    rng = random.Random(0)
    for trial in range(200):
        k, n = rng.choice([1, 2, 8]), rng.randrange(2, 12)
        seq = [rng.randrange(50) for _ in range(n)]
        answer = [None]
        for p in range(1, n):
            ids = rng.sample([i for i in range(50) if i != seq[p]], k)  # k distinct ids besides the token
            lps = sorted((-round(rng.random() * 3, 1) for _ in range(k + 1)), reverse=True)  # rounded: ties
            if rng.random() < 0.5:  # the token inside the top-k: k entries
                ids[rng.randrange(k)] = seq[p]
                lps = lps[:k]
            else:  # outside: the k, then the token with the lowest log-prob
                ids = ids + [seq[p]]
            entries = [(str(i), {"logprob": lp, "rank": r + 1}) for r, (i, lp) in enumerate(zip(ids, lps))]
            if rng.random() < 0.3:
                rng.shuffle(entries)
            answer.append(dict(entries))
        got = parse_prompt_logprobs(answer, seq, 1, k)
        assert got == parse_prompt_logprobs_loop(answer, seq, 1, k), trial


def test_builtin_task_checks_the_server_before_its_difficulty_pre_pass(tmp_path, server, monkeypatch):
    """The server's --max-logprobs is checked before the built-in task's pre-pass (minutes of rollouts), as the
    vocabulary's top-k limits are: a run that cannot start is refused before any work."""
    import types

    import sead.data.difficulty
    import sead.tasks
    from sead.training.recipe import ScriptArguments, builtin_task_data

    student_dir = tmp_path / "student"
    tiny_model(0).save_pretrained(student_dir)
    tokenizer().save_pretrained(student_dir)
    calls = []
    prepared = types.SimpleNamespace(student_dir=student_dir, tokenizer=tokenizer(), levels=(1,))
    task = types.SimpleNamespace(
        prepare_models=lambda **kw: prepared,
        make_dataset=lambda *a, **kw: calls.append("dataset") or tiny_dataset(4),
    )
    monkeypatch.setattr(sead.tasks, "get_task", lambda name: task)
    monkeypatch.setattr(sead.data.difficulty, "estimate_difficulty", lambda *a, **kw: calls.append("pre-pass"))
    cfg = tiny_config(tmp_path, method="sead", estimator="topk", estimator_top_k=12, entropy_top_k=12,
                      teacher_server_url=server.url, teacher_server_backoff=0.01, teacher_server_max_retries=1,
                      teacher_server_startup_timeout=5)
    with pytest.raises(TeacherServerError, match="--max-logprobs 12"):
        builtin_task_data(ScriptArguments(builtin_task="sums"), cfg, progress=False)
    assert calls == []  # neither the training prompts nor the pre-pass were started


@pytest.mark.parametrize("width", [6, 0])
def test_the_steps_answers_prefetched_in_one_request_give_the_same_loss(tmp_path, server, width):
    """``prefetch``: the whole generation batch's log-probs in one background request, collected (one agreement
    over the ranks) by the zone pass and sliced per micro-batch (two here); the losses equal those of the
    per-micro-batch requests, and nothing more is asked."""

    def step(prefetch: bool):
        trainer = _served_trainer(tmp_path / str(prefetch), server.url, zone_scope="step", max_steps=10,
                                  per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                  teacher_server_prefetch=prefetch)  # fmt: skip
        assert trainer.served.prefetching is prefetch
        calls, output = _counted_agreements(trainer), _inputs_of_width(trainer, width)
        server.completions_requests = 0
        if prefetch:
            trainer.served.prefetch(output)
        trainer._step_zone_cuts(output)
        student = trainer.accelerator.unwrap_model(trainer.model)
        n = max(int(output["completion_mask"].sum()), 1)
        losses = [trainer._compute_loss(student, {k: v[r] for k, v in output.items()}, n)[0].item()
                  for r in (slice(0, 2), slice(2, 4))]  # fmt: skip
        return losses, calls["n"], server.completions_requests

    (fetched, agreed, sent), (asked, agreed_each, sent_each) = step(True), step(False)
    assert agreed == 1 and agreed_each == 2  # one agreement for the step instead of one per micro-batch
    assert sent <= 1 and sent_each <= 2  # (rows without completion tokens are not sent)
    assert fetched == pytest.approx(asked, rel=1e-6, abs=1e-7)
    assert all(math.isfinite(x) for x in fetched) and (fetched[0] == 0.0) == (width == 0)


def test_the_trainer_sends_the_request_before_grading(tmp_path, server):
    order = []

    def reward(prompts, completions, **columns):
        order.append("grade")
        return [0.0] * len(completions)

    trainer = OPDTrainer(tiny_model(0), None, args=tiny_config(tmp_path, method="sead", curriculum=False,
                         estimator="topk", estimator_top_k=K, entropy_top_k=K, teacher_server_url=server.url,
                         teacher_server_startup_timeout=5, max_steps=1, teacher_server_prefetch=True),
                         train_dataset=tiny_dataset(16), processing_class=tokenizer(), reward_funcs=reward)  # fmt: skip
    prefetch = trainer.served.prefetch
    trainer.served.prefetch = lambda batch: order.append("request") or prefetch(batch)
    trainer.train()
    assert order == ["request", "grade"]  # handed to the background thread before grading


def test_prefetching_is_on_where_the_trainer_runs_on_a_gpu(tmp_path, server):
    """Default (``teacher_server_prefetch: null``): on for a CUDA device, off on a CPU, where a server on the same
    cores competes with the trainer (measured slower); an explicit setting wins."""
    from sead.components.served import ServedTeacher

    args = tiny_config(tmp_path, method="sead", estimator="topk", estimator_top_k=K, entropy_top_k=K,
                       teacher_server_url=server.url, teacher_server_startup_timeout=5)  # fmt: skip
    tok = tokenizer()
    assert not ServedTeacher.connect(args, len(tok), tok, None, device="cpu").prefetching
    assert ServedTeacher.connect(args, len(tok), tok, None, device="cuda:0").prefetching
    args.teacher_server_prefetch = True
    assert ServedTeacher.connect(args, len(tok), tok, None, device="cpu").prefetching
    args.teacher_server_prefetch = False
    assert not ServedTeacher.connect(args, len(tok), tok, None, device="cuda:0").prefetching
