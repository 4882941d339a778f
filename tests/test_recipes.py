"""Recipes: every YAML parses into (ScriptArguments, OPDConfig) with the values it promises; the
accelerate configs load; the dataset column options; the demo recipe trains (slow)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from _tiny import REPO, sead_command, subprocess_env

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
ACCELERATE = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))
PAPER = ["olmo3-7b-32b-opd.yaml", "olmo3-7b-32b-sead.yaml", "olmo3-7b-32b-sgopd.yaml"]



def parse_recipe(path: Path, *extra: str):
    """Parse as `sead train` does; a bf16 recipe is parsed with CPU overrides on this GPU-less machine."""
    from sead.commands.train import parse

    raw = yaml.safe_load(path.read_text())
    cpu = [] if raw.get("use_cpu") else ["--use_cpu", "true", "--bf16", "false"]
    return parse(["--config", str(path), *cpu, *extra])


def test_expected_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"demo.yaml", "qwen3-1.7b-8b-sead.yaml", *PAPER} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_parses_and_builds_its_config(recipe):
    from sead.training.config import OPDConfig
    from sead.training.recipe import ScriptArguments

    script, cfg = parse_recipe(recipe)
    assert isinstance(script, ScriptArguments) and isinstance(cfg, OPDConfig)
    assert script.builtin_task or (script.model_name_or_path and (cfg.teacher_model_name_or_path or cfg.teacher_server_url))
    assert script.builtin_task or script.dataset_name
    # every key of the YAML is a field that took the YAML's value (TrlParser refuses unknown keys)
    raw = yaml.safe_load(recipe.read_text())
    for key, value in raw.items():
        got = getattr(script, key) if hasattr(script, key) else getattr(cfg, key)
        if key in ("bf16", "use_cpu", "report_to"):
            continue
        if hasattr(got, "value"):  # enums such as lr_scheduler_type
            got = got.value
        assert got == value, (key, got, value)


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipes_match_the_paper_setup(name):
    script, cfg = parse_recipe(REPO / "recipes" / name)
    method = name.split("-")[-1].removesuffix(".yaml")
    assert cfg.method == method
    assert script.model_name_or_path == "allenai/Olmo-3-7B-Think-SFT"
    assert cfg.teacher_model_name_or_path == "allenai/Olmo-3-32B-Think"
    assert cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 8 == 96  # prompts/step on 8 GPUs
    assert cfg.max_completion_length == 16384
    # OPD / SEAD: rollouts at the paper's 0.7, loss at 1; SG-OPD (sampled estimator): both at 1.0, as it is reported
    rollout_temperature = 1.0 if method == "sgopd" else 0.7
    assert cfg.sampling_settings()["temperature"] == rollout_temperature
    assert cfg.temperature == 1.0
    assert script.apply_chat_template and cfg.answer_column == "solution"
    assert cfg.teacher_model_init_kwargs == {"dtype": "bfloat16"}
    assert cfg.use_vllm and cfg.vllm_mode == "colocate"
    if method == "sead":
        assert cfg.components == {"zones": True, "anneal": True, "curriculum": True,
                                  "sign_gate": False, "teacher_mixing": False}  # fmt: skip
        assert script.dataset_name.endswith(".difficulty.parquet")  # the `sead difficulty` output
    else:
        assert (script.dataset_name, script.dataset_config) == ("open-r1/DAPO-Math-17k-Processed", "all")
    if method == "sgopd":
        assert cfg.sign_gate and cfg.teacher_mixing and cfg.teacher_num_generations == 8
    if method == "opd":
        assert not any(cfg.components.values())


def test_served_teacher_recipe_matches_the_local_one():
    """The served-teacher SEAD recipe is the paper recipe with the teacher moved to a vLLM server: same student,
    data, rollouts and 96 prompts per step (on 6 training GPUs); the top-k estimator with k = 64 = --max-logprobs
    of the serving command in its header; that command's TP and context fit what the recipe needs."""
    path = REPO / "recipes" / "olmo3-7b-32b-sead-served.yaml"
    served_script, served = parse_recipe(path)
    local_script, local = parse_recipe(REPO / "recipes" / "olmo3-7b-32b-sead.yaml")
    assert served.teacher_model_name_or_path is None and served.teacher_server_model == local.teacher_model_name_or_path
    assert served.teacher_server_url.startswith("http://")
    assert (served.estimator, served.estimator_top_k, served.teacher_server_top_k) == ("topk", 64, 64)
    assert served.per_device_train_batch_size * served.gradient_accumulation_steps * 6 == 96
    for key in ("max_completion_length", "max_prompt_length", "generation_kwargs", "temperature", "method", "use_vllm"):
        assert getattr(served, key) == getattr(local, key), key
    assert served_script == local_script
    header = path.read_text()
    assert "vllm serve allenai/Olmo-3-32B-Think --tensor-parallel-size 2" in header
    assert "--max-logprobs 64" in header
    serve = header[header.index("vllm serve"):].split("&")[0]
    max_len = int(serve.split("--max-model-len ")[1].split()[0])
    assert max_len >= served.max_prompt_length + served.max_completion_length + 1


