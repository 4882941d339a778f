"""What the planner knows of a model: its architecture's facts, from a table of public configs, a ``config.json``,
a local checkpoint folder or a built-in task's model spec (nothing is downloaded)."""


from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sead.utils.errors import SeadError

__all__ = ["KNOWN_MODELS", "ModelFacts", "builtin_facts", "facts_from_config", "lookup_model", "lora_trainable_params"]


@dataclass(frozen=True)
class ModelFacts:
    """The public architecture facts the estimate needs (decoder-only, gated MLP)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    dtype_bytes: int = 2  # checkpoint dtype (what `dtype: auto` loads)
    sliding_window: int | None = None
    num_sliding_layers: int = 0
    qkv_bias: bool = False
    qk_norm_params: int = 0  # per layer: Qwen3 2 x head_dim, OLMo-2/3 q_dim + kv_dim
    source: str = ""

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v, o projections (+ q/k/v biases, QK-norms), gate/up/down MLP, two norms."""
        h = self.hidden_size
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.qkv_bias:
            attn += self.q_dim + 2 * self.kv_dim
        return attn + self.qk_norm_params + 3 * h * self.intermediate_size + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """Layers + input embedding + output head (unless tied) + final norm."""
        heads = 1 if self.tie_embeddings else 2
        return self.num_layers * self.layer_params + heads * self.embedding_params + self.hidden_size

    @property
    def activation_elems_per_token(self) -> int:
        """Activation elements one layer keeps per token for its backward (see ASSUMPTIONS)."""
        h = self.hidden_size
        return 4 * h + 2 * self.q_dim + 2 * self.kv_dim + 4 * self.intermediate_size

    def kv_cache_bytes(self, seq_len: int, num_seqs: int, dtype_bytes: int = 2) -> int:
        """KV cache of ``num_seqs`` sequences of ``seq_len`` tokens (sliding-window layers keep the window)."""
        full = self.num_layers - self.num_sliding_layers
        window = min(seq_len, self.sliding_window or seq_len)
        positions = full * seq_len + self.num_sliding_layers * window
        return 2 * self.kv_dim * dtype_bytes * positions * num_seqs


def _facts(name, h, layers, heads, kv, head_dim, inter, vocab, tie, **kw) -> ModelFacts:
    return ModelFacts(name, h, layers, heads, kv, head_dim, inter, vocab, tie, **kw)


# Public config.json facts of the recipes' models (not downloaded here: copied from the model cards /
# config files; OLMo-3's layer_types: 3 of every 4 layers use a 4096-token sliding window).
_OLMO3_7B = _facts(
    "OLMo-3 7B", 4096, 32, 32, 32, 128, 11008, 100278, False,
    sliding_window=4096, num_sliding_layers=24, qk_norm_params=4096 + 4096,
    source="public config (allenai/Olmo-3-1025-7B family)",
)  # fmt: skip
_OLMO3_32B = _facts(
    "OLMo-3 32B", 5120, 64, 40, 8, 128, 27648, 100278, False,
    sliding_window=4096, num_sliding_layers=48, qk_norm_params=5120 + 1024,
    source="public config (allenai/Olmo-3-1125-32B family)",
)  # fmt: skip
_QWEN3_1_7B = _facts(
    "Qwen3-1.7B", 2048, 28, 16, 8, 128, 6144, 151936, True, qk_norm_params=2 * 128,
    source="public config (Qwen/Qwen3-1.7B)",
)  # fmt: skip
_QWEN3_8B = _facts(
    "Qwen3-8B", 4096, 36, 32, 8, 128, 12288, 151936, False, qk_norm_params=2 * 128,
    source="public config (Qwen/Qwen3-8B)",
)  # fmt: skip

#: hub-id patterns (case-insensitive, matched against the whole id) -> facts.
KNOWN_MODELS: dict[str, ModelFacts] = {
    r"allenai/olmo-3(\.1)?-(1025-)?7b(-(think|instruct|rl-zero)[-a-z0-9]*)?": _OLMO3_7B,
    r"allenai/olmo-3(\.1)?-(1125-)?32b(-(think|instruct)[-a-z0-9]*)?": _OLMO3_32B,
    r"qwen/qwen3-1\.7b(-base)?": _QWEN3_1_7B,
    r"qwen/qwen3-8b(-base)?": _QWEN3_8B,
}

_DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2, "fp32": 4, "bf16": 2, "fp16": 2}


def _dtype_bytes(value, default: int) -> int:
    if value is None:
        return default
    name = str(value).replace("torch.", "")
    return _DTYPE_BYTES.get(name, default)


def facts_from_config(config: dict[str, Any], name: str = "model", source: str = "config.json") -> ModelFacts:
    """:class:`ModelFacts` from a Hugging Face ``config.json`` dict (``text_config`` of multimodal configs)."""
    cfg = config.get("text_config") or config
    try:
        h = int(cfg["hidden_size"])
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        inter = int(cfg["intermediate_size"])
        vocab = int(cfg["vocab_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise SeadError(
            f"{source}: not a decoder config this planner understands (missing or bad {err}); it needs "
            "hidden_size, num_hidden_layers, num_attention_heads, intermediate_size and vocab_size."
        ) from None
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or h // heads)
    tie = bool(config.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False)))
    layer_types = cfg.get("layer_types") or []
    sliding = cfg.get("sliding_window")
    n_sliding = sum(1 for t in layer_types if t == "sliding_attention") if sliding else 0
    model_type = str(cfg.get("model_type", ""))
    bias = cfg.get("attention_bias")
    qkv_bias = model_type == "qwen2" if bias is None else bool(bias)
    qk_norm = {"qwen3": 2 * head_dim, "olmo2": heads * head_dim + kv * head_dim, "olmo3": heads * head_dim + kv * head_dim}
    dtype = _dtype_bytes(cfg.get("dtype") or cfg.get("torch_dtype") or config.get("torch_dtype"), 4)
    return ModelFacts(
        name, h, layers, heads, kv, head_dim, inter, vocab, tie,
        dtype_bytes=dtype, sliding_window=int(sliding) if n_sliding else None, num_sliding_layers=n_sliding,
        qkv_bias=qkv_bias, qk_norm_params=qk_norm.get(model_type, 0), source=source,
    )  # fmt: skip


