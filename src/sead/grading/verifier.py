"""Answer extraction and time-bounded grading of math answers.

Grading follows METHODS.md section 3: the final answer is taken from the response (the last
``\\boxed{...}`` first), both it and the gold are parsed with math-verify, and
``verify(gold, pred)`` decides (gold first: math-verify's comparison is not symmetric).

Extraction modes. ``"strict"`` (:data:`TRAINING_MODE`: the training reward, the sign gate's v, teacher
endorsement, curriculum competence and ``sead difficulty``) accepts only an explicit final answer: the
last ``\\boxed{}``, GSM8K's ``####``, a final ``Answer: ...`` line, or "the answer is ...". A response
without one, or cut off inside its last ``\\boxed{``, has no answer and is graded incorrect.
``"auto"`` (the default of :func:`grade`, ``sead eval`` and ``sead grade``: an evaluation convenience)
falls back to the last number anywhere in the text, so a truncated response whose last number
happens to equal the gold is graded correct there.

Time bound. math-verify's own timeouts use ``signal.alarm``, which works only in the main thread
and cannot interrupt sympy while it is inside C code (``9^{9^{9^{9}}}`` hangs ``verify`` for good).
So the sympy work runs in a small pool of persistent worker *processes* (started once, reused for
every grade, talking JSON lines over pipes); a grade that takes longer than ``timeout_seconds``
gets its worker killed (a fresh one is started at once) and returns ``correct=False,
timed_out=True``. This works from any thread, never hangs, and costs a pipe round trip
(~0.1 ms) per grade. Integer and decimal answers never reach sympy: they are compared exactly in
this process (the fast path).

Public API: :data:`EXTRACTION_MODES`, :data:`TRAINING_MODE`, :func:`extract_answer`, :func:`grade`,
:func:`grade_many`, :class:`GradeResult`, :class:`GradeCounter` (and the module-wide
:data:`GRADE_COUNTER`), :func:`math_reward` and :func:`make_math_reward` (TRL reward functions).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from sead.utils.errors import SeadError

EXTRACTION_MODES = ("auto", "strict", "boxed", "gsm8k", "answer_line", "answer_is", "last_number")
TRAINING_MODE = "strict"
"""The extraction mode of every verdict that drives training (rewards, sign gate, curriculum, difficulty)."""
DEFAULT_TIMEOUT_SECONDS = 5.0
WORKER_STARTUP_TIMEOUT_SECONDS = 120.0  # importing sympy on a loaded machine; not part of a grade's bound

__all__ = [
    "EXTRACTION_MODES",
    "FINAL_ANSWER_ORDER",
    "GRADE_COUNTER",
    "TRAINING_MODE",
    "GradeCounter",
    "GradeResult",
    "extract_answer",
    "extract_boxed",
    "grade",
    "grade_groups",
    "grade_many",
    "make_math_reward",
    "math_reward",
    "normalize_answer",
    "shutdown_workers",
]


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")
# GSM8K's answer marker: exactly four hashes. One followed by a word is a Markdown heading
# ("#### Step 2"), not an answer.
_GSM8K_RE = re.compile(r"(?<!#)####(?!#)[ \t]*+(?![A-Za-z]{2})([^\n]*)")
# A line that starts (after Markdown decoration) with "Answer:", "Final Answer:" or "The final answer:".
_ANSWER_LINE_RE = re.compile(
    r"^[ \t>#*_]*(?:the[ \t]+)?(?:final[ \t]+)?answer[ \t*_]*[:：][ \t*_]*(.*)$", re.IGNORECASE | re.MULTILINE
)
_ANSWER_IS_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?\s*", re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])|(?<![\w.\d])[-+]?\.\d+")
_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$|^[-+]?\.\d+$")


def _match_braces(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (escaped ``\\{``/``\\}`` skipped), or None."""
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``; nested braces kept.

    ``\\boxed 5`` (no braces) yields ``5``. A truncated last box (unbalanced braces) is skipped in
    favour of the previous complete one. Returns None when there is none.
    """
    for match in reversed(list(_BOXED_RE.finditer(text))):
        rest_start = match.end()
        j = rest_start
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _match_braces(text, j)
            if close is not None:
                return text[j + 1 : close]
            continue
        if j > rest_start:  # "\boxed 5": one token, up to whitespace or "$"
            token = re.match(r"[^\s$]+", text[j:])
            if token:
                return token.group(0)
    return None


def _extract_gsm8k(text: str) -> str | None:
    matches = _GSM8K_RE.findall(text)
    if not matches:
        return None
    return matches[-1].strip() or None


def _math_span_or_sentence(rest: str) -> str:
    """The answer at the start of ``rest``: a ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]`` span
    if it starts with one, else the rest of the sentence (up to a full stop followed by a space, or
    the end of the line); stripped of a trailing full stop."""
    if rest.startswith("$$"):
        end = rest.find("$$", 2)
        candidate = rest[2:end] if end > 0 else ""
    elif rest.startswith("$"):
        end = rest.find("$", 1)
        candidate = rest[1:end] if end > 0 else ""
    elif rest.startswith("\\(") or rest.startswith("\\["):
        end = rest.find("\\)" if rest[1] == "(" else "\\]", 2)
        candidate = rest[2:end] if end > 0 else ""
    else:
        line = rest.split("\n", 1)[0]
        candidate = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
    return candidate.strip().rstrip(".").strip()


def _extract_answer_is(text: str) -> str | None:
    """The phrase after the last "the answer is": a ``$...$`` span if it starts with one, else the
    rest of the sentence (up to a full stop followed by a space, or the end of the line)."""
    for match in reversed(list(_ANSWER_IS_RE.finditer(text))):
        candidate = _math_span_or_sentence(text[match.end() :])
        if candidate:
            return candidate
    return None


_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]")


def _extract_answer_line(text: str) -> str | None:
    """What the last ``Answer: ...`` line says (DAPO-Math's format: the last line reads ``Answer: $ANSWER``).

    The line may start with Markdown decoration and read "Final Answer:" (``**Final Answer:** 5``). Its
    content is the rest of the line, or the next non-empty line when the rest is empty; a math span at
    its start is taken (``Answer: $\\frac{3}{4}$.`` -> ``\\frac{3}{4}``); prose around a single math span
    gives the span (``Answer: the ratio is $3/4$`` -> ``3/4``); Markdown ``**`` around it goes.
    """
    for match in reversed(list(_ANSWER_LINE_RE.finditer(text))):
        rest = match.group(1).strip()
        if not rest.strip("*_ \t"):
            following = [line.strip() for line in text[match.end() :].split("\n") if line.strip()]
            rest = following[0] if following else ""
        rest = rest.strip("*_ \t")
        spans = _MATH_SPAN_RE.findall(rest)
        if len(spans) == 1 and not _MATH_SPAN_RE.match(rest):
            candidate = next(part for part in spans[0] if part).strip()
        else:
            candidate = _math_span_or_sentence(rest)
        if candidate:
            return candidate
    return None


def _extract_last_number(text: str) -> str | None:
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": extract_boxed,
    "gsm8k": _extract_gsm8k,
    "answer_line": _extract_answer_line,
    "answer_is": _extract_answer_is,
    "last_number": _extract_last_number,
}


#: The explicit final-answer markers, by precedence (by kind, not position: every prompt sead writes asks for
#: ``\\boxed{}``, and a ``#### Step 2`` heading or a later "the answer is clear" must not override a box).
FINAL_ANSWER_ORDER = ("boxed", "gsm8k", "answer_line", "answer_is")
_MODE_ORDER = {"auto": FINAL_ANSWER_ORDER + ("last_number",), "strict": FINAL_ANSWER_ORDER}


def _last_box_cut_off(text: str) -> bool:
    """Whether the last ``\\boxed`` / ``\\fbox`` of ``text`` is unfinished: its ``{`` never closes, or the
    text ends right after the command (a response cut off at the length limit while writing its answer)."""
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return False
    j = matches[-1].end()
    while j < len(text) and text[j] in " \t":
        j += 1
    return j >= len(text) or (text[j] == "{" and _match_braces(text, j) is None)


def extract_answer(text: str, mode: str = "auto") -> str | None:
    """The final answer written in ``text``, as a string, or None if there is none.

    Strategies (any one of them can be asked for alone as ``mode``):

    - ``"boxed"``: the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled);
    - ``"gsm8k"``: what follows the last ``#### `` (GSM8K's answer line; a Markdown heading such as
      ``#### Step 2`` is not one);
    - ``"answer_line"``: the last line reading ``Answer: ...`` (or ``Final Answer: ...``: DAPO-Math's format);
    - ``"answer_is"``: what follows the last "the answer is" (a ``$...$`` span or the sentence);
    - ``"last_number"``: the last integer or decimal in the text (``1,000`` counts as one number).

    ``mode="strict"`` (:data:`TRAINING_MODE`) tries the four explicit markers in that order
    (:data:`FINAL_ANSWER_ORDER`: by kind, not by position) and nothing else; a text whose last ``\\boxed``
    is cut off (unclosed brace) has no answer, even if an earlier box or marker exists.
    ``mode="auto"`` tries the same four, then falls back to the last number (an evaluation
    convenience: it grades a truncated response ending in the gold number as correct), and skips a
    cut-off last box in favour of the previous complete one.

    The result is stripped of surrounding whitespace, ``$`` delimiters and a trailing full stop.
    """
    if mode not in EXTRACTION_MODES:
        raise ValueError(f"mode must be one of {EXTRACTION_MODES}, got {mode!r}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if mode == "strict" and _last_box_cut_off(text):
        return None
    for name in _MODE_ORDER.get(mode, (mode,)):
        answer = _EXTRACTORS[name](text)
        if answer is not None:
            answer = normalize_answer(answer)
            if answer:
                return answer
    return None


def normalize_answer(answer: str) -> str:
    """Light, meaning-preserving clean-up: surrounding whitespace, ``$...$`` / ``\\(...\\)`` /
    ``\\[...\\]`` delimiters, a whole-string ``\\boxed{...}`` wrapper and a final full stop go."""
    s = answer.strip()
    while True:
        before = s
        if s.startswith("$$") and s.endswith("$$") and len(s) >= 4:
            s = s[2:-2].strip()
        elif s.startswith("$") and s.endswith("$") and len(s) >= 2 and s.count("$") == 2:
            s = s[1:-1].strip()
        elif (s.startswith("\\(") and s.endswith("\\)")) or (s.startswith("\\[") and s.endswith("\\]")):
            s = s[2:-2].strip()
        wrapper = _BOXED_RE.match(s)
        if wrapper:
            j = wrapper.end()
            while j < len(s) and s[j] in " \t":
                j += 1
            if j < len(s) and s[j] == "{" and _match_braces(s, j) == len(s) - 1:
                s = s[j + 1 : -1].strip()
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        if s == before:
            return s


# --------------------------------------------------------------------------------------------
# Results and counters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GradeResult:
    """Outcome of one grade.

    ``correct`` is False whenever the grade could not be completed; ``pred`` is the extracted
    answer (None: nothing could be extracted); ``timed_out`` says the time bound was hit;
    ``error`` holds the message of an exception raised while grading (None if there was none).
    """

    correct: bool
    pred: str | None
    timed_out: bool = False
    error: str | None = None


@dataclass
class GradeCounter:
    """Thread-safe running counts of grades, for logging (e.g. the trainer's ``grader/timeouts``).

    Counts: ``total``, ``correct``, ``timeouts``, ``errors``, ``unparsed`` (no answer extracted).
    """

    total: int = 0
    correct: int = 0
    timeouts: int = 0
    errors: int = 0
    unparsed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, result: GradeResult) -> None:
        with self._lock:
            self.total += 1
            self.correct += int(result.correct)
            self.timeouts += int(result.timed_out)
            self.errors += int(result.error is not None and not result.timed_out)
            self.unparsed += int(result.pred is None)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {
                "total": self.total,
                "correct": self.correct,
                "timeouts": self.timeouts,
                "errors": self.errors,
                "unparsed": self.unparsed,
            }

    def reset(self) -> dict[str, int]:
        """Zero the counts; returns the counts as they were (handy for per-step logging)."""
        with self._lock:
            snapshot = {
                "total": self.total,
                "correct": self.correct,
                "timeouts": self.timeouts,
                "errors": self.errors,
                "unparsed": self.unparsed,
            }
            self.total = self.correct = self.timeouts = self.errors = self.unparsed = 0
            return snapshot


GRADE_COUNTER = GradeCounter()
"""Counts every :func:`grade` made in this process (unless ``count=False``)."""


# --------------------------------------------------------------------------------------------
# The math-verify side (runs inside worker processes, or in-process when no bound is asked for)
# --------------------------------------------------------------------------------------------

_MV_CACHE: dict[str, object] = {}


def _mv_parse(answer: str):
    """Parse an extracted answer (or a gold) with math-verify, wrapped as ``\\boxed{...}`` so that
    the whole string is taken as one LaTeX expression; cached (golds repeat across samples)."""
    parsed = _MV_CACHE.get(answer)
    if parsed is None:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

        parsed = parse(
            "\\boxed{" + answer + "}",
            extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
            parsing_timeout=None,
        )
        if len(_MV_CACHE) > 20_000:
            _MV_CACHE.clear()
        _MV_CACHE[answer] = parsed
    return parsed


def _mv_verify(gold: str, pred: str) -> bool:
    """math-verify's verdict, gold first. No time bound: callers bound it."""
    from math_verify import verify

    gold_parsed = _mv_parse(gold)
    pred_parsed = _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None, raise_on_error=True))


def _quiet_math_verify_logs() -> None:
    import logging

    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # the "timeout is disabled" warning: we enforce the bound ourselves
        import math_verify.grader as grader_mod
        import math_verify.parser as parser_mod

        grader_mod.TIMEOUT_WARNING_SHOWN = True
        parser_mod.TIMEOUT_WARNING_SHOWN = True
    except Exception:  # pragma: no cover - older/newer math-verify without the flag
        pass


def _worker_main() -> None:  # pragma: no cover - runs in a child process
    """Worker loop: read ``{"gold", "pred"}`` JSON lines on stdin, answer ``{"correct", "error"}``."""
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the protocol channel
    _quiet_math_verify_logs()
    import math_verify  # noqa: F401  (import cost paid before "ready")

    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = {"correct": _mv_verify(request["gold"], request["pred"]), "error": None}
        except BaseException as err:  # noqa: BLE001 - report everything, keep serving
            reply = {"correct": False, "error": f"{type(err).__name__}: {err}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _WorkerTimeout(Exception):
    pass


class _Worker:
    """One persistent grading process and a reader thread feeding its replies into a queue."""

    def __init__(self) -> None:
        src_dir = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = src_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sead.grading.verifier as v; v._worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.ready = False
        reader = threading.Thread(target=self._read, name="sead-grader-reader", daemon=True)
        reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.replies.put(line)
        except (OSError, ValueError):
            pass
        self.replies.put(None)  # EOF: the process is gone

    def _get(self, timeout: float) -> dict:
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise _WorkerTimeout from None
        if line is None:
            raise RuntimeError("grading worker exited unexpectedly")
        return json.loads(line)

    def wait_ready(self) -> None:
        if not self.ready:
            try:
                self._get(WORKER_STARTUP_TIMEOUT_SECONDS)
            except _WorkerTimeout:
                self.kill()
                raise RuntimeError(
                    f"grading worker did not start within {WORKER_STARTUP_TIMEOUT_SECONDS:.0f} s"
                ) from None
            self.ready = True

    def request(self, gold: str, pred: str, timeout: float) -> dict:
        self.wait_ready()
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
        self.proc.stdin.flush()
        return self._get(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # pragma: no cover
                pass

    def close(self) -> None:
        """Polite shutdown: EOF on stdin ends the worker loop."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _WorkerPool:
    """Idle workers, handed out one per concurrent grade (so threads grade in parallel)."""

    MAX_IDLE = 16

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def acquire(self) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive():
                    return worker
        return _Worker()

    def release(self, worker: _Worker) -> None:
        with self.lock:
            if worker.alive() and len(self.idle) < self.MAX_IDLE:
                self.idle.append(worker)
                return
        worker.close()

    def replace(self, worker: _Worker) -> None:
        """Kill a stuck worker and start its successor now, so its import overlaps other work."""
        worker.kill()
        successor = _Worker()
        self.release(successor)

    def close(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for worker in workers:
            worker.close()


_POOL: _WorkerPool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _WorkerPool:
    """The process-wide pool (a fresh one after ``fork``: the parent's pipes are not ours)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():
            _POOL = _WorkerPool()
        return _POOL


def shutdown_workers() -> None:
    """Stop the grading worker processes (they restart on the next grade). Called at exit."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown_workers)


# --------------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------------


def _as_decimal(s: str) -> Decimal | None:
    """``s`` as an exact Decimal if it is a plain integer/decimal (``1,000`` allowed), else None."""
    s = s.strip()
    if not _PLAIN_NUMBER_RE.match(s):
        return None
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex admits only valid numbers
        return None


def _fast_verdict(gold: str, pred: str) -> bool | None:
    """Exact verdict without sympy when both sides are plain numbers, or None to defer.

    Equal values are correct; two unequal *integers* are wrong. Unequal decimals are deferred to
    math-verify, whose rounding (6 places) may still call them equal.
    """
    g, p = _as_decimal(gold), _as_decimal(pred)
    if g is None or p is None:
        return None
    if g == p:
        return True
    if g == g.to_integral_value() and p == p.to_integral_value() and "." not in gold + pred:
        return False
    return None


def _normalize_gold(gold) -> str:
    if isinstance(gold, bool) or gold is None:
        raise ValueError(f"gold must be a string or a number, got {gold!r}")
    if isinstance(gold, (list, tuple)):  # several gold answers (OlympiadBench style): graded as one set/tuple
        return ", ".join(part for part in (_normalize_gold(g) for g in gold) if part)
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    return normalize_answer(str(gold))


def grade(
    response: str,
    gold,
    *,
    timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    mode: str = "auto",
    count: bool = True,
) -> GradeResult:
    """Grade one response against a gold answer.

    The answer is extracted with :func:`extract_answer` (``mode``), then compared with
    math-verify as ``verify(parse(gold), parse(pred))``. Plain integers/decimals are compared
    exactly without sympy. The sympy work runs in a persistent worker process bounded by
    ``timeout_seconds`` (``None``: no bound, in this process, for debugging): past the bound the
    result is ``correct=False, timed_out=True``. Never raises for bad model output; an exception
    inside math-verify gives ``correct=False`` with ``error`` set. ``gold`` may be a number or a
    string (``$...$`` and a ``\\boxed{}`` wrapper are removed). ``count`` adds the result to
    :data:`GRADE_COUNTER`.
    """
    result = _grade(response, gold, timeout_seconds=timeout_seconds, mode=mode)
    if count:
        GRADE_COUNTER.update(result)
    return result


def _grade(response, gold, *, timeout_seconds: float | None, mode: str) -> GradeResult:
    if mode not in EXTRACTION_MODES:
        raise ValueError(f"mode must be one of {EXTRACTION_MODES}, got {mode!r}")
    if response is None:
        return GradeResult(correct=False, pred=None)
    pred = extract_answer(str(response), mode=mode)
    if pred is None:
        return GradeResult(correct=False, pred=None)
    gold_str = _normalize_gold(gold)
    if not gold_str:
        return GradeResult(correct=False, pred=pred, error="empty gold answer")
    fast = _fast_verdict(gold_str, pred)
    if fast is not None:
        return GradeResult(correct=fast, pred=pred)
    if timeout_seconds is None or timeout_seconds <= 0:
        _quiet_math_verify_logs()
        try:
            return GradeResult(correct=_mv_verify(gold_str, pred), pred=pred)
        except Exception as err:  # noqa: BLE001
            return GradeResult(correct=False, pred=pred, error=f"{type(err).__name__}: {err}"[:500])
    return _grade_in_worker(gold_str, pred, float(timeout_seconds))


def _grade_in_worker(gold: str, pred: str, timeout_seconds: float) -> GradeResult:
    pool = _pool()
    worker = pool.acquire()
    try:
        worker.wait_ready()
        reply = worker.request(gold, pred, timeout_seconds)
    except _WorkerTimeout:
        pool.replace(worker)
        return GradeResult(
            correct=False, pred=pred, timed_out=True, error=f"grading timed out after {timeout_seconds:g} s"
        )
    except Exception as err:  # worker died (e.g. out of memory): count as an error, start afresh
        worker.kill()
        return GradeResult(correct=False, pred=pred, error=f"grading worker failed: {err}"[:500])
    pool.release(worker)
    return GradeResult(correct=bool(reply["correct"]), pred=pred, error=reply.get("error"))


def default_num_workers() -> int:
    """Parallel graders for :func:`grade_many`: the CPU count, capped at 8."""
    return max(1, min(8, os.cpu_count() or 1))


def grade_many(
    responses: Sequence[str],
    golds: Sequence,
    *,
    timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    mode: str = "auto",
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    count: bool = True,
) -> list[GradeResult]:
    """Grade ``responses[i]`` against ``golds[i]`` for all i, in order, with ``num_workers`` parallel
    worker processes (default :func:`default_num_workers`). ``progress(n)`` is called as grades finish."""
    if len(responses) != len(golds):
        raise ValueError(f"responses and golds differ in length: {len(responses)} vs {len(golds)}")
    workers = default_num_workers() if num_workers is None else max(1, int(num_workers))

    def one(pair) -> GradeResult:
        result = grade(pair[0], pair[1], timeout_seconds=timeout_seconds, mode=mode, count=count)
        if progress is not None:
            progress(1)
        return result

    pairs = list(zip(responses, golds))
    if workers == 1 or len(pairs) <= 1:
        return [one(p) for p in pairs]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sead-grade") as pool:
        return list(pool.map(one, pairs))


# --------------------------------------------------------------------------------------------
# TRL reward functions
# --------------------------------------------------------------------------------------------


def grade_groups(
    responses: Sequence[Sequence[str]], golds: Sequence[str], **kwargs
) -> list[list[GradeResult]]:
    """:func:`grade_many` over groups: ``responses[q]`` are question ``q``'s answers, all graded against
    ``golds[q]``; one list of results per question, in order. ``kwargs`` go to :func:`grade_many`."""
    flat = grade_many(
        [r for group in responses for r in group], [g for group, g in zip(responses, golds) for _ in group], **kwargs
    )
    out, i = [], 0
    for group in responses:
        out.append(flat[i : i + len(group)])
        i += len(group)
    return out


def _completion_text(completion) -> str:
    """A completion as text: a string, or the content of the last assistant message of a
    conversational completion ``[{"role": ..., "content": ...}, ...]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, Iterable):
        messages = list(completion)
        assistant = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        chosen = assistant[-1] if assistant else (messages[-1] if messages else {})
        content = chosen.get("content", "") if isinstance(chosen, dict) else chosen
        if isinstance(content, list):  # multimodal-style content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return str(completion)


def make_math_reward(
    *,
    timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS,
    mode: str = TRAINING_MODE,
    counter: GradeCounter | None = None,
    num_workers: int | None = None,
) -> Callable[..., list[float]]:
    """A TRL-style reward function ``f(prompts, completions, answer, **kwargs) -> list[float]``:
    1.0 where the completion's final answer equals ``answer[i]`` (see :func:`grade`), else 0.0.

    ``mode`` defaults to ``"strict"`` (:data:`TRAINING_MODE`): only an explicit final answer counts, so a
    rollout cut off at the length limit without one earns 0 (see :func:`extract_answer`).

    Results are also added to ``counter`` (besides :data:`GRADE_COUNTER`), e.g. to log timeouts.
    The gold column may be named ``answer`` or ``gold``.
    """

    def math_reward(prompts=None, completions=None, answer=None, **kwargs) -> list[float]:
        if completions is None:
            raise SeadError("math_reward: no `completions` were passed (TRL passes them as a keyword).")
        golds = answer if answer is not None else kwargs.get("gold")
        if golds is None:
            raise SeadError(
                "math_reward needs the gold answers: give the dataset an `answer` column "
                "(TRL passes dataset columns to reward functions as keyword arguments)."
            )
        if isinstance(golds, (str, int, float)):
            golds = [golds] * len(completions)
        if len(golds) != len(completions):
            raise SeadError(f"math_reward: {len(completions)} completions but {len(golds)} answers.")
        texts = [_completion_text(c) for c in completions]
        results = grade_many(
            texts, list(golds), timeout_seconds=timeout_seconds, mode=mode, num_workers=num_workers
        )
        if counter is not None:
            for r in results:
                counter.update(r)
        return [1.0 if r.correct else 0.0 for r in results]

    math_reward.__name__ = "math_reward"
    return math_reward


math_reward = make_math_reward()
math_reward.__doc__ = """TRL GRPO-style reward: 1.0 if the completion's answer matches ``answer[i]``, else 0.0.

Strict extraction (:data:`TRAINING_MODE`): only an explicit final answer (``\\boxed{}``, ``####``,
an ``Answer:`` line, "the answer is") counts.

``completions`` are strings or conversational message lists. Counts go to :data:`GRADE_COUNTER`
(``GRADE_COUNTER.reset()`` returns and zeroes them, e.g. once per logging step)."""
