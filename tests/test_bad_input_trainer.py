"""Bad input to training is refused before any step, with a clear one-paragraph error.

Python API: ``OPDConfig`` / ``OPDTrainer`` raise :class:`sead.utils.errors.SeadError` naming the field.
CLI: ``sead train`` prints it as one paragraph (no traceback) and exits with status 2; the in-process
tests call ``sead.cli.main`` (the console script's own code path), one slow test runs real
subprocesses.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch

from _tiny import (
    save_models,
    sead_command,
    standard_recipe,
    subprocess_env,
    swapped_tokenizer,
    tiny_config,
    tiny_dataset,
    tiny_model,
    tokenizer,
    write_jsonl,
    write_recipe,
)
from sead.cli import main
from sead.method.curriculum import CompetenceCurriculum
from sead.training.trainer import OPDTrainer
from sead.utils.errors import SeadError


def _refused(match: str, **kwargs):
    with pytest.raises(SeadError, match=match):
        OPDTrainer(**kwargs)


# ----------------------------------------------------------------------------------- knobs
BAD_KNOBS = [
    ("teacher_quantile", -0.1), ("teacher_quantile", 1.5),
    ("skip_fraction", -0.01), ("skip_fraction", 1.01),
    ("alpha_start", 2.0), ("alpha_end", -1.0),
    ("competence_threshold", 1.2), ("curriculum_full_open_fraction", -0.5),
    ("teacher_mix_rho0", 1.1), ("teacher_mix_phase_fraction", -0.2),
    ("lambda_consensus", 0.0), ("lambda_consensus", -1.0), ("lambda_conflict", 0.0), ("lambda_conflict", -0.5),
    ("max_steps", -5), ("save_steps", -1), ("logging_steps", -2), ("warmup_steps", -3),
    ("num_train_epochs", -1.0), ("per_device_train_batch_size", 0), ("gradient_accumulation_steps", 0),
    ("max_completion_length", 0), ("max_prompt_length", 0), ("grader_timeout", 0.0), ("temperature", 0.0),
    ("competence_window", 0), ("curriculum_num_buckets", 0), ("teacher_num_generations", 0),
    ("estimator_top_k", 0), ("entropy_top_k", -3), ("loss_chunk_size", 0),
    ("method", "distill"), ("estimator", "exact"), ("loss_normalization", "mean"), ("nonfinite_policy", "ignore"),
]


@pytest.mark.parametrize("field,value", BAD_KNOBS, ids=[f"{f}={v}" for f, v in BAD_KNOBS])
def test_invalid_knob_refused_naming_the_field(tmp_path, field, value):
    with pytest.raises(SeadError, match=field):
        tiny_config(tmp_path, **{field: value})


def test_valid_edges_accepted(tmp_path):
    cfg = tiny_config(tmp_path, teacher_quantile=0.0, skip_fraction=1.0, alpha_start=1.0, alpha_end=0.0,
                      max_steps=-1, lambda_conflict=1e-6, method="SEAD", entropy_top_k=0)
    assert cfg.method == "sead" and cfg.entropy_top_k is None


# ----------------------------------------------------------------------------------- models
def test_vocabulary_mismatch_objects(tmp_path):
    _refused(
        "vocabulary of 25 tokens but the teacher has 40",
        model=tiny_model(0), teacher_model=tiny_model(1, vocab_size=40), args=tiny_config(tmp_path, method="opd"),
        train_dataset=tiny_dataset(8), processing_class=tokenizer(),
    )


def test_vocabulary_mismatch_paths(tmp_path):
    student, teacher = save_models(tmp_path, teacher_vocab_size=40, teacher_tokenizer=swapped_tokenizer(extra=2))
    _refused(
        "shared vocabulary", model=student, teacher_model=teacher, args=tiny_config(tmp_path / "o", method="opd"),
        train_dataset=tiny_dataset(8), processing_class=tokenizer(),
    )


def test_vocabulary_sizes_differ_with_one_tokenizer_is_accepted(tmp_path):
    """A teacher with more embedding rows and the student's tokenizer (a padded matrix) is not refused
    (tests/test_vocabularies.py checks its loss)."""
    student, teacher = save_models(tmp_path, teacher_vocab_size=40)
    trainer = OPDTrainer(student, teacher, args=tiny_config(tmp_path / "o", method="opd"),
                         train_dataset=tiny_dataset(8), processing_class=tokenizer())  # fmt: skip
    assert trainer.shared_rows == 25


def test_no_teacher_at_all_is_refused_at_start(tmp_path):
    _refused(
        "no teacher: pass teacher_model=", model=tiny_model(0), teacher_model=None,
        args=tiny_config(tmp_path / "o", method="opd"), train_dataset=tiny_dataset(8), processing_class=tokenizer(),
    )


def test_teacher_by_config_field_is_loaded_when_no_teacher_model_is_passed(tmp_path):
    """TRL's trainer ignores ``teacher_model_name_or_path``; ours loads it (it used to crash at the first step)."""
    student, teacher = save_models(tmp_path)
    trainer = OPDTrainer(
        model=student, teacher_model=None,
        args=tiny_config(tmp_path / "o", method="opd", teacher_model_name_or_path=teacher, max_steps=1),
        train_dataset=tiny_dataset(8), processing_class=tokenizer(),
    )
    assert trainer.teacher_model is not None
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(teacher).lm_head.weight
    loaded = trainer.accelerator.unwrap_model(trainer.teacher_model).lm_head.weight
    assert torch.equal(loaded.detach().cpu(), saved.detach())  # the teacher saved at that path, not the student
    trainer.train()
    assert trainer.state.global_step == 1


