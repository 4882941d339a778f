"""The benchmark's long-lived worker processes (`sead.experiments.workers.WorkerProcess`, `run_workers`): a job's result
does not depend on what ran before it in the same process, a failing job does not stop the next, and a process
that dies is reported and replaced."""

import sys

import pytest

from sead.experiments.workers import WorkerProcess, run_worker, run_workers

SCORES = ("accuracy", "accuracy_by_level", "avg_at_k", "pass_at_k", "curve", "auc", "training_mechanisms")


@pytest.mark.slow
def test_a_reused_worker_gives_the_result_of_a_fresh_process(tmp_path):
    common = ["--task", "sums", "--quick", "--threads", "1"]  # the default model cache, shared with the other tests
    data = tmp_path / "data"
    prep = run_workers([("data", ["quality-data", "--seed", "0", "--data", str(data), *common])], 1, False, "data")
    assert "error" not in prep["data"], prep

    def job(variant, i):
        return ["quality", "--seed", "0", "--variant", variant, "--data", str(data), "--out", str(tmp_path / f"o{i}"),
                "--steps", "3", *common]

    # one process: opd, then sead and an unknown variant (an error), then opd again
    done = run_workers([("a", job("opd", 0)), ("b", job("sead", 1)), ("bad", job("no-such-variant", 2)),
                        ("c", job("opd", 3))], 1, False, "reuse")
    assert list(done) == ["a", "b", "bad", "c"]
    assert "unknown variant 'no-such-variant'" in done["bad"]["error"]
    fresh = run_worker(job("opd", 4), env={"OMP_NUM_THREADS": "1"})
    for key in SCORES:
        assert done["a"][key] == done["c"][key] == fresh[key], key
    assert done["b"]["variant"] == "sead" and done["a"]["curve"][-1][0] == 3


def test_a_worker_that_dies_mid_job_is_reported_and_replaced():
    # a stand-in worker: reads one job, then exits with status 3 and a message on stderr
    die = [sys.executable, "-c", "import sys; sys.stdin.readline(); sys.stderr.write('boom\\n'); sys.exit(3)"]
    w = WorkerProcess(cmd=die)
    try:
        assert w.run(["anything"]) == {"error": "worker exited 3: boom"}
        first = w.proc
        assert w.run(["again"]) == {"error": "worker exited 3: boom"}  # a new process ran the second job
        assert w.proc is not first
    finally:
        w.close()


def test_results_come_back_in_job_order_from_several_workers(monkeypatch):
    # a stand-in worker that echoes each job's first argument after a delay that reverses the finishing order
    echo = [sys.executable, "-c",
            "import json, sys, time\n"
            "for line in sys.stdin:\n"
            "    a = json.loads(line)\n"
            "    time.sleep(0.3 / (1 + int(a[0])))\n"
            "    print('noise {'); print('@sead-result ' + json.dumps({'n': int(a[0])}), flush=True)\n"]
    import sead.experiments.workers as common

    orig = common.WorkerProcess.__init__
    monkeypatch.setattr(common.WorkerProcess, "__init__", lambda self, env=None, cmd=None, module=None: orig(self, env, echo))
    done = run_workers([(f"k{i}", [str(i)]) for i in range(5)], 2, False, "order")
    assert list(done) == [f"k{i}" for i in range(5)]
    assert [r["n"] for r in done.values()] == list(range(5))


def test_a_job_past_its_time_bound_is_killed_and_reported():
    # a stand-in worker that never answers: the bound kills it, the error says so, and the next job gets a new one
    hang = [sys.executable, "-c", "import sys, time; sys.stdin.readline(); sys.stderr.write('stuck\\n'); time.sleep(60)"]
    w = WorkerProcess(cmd=hang)
    try:
        res = w.run(["anything"], timeout=1.0)
        assert res["error"].startswith("worker killed after 1 s (its time bound)"), res
        first = w.proc
        assert w.run(["again"], timeout=0.5)["error"].startswith("worker killed after 0.5 s")
        assert w.proc is not first
    finally:
        w.close()
