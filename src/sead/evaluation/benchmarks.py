"""Benchmark registry: where each math test set's question and gold answer live, how it is asked,
and where it is loaded from.

Every benchmark loads from a local file when one is found (``<data dir>/<name>.jsonl``), and
otherwise from the Hugging Face hub with :func:`datasets.load_dataset`. The data dir is, in order:
the ``data_dir`` argument (``sead eval --data-dir``), ``$SEAD_DATA_DIR``, then the first of
``./../shared/data/math`` and ``<repo root>/../shared/data/math`` that exists.

Gold answers (see ``shared/data/math/README.md``):

========================  =======================================================================
gsm8k                     ``answer`` after the last ``####`` (thousands commas removed)
math500                   ``answer`` (LaTeX)
minerva_math              the last ``\\boxed{...}`` in ``solution`` (or ``answer`` if present)
olympiadbench             ``final_answer``: a list of LaTeX strings with ``$...$``, joined by ", "
amc23, aime24, aime25     ``answer`` (a number; ``27.0`` -> ``27``, ``025`` -> ``25``)
arithmetic                ``answer`` (built-in task, :mod:`sead.tasks.arithmetic`, test split)
========================  =======================================================================

Prompts ask for the final answer in ``\\boxed{}`` (:data:`BOXED_INSTRUCTION`); a question that
already asks for it (MATH-500's ``problem`` does) is used as is.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sead.grading.answers import extract_boxed, normalize_answer
from sead.utils.errors import SeadError
from sead.utils.jsonl import read_jsonl

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
DEFAULT_PROMPT_TEMPLATE = "{question}\n" + BOXED_INSTRUCTION
DATA_DIR_ENV = "SEAD_DATA_DIR"
_DEFAULT_RELATIVE_DATA_DIR = Path("..") / "shared" / "data" / "math"
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

__all__ = [
    "BENCHMARKS",
    "BOXED_INSTRUCTION",
    "DATA_DIR_ENV",
    "DEFAULT_PROMPT_TEMPLATE",
    "Benchmark",
    "HubSource",
    "benchmark_names",
    "get_benchmark",
    "parse_benchmark_specs",
    "resolve_data_dir",
]


# --------------------------------------------------------------------------------------------
# Gold answers
# --------------------------------------------------------------------------------------------


def _number_to_str(value: Any) -> str:
    """Numbers as written by a person: ``27.0`` -> ``"27"``, ``"025"`` -> ``"25"``, else ``str``."""
    if isinstance(value, bool):
        raise ValueError(f"a gold answer cannot be a boolean, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if text.isdigit():
        return str(int(text))
    return text


def _field(row: Mapping[str, Any], names: Sequence[str], benchmark: str, what: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise SeadError(
        f"{benchmark}: a row has no {what} field (looked for {', '.join(repr(n) for n in names)}; "
        f"it has {', '.join(repr(k) for k in row)}). Use a file with one of those columns."
    )


def gold_answer_field(row: Mapping[str, Any], *, benchmark: str = "benchmark") -> str:
    """``answer`` (or ``gold``), normalized (numbers canonical, ``$``/``\\boxed`` wrappers removed)."""
    return normalize_answer(_number_to_str(_field(row, ("answer", "gold"), benchmark, "gold answer")))


def gold_gsm8k(row: Mapping[str, Any]) -> str:
    """GSM8K: the text after the last ``####`` of ``answer``, thousands commas removed."""
    text = str(_field(row, ("answer",), "gsm8k", "answer"))
    final = text.rsplit("####", 1)[-1].strip()
    plain = final.replace(",", "")
    return plain if re.fullmatch(r"[-+]?\d+(?:\.\d+)?", plain) else final


def gold_minerva(row: Mapping[str, Any]) -> str:
    """Minerva-Math: ``answer`` when present (hub copies), else the last ``\\boxed{}`` of ``solution``."""
    if row.get("answer") not in (None, ""):
        return gold_answer_field(row, benchmark="minerva_math")
    solution = str(_field(row, ("solution",), "minerva_math", "solution"))
    boxed = extract_boxed(solution)
    if boxed is None:
        raise SeadError(f"minerva_math: a solution has no \\boxed{{}} answer: {solution[-200:]!r}")
    return _fix_minerva_notation(normalize_answer(boxed))


def _fix_minerva_notation(answer: str) -> str:
    """Two code-style artifacts in Minerva golds that LaTeX parsers reject: ``-1./3`` (a Python
    float, read ``-1/3``) and ``np.arcsin(...)`` (read ``\\arcsin(...)``)."""
    answer = re.sub(r"(?<=\d)\.(?!\d)", "", answer)
    return re.sub(r"\bnp\.(?=[a-z]+\()", "\\\\", answer)


