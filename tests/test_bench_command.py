"""``sead bench``: ``--json F`` writes F only; a plain run (``make bench``: ``sead bench all [--quick]``) and
``--update-results`` update the committed results and the report. The benchmarks themselves are replaced by
stubs: only what the command writes is checked."""

from __future__ import annotations

import argparse
import json

import pytest

import sead.bench.report as report
import sead.bench.suite as suite
from sead.commands import bench
from sead.utils.errors import SeadError


@pytest.fixture
def stubbed(monkeypatch, tmp_path):
    """The three benchmarks return a marker; write_report writes a one-line report and records its inputs."""
    for what in ("loss", "step", "quality"):
        monkeypatch.setattr(suite, f"bench_{what}", lambda what=what, **kw: {"benchmark": what, "kw": sorted(kw)})
    reports = []

    def write_report(results, commands, path, analysis=""):
        reports.append(sorted(results))
        path.write_text("report\n")
        return path

    monkeypatch.setattr(report, "write_report", write_report)
    return tmp_path, reports


def _run(tmp_path, *argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args([*argv, "--results-dir", str(tmp_path / "results"), "--report", str(tmp_path / "BENCH.md")])
    return bench.run(args)


@pytest.mark.parametrize("what", ["loss", "step", "quality"])
@pytest.mark.parametrize("quick", [[], ["--quick"]])
def test_json_writes_that_file_only(stubbed, what, quick):
    tmp_path, reports = stubbed
    out = tmp_path / "x.json"
    assert _run(tmp_path, what, *quick, "--json", str(out)) == 0
    assert json.loads(out.read_text())["benchmark"] == what
    assert not (tmp_path / "results").exists()  # the committed results are left alone
    assert not (tmp_path / "BENCH.md").exists() and reports == []  # and so is the report


@pytest.mark.parametrize("what", ["loss", "step", "quality"])
def test_update_results_with_json_updates_the_committed_results_too(stubbed, what):
    tmp_path, reports = stubbed
    out = tmp_path / "x.json"
    _run(tmp_path, what, "--quick", "--json", str(out), "--update-results")
    assert json.loads(out.read_text())["benchmark"] == what
    assert json.loads((tmp_path / "results" / f"{what}_quick.json").read_text())["benchmark"] == what
    assert (tmp_path / "BENCH.md").exists() and reports == [[what]]


@pytest.mark.parametrize("quick,suffix", [([], ""), (["--quick"], "_quick")])
def test_a_plain_run_updates_the_committed_results_and_the_report(stubbed, quick, suffix):
    # what `make bench` / `make bench-quick` run: sead bench all [--quick]
    tmp_path, reports = stubbed
    _run(tmp_path, "all", *quick)
    for what in ("loss", "step", "quality"):
        assert json.loads((tmp_path / "results" / f"{what}{suffix}.json").read_text())["benchmark"] == what
    assert reports == [["loss", "quality", "step"]]
    _run(tmp_path, "loss", *quick, "--no-report")
    assert len(reports) == 1


def test_json_names_one_benchmark(stubbed):
    tmp_path, _ = stubbed
    with pytest.raises(SeadError, match="--json names one file"):
        _run(tmp_path, "all", "--json", str(tmp_path / "x.json"))


def test_quality_reads_the_chosen_rates_and_factorial_writes_them(stubbed, monkeypatch):
    tmp_path, _ = stubbed
    results = tmp_path / "results"
    seen = {}
    monkeypatch.setattr(suite, "bench_quality", lambda **kw: seen.setdefault("quality", kw) and {"benchmark": "quality"})
    _run(tmp_path, "quality", "--no-report")
    assert seen.pop("quality")["rates"] is None  # no lr.json yet: every variant at the size's rate
    monkeypatch.setattr(suite, "bench_factorial", lambda variants, **kw: seen.setdefault("factorial", kw) and {
        "benchmark": "quality", "lr_search": {"grid": [1e-3, 2e-3], "rates": {"sead": 2e-3}, "scores": {}}})
    _run(tmp_path, "factorial", "--seeds", "5", "--lr-grid", "1e-3,2e-3", "--tune", "opd,sead", "--no-report")
    assert seen["factorial"]["seeds"] == 5 and seen["factorial"]["grid"] == (1e-3, 2e-3)
    assert seen["factorial"]["tune"] == ("opd", "sead")
    assert json.loads((results / "lr.json").read_text())["rates"] == {"sead": 2e-3}
    assert json.loads((results / "quality.json").read_text())["command"].startswith("sead bench factorial --seeds 5")
    _run(tmp_path, "quality", "--no-report")
    assert seen["quality"]["rates"] == {"sead": 2e-3}
    seen.pop("quality")
    _run(tmp_path, "quality", "--same-rate", "--no-report")
    assert seen["quality"]["rates"] is None
    with pytest.raises(SeadError, match="--lr-grid"):
        _run(tmp_path, "lr", "--lr-grid", "fast")


def test_step_shapes_are_named_and_checked(stubbed, monkeypatch):
    tmp_path, _ = stubbed
    seen = {}
    monkeypatch.setattr(suite, "bench_step", lambda **kw: seen.update(kw) or {"benchmark": "step"})
    assert _run(tmp_path, "step", "--shapes", "large", "--json", str(tmp_path / "s.json")) == 0
    assert seen["shapes"] == ("large",)
    assert json.loads((tmp_path / "s.json").read_text())["command"] == "sead bench step --shapes large"
    with pytest.raises(SeadError, match=r"--shapes for step names shapes of large, tiny; got \['huge'\]"):
        _run(tmp_path, "step", "--shapes", "huge")