def test_tokenizer_too_large_for_student(tmp_path):
    _refused(
        "tokenizer has 25 tokens", model=tiny_model(0, vocab_size=20), teacher_model=tiny_model(1, vocab_size=20),
        args=tiny_config(tmp_path, method="opd"), train_dataset=tiny_dataset(8), processing_class=tokenizer(),
    )


# ----------------------------------------------------------------------------------- data
def _trainer_kwargs(tmp_path, dataset, **cfg):
    return dict(model=tiny_model(0), teacher_model=tiny_model(1), args=tiny_config(tmp_path, **cfg),
                train_dataset=dataset, processing_class=tokenizer())


def test_dataset_without_prompt_column(tmp_path):
    ds = tiny_dataset(8).rename_column("prompt", "question")
    _refused("no `prompt` column", **_trainer_kwargs(tmp_path, ds, method="opd"))


@pytest.mark.parametrize("method", ["sead", "sgopd"])
def test_dataset_without_answer_column_for_the_verifier(tmp_path, method):
    ds = tiny_dataset(8).remove_columns("answer")
    _refused("verifier needs the gold answers in column `answer`", **_trainer_kwargs(tmp_path, ds, method=method))


def test_curriculum_without_difficulty_column(tmp_path):
    ds = tiny_dataset(8, difficulty=False)
    _refused("needs a `difficulty` column", **_trainer_kwargs(tmp_path, ds, method="sead"))


def test_empty_dataset(tmp_path):
    ds = tiny_dataset(8).select([])
    _refused("dataset is empty", **_trainer_kwargs(tmp_path, ds, method="opd"))


def test_every_prompt_longer_than_max_prompt_length(tmp_path):
    _refused("every prompt of the training dataset is longer than 4 tokens",
             **_trainer_kwargs(tmp_path, tiny_dataset(8), method="opd", max_prompt_length=4))


def test_every_prompt_longer_than_the_context(tmp_path):
    # context 16 - max_completion_length 8 leaves 8 tokens; every prompt "Q: a+b=? A:" is longer
    kwargs = _trainer_kwargs(tmp_path, tiny_dataset(8), method="opd")
    kwargs["model"] = tiny_model(0, max_position_embeddings=16)
    _refused("longer than 8 tokens .the student's context minus max_completion_length", **kwargs)


def test_completion_length_leaves_no_room_for_a_prompt(tmp_path):
    kwargs = _trainer_kwargs(tmp_path, tiny_dataset(8), method="opd", max_completion_length=64)
    _refused("leaves no room for a prompt", **kwargs)


