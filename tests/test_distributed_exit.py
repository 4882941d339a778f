"""``exit_after_distributed_run``: a no-op in one process; in a process of a multi-process run it ends the process
with the given code after flushing what was printed (the multi-process tests' scripts and ``sead train`` end with
it)."""

from __future__ import annotations

import subprocess
import sys

from _tiny import subprocess_env
from sead.utils.distributed import exit_after_distributed_run

SCRIPT = """
import atexit, sys
from sead.utils.distributed import exit_after_distributed_run
atexit.register(lambda: print("atexit ran"))  # the normal teardown, skipped
print("written before the exit", end="")
sys.stderr.write("and on stderr")
exit_after_distributed_run(int(sys.argv[1]))
print("after the exit")
"""


def _run(world_size: str, code: int) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "WORLD_SIZE": world_size}
    return subprocess.run([sys.executable, "-c", SCRIPT, str(code)], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip


def test_one_process_keeps_its_interpreter(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert exit_after_distributed_run(3) is None  # returned: the interpreter is still here
    monkeypatch.delenv("WORLD_SIZE")
    assert exit_after_distributed_run(0) is None


def test_a_rank_of_several_exits_with_its_code_after_flushing():
    proc = _run("2", 3)
    assert proc.returncode == 3
    assert proc.stdout == "written before the exit"  # flushed, and nothing after the call, no atexit handler
    assert proc.stderr.endswith("and on stderr")
    single = _run("1", 0)
    assert single.returncode == 0 and "after the exit" in single.stdout and "atexit ran" in single.stdout