def test_cli_overrides_beat_the_recipe():
    script, cfg = parse_recipe(
        REPO / "recipes" / "qwen3-1.7b-8b-sead.yaml",
        "--method", "sgopd", "--use_vllm", "true", "--vllm_mode", "server", "--max_steps", "7",
    )  # fmt: skip
    assert cfg.method == "sgopd" and cfg.sign_gate and not cfg.zones
    assert cfg.use_vllm and cfg.vllm_mode == "server" and cfg.max_steps == 7
    assert cfg.chat_template_kwargs == {"enable_thinking": False}


@pytest.mark.parametrize("path", ACCELERATE, ids=[p.name for p in ACCELERATE])
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    raw = yaml.safe_load(path.read_text())
    assert config.mixed_precision == "bf16" and config.num_processes == 8
    kind = path.stem
    expected = {
        "ddp": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
        "fsdp2": "FSDP",
    }[kind]
    assert str(config.distributed_type).endswith(expected)
    if kind.startswith("deepspeed"):
        assert raw["deepspeed_config"]["zero_stage"] == int(kind[-1])
        assert "gradient_accumulation_steps" not in raw["deepspeed_config"]  # "auto": filled from the recipe
    if kind == "fsdp2":
        assert raw["fsdp_config"]["fsdp_version"] == 2


def test_accelerate_configs_cover_the_planner_strategies():
    from sead.plan import ACCELERATE_CONFIGS

    for rel in ACCELERATE_CONFIGS.values():
        assert (REPO / rel).is_file(), rel


# --------------------------------------------------------------------------- dataset column options
def _script(**kw):
    from sead.training.recipe import ScriptArguments

    return ScriptArguments(**kw)


def test_answer_column_source_reads_a_nested_field():
    from datasets import Dataset

    from sead.training.config import OPDConfig
    from sead.training.recipe import map_dataset_columns

    ds = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2", "style": "rule"}},
        {"prompt": [{"role": "user", "content": "2+2?"}], "reward_model": {"ground_truth": "4", "style": "rule"}},
    ])  # fmt: skip
    cfg = OPDConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, method="opd")
    out = map_dataset_columns(ds, _script(answer_column_source="reward_model.ground_truth"), cfg)
    assert out["answer"] == ["2", "4"]
    assert out["prompt"] == ds["prompt"]  # conversations are left alone

    from sead.utils.errors import SeadError

    with pytest.raises(SeadError, match="reward_model.missing"):
        map_dataset_columns(ds, _script(answer_column_source="reward_model.missing"), cfg)
    with pytest.raises(SeadError, match="no column `nope`"):
        map_dataset_columns(ds, _script(answer_column_source="nope"), cfg)


def test_apply_chat_template_wraps_plain_prompts():
    from datasets import Dataset

    from sead.training.config import OPDConfig
    from sead.training.recipe import map_dataset_columns

    ds = Dataset.from_list([{"prompt": "What is 2+3?", "solution": "5"}])
    cfg = OPDConfig(output_dir="/tmp/x", use_cpu=True, bf16=False, method="opd", answer_column="solution")
    out = map_dataset_columns(ds, _script(apply_chat_template=True), cfg)
    assert out[0]["prompt"] == [{"role": "user", "content": "What is 2+3?"}]
    assert out["solution"] == ["5"]
    assert map_dataset_columns(ds, _script(), cfg)[0]["prompt"] == "What is 2+3?"