def gold_olympiadbench(row: Mapping[str, Any]) -> str:
    """OlympiadBench: ``final_answer`` is a list of LaTeX strings (``["$\\frac{1}{2}$"]``); the
    ``$`` delimiters go and several answers are joined with ", " (graded as a set or tuple)."""
    final = _field(row, ("final_answer", "answer"), "olympiadbench", "final_answer")
    parts = [final] if isinstance(final, str) else list(final)
    cleaned = [str(p).replace("$", "").strip() for p in parts]
    return ", ".join(p for p in cleaned if p)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub: ``load_dataset(path, name, split=split)``."""

    path: str
    name: str | None = None
    split: str = "test"


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set.

    ``question_fields`` are tried in order; ``gold`` maps a row to its gold answer string;
    ``prompt_template`` has a ``{question}`` slot; ``paper_k`` is the number of samples papers
    report avg@k with (0: greedy pass@1 only); ``chat_template`` says whether to wrap prompts in
    the tokenizer's chat template; ``loader`` (for built-in tasks) replaces file/hub loading.
    """

    name: str
    description: str
    question_fields: tuple[str, ...]
    gold: Callable[[Mapping[str, Any]], str]
    filename: str | None = None
    hub: HubSource | None = None
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    paper_k: int = 0
    chat_template: bool = True
    loader: Callable[[int | None], list[dict[str, Any]]] | None = None

    def question(self, row: Mapping[str, Any]) -> str:
        """The question text of ``row``."""
        return str(_field(row, self.question_fields, self.name, "question"))

    def gold_answer(self, row: Mapping[str, Any]) -> str:
        """The gold answer of ``row``, ready for :func:`sead.grading.verifier.grade`."""
        return self.gold(row)

    def prompt(self, row: Mapping[str, Any]) -> str:
        """The prompt for ``row``: the template filled with its question, unless the question
        already asks for a ``\\boxed{}`` answer."""
        question = self.question(row)
        if "\\boxed{}" in question:
            return question
        return self.prompt_template.replace("{question}", question)

    def row_id(self, row: Mapping[str, Any], index: int) -> Any:
        """A stable id: the row's ``id``/``idx``/``unique_id`` field, else its index in the file."""
        for key in ("id", "idx", "unique_id"):
            if row.get(key) is not None:
                return row[key]
        return index

    def local_path(self, data_dir: str | os.PathLike | None = None) -> Path | None:
        """The local file for this benchmark in the data dir, if there is one."""
        if self.filename is None:
            return None
        directory = resolve_data_dir(data_dir)
        if directory is None:
            return None
        path = directory / self.filename
        return path if path.is_file() else None

    def load(
        self,
        source: str | os.PathLike | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The rows, as dicts: from ``source`` (a local file, or a hub dataset name) if given,
        else from the local file in the data dir, else from the hub. ``limit`` keeps the first rows."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if self.loader is not None and source is None:
            rows = self.loader(limit)
        elif source is not None:
            rows = _load_source(self.name, str(source), split=self.hub.split if self.hub else "test")
        else:
            local = self.local_path(data_dir)
            if local is not None:
                rows = _load_local(local)
            elif self.hub is not None:
                rows = _load_hub(self.name, self.hub, searched=_searched_dirs(data_dir))
            else:  # pragma: no cover - every registered benchmark has a file or a loader
                raise SeadError(f"{self.name}: no data source; pass a file.")
        return rows[:limit] if limit is not None else rows


def _load_arithmetic(limit: int | None) -> list[dict[str, Any]]:
    try:
        module = importlib.import_module("sead.tasks.arithmetic")
        make_dataset = module.make_dataset
    except (ImportError, AttributeError) as err:
        raise SeadError(
            f"benchmark 'arithmetic' needs the built-in task module sead.tasks.arithmetic ({err}). "
            "Reinstall sead, or evaluate on another benchmark."
        ) from err
    dataset = make_dataset(limit if limit else 200, split="test", seed=0)
    return [dict(row) for row in dataset]


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="gsm8k",
            description="GSM8K test (1319 grade-school word problems)",
            question_fields=("question", "problem"),
            gold=gold_gsm8k,
            filename="gsm8k.jsonl",
            hub=HubSource("openai/gsm8k", "main", "test"),
        ),
        Benchmark(
            name="math500",
            description="MATH-500 (Lightman et al. subset of the MATH test set)",
            question_fields=("problem", "question"),
            gold=lambda row: gold_answer_field(row, benchmark="math500"),
            filename="math500.jsonl",
            hub=HubSource("HuggingFaceH4/MATH-500", None, "test"),
        ),
        Benchmark(
            name="minerva_math",
            description="Minerva-Math (272 undergraduate STEM problems)",
            question_fields=("problem", "question"),
            gold=gold_minerva,
            filename="minerva_math.jsonl",
            hub=HubSource("math-ai/minervamath", None, "test"),
        ),
        Benchmark(
            name="olympiadbench",
            description="OlympiadBench (675 English open-ended math competition problems)",
            question_fields=("question", "problem"),
            gold=gold_olympiadbench,
            filename="olympiadbench.jsonl",
            hub=HubSource("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
        ),
        Benchmark(
            name="amc23",
            description="AMC 2023 (40 problems)",
            question_fields=("question", "problem"),
            gold=lambda row: gold_answer_field(row, benchmark="amc23"),
            filename="amc23.jsonl",
            hub=HubSource("math-ai/amc23", None, "test"),
            paper_k=32,
        ),
        Benchmark(
            name="aime24",
            description="AIME 2024 (30 problems)",
            question_fields=("problem", "question"),
            gold=lambda row: gold_answer_field(row, benchmark="aime24"),
            filename="aime24.jsonl",
            hub=HubSource("HuggingFaceH4/aime_2024", None, "train"),
            paper_k=32,
        ),
        Benchmark(
            name="aime25",
            description="AIME 2025 (30 problems)",
            question_fields=("problem", "question"),
            gold=lambda row: gold_answer_field(row, benchmark="aime25"),
            filename="aime25.jsonl",
            hub=HubSource("math-ai/aime25", None, "test"),
            paper_k=32,
        ),
        Benchmark(
            name="arithmetic",
            description="built-in synthetic arithmetic task, held-out test problems (sead.tasks.arithmetic)",
            question_fields=("prompt",),
            gold=lambda row: gold_answer_field(row, benchmark="arithmetic"),
            prompt_template="{question}",
            chat_template=False,
            loader=_load_arithmetic,
        ),
    )
}

