"""The docs stay true to the code: assumed defaults, recipe paths, commands and their flags."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MY_DOCS = ["quickstart.md", "methods.md", "recipes.md", "scaling.md", "faq.md"]


def _text(name: str) -> str:
    return (DOCS / name).read_text()


def test_docs_exist():
    for name in MY_DOCS:
        assert (DOCS / name).is_file(), name


def test_every_assumed_default_is_listed_in_methods_md():
    from sead.training.config import ASSUMED_DEFAULTS

    text = _text("methods.md")
    missing = [key for key in ASSUMED_DEFAULTS if f"`{key}`" not in text]
    assert not missing, f"docs/methods.md does not list the assumed defaults {missing}"


def test_assumed_default_values_in_methods_md_match_the_code():
    from sead.training.config import ASSUMED_DEFAULTS, OPDConfig
    from sead.training.recipe import ScriptArguments

    defaults = {f.name: f.default for f in dataclasses.fields(OPDConfig)}
    defaults.update({f.name: f.default for f in dataclasses.fields(ScriptArguments) if f.name not in defaults})
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", _text("methods.md"), flags=re.M))
    for key in ASSUMED_DEFAULTS:
        if key not in defaults:  # behaviours, not fields (zone_scope, anneal_in_rkl_zone_only)
            assert "fixed" in rows[key], key
            continue
        cell = rows[key].strip().strip("`")
        assert cell == str(defaults[key]), (key, cell, defaults[key])


def _all_docs_text() -> str:
    return "\n".join(_text(name) for name in MY_DOCS)


def test_recipe_and_config_paths_in_docs_exist():
    paths = set(re.findall(r"recipes/[\w./-]+\.yaml", _all_docs_text()))
    assert paths, "no recipe mentioned"
    placeholders = {"recipes/X.yaml"}
    missing = sorted(p for p in paths - placeholders if not (REPO / p).is_file() and "{" not in p)
    assert not missing, missing
    for family in re.findall(r"recipes/olmo3-7b-32b-\{([\w,]+)\}\.yaml", _all_docs_text()):
        for method in family.split(","):
            assert (REPO / f"recipes/olmo3-7b-32b-{method}.yaml").is_file()


def _command_lines(text: str, command: str, fenced: bool = True) -> list[str]:
    """Each `sead COMMAND ...` invocation in code blocks (or anywhere: ``fenced=False``), continuation
    lines joined."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S) if fenced else [text]
    out = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            match = re.search(rf"\bsead(?:\.cli)? {command}\b(.*)", line)
            if match:
                out.append(match.group(1))
    return out


def _recipe_fields() -> set[str]:
    from sead.training.config import OPDConfig
    from sead.training.recipe import ScriptArguments

    return {f.name for f in dataclasses.fields(OPDConfig)} | {f.name for f in dataclasses.fields(ScriptArguments)}


@pytest.mark.parametrize("command", ["difficulty", "plan", "train", "eval"])
def test_flags_used_in_docs_exist(command):
    import importlib

    from sead.cli import COMMANDS

    module = importlib.import_module(COMMANDS[command][0])
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    options = {opt for action in parser._actions for opt in action.option_strings}
    fields = _recipe_fields()
    lines = _command_lines(_all_docs_text(), command)
    recipe_comments = "\n".join(
        line.lstrip("# ") for p in (REPO / "recipes").glob("*.yaml") for line in p.read_text().splitlines()
        if line.startswith("#")
    )  # fmt: skip
    lines += _command_lines(recipe_comments, command, fenced=False)
    assert len(lines) >= (1 if command == "eval" else 3), lines
    for line in lines:
        for flag in re.findall(r"(?<![\w-])(--[\w-]+)", line):
            ok = flag in options or (command in ("train", "plan") and flag[2:] in fields | {"field", "help"})
            assert ok, f"`sead {command} ... {flag}` in the docs is not an option of `sead {command}`"


def test_commands_in_docs_exist():
    from sead.cli import COMMANDS

    used = set(re.findall(r"\bsead (\w+)\b", _all_docs_text()))
    words = {"plan", "difficulty", "train", "eval", "grade", "demo", "bench"}
    for name in used & words:
        assert name in COMMANDS, name


