"""sead.engines.sampling and sead.engines.vllm_server without a real engine: the HF sampler against HF generate itself, the vLLM
sampler with a stand-in engine, and the server client against a local stand-in HTTP server (answers, retries with
backoff, clear errors). Real engines and a real server: tests/test_vllm.py."""

from __future__ import annotations

import json
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from _tiny import tiny_model, tokenizer
from sead.engines.hf import HFSampler
from sead.engines.sampling import Sampling, eos_ids, sample_ids, sample_texts, trim_completion
from sead.engines.vllm_engine import VLLMSampler, as_sampler, choose_backend
from sead.engines.vllm_server import ServerError, ServerSampler, sample_from_server
from sead.utils.errors import SeadError


def _prompts(tok):
    return [tok("12+34=", add_special_tokens=False)["input_ids"], tok("5*6=", add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------- HF generate
def test_hf_sampler_is_hf_generate_on_left_padded_repeated_prompts():
    from transformers import GenerationConfig

    tok = tokenizer()
    model = tiny_model(1).eval()
    prompts, eos = _prompts(tok), [tok.eos_token_id]
    sampler = HFSampler(model, pad_token_id=tok.pad_token_id, eos_token_ids=eos)
    sampling = Sampling(n=3, max_new_tokens=6, temperature=1.0, seed=7)
    out = sample_ids(sampler, prompts, sampling, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
    assert len(out) == 6  # prompt-major: 3 samples of prompt 0, then 3 of prompt 1
    assert all(1 <= len(seq) <= 6 for seq in out)
    for seq in out:
        assert tok.pad_token_id not in seq
        assert all(t not in eos for t in seq[:-1])  # cut right after the first EOS

    # the reference: left-padded prompts repeated per sample, HF generate, same seed
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts]).repeat_interleave(3, 0)
    mask = (torch.arange(width) >= torch.tensor([width - len(p) for p in prompts]).unsqueeze(1)).long()
    torch.manual_seed(7)
    gen = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                           pad_token_id=tok.pad_token_id, eos_token_id=eos)  # fmt: skip
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask.repeat_interleave(3, 0), generation_config=gen)
    assert out == [trim_completion(r, eos, tok.pad_token_id) for r in ref[:, width:].tolist()]

    # a padded tensor with its mask gives the same prompts; batches of 2 rows give the same samples
    padded = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    again = sample_ids(sampler, padded, sampling, prompt_mask=mask, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
    assert again == out
    assert model.training is False


def test_greedy_text_sampling_is_argmax_decoding():
    tok = tokenizer()
    model = tiny_model(2).eval()
    prompt = "7+8="
    sampler = HFSampler(model, pad_token_id=tok.pad_token_id, eos_token_ids=[tok.eos_token_id], batch_size=1)
    (texts,) = sample_texts(sampler, tok, [prompt], Sampling(n=2, temperature=0.0, max_new_tokens=5))
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # by hand: append the argmax five times (or until EOS)
        for _ in range(5):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tok.eos_token_id:
                break
    expected = tok.decode(ids[len(tok(prompt, add_special_tokens=False)["input_ids"]) :], skip_special_tokens=True)
    assert texts == [expected, expected]


def test_generate_responses_is_the_sampling_layer():
    from sead.engines.hf import generate_responses

    tok = tokenizer()
    model = tiny_model(3).eval()
    prompts = ["1+2=", "3*4=", "9-5="]
    old = generate_responses(model, tok, prompts, num_samples=2, temperature=0.8, max_new_tokens=6, batch_size=4, seed=5)
    sampler = HFSampler(model, pad_token_id=tok.pad_token_id, eos_token_ids=eos_ids(tok, model), batch_size=4)
    new = sample_texts(sampler, tok, prompts, Sampling(n=2, temperature=0.8, max_new_tokens=6, seed=5))
    assert old == new and [len(o) for o in old] == [2, 2, 2]


def test_bad_sampling_settings_are_refused():
    for bad in (dict(n=0), dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Sampling(**bad)


def test_trim_completion():
    assert trim_completion([4, 2, 9, 2], [2], 0) == [4, 2]
    assert trim_completion([4, 0, 0], [2], 0) == [4]
    assert trim_completion([4, 0, 0], [0], 0) == [4, 0]  # padding is the EOS: cut after it


# --------------------------------------------------------------------------- vLLM engine (stand-in)
class _Params:
    def __init__(self, **kw):
        self.kw = kw


class _FakeLLM:
    def __init__(self, choices):
        self.choices, self.seen = choices, None

    def generate(self, requests, params, use_tqdm=False):
        self.seen = (requests, params.kw)
        return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=c) for c in self.choices])
                for _ in requests]  # fmt: skip