def test_some_prompts_too_long_are_dropped_with_a_warning(tmp_path):
    ds = tiny_dataset(8)
    lengths = [len(tokenizer()(p)["input_ids"]) for p in ds["prompt"]]
    limit = min(lengths)
    assert max(lengths) > limit
    with pytest.warns(UserWarning, match="dropped"):
        trainer = OPDTrainer(**_trainer_kwargs(tmp_path, ds, method="sead", max_prompt_length=limit))
    kept = [n for n in lengths if n <= limit]
    assert len(trainer.train_dataset) == len(kept) < len(ds)
    assert trainer.curriculum.difficulties.numel() == len(kept)  # the curriculum indexes the kept rows


@pytest.mark.parametrize("bad", [None, math.nan, 1.5, -0.1, "hard"])
def test_bad_difficulty_values(tmp_path, bad):
    ds = tiny_dataset(8, difficulty=False)
    values = [0.5] * 8
    values[3] = bad
    ds = ds.add_column("difficulty", values) if bad != "hard" else ds.add_column("difficulty", [str(v) for v in values])
    _refused("row 3", **_trainer_kwargs(tmp_path, ds, method="sead"))


def test_curriculum_with_no_prompt_open_at_the_start(tmp_path, monkeypatch):
    # The quantile gate always opens the easiest bucket; a gate below every difficulty must still be refused.
    monkeypatch.setattr(CompetenceCurriculum, "gate", lambda self, step, total: -1.0)
    _refused("opens no prompt at step 0", **_trainer_kwargs(tmp_path, tiny_dataset(8), method="sead"))


# ----------------------------------------------------------------------------------- CLI (in-process)
def _cli(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def _assert_one_paragraph(err: str, *phrases: str):
    """The error is one line (one paragraph), the last thing on stderr; no traceback anywhere. (Progress
    bars of datasets / transformers may come before it.)"""
    assert "Traceback" not in err, err
    lines = err.replace("\r", "\n").strip().splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("sead train: error: ")]
    assert len(errors) == 1 and errors[0] == len(lines) - 1, err
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, err)


@pytest.fixture
def recipe_dir(tmp_path):
    student, teacher = save_models(tmp_path)
    data = write_jsonl(tiny_dataset(8).to_list(), tmp_path / "train.jsonl")
    return tmp_path, dict(model_name_or_path=student, teacher_model_name_or_path=teacher, dataset_name=data,
                          output_dir=str(tmp_path / "out"), method="sead", max_steps=2)


def _no_training(out: Path):
    assert not out.exists() or not any(out.glob("checkpoint-*"))
    assert not (out / "model.safetensors").exists()


CLI_CASES = {
    "missing config": (None, ["--config", "{tmp}/nope.yaml"], "does not exist"),
    "config is a directory": (None, ["--config", "{tmp}"], "does not exist (or is not a file)"),
    "config not yaml": ("text:\n  - [unclosed", [], "could not be read as YAML"),
    "config not a mapping": ("- a\n- b\n", [], "must hold a YAML mapping"),
    "config binary": (b"\xff\xfe\x00\x81", [], "could not be read as YAML"),
    "unknown field": ({"warp_factor": 9}, [], "warp_factor"),
    "unknown method": ({}, ["--method", "distill"], "method must be one of opd, sead, sgopd"),
    "unknown estimator": ({}, ["--estimator", "exact"], "estimator must be one of full, topk, sampled"),
    "quantile out of range": ({"teacher_quantile": 1.5}, [], "teacher_quantile must be in [0, 1]"),
    "fraction out of range": ({}, ["--skip_fraction", "-0.2"], "skip_fraction must be in [0, 1]"),
    "lambda <= 0": ({}, ["--lambda_consensus", "0"], "lambda_consensus must be > 0"),
    "negative steps": ({}, ["--max_steps", "-7"], "max_steps must be a positive number"),
    "no prompt column": ({"prompt_column": "question"}, [], "no column `question`"),
    "missing teacher dir": ({"teacher_model_name_or_path": "/nonexistent/teacher"}, [], "does not exist"),
}


