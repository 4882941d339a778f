"""Depth pruning: a copy of a decoder that keeps some of its transformer layers (prune, then distill).

Prune-then-distill recipes (NVIDIA's Minitron, for one) drop whole decoder layers from a trained model and distill
the pruned copy back towards the full one. :func:`prune_layers` keeps the layers whose indices are given, in order,
with their weights; the embeddings, final norm and head are kept whole (tied embeddings stay tied). The pruned model
is built fresh from the config with ``num_hidden_layers = len(keep)`` (so every layer's own index, which the KV
cache uses, is renumbered ``0..len(keep)-1``), and every per-layer list of the config (``layer_types`` of
sliding/full attention, for one) keeps the same entries.
"""

from __future__ import annotations

import copy
import re

from sead.utils.errors import SeadError

__all__ = ["layers_to_keep", "prune_layers"]


def layers_to_keep(
    num_layers: int, keep: list[int] | None = None, every: int | None = None, drop: list[int] | None = None
) -> list[int]:
    """The layer indices a pruned copy keeps: ``keep`` (sorted, checked against ``num_layers``), every ``every``-th
    layer starting at 0 (``[0, every, 2 every, ...]``), or every layer but ``drop``. Exactly one of the three."""
    if sum(x is not None for x in (keep, every, drop)) != 1:
        raise SeadError(
            "give the layers to keep by index (--keep 0,3,6), as every k-th (--keep-every 3), or the layers to drop "
            "(--drop 26,27): exactly one of the three."
        )
    if every is not None:
        if every < 1:
            raise SeadError(f"keep-every must be >= 1; got {every}.")
        return list(range(0, num_layers, every))
    option, given = ("drop", drop) if drop is not None else ("keep", keep)
    chosen = sorted(set(int(i) for i in given))
    bad = [i for i in chosen if not 0 <= i < num_layers]
    if bad:
        raise SeadError(f"{option}: layer {bad[0]} does not exist; the model has layers 0..{num_layers - 1}.")
    kept = chosen if drop is None else [i for i in range(num_layers) if i not in chosen]
    if not kept:
        raise SeadError(f"{option}: no layer would be left; a model needs at least one layer.")
    return kept


def _layers_prefix(model) -> str:
    """The state-dict prefix of the decoder's layer list (``model.layers`` for llama, qwen2, gemma3, ...)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise SeadError(
        f"{type(model).__name__}: no list of decoder layers found (model.get_decoder().layers); depth pruning "
        "supports decoder-only models whose layers are a ModuleList."
    )


def prune_layers(model, keep: list[int]):
    """A new model holding ``model``'s layers ``keep`` (in that order) and everything outside the layer list.

    ``config.num_hidden_layers`` becomes ``len(keep)``; each config list with one entry per layer is cut the same
    way. The weights are copied (``model`` is not changed)."""
    config = model.config.get_text_config()
    n = int(config.num_hidden_layers)
    keep = layers_to_keep(n, keep=keep)
    prefix = _layers_prefix(model)
    new_config = copy.deepcopy(model.config)
    text = new_config.get_text_config()
    for key, value in list(vars(text).items()):
        if isinstance(value, list) and len(value) == n and key != "num_hidden_layers":
            setattr(text, key, [value[i] for i in keep])
    text.num_hidden_layers = len(keep)
    dtype = next(model.parameters()).dtype
    pruned = type(model)._from_config(new_config, dtype=dtype)
    renumber = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.*)$")
    state = {}
    for key, tensor in model.state_dict().items():
        match = pattern.match(key)
        if match is None:
            state[key] = tensor
        elif int(match.group(1)) in renumber:
            state[f"{prefix}.{renumber[int(match.group(1))]}.{match.group(2)}"] = tensor
    missing, unexpected = pruned.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and text.tie_word_embeddings}
    if set(missing) - tied or unexpected:
        raise SeadError(f"pruning {type(model).__name__}: missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}.")
    pruned.generation_config = copy.deepcopy(model.generation_config)
    return pruned


def prune_checkpoint(
    source: str,
    out: str,
    keep: list[int] | None = None,
    every: int | None = None,
    gguf_file: str | None = None,
    drop: list[int] | None = None,
) -> list[int]:
    """Load the checkpoint ``source`` (a directory or hub id; with ``gguf_file``, a GGUF file in that directory,
    converted once by :func:`sead.checkpoints.gguf.resolve_gguf`), keep the layers ``keep`` (or every ``every``-th, or
    all but ``drop``),
    and save the pruned model with the source's tokenizer (chat template included) to ``out``. Returns the kept
    layers' indices in the source."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sead.checkpoints.gguf import resolve_gguf

    if gguf_file:
        source = resolve_gguf(source, gguf_file)
    model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(source)
    kept = layers_to_keep(int(model.config.get_text_config().num_hidden_layers), keep=keep, every=every, drop=drop)
    pruned = prune_layers(model, kept)
    Path(out).mkdir(parents=True, exist_ok=True)
    pruned.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return kept
