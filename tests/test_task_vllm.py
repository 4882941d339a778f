"""The built-in tasks' models load in vLLM (head dimension, tokenizer reloaded from the folder) and decode
greedily exactly as transformers does. Slow (an engine per task, ~1 min); skipped without vLLM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny import subprocess_env


@pytest.mark.slow
def test_task_models_decode_the_same_in_vllm(tmp_path):
    pytest.importorskip("vllm")
    script = Path(__file__).with_name("_vllm_task.py")
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=subprocess_env(), capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    assert set(res) == {"sums", "arithmetic"}
    for name, r in res.items():
        assert r["same"] == r["n"], (name, r)
