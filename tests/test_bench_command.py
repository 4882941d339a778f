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