#: The six sets of the paper-style table, in table order.
PAPER_BENCHMARKS = ("math500", "minerva_math", "olympiadbench", "amc23", "aime24", "aime25")


def benchmark_names() -> list[str]:
    """Registered benchmark names."""
    return list(BENCHMARKS)


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name`` (case-insensitive; ``-`` and ``_`` interchangeable)."""
    key = name.strip().lower().replace("-", "_")
    aliases = {"math_500": "math500", "minerva": "minerva_math", "aime2024": "aime24", "aime2025": "aime25"}
    key = aliases.get(key, key)
    if key not in BENCHMARKS:
        raise SeadError(f"unknown benchmark {name!r}: choose from {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[key]


def parse_benchmark_specs(specs: str | Sequence[str]) -> list[tuple[Benchmark, str | None]]:
    """``"math500,aime24=path/to/aime.jsonl"`` -> ``[(math500, None), (aime24, "path/...")]``.

    ``NAME=SOURCE`` loads that benchmark from SOURCE (a local file or a hub dataset name)."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    out: list[tuple[Benchmark, str | None]] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        name, _, source = item.partition("=")
        out.append((get_benchmark(name), source.strip() or None))
    if not out:
        raise SeadError(f"no benchmark given: choose from {', '.join(BENCHMARKS)}.")
    seen = [b.name for b, _ in out]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise SeadError(f"benchmark(s) listed twice: {', '.join(duplicates)}.")
    return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _candidate_dirs() -> list[Path]:
    repo_root = Path(__file__).resolve().parents[2]
    return [Path.cwd() / _DEFAULT_RELATIVE_DATA_DIR, repo_root / _DEFAULT_RELATIVE_DATA_DIR]


def _searched_dirs(data_dir: str | os.PathLike | None) -> list[str]:
    if data_dir is not None:
        return [str(data_dir)]
    if os.environ.get(DATA_DIR_ENV):
        return [os.environ[DATA_DIR_ENV]]
    return [str(p) for p in _candidate_dirs()]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data dir: ``data_dir``, else ``$SEAD_DATA_DIR``, else ``./../shared/data/math``
    or ``<repo root>/../shared/data/math`` (the first that exists), else None (use the hub).

    An explicitly given dir (argument or env var) must exist."""
    explicit = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            origin = "--data-dir" if data_dir is not None else f"${DATA_DIR_ENV}"
            raise SeadError(
                f"data dir {str(path)!r} (from {origin}) does not exist; point it at the benchmark files."
            )
        return path.resolve()
    for candidate in _candidate_dirs():
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _load_local(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SeadError(f"benchmark file {str(path)!r} does not exist.")
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "data" in data:
            data = data["data"]
        if not isinstance(data, list):
            raise SeadError(f"{path}: expected a JSON list of rows (or {{'data': [...]}}).")
        return [dict(r) for r in data]
    import datasets

    kind = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
    if kind is None:
        raise SeadError(f"{path}: unsupported file type; use one of {', '.join(_LOCAL_SUFFIXES)}.")
    return [dict(r) for r in datasets.load_dataset(kind, data_files=str(path), split="train")]


def _load_source(name: str, source: str, *, split: str) -> list[dict[str, Any]]:
    path = Path(source).expanduser()
    if path.exists() or path.suffix in _LOCAL_SUFFIXES:
        return _load_local(path)
    hub_name, _, config = source.partition(":")
    return _load_hub(name, HubSource(hub_name, config or None, split), searched=[])


def _load_hub(name: str, hub: HubSource, *, searched: list[str]) -> list[dict[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(hub.path, hub.name, split=hub.split)
    except Exception as err:  # network down, gated repo, renamed dataset...
        where = f" No local file was found in {', '.join(searched)}." if searched else ""
        raise SeadError(
            f"{name}: could not load hub dataset {hub.path!r} (config {hub.name!r}, split {hub.split!r}): "
            f"{type(err).__name__}: {str(err)[:300]}.{where} Pass --data-dir (or set ${DATA_DIR_ENV}) to a "
            f"folder holding {name}.jsonl, or give a file as {name}=PATH."
        ) from err
    return [dict(r) for r in dataset]
