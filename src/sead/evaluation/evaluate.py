"""Evaluation of a model on math benchmarks: generation, grading, metrics, results files.

:func:`evaluate_model` runs the whole pipeline over benchmarks of :mod:`sead.evaluation.benchmarks`, scores them
with :mod:`sead.grading.metrics` (greedy pass@1, avg@k, pass@k) and writes ``results.json`` (metrics) and one
``<benchmark>.jsonl`` per benchmark (every response, its extracted answer and verdict; ``sead grade`` can
re-grade these files).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sead.evaluation.benchmarks import Benchmark, parse_benchmark_specs
from sead.grading.answers import EXTRACTION_MODES
from sead.grading.metrics import avg_at_k, pass_at_k_curve, summarize_grades
from sead.grading.verifier import DEFAULT_TIMEOUT_SECONDS, GradeResult, grade_groups
from sead.utils.errors import SeadError
from sead.utils.jsonl import write_jsonl
from sead.utils.progress import progress_bar
from sead.utils.version import __version__

__all__ = ["BenchmarkResult", "EvalConfig", "evaluate_model", "format_table", "parse_k_spec"]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def parse_k_spec(spec: str | int, benchmarks: Sequence[Benchmark]) -> dict[str, int]:
    """Samples per question for each benchmark, from ``--k``.

    ``"8"``: 8 everywhere; ``"paper"``: each benchmark's ``paper_k`` (32 on AMC23/AIME, 0 elsewhere);
    ``"0"``: greedy only; ``"paper,math500=4"`` / ``"8,aime24=32"``: a default then overrides.
    """
    names = [b.name for b in benchmarks]
    result = {b.name: 0 for b in benchmarks}
    items = [str(spec)] if isinstance(spec, int) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise SeadError("--k is empty: give a number of samples (e.g. 8), 'paper', or NAME=K pairs.")
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            if item.lower() == "paper":
                result = {b.name: b.paper_k for b in benchmarks}
                continue
            name, value = "", item
        try:
            k = int(value)
        except ValueError:
            raise SeadError(f"--k: {item!r} is not a number of samples, 'paper', or NAME=K.") from None
        if k < 0:
            raise SeadError(f"--k: the number of samples must be >= 0, got {k} in {item!r}.")
        if not name:
            result = dict.fromkeys(names, k)
        elif name.strip() in result:
            result[name.strip()] = k
        else:
            raise SeadError(
                f"--k: {name.strip()!r} is not one of the benchmarks being run ({', '.join(names)})."
            )
    return result


@dataclass
class EvalConfig:
    """Everything that determines an evaluation run (written into ``results.json``)."""

    model: str
    benchmarks: str = "math500"
    k: str = "paper"
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 4096
    limit: int | None = None
    batch_size: int = 32
    backend: str = "hf"
    server_url: str | None = None
    server_model: str | None = None
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    greedy: bool = True
    data_dir: str | None = None
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    grade_workers: int | None = None
    grade_mode: str = "auto"  # answer extraction (sead.grading.answers.extract_answer); "strict": explicit final answers only
    chat_template: bool = True
    dtype: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.backend not in ("hf", "vllm", "server"):
            raise SeadError(f"--backend must be 'hf', 'vllm' or 'server', got {self.backend!r}.")
        if self.backend == "server" and not self.server_url:
            raise SeadError("--backend server needs --server-url (the vLLM server's address, e.g. http://127.0.0.1:8000).")
        if self.temperature < 0:
            raise SeadError(f"--temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise SeadError(f"--top-p must be in (0, 1], got {self.top_p}.")
        if self.max_new_tokens < 1:
            raise SeadError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}.")
        if self.batch_size < 1:
            raise SeadError(f"--batch-size must be >= 1, got {self.batch_size}.")
        if self.limit is not None and self.limit < 1:
            raise SeadError(f"--limit must be >= 1, got {self.limit}.")
        if self.grade_mode not in EXTRACTION_MODES:
            raise SeadError(f"--mode must be one of {', '.join(EXTRACTION_MODES)}, got {self.grade_mode!r}.")


@dataclass
class BenchmarkResult:
    """Metrics of one benchmark; ``to_dict`` is its entry in ``results.json``."""

    name: str
    num_questions: int
    greedy: dict[str, Any] | None = None
    sampled: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_questions": self.num_questions,
            "greedy": self.greedy,
            "sampled": self.sampled,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------------------------
# Generation backends
# --------------------------------------------------------------------------------------------

Generator = Callable[[list[str], int, float, str], list[list[str]]]
"""``generate(prompts, num_samples, temperature, description) -> responses per prompt``."""


def text_generator(sampler, tokenizer, config: EvalConfig) -> Generator:
    """The pipeline's ``generate`` over any sampler of :mod:`sead.engines.sampling` (HF, vLLM engine, vLLM server)."""
    from sead.engines.sampling import Sampling, sample_texts

    def generate(
        prompts: list[str], num_samples: int, temperature: float, description: str
    ) -> list[list[str]]:
        sampling = Sampling(
            n=num_samples,
            temperature=temperature,
            top_p=config.top_p if temperature > 0 else 1.0,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
        )
        return sample_texts(sampler, tokenizer, prompts, sampling, progress=description)

    return generate


