"""The task tokenizers reload from a saved model folder with the same ids and text (what vLLM loads)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from sead.tasks.charset import SPECIAL_TOKENS, build_char_tokenizer


def _saved(tmp_path, tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64)
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_ids_layout_specials_markers_then_characters():
    tok = build_char_tokenizer("ab c", markers=("<<", "\\boxed{"))
    assert [tok.convert_ids_to_tokens(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert tok("\\boxed{", add_special_tokens=False)["input_ids"] == [5]
    # characters in order after the markers; a space is one token too
    assert tok("ab c", add_special_tokens=False)["input_ids"] == [6, 7, 8, 9]
    assert tok("c<<a", add_special_tokens=False)["input_ids"] == [9, 4, 6]


def test_unknown_character_is_unk_and_bad_charsets_are_refused():
    tok = build_char_tokenizer("ab")
    assert tok("a#b", add_special_tokens=False)["input_ids"] == [4, 3, 5]
    with pytest.raises(ValueError, match="distinct"):
        build_char_tokenizer("aa")
    with pytest.raises(ValueError, match="ASCII"):
        build_char_tokenizer("aé")


def test_round_trip_through_auto_tokenizer(tmp_path):
    from sead.tasks.arithmetic import build_tokenizer, make_dataset

    tok = build_tokenizer()
    reloaded = _saved(tmp_path, tok)
    assert reloaded.get_vocab() == tok.get_vocab()
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.padding_side) == (0, 2, "left")
    ds = make_dataset(40, seed=3)
    for prompt, completion in zip(ds["prompt"], ds["completion"]):
        text = prompt + completion
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
        assert reloaded.decode(ids) == text == tok.decode(ids)
        assert reloaded.decode([*ids, tok.eos_token_id], skip_special_tokens=True) == text
