"""Finding the final answer in a model's response, and cleaning answers up for comparison.

Pure string logic, no sympy and no processes: what :mod:`sead.grading.verifier` grades is what this module
extracts. METHODS.md section 3: the final answer is taken from the response, the last ``\\boxed{...}`` first.

Extraction modes (:data:`EXTRACTION_MODES`). ``"strict"`` (:data:`TRAINING_MODE`: the training reward, the
sign gate's v, teacher endorsement, curriculum competence and ``sead difficulty``) accepts only an explicit
final answer: the last ``\\boxed{}``, GSM8K's ``####``, a final ``Answer: ...`` line, or "the answer is ...".
A response without one, or cut off inside its last ``\\boxed{``, has no answer and is graded incorrect.
``"auto"`` (the default of :func:`sead.grading.verifier.grade`, ``sead eval`` and ``sead grade``: an evaluation
convenience) falls back to the last number anywhere in the text, so a truncated response whose last number
happens to equal the gold is graded correct there.

Holds: :func:`extract_answer` (and :func:`extract_boxed`, the last box alone), :func:`normalize_answer` (an
answer without its ``$...$`` / ``\\boxed{}`` wrapping), :func:`normalize_gold` (a gold answer of any type as
such a string) and :func:`number_verdict` (the exact verdict on two plain integers/decimals: the grader's fast
path, which never reaches sympy).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

EXTRACTION_MODES = ("auto", "strict", "boxed", "gsm8k", "answer_line", "answer_is", "last_number")
TRAINING_MODE = "strict"
"""The extraction mode of every verdict that drives training (rewards, sign gate, curriculum, difficulty)."""

__all__ = [
    "EXTRACTION_MODES",
    "FINAL_ANSWER_ORDER",
    "TRAINING_MODE",
    "extract_answer",
    "extract_boxed",
    "normalize_answer",
    "normalize_gold",
    "number_verdict",
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
# Gold answers and plain numbers
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


def number_verdict(gold: str, pred: str) -> bool | None:
    """Exact verdict when both sides are plain numbers (the grader's fast path: no sympy), or None to defer.

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


def normalize_gold(gold) -> str:
    """A gold answer as the string the grader compares: a number as a string (a whole float as an integer:
    ``18.0`` -> ``18``), several golds (a list or tuple, OlympiadBench style) joined with ``", "`` as one
    set/tuple; then :func:`normalize_answer`. ``None`` and booleans are refused (ValueError)."""
    if isinstance(gold, bool) or gold is None:
        raise ValueError(f"gold must be a string or a number, got {gold!r}")
    if isinstance(gold, (list, tuple)):  # several gold answers (OlympiadBench style): graded as one set/tuple
        return ", ".join(part for part in (normalize_gold(g) for g in gold) if part)
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    return normalize_answer(str(gold))