@pytest.mark.parametrize("case", CLI_CASES, ids=CLI_CASES)
def test_cli_refuses_bad_config_in_one_paragraph(recipe_dir, capsys, case):
    tmp, base = recipe_dir
    content, extra, phrase = CLI_CASES[case]
    path = tmp / "recipe.yaml"
    if isinstance(content, dict):
        write_recipe(path, **{**base, **content})
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    argv = ["train"] + (["--config", str(path)] if "--config" not in extra else []) + [
        x.format(tmp=tmp) for x in extra
    ]
    rc, err = _cli(argv, capsys)
    assert rc == 2
    _assert_one_paragraph(err, phrase)
    _no_training(tmp / "out")


def _dataset_rows(tmp, rows, name="data.jsonl"):
    return write_jsonl(rows, tmp / name)


def test_cli_data_problems(recipe_dir, capsys):
    tmp, base = recipe_dir
    rows = tiny_dataset(8).to_list()
    cases = [
        ([{k: v for k, v in r.items() if k != "prompt"} for r in rows], "no `prompt` column"),
        ([{k: v for k, v in r.items() if k != "answer"} for r in rows], "verifier needs the gold answers"),
        ([], "is empty"),
        ([{**r, "prompt": r["prompt"] * 20} for r in rows], "every prompt of the training dataset is longer"),
    ]
    for i, (data, phrase) in enumerate(cases):
        recipe = write_recipe(tmp / f"r{i}.yaml", **{**base, "dataset_name": _dataset_rows(tmp, data, f"d{i}.jsonl")})
        rc, err = _cli(["train", "--config", recipe], capsys)
        assert rc == 2, (phrase, err)
        _assert_one_paragraph(err, phrase)
    _no_training(tmp / "out")


def test_cli_model_problems(tmp_path, capsys):
    (tmp_path / "t").mkdir()
    # vocabulary mismatch
    student, teacher = save_models(tmp_path / "v", teacher_vocab_size=40, teacher_tokenizer=swapped_tokenizer(extra=2))
    recipe = standard_recipe(tmp_path, model_name_or_path=student, teacher_model_name_or_path=teacher)
    rc, err = _cli(["train", "--config", recipe], capsys)
    assert rc == 2
    _assert_one_paragraph(err, "their vocabularies differ at")
    # same vocabulary size, different tokenizer: "3" and "7" swap ids in the teacher's tokenizer
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    recipe = standard_recipe(tmp_path / "t")
    vocab = tokenizer().get_vocab()
    swapped = {t: (vocab["7"] if t == "3" else vocab["3"] if t == "7" else i) for t, i in vocab.items()}
    backend = Tokenizer(models.WordLevel(vocab=swapped, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\\boxed\{|."), behavior="isolated")
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                            unk_token="<unk>").save_pretrained(tmp_path / "t" / "teacher")
    rc, err = _cli(["train", "--config", recipe], capsys)
    assert rc == 2
    _assert_one_paragraph(err, "tokenizes text differently from the student")


@pytest.mark.slow
def test_cli_subprocess_no_traceback(tmp_path):
    """The real console entry point: one paragraph on stderr, status 2, for a config and a model problem."""
    env = subprocess_env()
    missing = subprocess.run(sead_command("train", "--config", str(tmp_path / "nope.yaml")),
                             capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2
    _assert_one_paragraph(missing.stderr, "does not exist")
    student, teacher = save_models(tmp_path / "m", teacher_vocab_size=40, teacher_tokenizer=swapped_tokenizer(extra=2))
    recipe = standard_recipe(tmp_path, model_name_or_path=student, teacher_model_name_or_path=teacher)
    mismatch = subprocess.run(sead_command("train", "--config", recipe), capture_output=True, text=True, env=env,
                              timeout=120)
    assert mismatch.returncode == 2
    _assert_one_paragraph(mismatch.stderr, "shared vocabulary")
    _no_training(tmp_path / "out")
