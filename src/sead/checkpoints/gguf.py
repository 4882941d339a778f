"""GGUF checkpoints: loaded once by transformers (dequantized), then a plain Hugging Face directory in the cache.

transformers reads a GGUF file with ``from_pretrained(directory, gguf_file=name)`` (the ``gguf`` package does the
parsing) and dequantizes every tensor to fp32. The model it returns still carries the GGUF "quantizer": Trainer
refuses to fine-tune it ("purely quantized models") and ``save_pretrained`` refuses to write it ("quantized with
gguf and is not serializable"), although its weights are ordinary dense tensors by then. :func:`plain_model` builds
the same architecture from the config without the quantization entry and loads the dequantized state dict into it
(tied input/output embeddings stay one tensor).

Everything downstream (TRL's loading, the tokenizer, vLLM, the vocabulary checks, saving the trained student) wants
a plain directory, so sead converts a GGUF file once into ``$SEAD_CACHE_DIR/gguf/<name>-<hash>/`` (safetensors,
tokenizer with its chat template, generation config) and uses that directory wherever the GGUF file was named:
:func:`resolve_gguf`. The hash is of the file's absolute path, size and modification time, so a changed file is
converted again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from sead.utils.cache import default_cache_dir
from sead.utils.errors import SeadError

__all__ = ["gguf_path", "load_gguf", "plain_model", "resolve_gguf", "split_gguf_kwargs"]

#: Written into a converted directory: which GGUF file it came from.
SOURCE_FILE = "sead_gguf_source.txt"


def gguf_path(model_dir: str, gguf_file: str) -> Path:
    """The GGUF file ``gguf_file`` (absolute, or relative to ``model_dir``); refused by name when missing."""
    path = Path(gguf_file).expanduser()
    if not path.is_absolute():
        path = Path(model_dir).expanduser() / path
    if not path.is_file():
        raise SeadError(
            f"gguf_file: {path} does not exist. Give the .gguf file's name inside the model directory "
            f"({model_dir}) or its full path."
        )
    if path.suffix != ".gguf":
        raise SeadError(f"gguf_file: {path} is not a .gguf file.")
    return path


def _require_gguf_package() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise SeadError(
            "reading a GGUF checkpoint needs the `gguf` package: pip install gguf (`make install` installs it)."
        ) from err


def plain_model(model):
    """The same model without transformers' GGUF marker: a fresh model of ``model``'s class built from its config
    (``quantization_config`` removed) with ``model``'s dequantized weights. Ties of input and output embeddings
    are the config's (``tie_word_embeddings``) and survive."""
    if getattr(model, "hf_quantizer", None) is None:
        return model
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    fresh = type(model)._from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    tied = set(getattr(fresh, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise SeadError(
            f"the GGUF checkpoint's tensors do not match its architecture ({type(model).__name__}): missing "
            f"{missing[:3]}, unexpected {unexpected[:3]}."
        )
    fresh.generation_config = model.generation_config
    fresh.eval()
    return fresh


def load_gguf(model_dir: str, gguf_file: str, dtype=None):
    """``(model, tokenizer)`` of a GGUF checkpoint: dequantized by transformers, returned as a plain model
    (:func:`plain_model`). ``dtype``: cast after dequantizing (``None``: fp32, as transformers dequantizes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_package()
    path = gguf_path(model_dir, gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    model = plain_model(model)
    if dtype is not None:
        model = model.to(dtype)
    return model, tokenizer


def _cache_key(path: Path) -> str:
    stat = path.stat()
    text = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resolve_gguf(model_dir: str, gguf_file: str, cache_dir: str | Path | None = None) -> str:
    """A plain Hugging Face directory holding the GGUF checkpoint ``gguf_file`` (converted once, then cached):
    ``<cache>/gguf/<stem>-<hash>``. Returns its path."""
    path = gguf_path(model_dir, gguf_file)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / "gguf" / f"{path.stem}-{_cache_key(path)}"
    if (target / "config.json").is_file():
        return str(target)
    model, tokenizer = load_gguf(str(path.parent), path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(f"{path.resolve()}\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process published it first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def split_gguf_kwargs(name: str, kwargs: dict | None, cache_dir=None) -> tuple[str, dict | None]:
    """``(name, kwargs)`` with a ``gguf_file`` in ``kwargs`` (``model_init_kwargs``-style) replaced by the converted
    directory (:func:`resolve_gguf`) and the key removed; anything else is returned as it is."""
    if not kwargs or not kwargs.get("gguf_file"):
        return name, kwargs
    rest = {k: v for k, v in kwargs.items() if k != "gguf_file"}
    return resolve_gguf(name, kwargs["gguf_file"], cache_dir), rest
