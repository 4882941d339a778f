"""Session-wide settings: one model cache for every test that prepares the built-in task."""

import os
import tempfile


def pytest_configure(config):
    # Tests that prepare the arithmetic task's models share this cache (a clean one per session unless the
    # caller set SEAD_CACHE_DIR), so the quick models are trained once per `make test`.
    if "SEAD_CACHE_DIR" not in os.environ:
        os.environ["SEAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="sead-test-cache-")
