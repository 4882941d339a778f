"""Session-wide settings: one model cache for every test that prepares the built-in task."""

import os
import tempfile

import pytest


def pytest_configure(config):
    # tests import transformers / accelerate before sead: DeepSpeed's choice on a CPU-only torch, without its warning
    from sead.utils.deepspeed_env import choose_cpu_for_deepspeed

    choose_cpu_for_deepspeed()
    # Tests that prepare the arithmetic task's models share this cache (a clean one per session unless the
    # caller set SEAD_CACHE_DIR), so the quick models are trained once per `make test`.
    if "SEAD_CACHE_DIR" not in os.environ:
        os.environ["SEAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="sead-test-cache-")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test's tensors are tiny: one intra-op thread avoids oversubscribing the shared CPU (several threads
    thrash on tensors this small). Subprocesses get OMP_NUM_THREADS=1 from ``_tiny.subprocess_env``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