def build_prompts(
    benchmark: Benchmark, rows: Sequence[Mapping[str, Any]], tokenizer, use_chat: bool
) -> list[str]:
    """Prompt strings: the benchmark's template, wrapped in the tokenizer's chat template when
    the tokenizer has one, ``use_chat`` is on, and the benchmark is asked in chat form."""
    texts = [benchmark.prompt(row) for row in rows]
    chat = use_chat and benchmark.chat_template and getattr(tokenizer, "chat_template", None)
    if not chat:
        return texts
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def _grade_all(
    responses: list[list[str]], golds: list[str], config: EvalConfig, description: str
) -> list[list[GradeResult]]:
    with progress_bar(total=sum(map(len, responses)), desc=description, unit="ans", leave=False) as bar:
        return grade_groups(
            responses, golds, timeout_seconds=config.timeout_seconds, mode=config.grade_mode,
            num_workers=config.grade_workers, progress=bar.update,
        )  # fmt: skip


def evaluate_benchmark(
    benchmark: Benchmark,
    rows: list[dict[str, Any]],
    prompts: list[str],
    generate: Generator,
    *,
    k: int,
    config: EvalConfig,
) -> tuple[BenchmarkResult, list[dict[str, Any]]]:
    """Generate, grade and score one benchmark; returns the metrics and one record per question."""
    start = time.perf_counter()
    golds = [benchmark.gold_answer(row) for row in rows]
    records = [
        {"id": benchmark.row_id(row, i), "prompt": prompt, "answer": gold}
        for i, (row, prompt, gold) in enumerate(zip(rows, prompts, golds))
    ]
    result = BenchmarkResult(name=benchmark.name, num_questions=len(rows))
    if config.greedy:
        greedy = generate(prompts, 1, 0.0, f"{benchmark.name} greedy")
        graded = _grade_all(greedy, golds, config, f"{benchmark.name} grading greedy")
        correct = [[g.correct for g in group] for group in graded]
        result.greedy = {"pass@1": avg_at_k(correct), **summarize_grades([g for grp in graded for g in grp])}
        for record, responses, grades in zip(records, greedy, graded):
            record.update(
                greedy_response=responses[0], greedy_pred=grades[0].pred, greedy_correct=grades[0].correct
            )
    if k > 0:
        sampled = generate(prompts, k, config.temperature, f"{benchmark.name} k={k}")
        graded = _grade_all(sampled, golds, config, f"{benchmark.name} grading k={k}")
        correct = [[g.correct for g in group] for group in graded]
        result.sampled = {
            "k": k,
            "temperature": config.temperature,
            "top_p": config.top_p,
            f"avg@{k}": avg_at_k(correct),
            "pass@k": pass_at_k_curve(correct, k),
            **summarize_grades([g for grp in graded for g in grp]),
        }
        for record, responses, grades in zip(records, sampled, graded):
            record.update(
                responses=responses,
                preds=[g.pred for g in grades],
                correct=[g.correct for g in grades],
                timed_out=[g.timed_out for g in grades],
            )
    result.seconds = time.perf_counter() - start
    return result, records


