"""Test helpers for the served teacher: a fake vLLM server (HTTP on 127.0.0.1, in a thread, answering from a
local HF model in vLLM 0.30's format, with scripted faults) and a stand-in sparse loss.

The fake server's answers follow what a real vLLM 0.30 server was seen to answer (tests/test_teacher_server_vllm.py
checks the client against the real one): ``prompt_logprobs`` is a list with ``None`` first, then per position a dict
``{token_id: {"logprob", "rank", "decoded_token"}}`` of the top-k plus the position's own token when it is not among
them (rank = 1 + the number of tokens with a larger log-prob); a request above ``max_logprobs`` gets HTTP 400 with
"... greater than max allowed: M".
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn.functional as F


class FakeVLLM:
    """``with FakeVLLM(model, tokenizer) as srv: srv.url``. ``srv.faults`` is a list of faults applied, one each,
    to the next requests to ``/v1/completions`` (``"500"``, ``"timeout"``: answer after ``slow_seconds``,
    ``"malformed"``: not JSON, ``"short"``: a valid JSON with a position missing); ``srv.fail_from`` makes every
    completions request from that count on (1-based) answer 500. ``sample_fn(prompt_ids, n, seed)`` gives the
    rollouts (default: ``n`` times the tokens of ``"12"`` + EOS)."""

    def __init__(self, model, tokenizer, *, max_logprobs: int = 8, name: str = "tiny-teacher", max_model_len: int = 128,
                 tokenize_shift: int = 0, port: int = 0, sample_fn=None, slow_seconds: float = 1.0,
                 skip_tokenizer_init: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_logprobs, self.name, self.max_model_len = max_logprobs, name, max_model_len
        self.tokenize_shift = tokenize_shift
        self.skip_tokenizer_init = skip_tokenizer_init  # answer /tokenize as `--skip-tokenizer-init` does
        self.faults: list[str] = []
        self.fail_from: int | None = None
        self.completions_requests = 0
        self.requests: list[tuple[str, dict | None]] = []
        self.slow_seconds = slow_seconds
        self.sample_fn = sample_fn or self._default_sample
        self._lock = threading.Lock()
        self._port = port
        self.httpd = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body, raw=False):
                data = body.encode() if raw else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                owner.requests.append((self.path, None))
                if self.path == "/health":
                    return self._send(200, {})
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": owner.name, "max_model_len": owner.max_model_len}]})
                return self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, payload))
                if self.path == "/tokenize" and owner.skip_tokenizer_init:  # vLLM 0.30's answer, seen on a real one
                    message = "Tokenizer not available when `skip_tokenizer_init=True`"
                    return self._send(400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
                if self.path == "/tokenize":
                    ids = owner.tokenizer(payload["prompt"], add_special_tokens=False)["input_ids"]
                    return self._send(200, {"tokens": [i + owner.tokenize_shift for i in ids], "max_model_len": owner.max_model_len})
                if self.path != "/v1/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                with owner._lock:
                    owner.completions_requests += 1
                    count = owner.completions_requests
                    fault = owner.faults.pop(0) if owner.faults else None
                if owner.fail_from is not None and count >= owner.fail_from:
                    fault = "500"
                if fault == "500":
                    return self._send(500, {"error": {"message": "engine dead"}})
                if fault == "malformed":
                    return self._send(200, "{not json", raw=True)
                if fault == "timeout":
                    time.sleep(owner.slow_seconds)
                code, body = owner.answer(payload)
                if fault == "short" and code == 200:
                    for c in body["choices"]:
                        if c.get("prompt_logprobs"):
                            c["prompt_logprobs"] = c["prompt_logprobs"][:-1]
                return self._send(code, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # ---- answers ----------------------------------------------------------------------------------
    def _default_sample(self, prompt, n, seed):
        ids = self.tokenizer("12", add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return [list(ids) for _ in range(n)]

    def answer(self, p: dict):
        if p.get("model") != self.name:
            return 404, {"error": {"message": f"The model `{p.get('model')}` does not exist."}}
        k = p.get("prompt_logprobs")
        if k is not None and k > self.max_logprobs:
            return 400, {"error": {"message": f"Requested prompt logprobs of {k}, which is greater than max allowed: "
                                              f"{self.max_logprobs} (parameter=prompt_logprobs, value={k})"}}
        if p["max_tokens"] < 1:
            return 400, {"error": {"message": "max_tokens must be at least 1"}}
        choices = []
        for prompt in p["prompt"]:
            if len(prompt) + p["max_tokens"] > self.max_model_len:
                return 400, {"error": {"message": "This model's maximum context length is exceeded"}}
            if k is not None:
                choices.append({"index": len(choices), "text": "", "prompt_logprobs": self.prompt_logprobs(prompt, k)})
            else:
                for ids in self.sample_fn(prompt, p.get("n", 1), p.get("seed")):
                    choices.append({"index": len(choices), "text": "", "token_ids": ids, "finish_reason": "stop"})
        return 200, {"object": "text_completion", "choices": choices}

    @torch.no_grad()
    def prompt_logprobs(self, seq: list[int], k: int) -> list:
        logp = F.log_softmax(self.model(torch.tensor([seq])).logits[0].float(), dim=-1)
        out: list = [None]
        for p in range(1, len(seq)):
            row = logp[p - 1]
            order = torch.argsort(row, descending=True, stable=True).tolist()
            entry = {}
            for tid in order[:k] + ([seq[p]] if seq[p] not in order[:k] else []):
                rank = 1 + int((row > row[tid]).sum())
                entry[str(tid)] = {"logprob": float(row[tid]), "rank": rank, "decoded_token": "?"}
            out.append(entry)
        return out