def test_vllm_sampler_sends_token_ids_and_the_sampling_settings():
    llm = _FakeLLM([[7, 8, 2, 9], [5]])
    sampler = as_sampler(llm)
    assert isinstance(sampler, VLLMSampler) and as_sampler(sampler) is sampler
    sampler.sampling_params_cls = _Params
    out = sample_ids(sampler, [[1, 2], [3]], Sampling(n=2, temperature=0.9, max_new_tokens=4, seed=3),
                     eos_token_ids=[2], pad_token_id=0)  # fmt: skip
    assert out == [[7, 8, 2], [5], [7, 8, 2], [5]]
    requests, kw = llm.seen
    assert requests == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    assert kw == {"n": 2, "temperature": 0.9, "top_p": 1.0, "top_k": -1, "max_tokens": 4, "seed": 3}
    llm.choices = [[6, 2]]  # greedy: one completion asked for (vLLM refuses n > 1), repeated n times
    greedy = sampler.sample_ids([[1]], Sampling(n=2, temperature=0.0, top_p=0.5, top_k=3, max_new_tokens=4))
    assert greedy == [[6, 2], [6, 2]]
    assert llm.seen[1] == {"n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": -1, "max_tokens": 4, "seed": None}
    llm.choices = [[7, 8, 2, 9], [5]]
    with pytest.raises(RuntimeError, match="expected 3"):
        sampler.sample_ids([[1]], Sampling(n=3, max_new_tokens=4))


@pytest.mark.parametrize(
    "backend,installed,cuda,expected",
    [("hf", True, True, "hf"), ("auto", True, True, "vllm"), ("auto", True, False, "hf"), ("auto", False, True, "hf"),
     ("vllm", True, False, "vllm")],
)  # fmt: skip
def test_auto_means_vllm_only_with_cuda(backend, installed, cuda, expected):
    assert choose_backend(backend, installed=installed, cuda=cuda) == expected


def test_backend_errors_name_the_setting():
    with pytest.raises(SeadError, match="teacher_generation_backend must be one of"):
        choose_backend("sglang", field="teacher_generation_backend")
    with pytest.raises(SeadError, match="--backend is vllm but vLLM is not installed"):
        choose_backend("vllm", installed=False)