def _read_config_file(path: str | Path, name: str) -> ModelFacts:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise SeadError(f"{path}: no such config.json")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SeadError(f"{path}: could not read it as JSON ({err})") from err
    return facts_from_config(config, name=name, source=str(path))


def lookup_model(name: str | None, config_path: str | None = None, role: str = "model") -> ModelFacts:
    """Facts for ``name``: from ``config_path`` when given, else a local checkpoint's config.json, else
    the table of known models. Nothing is downloaded."""
    if config_path:
        return _read_config_file(config_path, name or role)
    if not name:
        raise SeadError(f"the recipe names no {role}; give --{role}-config config.json")
    local = Path(name).expanduser()
    if (local / "config.json").is_file():
        return _read_config_file(local, name)
    for pattern, facts in KNOWN_MODELS.items():
        if re.fullmatch(pattern, name.strip(), flags=re.IGNORECASE):
            return facts
    raise SeadError(
        f"{role} `{name}` is not in the planner's table of known architectures ({', '.join(sorted({f.name for f in KNOWN_MODELS.values()}))}) "
        f"and is not a local directory with a config.json. Give its config.json with --{role}-config "
        "(download it with `huggingface-cli download NAME config.json`)."
    )


def builtin_facts(task: str, quick: bool) -> tuple[ModelFacts, ModelFacts]:
    """(student, teacher) facts of the built-in task, from its model specs (nothing is trained)."""
    from sead.tasks import TASKS, get_task

    if task not in TASKS:
        raise SeadError(f"builtin_task must be one of {', '.join(TASKS)}; got {task!r}")
    builtin = get_task(task)
    tokenizer = builtin.build_tokenizer()
    teacher_recipe, student_recipe = builtin.recipes(quick)
    out = []
    for role, recipe in (("student", student_recipe), ("teacher", teacher_recipe)):
        config = recipe.model.to_config(len(tokenizer), tokenizer).to_dict()
        config["dtype"] = "float32"
        out.append(facts_from_config(config, name=f"{task} {role}", source="built-in task spec"))
    return out[0], out[1]


#: peft's LoRA target modules when a config names none (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` of the
#: Llama and Qwen families; peft has no default for OLMo and refuses ``target_modules: None`` there).
LORA_DEFAULT_TARGETS = ("q_proj", "v_proj")


def _linear_shapes(s: ModelFacts) -> dict[str, tuple[int, int]]:
    """``(in, out)`` features of each decoder layer's linear projections (a gated MLP)."""
    h, q, kv, i = s.hidden_size, s.q_dim, s.kv_dim, s.intermediate_size
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip


def lora_trainable_params(s: ModelFacts, r: int, target_modules=None, modules_to_save=None,
                          use_dora: bool = False) -> tuple[int, list[str]]:
    """``(trainable parameters, notes)`` of a LoRA student: ``r x (in + out)`` per targeted projection of every
    layer (``all-linear``: the seven; ``None``: :data:`LORA_DEFAULT_TARGETS`), ``r x (V + H)`` for ``embed_tokens``,
    plus ``out`` per projection with DoRA (its magnitudes), plus each module of ``modules_to_save`` trained whole
    (``lm_head`` / ``embed_tokens``: ``V x H``). A name it cannot count, and ``lm_head`` (which the trainer refuses as
    a target), is named in the notes."""
    notes: list[str] = []
    shapes = _linear_shapes(s)
    if target_modules is None:
        targets = list(LORA_DEFAULT_TARGETS)
        notes.append(f"LoRA target_modules not set: peft's default for Llama / Qwen models assumed "
                     f"({', '.join(targets)}); peft has none for OLMo (set lora_target_modules).")  # fmt: skip
    elif target_modules == "all-linear" or list(target_modules) == ["all-linear"]:
        targets = list(shapes)
    else:
        targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    total, uncounted = 0, []
    for name in targets:
        if name in shapes:
            n_in, n_out = shapes[name]
            total += s.num_layers * (r * (n_in + n_out) + (n_out if use_dora else 0))
        elif name == "embed_tokens":
            total += r * (s.vocab_size + s.hidden_size)
        elif name == "lm_head":
            notes.append("LoRA on lm_head: the trainer refuses it (the fused loss reads the head's weight); not "
                         "counted. Train the whole head with lora_modules_to_save: [lm_head] instead.")  # fmt: skip
        else:
            uncounted.append(name)
    for name in modules_to_save or []:
        if name in ("lm_head", "embed_tokens"):
            total += s.vocab_size * s.hidden_size
        else:
            uncounted.append(name)
    if uncounted:
        notes.append(f"LoRA: {', '.join(uncounted)} not counted (not a projection this planner knows).")
    return total, notes
