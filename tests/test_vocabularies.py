"""One tokenizer, different embedding sizes (a padded embedding matrix, as Qwen2.5-0.5B's 151,936 rows against
Qwen2.5-7B's 152,064): accepted, the loss compared over the rows both models have; different tokenizers refused by
name; the top-k limits checked against the vocabulary before any work, for a local and a served teacher alike; the
precision and pin-memory defaults of a machine without a GPU.

Tolerance of the padded-teacher loss: 1e-6 relative. The shared rows of the padded teacher are the unpadded
teacher's rows exactly (``resize_token_embeddings`` copies them), so the loss over them is the same computation;
the check can fail: the padding rows hold a share of the padded teacher's softmax mass (asserted), which a loss over
all of its rows would count.
"""

from __future__ import annotations

import pytest
import torch

from _tiny import save_models, swapped_tokenizer, tiny_config, tiny_dataset, tiny_model, tokenizer
from sead.training.config import OPDConfig
from sead.training.startup import check_vocabularies, resolve_top_k_limits, tokenizer_difference
from sead.training.trainer import OPDTrainer
from sead.utils.errors import SeadError

PAD_TO = 16  # 25 tokens -> 32 rows


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny student and teacher with the task tokenizer, and the same teacher with its embeddings padded."""
    root = tmp_path_factory.mktemp("padded")
    student, teacher = save_models(root)
    from transformers import AutoModelForCausalLM

    padded = AutoModelForCausalLM.from_pretrained(teacher)
    padded.resize_token_embeddings(len(tokenizer()) + 1, pad_to_multiple_of=PAD_TO)
    padded.save_pretrained(root / "padded")
    tokenizer().save_pretrained(root / "padded")
    return {"student": student, "teacher": teacher, "padded": str(root / "padded")}


def _batch(seed: int = 0, B: int = 4, P: int = 6, T: int = 8):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 5:] = 0
    return {
        "prompt_ids": torch.randint(3, 25, (B, P), generator=g),
        "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(3, 25, (B, T), generator=g),
        "completion_mask": mask,
        "correct": torch.tensor([True, False, True, False]),
    }


def _loss(trainer, inputs) -> float:
    model = trainer.accelerator.unwrap_model(trainer.model)
    with torch.no_grad():
        loss = trainer._compute_loss(model, inputs, inputs["completion_mask"].sum())[0]
    return float(loss)


def test_padding_rows_hold_mass(pair):
    """The test below can fail: the padded teacher's softmax over all its rows gives its padding rows real mass."""
    from transformers import AutoModelForCausalLM

    padded = AutoModelForCausalLM.from_pretrained(pair["padded"]).eval()
    assert padded.get_output_embeddings().weight.shape[0] == 32 and padded.config.vocab_size == 32
    with torch.no_grad():
        p = torch.softmax(padded(torch.randint(3, 25, (2, 6))).logits.float(), -1)
    assert float(p[..., 25:].sum(-1).min()) > 1e-3


@pytest.mark.parametrize("estimator", ["full", "topk", "sampled"])
@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_padded_teacher_gives_the_unpadded_loss(pair, tmp_path, method, estimator):
    kw = dict(method=method, estimator=estimator, estimator_top_k=4, zone_scope="micro_batch", zone_precision="exact")
    losses = {}
    for name in ("teacher", "padded"):
        trainer = OPDTrainer(pair["student"], pair[name], args=tiny_config(tmp_path / name, **kw),
                             train_dataset=tiny_dataset(8), processing_class=tokenizer())  # fmt: skip
        assert trainer.shared_rows == (None if name == "teacher" else 25)
        losses[name] = _loss(trainer, _batch())
    assert losses["teacher"] != 0
    assert losses["padded"] == pytest.approx(losses["teacher"], rel=1e-6)


