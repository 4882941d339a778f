"""A teacher served by vLLM's OpenAI-compatible server: per-token log-probs and rollouts over HTTP.

With ``teacher_server_url`` the training processes hold no teacher weights at all. For each micro-batch
the trainer sends every rollout (prompt + completion token ids) to ``/v1/completions`` with
``prompt_logprobs = k`` and ``max_tokens = 1``; the server answers, for every position ``p`` of a
sequence, the teacher's ``k`` most likely next tokens with their log-probs, plus the token actually at
``p`` when it is not among them (the first position has none). Those log-probs are
``log softmax(z_T)`` over the whole vocabulary at temperature 1: vLLM's default ``--logprobs-mode
raw_logprobs``, whatever the request's sampling temperature (checked against an HF forward in
``tests/test_teacher_server.py``). :meth:`TeacherServer.sparse_teacher` returns them as the fused loss's
:class:`sead.losses.fused.SparseTeacher`, shaped like the micro-batch's completion mask.

Faults (refused connection, no answer within ``timeout``, HTTP 5xx or 429, a malformed answer) are
retried ``max_retries`` times with exponential backoff; then :class:`TeacherServerError` stops the run
(the trainer saves a checkpoint first, see docs/reliability.md). Other HTTP 4xx answers mean the request
itself is wrong (too many log-probs, a sequence longer than the server's context, an unknown model):
they are not retried.

Facts of vLLM 0.30's server this module relies on (checked against a real server in the tests):

- the prompt may be a list of token-id lists (one choice per list, in order, ``index`` = list position);
- a request with ``prompt_logprobs`` above the server's ``--max-logprobs`` (default 20) is refused with
  HTTP 400 ``"Requested prompt logprobs of K, which is greater than max allowed: M"``; ``/v1/models``
  does not expose the limit, so :meth:`TeacherServer.check` probes it with the ``k`` the run needs;
- ``max_tokens`` must be at least 1; ``n`` samples per prompt come back prompt-major, and with
  ``return_token_ids`` each choice carries its ``token_ids`` (an EOS that stopped it included).
"""

from __future__ import annotations

import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sead.engines.vllm_server import ServerError, request_json, wait_for_health
from sead.losses.heads import SparseTeacher

__all__ = [
    "TeacherServerError",
    "TeacherServer",
    "parse_prompt_logprobs",
]

_MAX_ALLOWED = re.compile(r"max allowed:\s*(\d+)")
_TOKENIZER_PROBE = "The answer is \\boxed{42}. 0123456789 +-*/=()"


class TeacherServerError(ServerError):
    """The teacher server failed (after its retries) or refused a request. ``sead train`` saves a checkpoint
    and exits with status 4 when this happens during training; at start-up nothing was trained (status 2)."""


class _Malformed(ValueError):
    """An answer that does not have the shape this client expects (retried like a server fault)."""


def _sorted_position(ids: list[int], lps: list[float], values: list, where: str, entry) -> tuple[list, list]:
    """One position's ids and log-probs in the order ``(-logprob, rank, id)``, for a position whose log-probs are
    not strictly decreasing as vLLM lists them (ties, or another order)."""
    try:
        ranks = [float(v.get("rank") or math.inf) for v in values]
    except (TypeError, ValueError, AttributeError) as err:
        raise _Malformed(f"{where}: bad rank in {entry!r}") from err
    order = sorted(range(len(ids)), key=lambda j: (-lps[j], ranks[j], ids[j]))
    return [ids[j] for j in order], [lps[j] for j in order]


def _check_values(entry: Any, vocab_size: int | None, where: str) -> None:
    """Every log-prob of a position finite and at most 0 (1e-4 of rounding), every id in ``[0, vocab_size)``."""
    for key, value in entry.items():
        tid, lp = int(key), float(value["logprob"])
        if not math.isfinite(lp) or lp > 1e-4:
            raise _Malformed(f"{where}: log-prob {lp} of token {tid} is not a finite log-probability")
        if tid < 0 or (vocab_size is not None and tid >= vocab_size):
            raise _Malformed(f"{where}: token id {tid} is outside the vocabulary of {vocab_size}")