def test_scaling_md_says_what_was_not_run():
    text = _text("scaling.md")
    assert "Not run here" in text
    for thing in ("vLLM", "bf16", "multi-GPU", "DeepSpeed", "FSDP2"):
        assert thing in text, thing


def test_faq_covers_the_usual_pain_points():
    headings = " ".join(re.findall(r"^## (.+)$", _text("faq.md"), flags=re.M)).lower()
    for topic in ("teacher logits", "vocabular", "chat templates and eos", "gradient accumulation"):
        assert topic in headings, topic


def test_readme_headline_quotes_the_committed_benchmark_results():
    """The README's benchmark headline is recomputed from benchmarks/results/*.json: a rerun of
    `make bench` that changes a ratio fails here until the README is updated."""
    import json

    results = REPO / "benchmarks" / "results"
    readme = " ".join((REPO / "README.md").read_text().split())  # line breaks are free
    assert "[BENCHMARKS.md](BENCHMARKS.md)" in readme
    loss = {(r["impl"], r["N"], r["V"]): r for r in json.loads((results / "loss.json").read_text())["rows"] if "error" not in r}
    key = (4096, 32768)
    sead, opd, trl, naive = (loss[(i, *key)] for i in ("sead_fused", "opd_fused", "trl_chunked", "naive"))
    assert f"**{sead['time_s'] / trl['time_s']:.2f}x the time of TRL's chunked" in readme
    assert f"**{sead['peak_mb'] / naive['peak_mb']:.2f}x the peak memory of the naive" in readme
    assert f"**{sead['time_s'] / opd['time_s']:.2f}x the time of our own fused vanilla OPD loss**" in readme
    sg, sg_naive = loss[("sgopd_fused", *key)], loss[("sgopd_naive", *key)]
    assert f"**{sg['peak_mb'] / sg_naive['peak_mb']:.3f}x the peak memory of the naive sign-gated loss**" in readme
    step_rows = json.loads((results / "step.json").read_text())["rows"]
    step = {r["trainer"]: r["step_time_s"] for r in step_rows if (r.get("shape") or {}).get("name", "tiny") == "tiny"}
    assert f"**{step['opd'] / step['trl']:.2f}x TRL's `DistillationTrainer`**" in readme
    assert f"({step['opd_nograde'] / step['trl']:.2f}x with `log_pass_rate:" in readme
    large = {r["trainer"]: r["step_time_s"] for r in step_rows if (r.get("shape") or {}).get("name") == "large"}
    assert f"**a SEAD step costs {step['sead'] / step['opd']:.2f}x a vanilla OPD step** at the tiny" in readme
    assert f"**{large['sead'] / large['opd']:.2f}x** at a larger one" in readme
    assert f"SG-OPD {step['sgopd'] / step['opd']:.2f}x / {large['sgopd'] / large['opd']:.2f}x" in readme
    quality = json.loads((results / "quality.json").read_text())
    summary, tuned = quality["summary"], quality["summary_tuned"]

    def interval(d):  # as BENCHMARKS.md prints a pooled contrast, in points
        return f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"

    # SEAD against OPD, pooled, at the common rate and at each one's chosen rate; OPD's accuracy at each rate
    assert f"{interval(quality['pooled']['accuracy']['vs_opd']['sead'])} points greedy at the common rate" in readme
    assert f"{interval(quality['pooled_tuned']['accuracy']['vs_opd']['sead'])} at each one's rate chosen" in readme
    assert f"1e-3: {100 * summary['opd']['accuracy_mean']:.1f}%, 2e-3: {100 * tuned['opd']['accuracy_mean']:.1f}%" in readme
    assert summary["sead"]["accuracy_vs_opd_pooled"] == quality["pooled"]["accuracy"]["vs_opd"]["sead"]
    half = quality["pooled"]["accuracy"]["pair_half_width"]
    assert f"The design's residual sd resolves {100 * half:.1f} points" in readme