def test_padded_teacher_trains_and_never_samples_a_padding_row(pair, tmp_path):
    """A training run with the padded teacher (SG-OPD: the teacher's own rollouts too, which must stay inside the
    shared rows: HF generate is told to suppress the padding ids)."""
    from sead.engines.hf import HFSampler

    trainer = OPDTrainer(
        pair["student"], pair["padded"],
        args=tiny_config(tmp_path / "o", method="sgopd", max_steps=2, teacher_mix_rho0=1.0,
                         teacher_mix_phase_fraction=1.0, teacher_num_generations=2),
        train_dataset=tiny_dataset(8), processing_class=tokenizer(),
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 2
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    sampler = HFSampler(teacher, pad_token_id=0, eos_token_ids=[1], vocab_rows=25)
    from sead.engines.sampling import Sampling

    assert sampler.generation_config(Sampling(n=1, max_new_tokens=4, temperature=1.0)).suppress_tokens == list(
        range(25, 32)
    )


def test_different_tokenizers_are_refused_naming_the_tokens(tmp_path):
    """Same sizes or not, two tokenizers that are not one are refused, naming the first differing ids, and pointed
    to cross-tokenizer distillation."""
    vocab = tokenizer().get_vocab()
    other = swapped_tokenizer(extra=1)
    problem = tokenizer_difference(tokenizer(), other)
    assert f"id {vocab['3']}: '3' vs '7'" in problem and f"id {vocab['7']}: '7' vs '3'" in problem
    teacher_dir = tmp_path / "teacher"
    tiny_model(1, vocab_size=32).save_pretrained(teacher_dir)
    other.save_pretrained(teacher_dir)
    with pytest.raises(SeadError, match="GOLDTrainer") as err:
        check_vocabularies(tiny_model(0), str(teacher_dir), tiny_config(tmp_path / "o"), tokenizer())
    assert "vocabulary of 25 tokens but the teacher has 32 (embedding rows)" in str(err.value)
    assert "'3' vs '7'" in str(err.value)


def test_padded_teacher_without_a_tokenizer_is_refused(tmp_path):
    with pytest.raises(SeadError, match="teacher's tokenizer could not be loaded"):
        check_vocabularies(tiny_model(0), tiny_model(1, vocab_size=32), tiny_config(tmp_path), tokenizer())


def test_top_k_limits_are_capped_at_the_vocabulary_for_local_and_served_teachers(tmp_path):
    """estimator_top_k / entropy_top_k above the vocabulary mean the whole vocabulary, whoever computes it: capped at
    start-up (before any rollout), the same way for a local and a served teacher; the server is then asked for that
    many log-probs."""
    local = tiny_config(tmp_path / "l", method="sead", estimator="topk", estimator_top_k=64, entropy_top_k=64)
    served = tiny_config(tmp_path / "s", method="sead", estimator="topk", estimator_top_k=64, entropy_top_k=64,
                         teacher_server_url="http://127.0.0.1:9", teacher_server_model="t")  # fmt: skip
    for cfg in (local, served):
        notes = resolve_top_k_limits(cfg, 25)
        assert (cfg.estimator_top_k, cfg.entropy_top_k) == (25, 25) and len(notes) == 2
    assert served.teacher_server_top_k == 25
    small = tiny_config(tmp_path / "k", estimator_top_k=8, entropy_top_k=16)
    assert resolve_top_k_limits(small, 25) == [] and (small.estimator_top_k, small.entropy_top_k) == (8, 16)
    # through the trainer's start-up checks, before any weight is loaded or rollout drawn
    from sead.training.startup import check_inputs

    cfg = tiny_config(tmp_path / "t", method="opd", estimator="topk", estimator_top_k=64)
    check_inputs(tiny_model(0), tiny_model(1), cfg, tiny_dataset(4), None)
    assert cfg.estimator_top_k == 25


def test_cpu_defaults_fp32_and_no_pinned_memory(tmp_path, capsys):
    """Without a GPU, a config that does not set bf16 trains in fp32 and says so (TRL's bf16 default would stop the
    run: "Your setup doesn't support bf16/gpu"); pinned memory is off (torch warns on every CPU run otherwise)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU machine keeps TRL's bf16 default")
    cfg = OPDConfig(output_dir=str(tmp_path / "a"))
    assert cfg.bf16 is False and cfg.dataloader_pin_memory is False
    assert "bf16 not set and no GPU: training in fp32" in capsys.readouterr().err
    explicit = OPDConfig(output_dir=str(tmp_path / "b"), bf16=True, use_cpu=True)
    assert explicit.bf16 is True
    assert "bf16 not set" not in capsys.readouterr().err