# --------------------------------------------------------------------------- the demo recipe trains
@pytest.mark.slow
def test_demo_recipe_trains_two_steps(tmp_path):
    """`sead train --config recipes/demo.yaml --max_steps 2`. Prepares the built-in task's models the first
    time (minutes on 2 cores; cached in $SEAD_CACHE_DIR, default ~/.cache/sead)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        sead_command(
            "train", "--config", str(REPO / "recipes" / "demo.yaml"), "--max_steps", "2",
            "--output_dir", str(out), "--report_to", "none",
            # the quick variant of the built-in task keeps CI fast; its models are shared with the demo test
            "--builtin_quick", "true", "--builtin_num_prompts", "64", "--difficulty_num_rollouts", "1",
        ),
        env=subprocess_env(), capture_output=True, text=True, timeout=3600, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done, 2 steps" in proc.stdout
    assert (out / "model.safetensors").exists() or any(out.glob("*.safetensors"))
    # piped output, as in a log (issue 16): no FutureWarning the project's settings cause, no carriage-return bar
    # spam, and the training progress as single lines with the step and its loss
    log = proc.stdout + proc.stderr
    assert "FutureWarning" not in log, log[-3000:]
    assert "\r" not in log
    lines = [line for line in log.splitlines() if line.startswith("[sead train]")]
    assert lines and lines[-1].startswith("[sead train] 2/2 steps (100%)"), log[-3000:]


def test_train_with_nested_answers_and_chat_template(tmp_path, capsys):
    """`answer_column_source` + `apply_chat_template` end to end: one `sead train` step on tiny models whose
    tokenizer has a (trivial) chat template, with the gold answers nested in a struct column."""
    from transformers import AutoTokenizer

    from _tiny import save_models, tiny_dataset, write_jsonl, write_recipe
    from sead.cli import main

    student, teacher = save_models(tmp_path)
    for path in (student, teacher):
        tok = AutoTokenizer.from_pretrained(path)
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        tok.save_pretrained(path)
    rows = [{"question": r["prompt"], "meta": {"gold": r["answer"]}} for r in tiny_dataset(8, difficulty=False).to_list()]
    data = write_jsonl(rows, tmp_path / "train.jsonl")
    recipe = write_recipe(
        tmp_path / "recipe.yaml", model_name_or_path=student, teacher_model_name_or_path=teacher,
        dataset_name=data, prompt_column="question", answer_column_source="meta.gold", apply_chat_template=True,
        output_dir=str(tmp_path / "out"), method="opd", max_steps=1,
    )  # fmt: skip
    assert main(["train", "--config", recipe]) == 0
    out = capsys.readouterr().out
    assert "done, 1 steps" in out
    assert "rollout/pass_rate" in out  # logged: the verifier graded against the nested answers


@pytest.mark.parametrize(
    "override, named",
    [
        (["--dataset_name", "missing.jsonl"], "dataset_name: missing.jsonl"),
        (["--model_name_or_path", "HuggingFaceTB/SmolLM2-135M"], "model_name_or_path: HuggingFaceTB/SmolLM2-135M"),
        (["--teacher_model_name_or_path", "t"], "teacher_model_name_or_path: t"),
        (["--prompt_column", "question"], "prompt_column: question"),
        (["--apply_chat_template", "true"], "apply_chat_template: True"),
    ],
)
def test_a_builtin_task_and_a_data_source_of_ones_own_are_refused_by_name(tmp_path, capsys, override, named):
    """The demo recipe's `builtin_task: sums` used to win silently over a dataset (or model) given on the command
    line, trained and exited 0, even when the file did not exist: now exit 2, naming both, before any work."""
    from sead.cli import main

    recipe = str(REPO / "recipes" / "demo.yaml")
    assert main(["train", "--config", recipe, "--output_dir", str(tmp_path / "out"), *override]) == 2
    err = capsys.readouterr().err
    assert "builtin_task: sums" in err and named in err and "--builtin_task none" in err
    assert not (tmp_path / "out").exists()


def test_builtin_task_none_switches_the_recipes_task_off(tmp_path, capsys):
    from sead.cli import main

    recipe = str(REPO / "recipes" / "demo.yaml")
    script, _ = parse_recipe(REPO / "recipes" / "demo.yaml", "--builtin_task", "none")
    assert script.builtin_task is None
    # then the recipe must name its own student, teacher and data
    assert main(["train", "--config", recipe, "--builtin_task", "none", "--output_dir", str(tmp_path / "o")]) == 2
    assert "model_name_or_path (the student) is required" in capsys.readouterr().err
    assert main(["train", "--config", recipe, "--builtin_task", "none", "--builtin_quick", "true",
                 "--output_dir", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "builtin_quick only applies with builtin_task" in capsys.readouterr().err