def parse_prompt_logprobs(
    prompt_logprobs: Any, sequence: Sequence[int], start: int, top_k: int, vocab_size: int | None = None
) -> tuple[list[list[int]], list[list[float]], list[float]]:
    """Positions ``start .. len(sequence) - 1`` of one choice's ``prompt_logprobs``: per position the top-k
    ids and log-probs (most likely first) and the log-prob of ``sequence[p]``. Raises ``ValueError`` on an
    answer of another shape (wrong length, a null or a missing entry, k entries that do not fit, a value out of
    range).

    vLLM lists a position's entries most likely first (its own token first when it is not among the k, then the k
    by rank): they are sorted by ``(-logprob, rank, id)`` only where they are not strictly decreasing. A 17k-token
    rollout at k = 64 has over a million entries, so the per-entry work is list comprehensions and one range check
    over all of them (``min`` / ``max``); a position is looked at again only to name a bad value."""
    if not isinstance(prompt_logprobs, list) or len(prompt_logprobs) != len(sequence):
        n = len(prompt_logprobs) if isinstance(prompt_logprobs, list) else type(prompt_logprobs).__name__
        raise _Malformed(f"prompt_logprobs has {n} positions for a sequence of {len(sequence)} tokens")
    if start < 1:
        raise ValueError("the first token of a sequence has no teacher log-prob: start must be >= 1")
    out_ids, out_lps, sampled, flat_ids, flat_lps = [], [], [], [], []
    k1 = top_k + 1
    for p in range(start, len(sequence)):
        entry, token = prompt_logprobs[p], int(sequence[p])
        if not isinstance(entry, dict):
            raise _Malformed(f"position {p}: expected a dict of log-probs, got {type(entry).__name__}")
        try:
            ids = list(map(int, entry))
            values = list(entry.values())
            lps = [float(v["logprob"]) for v in values]
        except (TypeError, ValueError, KeyError) as err:
            raise _Malformed(f"position {p}: bad entry in {entry!r}") from err
        try:
            at = ids.index(token)
        except ValueError:
            raise _Malformed(f"position {p}: no log-prob for the sequence's token {token}") from None
        sampled.append(lps[at])
        flat_ids += ids
        flat_lps += lps
        if len(ids) == k1:  # the actual token came on top of the k
            del ids[at], lps[at], values[at]
        elif len(ids) != top_k:
            raise _Malformed(f"position {p}: {len(ids)} log-probs, expected {top_k} or {k1}")
        if top_k > 1 and (sorted(lps, reverse=True) != lps or len(set(lps)) != top_k):
            ids, lps = _sorted_position(ids, lps, values, f"position {p}", entry)
        out_ids.append(ids)
        out_lps.append(lps)
    bad_lp = flat_lps and (max(flat_lps) > 1e-4 or not all(map(math.isfinite, flat_lps)))
    bad_id = flat_ids and (min(flat_ids) < 0 or (vocab_size is not None and max(flat_ids) >= vocab_size))
    if bad_lp or bad_id:  # name the first bad position
        for p in range(start, len(sequence)):
            _check_values(prompt_logprobs[p], vocab_size, f"position {p}")
    return out_ids, out_lps, sampled


def _valid_lengths(completion_mask_BT: torch.Tensor) -> list[int]:
    """Valid tokens per row; the valid tokens of each row must come first (TRL's masks: up to the first EOS)."""
    lengths = completion_mask_BT.sum(-1).tolist()
    for b, n in enumerate(lengths):
        if completion_mask_BT[b, : int(n)].sum() != n:
            raise ValueError(
                f"completion_mask row {b} has masked tokens between valid ones: a served teacher scores each "
                "rollout as one token sequence, so each row's valid tokens must come first."
            )
    return [int(n) for n in lengths]


