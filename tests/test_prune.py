"""Depth pruning (``sead.checkpoints.prune``, ``sead prune``): the pruned copy is the source's kept layers, run in
order, with everything outside the layer list unchanged; it saves and reloads with ``AutoModelForCausalLM``."""

from __future__ import annotations

import pytest
import torch

from sead.checkpoints.prune import layers_to_keep, prune_layers
from sead.utils.errors import SeadError


def _model(layers: int = 4, tie: bool = True, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=40, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=tie,
        layer_types=["full_attention"] * layers,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def _by_hand(model, keep, ids_BT):
    """The source model's forward with only the layers ``keep``: embeddings, those layers in order, norm, head."""
    inner = model.model
    h = inner.embed_tokens(ids_BT)
    pos = torch.arange(ids_BT.shape[1])[None]
    rope = inner.rotary_emb(h, pos)
    T = ids_BT.shape[1]
    causal = torch.full((T, T), float("-inf")).triu(1)[None, None]
    for i in keep:
        h = inner.layers[i](h, attention_mask=causal, position_embeddings=rope, position_ids=pos)
        h = h[0] if isinstance(h, tuple) else h
    return model.lm_head(inner.norm(h))


def test_layers_to_keep():
    assert layers_to_keep(30, every=3) == list(range(0, 30, 3))
    assert layers_to_keep(30, keep=[29, 0, 3, 3]) == [0, 3, 29]
    with pytest.raises(SeadError, match="layer 30 does not exist"):
        layers_to_keep(30, keep=[0, 30])
    assert layers_to_keep(30, drop=[27, 26]) == [*range(26), 28, 29]
    with pytest.raises(SeadError, match="exactly one of the three"):
        layers_to_keep(30)
    with pytest.raises(SeadError, match="exactly one of the three"):
        layers_to_keep(30, keep=[0], drop=[1])
    with pytest.raises(SeadError, match="drop: layer 31 does not exist"):
        layers_to_keep(30, drop=[31])
    with pytest.raises(SeadError, match="no layer would be left"):
        layers_to_keep(2, drop=[0, 1])
    with pytest.raises(SeadError, match="keep-every must be >= 1"):
        layers_to_keep(30, every=0)


@pytest.mark.parametrize("keep", [[0, 2], [1], [0, 1, 2, 3]])
def test_pruned_model_runs_the_kept_layers(keep):
    model = _model()
    pruned = prune_layers(model, keep)
    ids = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        want = _by_hand(model, keep, ids)
        got = pruned(ids).logits
        full = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if keep == [0, 1, 2, 3]:
        torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    else:
        assert not torch.allclose(got, full, atol=1e-3)  # the dropped layers mattered: the check can fail
    assert pruned.config.num_hidden_layers == len(keep) and len(pruned.config.layer_types) == len(keep)
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == list(range(len(keep)))
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight  # still tied
    assert model.config.num_hidden_layers == 4  # the source is not changed


def test_pruned_checkpoint_reloads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM

    from sead.commands.prune import run
    from sead.tasks.arithmetic import build_tokenizer

    src = tmp_path / "src"
    model = _model(layers=3, tie=False, seed=1)
    model.save_pretrained(src)
    build_tokenizer().save_pretrained(src)

    class Args:
        pass

    args = Args()
    args.model, args.gguf_file, args.keep, args.keep_every, args.out = str(src), None, None, 2, str(tmp_path / "out")
    args.drop = None
    assert run(args) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.config.num_hidden_layers == 2
    ids = torch.randint(0, 25, (1, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, _by_hand(model, [0, 2], ids), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)  # an untied head is kept as it was