def evaluate_model(
    config: EvalConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    model=None,
    tokenizer=None,
    print_fn: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Evaluate ``config.model`` (or the given ``model``/``tokenizer``) on ``config.benchmarks``.

    Per benchmark: greedy pass@1 (``config.greedy``), and with ``k > 0`` samples at
    ``config.temperature``: avg@k and pass@k (k = 1, 2, 4, ..., k), with counts of grading
    timeouts, errors and unparsed answers. Writes ``results.json`` and ``<benchmark>.jsonl`` to
    ``out_dir`` when given; prints a table with ``print_fn``. Returns the ``results.json`` dict.
    """
    config.validate()
    specs = parse_benchmark_specs(config.benchmarks)
    ks = parse_k_spec(config.k, [b for b, _ in specs])
    if config.temperature == 0 and any(ks.values()):
        raise SeadError(
            "--temperature 0 makes every sample identical (greedy); greedy pass@1 is always reported, "
            "so use --k 0 for greedy only, or a temperature > 0 for avg@k / pass@k."
        )
    if not config.greedy and not any(ks.values()):
        raise SeadError("nothing to evaluate: --no-greedy with --k 0. Drop --no-greedy or give --k > 0.")
    loaded = [(b, b.load(source, data_dir=config.data_dir, limit=config.limit)) for b, source in specs]
    for benchmark, rows in loaded:
        if not rows:
            raise SeadError(f"{benchmark.name}: no rows to evaluate (is the file empty?).")

    from sead.engines.backends import load_text_sampler
    from sead.engines.hf import hf_sampler

    if model is None:
        sampler, tokenizer = load_text_sampler(
            config.backend, config.model, dtype=config.dtype, seed=config.seed, batch_size=config.batch_size,
            vllm_kwargs=config.vllm_kwargs, server_url=config.server_url, server_model=config.server_model,
        )  # fmt: skip
    elif tokenizer is None or config.backend != "hf":
        raise ValueError("evaluate_model: a model object is sampled with HF generate (backend 'hf') and needs its tokenizer")
    else:
        sampler = hf_sampler(model, tokenizer, config.batch_size)
    generate = text_generator(sampler, tokenizer, config)

    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "model": config.model,
        "sead_version": __version__,
        "config": {key: value for key, value in vars(config).items() if key != "extra"},
        "samples_per_question": ks,
        "benchmarks": {},
    }
    for benchmark, rows in loaded:
        prompts = build_prompts(benchmark, rows, tokenizer, config.chat_template)
        result, records = evaluate_benchmark(
            benchmark, rows, prompts, generate, k=ks[benchmark.name], config=config
        )
        results["benchmarks"][benchmark.name] = result.to_dict()
        if out_path is not None:
            write_jsonl(out_path / f"{benchmark.name}.jsonl", records)
            _write_results(
                out_path / "results.json", results
            )  # after each benchmark: partial runs keep results
    if print_fn is not None:
        print_fn(format_table(results))
    return results


def _write_results(path: Path, results: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def format_table(results: Mapping[str, Any]) -> str:
    """A fixed-width table of ``results["benchmarks"]`` (accuracies in percent)."""
    header = ("benchmark", "n", "greedy@1", "k", "avg@k", "pass@k", "timeouts", "unparsed")
    lines = [header]
    for name, entry in results["benchmarks"].items():
        greedy, sampled = entry.get("greedy"), entry.get("sampled")
        k = sampled["k"] if sampled else 0
        timeouts = (greedy or {}).get("timeouts", 0) + (sampled or {}).get("timeouts", 0)
        unparsed = (greedy or {}).get("unparsed", 0) + (sampled or {}).get("unparsed", 0)
        lines.append(
            (
                name,
                str(entry["num_questions"]),
                _pct(greedy["pass@1"]) if greedy else "-",
                str(k) if k else "-",
                _pct(sampled[f"avg@{k}"]) if sampled else "-",
                _pct(sampled["pass@k"][str(k)]) if sampled else "-",
                str(timeouts),
                str(unparsed),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    rendered = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in lines
    ]
    rendered.insert(1, "-" * len(rendered[0]))
    return "\n".join(rendered)