class TeacherServer:
    """Client of one vLLM OpenAI-compatible server holding the teacher.

    Args:
        url: the server's base address, e.g. ``"http://127.0.0.1:8100"`` (a trailing ``/v1`` is accepted).
        model: the served model name (``--served-model-name``); ``None``: the only model the server lists.
        timeout: seconds allowed per HTTP request.
        max_retries: retries of a faulty request (so ``max_retries + 1`` attempts) before giving up.
        backoff: seconds before the first retry; doubled at each retry, at most ``max_backoff``.
        vocab_size: ids at or above it in an answer are malformed (the student's vocabulary).
        sleep: injectable for tests.
    """

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        timeout: float = 300.0,
        max_retries: int = 5,
        backoff: float = 2.0,
        max_backoff: float = 60.0,
        vocab_size: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        self.model = model
        self.timeout, self.max_retries = float(timeout), int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.vocab_size = vocab_size
        self._sleep = sleep
        self.max_model_len: int | None = None

    # ---- HTTP with retries ------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload: dict | None = None, parse: Callable[[Any], Any] = lambda d: d):
        """``parse(json answer)``, retrying faults (:func:`sead.engines.vllm_server.request_json`); a
        :class:`TeacherServerError` when they persist or on a 4xx."""
        return request_json(
            self.url + path, payload, method=method, timeout=self.timeout, retries=self.max_retries,
            backoff=self.backoff, max_backoff=self.max_backoff, check=parse, sleep=self._sleep,
            error=TeacherServerError,
            hint=f"Check that the teacher server at {self.url} is up (its /health answers 200) and its log; raise "
            "teacher_server_timeout (no answer within it counts as a fault) or teacher_server_max_retries if it is "
            "only slow.",
        )  # fmt: skip

    # ---- start-up ---------------------------------------------------------------------------------
    def wait_until_ready(self, startup_timeout: float) -> None:
        """Poll ``/health`` until it answers 200, at most ``startup_timeout`` seconds (a server still loading
        its weights refuses connections or answers 503)."""

        def told(last):
            warnings.warn(f"sead: waiting up to {startup_timeout:g} s for the teacher server at {self.url} ({last})",
                          stacklevel=3)

        wait_for_health(
            self.url, startup_timeout, sleep=self._sleep, on_wait=told, error=TeacherServerError,
            hint="(teacher_server_startup_timeout) Start it first (docs/recipes.md gives the command) or check "
            "teacher_server_url.",
        )  # fmt: skip

    def served_models(self) -> list[dict]:
        def parse(d):
            return [dict(m) for m in d["data"]]

        return self._request("GET", "/v1/models", parse=parse)

    def _pick_model(self, names: list) -> None:
        """``self.model``: the one asked for when the server lists it, else the server's only model."""
        if self.model is None:
            if len(names) != 1:
                raise TeacherServerError(
                    f"the teacher server at {self.url} serves {len(names)} models ({', '.join(map(str, names))}): "
                    "set teacher_server_model to one of them."
                )
            self.model = names[0]
        elif self.model not in names:
            raise TeacherServerError(
                f"teacher_server_model {self.model!r} is not served at {self.url} (it serves "
                f"{', '.join(map(str, names)) or 'nothing'}). Use its --served-model-name."
            )

    def _model_name(self) -> str:
        if self.model is None:
            self._pick_model([m.get("id") for m in self.served_models()])
        return self.model

    def check(self, top_k: int, *, tokenizer=None, max_sequence_length: int | None = None) -> dict[str, Any]:
        """Start-up check: the model is served, its context holds the run's sequences, it returns ``top_k``
        log-probs per token (its ``--max-logprobs``), and it tokenizes text like the student's ``tokenizer``.
        Raises :class:`TeacherServerError` naming what to change. Returns what was learnt."""
        models = self.served_models()
        names = [m.get("id") for m in models]
        self._pick_model(names)
        info = models[names.index(self.model)]
        self.max_model_len = info.get("max_model_len")
        if max_sequence_length is not None and self.max_model_len is not None:
            if int(self.max_model_len) < max_sequence_length + 1:  # max_tokens=1 comes on top
                raise TeacherServerError(
                    f"the teacher server's context ({self.max_model_len} tokens, its --max-model-len) is shorter "
                    f"than the run's longest sequence ({max_sequence_length} = prompt + max_completion_length tokens) plus the one token a request generates. "
                    f"Restart it with --max-model-len {max_sequence_length + 1} or more, or lower max_prompt_length / "
                    "max_completion_length."
                )
        try:
            self.sparse_logprobs([[0, 0]], [1], top_k)
        except TeacherServerError as err:
            found = _MAX_ALLOWED.search(str(err))
            if found is None:
                raise
            raise TeacherServerError(
                f"the teacher server at {self.url} returns at most {found.group(1)} log-probs per token (its "
                f"--max-logprobs), but this run needs {top_k} (the larger of estimator_top_k and, with zones, "
                f"entropy_top_k). Restart it with --max-logprobs {top_k}, or lower those fields."
            ) from err
        if tokenizer is not None:
            self._check_tokenizer(tokenizer)
        return {"model": self.model, "max_model_len": self.max_model_len, "top_k": top_k}

    def _check_tokenizer(self, tokenizer) -> None:
        probe = _tokenizer_probe(tokenizer)
        try:
            served = self._request(
                "POST", "/tokenize", {"model": self.model, "prompt": probe, "add_special_tokens": False},
                parse=lambda d: [int(t) for t in d["tokens"]],
            )  # fmt: skip
        except TeacherServerError as err:
            if "Tokenizer not available" in str(err):  # started with --skip-tokenizer-init: ids in, ids out
                warnings.warn(
                    f"sead: the teacher server at {self.url} runs without a tokenizer (--skip-tokenizer-init): "
                    "that the teacher tokenizes text like the student was not checked; the vocabulary size still is.",
                    stacklevel=2,
                )
                return
            if "HTTP 404" not in str(err):
                raise
            warnings.warn(f"sead: the teacher server has no /tokenize; its tokenizer was not checked ({err})", stacklevel=2)
            return
        own = tokenizer(probe, add_special_tokens=False)["input_ids"]
        if served != list(own):
            raise TeacherServerError(
                f"the teacher served at {self.url} tokenizes text differently from the student: on-policy distillation "
                "compares next-token distributions over one shared vocabulary. Serve a teacher from the student's "
                "model family (same tokenizer)."
            )

    # ---- log-probs --------------------------------------------------------------------------------
    def sparse_logprobs(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], top_k: int):
        """Per sequence, the :func:`parse_prompt_logprobs` triple of positions ``starts[i]`` onwards, from one
        ``/v1/completions`` request with ``prompt_logprobs = top_k``."""
        sequences = [list(map(int, s)) for s in sequences]
        for s, p in zip(sequences, starts):
            if not 1 <= p <= len(s):
                raise ValueError(f"start {p} outside 1..{len(s)}: a sequence's first token has no teacher log-prob")
        payload = {
            "model": self._model_name(),
            "prompt": sequences,
            "max_tokens": 1,
            "temperature": 1.0,
            "prompt_logprobs": int(top_k),
        }

        def parse(d):
            choices = sorted(d["choices"], key=lambda c: c["index"])
            if [c["index"] for c in choices] != list(range(len(sequences))):
                raise _Malformed(f"{len(choices)} choices for {len(sequences)} sequences")
            return [
                parse_prompt_logprobs(c["prompt_logprobs"], s, p, top_k, self.vocab_size)
                for c, s, p in zip(choices, sequences, starts)
            ]

        return self._request("POST", "/v1/completions", payload, parse=parse)

    def sparse_teacher(
        self,
        prompt_ids_BP: torch.Tensor,
        prompt_mask_BP: torch.Tensor,
        completion_ids_BT: torch.Tensor,
        completion_mask_BT: torch.Tensor,
        top_k: int,
    ) -> SparseTeacher:
        """The teacher's log-probs at every valid completion position of a micro-batch (prompts left-padded,
        completions right-padded, as the trainer holds them), on the completion ids' device."""
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids_BP.cpu(), prompt_mask_BP.cpu())]
        lengths = _valid_lengths(completion_mask_BT.cpu())
        rows = [b for b, n in enumerate(lengths) if n > 0]
        for b in rows:
            if not prompts[b]:
                raise ValueError(f"row {b} has an empty prompt: its first token has no teacher log-prob")
        comp = completion_ids_BT.cpu()
        seqs = [prompts[b] + comp[b, : lengths[b]].tolist() for b in rows]
        answers = self.sparse_logprobs(seqs, [len(prompts[b]) for b in rows], top_k) if rows else []
        ids = [i for a in answers for i in a[0]]
        lps = [x for a in answers for x in a[1]]
        sampled = [x for a in answers for x in a[2]]
        n = len(sampled)
        # rows of every valid completion position, in row-major order, placed at their [b, t] (0 elsewhere)
        valid = completion_mask_BT.cpu().bool()
        B, T = valid.shape
        ids_BTK = torch.zeros(B, T, top_k, dtype=torch.long)
        lps_BTK = torch.zeros(B, T, top_k, dtype=torch.float32)
        sampled_BT = torch.zeros(B, T, dtype=torch.float32)
        ids_BTK[valid] = torch.tensor(ids, dtype=torch.long).reshape(n, top_k)
        lps_BTK[valid] = torch.tensor(lps, dtype=torch.float32).reshape(n, top_k)
        sampled_BT[valid] = torch.tensor(sampled, dtype=torch.float32).reshape(n)
        device = completion_ids_BT.device
        return SparseTeacher(ids_BTK.to(device), lps_BTK.to(device), sampled_BT.to(device))


def _tokenizer_probe(tokenizer) -> str:
    """Text both tokenizers must split alike: the decoded text of the first 300 non-special ids (text the student's
    own vocabulary covers, so no unknown-character handling is compared), then a fixed sentence when the student's
    tokenizer round-trips it."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in range(min(len(tokenizer), 300)) if i not in special]
    text = tokenizer.decode(ids)
    fixed = tokenizer.decode(tokenizer(_TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    return text + (" " + _TOKENIZER_PROBE if fixed == _TOKENIZER_PROBE else "")