# --------------------------------------------------------------------------- vLLM server (stand-in HTTP server)
class _Stub:
    """A stand-in OpenAI-compatible server: answers the scripted responses in order, then the last one forever."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, payload):
                stub.requests.append((self.command, self.path, payload))
                action = stub.script.pop(0) if len(stub.script) > 1 else stub.script[0]
                status, body = action(payload) if callable(action) else action
                if status == "hang":
                    threading.Event().wait(body)
                    status, body = 200, "{}"
                data = body if isinstance(body, str) else json.dumps(body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout case)

            def do_GET(self):
                self._answer(None)

            def do_POST(self):
                self._answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _completions(payload):
    """What vLLM answers: for prompt p and sample s, index p*n + s and token ids [first id of p, s], shuffled."""
    n = payload["n"]
    choices = [{"index": p * n + s, "token_ids": [prompt[0], s], "text": "x"}
               for p, prompt in enumerate(payload["prompt"]) for s in range(n)]  # fmt: skip
    return 200, {"choices": choices[::-1]}


@pytest.fixture
def stub():
    servers = []

    def make(*script):
        servers.append(_Stub(script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_server_answers_come_back_prompt_major_with_the_request_vllm_expects(stub):
    server = stub(_completions)
    out = sample_from_server(server.url, "m", [[5, 6], [7], [8]], 2, 0.7, 9, 11, top_k=4, prompts_per_request=2)
    assert out == [[5, 0], [5, 1], [7, 0], [7, 1], [8, 0], [8, 1]]
    (_, path, first), (_, _, second) = server.requests
    assert path == "/v1/completions" and first["prompt"] == [[5, 6], [7]] and second["prompt"] == [[8]]
    sent = {k: first[k] for k in ("model", "n", "temperature", "top_k", "max_tokens", "seed")}
    assert sent == {"model": "m", "n": 2, "temperature": 0.7, "top_k": 4, "max_tokens": 9, "seed": 11}
    assert first["return_token_ids"] is True
    greedy = sample_from_server(server.url, "m", [[5]], 3, 0.0, 3, None, top_p=0.3, top_k=4)
    assert greedy == [[5, 0]] * 3  # vLLM refuses n > 1 with greedy decoding: one asked for, repeated
    last = server.requests[-1][2]
    assert last["n"] == 1 and last["top_p"] == 1.0 and last["top_k"] == -1 and "seed" not in last


def test_server_model_defaults_to_the_served_one_and_the_sampler_wraps_the_client(stub):
    server = stub((200, {"data": [{"id": "served/tiny"}]}), _completions)
    out = sample_ids(ServerSampler(server.url), [[4, 9]], Sampling(n=2, max_new_tokens=3), eos_token_ids=[1])
    assert out == [[4, 0], [4, 1]]
    assert server.requests[0][:2] == ("GET", "/v1/models") and server.requests[1][2]["model"] == "served/tiny"


def test_server_errors_are_retried_with_backoff_then_succeed(stub):
    server = stub((503, {"error": "loading"}), (200, "not json"), (200, {"choices": [{"index": 0}]}), _completions)
    sleeps = []
    out = sample_from_server(server.url, "m", [[3]], 1, 1.0, 2, 0, retries=3, backoff=0.5, sleep=sleeps.append)
    assert out == [[3, 0]] and len(server.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff between the attempts


def test_server_failures_end_in_a_clear_error(stub):
    server = stub((500, {"error": "boom"}))
    sleeps = []
    with pytest.raises(ServerError, match=r"no usable answer after 3 attempts \(last: HTTP 500.*boom") as err:
        sample_from_server(server.url, "m", [[3]], 1, 1.0, 2, 0, retries=2, sleep=sleeps.append)
    assert "api_server" in str(err.value) and sleeps == [1.0, 2.0] and len(server.requests) == 3
    # a malformed answer (wrong number of choices), every time
    bad = stub((200, {"choices": []}))
    with pytest.raises(ServerError, match="malformed answer.*0 choices for 1 prompts x n=2"):
        sample_from_server(bad.url, "m", [[3]], 2, 1.0, 2, 0, retries=1, sleep=lambda s: None)
    # a bad request is the caller's: no retry, the server's message
    refused = stub((400, {"error": "max_tokens too large"}))
    with pytest.raises(ServerError, match="HTTP 400.*max_tokens too large"):
        sample_from_server(refused.url, "m", [[3]], 1, 1.0, 2, 0, retries=3, sleep=lambda s: None)
    assert len(refused.requests) == 1
    assert isinstance(ServerError("x"), SeadError)  # the CLI prints it as a one-paragraph error


def test_server_timeouts_and_refused_connections_are_retried(stub):
    slow = stub(("hang", 2.0), _completions)
    out = sample_from_server(slow.url, "m", [[6]], 1, 1.0, 2, 0, timeout=0.3, retries=1, sleep=lambda s: None)
    assert out == [[6, 0]]
    closed = _Stub([_completions])
    url = closed.url
    closed.close()  # nothing listens on that port any more
    sleeps = []
    with pytest.raises(ServerError, match="after 2 attempts.*(Connection refused|ConnectionRefusedError)"):
        sample_from_server(url, "m", [[6]], 1, 1.0, 2, 0, retries=1, sleep=sleeps.append)
    assert sleeps == [1.0]
