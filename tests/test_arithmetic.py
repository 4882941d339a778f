"""The built-in arithmetic task: data, tokenizer, grading of gold answers, cached preparation."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

from sead.grading.verifier import grade
from sead.tasks import arithmetic as A
from sead.tasks import prepare, scoring, sft
from sead.utils.errors import SeadError

PROMPT_RE = re.compile(r"^Q: (\d+)([+\-*])(\d+)=\? A:$")


def _operands(prompt: str) -> tuple[int, str, int]:
    match = PROMPT_RE.match(prompt)
    assert match, prompt
    return int(match.group(1)), match.group(2), int(match.group(3))


def _python_value(a: int, op: str, b: int) -> int:
    # Independent of the module: Python's own arithmetic on the question text.
    return eval(f"{a}{op}{b}")  # noqa: S307 - digits and one operator, checked by PROMPT_RE


@pytest.fixture(scope="module")
def tokenizer():
    return A.build_tokenizer()


@pytest.fixture
def one_thread():
    # Tiny models: a second intra-op thread only adds synchronisation (and is very slow on shared cores).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------- data


def test_dataset_columns_and_types():
    ds = A.make_dataset(40, seed=3)
    assert set(ds.column_names) == {"prompt", "completion", "answer", "level"}
    assert len(ds) == 40
    row = ds[0]
    assert isinstance(row["prompt"], str) and isinstance(row["completion"], str)
    assert isinstance(row["answer"], str) and isinstance(row["level"], int)
    assert A.make_dataset(0).num_rows == 0


def test_levels_are_spread_evenly_and_respected():
    ds = A.make_dataset(402, levels=(1, 2, 4), seed=1)
    counts = Counter(ds["level"])
    assert set(counts) == {1, 2, 4}
    assert sorted(counts.values()) == [134, 134, 134]
    assert set(A.make_dataset(30, levels=(3,))["level"]) == {3}


def test_answers_are_correct_per_python():
    for split in A.SPLITS:
        ds = A.make_dataset(400, seed=5, split=split)
        for prompt, answer, completion, level in zip(
            ds["prompt"], ds["answer"], ds["completion"], ds["level"]
        ):
            a, op, b = _operands(prompt)
            assert int(answer) == _python_value(a, op, b)
            assert completion.endswith(f"\\boxed{{{answer}}}")
            assert {1: "+", 2: "+", 3: "-", 4: "*"}[level] == op


def test_every_scratchpad_step_is_true_arithmetic():
    for level in A.LEVELS:
        for problem in A.sample_problems(200, levels=(level,), seed=2):
            steps = problem.completion.split()[:-1]  # the last item is the boxed answer
            assert steps, problem
            for step in steps:
                lhs, rhs = step.split("=")
                assert re.fullmatch(r"[\d+\-*]+", lhs), step
                assert eval(lhs) == int(rhs), (problem, step)  # noqa: S307


def test_scratchpad_examples():
    assert A.Problem(47, "+", 38, 2).completion == " 7+8=15 4+3+1=8 \\boxed{85}"
    assert A.Problem(47, "-", 38, 3).completion == " 17-8=9 4-1-3=0 \\boxed{9}"
    assert A.Problem(47, "*", 8, 4).completion == " 7*8=56 4*8+5=37 \\boxed{376}"
    assert A.Problem(3, "+", 5, 1).completion == " 3+5=8 \\boxed{8}"
    assert A.Problem(47, "+", 38, 2).prompt == "Q: 47+38=? A:"
    assert A.format_prompt("47+38") == A.PROMPT_TEMPLATE.format(question="47+38")


def test_train_and_test_problems_are_disjoint():
    for level in A.LEVELS:
        train = {p.question for p in A.level_problems(level, "train")}
        test = {p.question for p in A.level_problems(level, "test")}
        everything = {p.question for p in A.level_problems(level)}
        assert train and test
        assert not train & test
        assert train | test == everything
        assert 0.1 < len(test) / len(everything) < 0.3
    train_prompts = set(A.make_dataset(4000, split="train")["prompt"])
    test_prompts = set(A.make_dataset(2000, split="test")["prompt"])
    assert not train_prompts & test_prompts


def test_sampling_is_deterministic_and_seeded():
    assert A.make_dataset(50, seed=7)["prompt"] == A.make_dataset(50, seed=7)["prompt"]
    assert A.make_dataset(50, seed=7)["prompt"] != A.make_dataset(50, seed=8)["prompt"]


def test_no_repeats_until_a_level_pool_is_exhausted():
    pool = len(A.level_problems(1, "test"))
    questions = [p.question for p in A.sample_problems(pool, levels=(1,), split="test")]
    assert len(set(questions)) == pool
    counts = Counter(p.question for p in A.sample_problems(2 * pool + 1, levels=(1,), split="test"))
    assert max(counts.values()) == 3 and min(counts.values()) >= 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": -1}, "n must be"),
        ({"n": 4, "split": "validation"}, "split"),
        ({"n": 4, "levels": (5,)}, "level"),
        ({"n": 4, "levels": ()}, "levels"),
        ({"n": 4, "levels": (1, 1)}, "repeat"),
    ],
)
def test_bad_dataset_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.make_dataset(**kwargs)


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_every_character(tokenizer):
    for ch in A.CHARACTERS:
        ids = tokenizer(ch, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, ch
        assert tokenizer.decode(ids) == ch
    boxed = tokenizer("\\boxed{", add_special_tokens=False)["input_ids"]
    assert len(boxed) == 1 and boxed[0] != tokenizer.unk_token_id
    for level in A.LEVELS:
        for problem in A.sample_problems(50, levels=(level,), seed=4):
            text = problem.prompt + problem.completion
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.unk_token_id not in ids
            assert tokenizer.decode(ids) == text
            assert tokenizer.decode([*ids, tokenizer.eos_token_id], skip_special_tokens=True) == text


def test_tokenizer_special_tokens_and_padding(tokenizer, tmp_path):
    assert tokenizer.padding_side == "left"
    specials = {
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        tokenizer.unk_token_id,
    }
    assert len(specials) == 4 and None not in specials
    # Nothing is added around the text, whatever add_special_tokens says.
    assert tokenizer("Q: 1+2")["input_ids"] == tokenizer("Q: 1+2", add_special_tokens=False)["input_ids"]
    batch = tokenizer(["Q: 1+2=? A:", "Q: 10+20=? A:"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == tokenizer.pad_token_id
    assert batch["attention_mask"][0].tolist()[:2] == [0, 0]
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Q: 47*8=? A: 7*8=56 4*8+5=37 \\boxed{376}"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.padding_side == "left" and reloaded.eos_token == tokenizer.eos_token


def test_gold_completions_fit_the_generation_budget(tokenizer):
    completions = [p.completion for level in A.LEVELS for p in A.level_problems(level)]
    longest = 1 + max(map(len, tokenizer(completions, add_special_tokens=False)["input_ids"]))
    assert longest <= 24
    assert longest <= A.MAX_NEW_TOKENS


# ---------------------------------------------------------------------------------------------- grading


def test_gold_completions_grade_correct_with_the_project_grader():
    ds = A.make_dataset(80, seed=11, split="test")
    for completion, answer in zip(ds["completion"], ds["answer"]):
        assert grade(completion, answer).correct, (completion, answer)
        assert not grade(completion, str(int(answer) + 1)).correct


# ---------------------------------------------------------------------------------------------- models

TINY = A.ModelSpec(hidden_size=32, num_layers=1, num_heads=1, intermediate_size=32)


def test_model_specs_are_vllm_compatible():
    # vLLM's CPU attention serves only these head dimensions (../shared/notes/vllm-cpu.md)
    served = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}
    for recipe in (*A.recipes(), *A.recipes(quick=True)):
        assert recipe.model.hidden_size // recipe.model.num_heads in served, recipe
    with pytest.raises(ValueError, match="head dimension 16"):
        A.ModelSpec(hidden_size=64, num_layers=1, num_heads=4, intermediate_size=64)


def test_build_model_matches_tokenizer(tokenizer):
    model = A.build_model(TINY, tokenizer, seed=0)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id


def test_train_sft_lowers_the_loss(tokenizer, one_thread):
    torch.manual_seed(0)
    model = A.build_model(TINY, tokenizer, seed=0)
    settings = A.SFTSettings(steps=30, batch_size=16, lr=1e-2, warmup_steps=2, levels=(1,))
    losses = A.train_sft(model, tokenizer, settings, progress=False)
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert not model.training


def test_collate_masks_prompt_and_padding(tokenizer):
    examples = [sft.encode_example(tokenizer, p.prompt, p.completion) for p in A.sample_problems(4, seed=1)]
    batch = sft.collate(examples, tokenizer.pad_token_id)
    for row, (ids, prompt_len) in enumerate(examples):
        labels = batch["labels"][row]
        assert (labels[:prompt_len] == -100).all()
        assert labels[prompt_len : len(ids)].tolist() == ids[prompt_len:]
        assert ids[-1] == tokenizer.eos_token_id
        assert (labels[len(ids) :] == -100).all()
        assert batch["attention_mask"][row].sum().item() == len(ids)


def test_teacher_forced_accuracy_counts_fully_predicted_rows(tokenizer):
    examples = [sft.encode_example(tokenizer, p.prompt, p.completion) for p in A.sample_problems(3, seed=2)]
    batch = sft.collate(examples, tokenizer.pad_token_id)
    vocab = len(tokenizer)

    class Oracle(torch.nn.Module):
        """Predicts the gold next token everywhere except one completion token of row 1."""

        def forward(self, input_ids, attention_mask):
            nxt = torch.roll(batch["input_ids"], -1, dims=1)
            logits = torch.nn.functional.one_hot(nxt, vocab).float()
            _, prompt_len = examples[1]
            logits[1, prompt_len] = torch.nn.functional.one_hot(torch.tensor(0), vocab).float()
            return type("Out", (), {"logits": logits})()

    assert A.teacher_forced_accuracy(Oracle(), batch) == pytest.approx(2 / 3)


def test_train_sft_stops_at_the_probe_accuracy(tokenizer, one_thread, monkeypatch):
    seen = iter([0.1, 0.3, 0.6, 0.9])
    monkeypatch.setattr(sft, "teacher_forced_accuracy", lambda model, batch: next(seen))
    settings = A.SFTSettings(steps=100, batch_size=4, levels=(1,), stop_at_accuracy=0.5, check_every=2)
    losses = A.train_sft(A.build_model(TINY, tokenizer), tokenizer, settings, progress=False)
    assert len(losses) == 6


@pytest.mark.parametrize(
    "settings, match",
    [
        (A.SFTSettings(steps=0), "steps"),
        (A.SFTSettings(steps=1, levels=(1, 2), level_weights=(1.0,)), "level_weights"),
        (A.SFTSettings(steps=1, levels=(1,), level_weights=(-1.0,)), "level_weights"),
        (A.SFTSettings(steps=1, stop_at_accuracy=1.5), "stop_at_accuracy"),
        (A.SFTSettings(steps=1, stop_at_accuracy=0.5, check_every=0), "check_every"),
    ],
)
def test_bad_sft_settings_raise(tokenizer, settings, match):
    with pytest.raises(ValueError, match=match):
        A.train_sft(A.build_model(TINY, tokenizer), tokenizer, settings, progress=False)


def test_evaluate_accuracy_shape(tokenizer, one_thread):
    model = A.build_model(TINY, tokenizer, seed=0)
    ds = A.make_dataset(12, levels=(1, 3), split="test")
    result = A.evaluate_accuracy(model, tokenizer, ds, batch_size=8, max_new_tokens=4)
    assert 0.0 <= result["accuracy"] <= 1.0
    assert set(result["accuracy_by_level"]) == {1, 3}
    assert result["n"] == 12
    with pytest.raises(ValueError, match="answer"):
        A.evaluate_accuracy(model, tokenizer, ds.remove_columns("answer"))


def test_evaluate_accuracy_counts_gold_as_correct(tokenizer, monkeypatch):
    ds = A.make_dataset(9, levels=(1, 2, 4), split="test")
    gold = {p: c for p, c in zip(ds["prompt"], ds["completion"])}
    wrong = ds["prompt"][0]

    def fake_generate(model, tok, prompts, **kwargs):
        return [[" \\boxed{-1}" if p == wrong else gold[p]] for p in prompts]

    monkeypatch.setattr(scoring, "generate_responses", fake_generate)
    result = A.evaluate_accuracy(None, tokenizer, ds)
    assert result["accuracy"] == pytest.approx(8 / 9)
    assert sorted(result["accuracy_by_level"].values()) == pytest.approx([2 / 3, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------- caching


def test_cache_key_depends_on_recipe_and_seed():
    teacher, student = A.recipes(quick=False)
    key = A.TASK.cache_key
    assert key(teacher, 0) != key(student, 0)
    assert key(teacher, 0) != key(teacher, 1)
    assert key(teacher, 0) == key(A.recipes(quick=False)[0], 0)
    assert key(A.recipes(quick=True)[0], 0) != key(teacher, 0)


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEAD_CACHE_DIR", str(tmp_path / "c"))
    assert A.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEAD_CACHE_DIR")
    assert A.default_cache_dir().parts[-2:] == (".cache", "sead")


def test_a_crash_while_saving_leaves_no_entry(tokenizer, tmp_path):
    class Exploding(torch.nn.Module):
        def save_pretrained(self, path):
            (path / "partial.bin").write_text("half")
            raise RuntimeError("disk full")

    target = tmp_path / "arithmetic-teacher-x"
    with pytest.raises(RuntimeError, match="disk full"):
        prepare.save_atomically(Exploding(), tokenizer, {"accuracy": 1.0}, target, False, A.METRICS_FILE)
    assert list(tmp_path.iterdir()) == []


def test_a_directory_without_metrics_is_not_a_cache_hit(tokenizer, tmp_path):
    teacher, _ = A.recipes(quick=True)
    A.TASK.entry_dir(teacher, 0, tmp_path).mkdir()
    with pytest.raises(SeadError, match="not a finished cache entry"):
        A.TASK.prepare_one(teacher, tokenizer, 0, tmp_path, progress=False)


@pytest.mark.slow
def test_prepare_models_quick_end_to_end(monkeypatch):
    # The session's shared cache (tests/conftest.py: a fresh one per run unless SEAD_CACHE_DIR is
    # set), so the demo test reuses these models instead of training its own.
    cache = A.default_cache_dir()
    entries = [cache / f"arithmetic-{r.role}-{A.TASK.cache_key(r, 0)}" for r in A.recipes(quick=True)]
    existed = all(e.exists() for e in entries)
    prepared = A.prepare_models(quick=True, progress=False)
    assert prepared.cached == existed
    assert [prepared.teacher_dir, prepared.student_dir] == entries
    assert prepared.levels == A.QUICK_LEVELS
    assert prepared.teacher_accuracy > prepared.student_accuracy
    assert prepared.teacher_accuracy >= 0.7
    assert set(prepared.teacher_accuracy_by_level) == set(A.QUICK_LEVELS)
    for directory in (prepared.teacher_dir, prepared.student_dir):
        for name in ("config.json", "model.safetensors", "tokenizer.json", A.METRICS_FILE):
            assert (directory / name).is_file(), (directory, name)
        metrics = json.loads((directory / A.METRICS_FILE).read_text())
        assert 0.0 <= metrics["accuracy"] <= 1.0
    assert (
        json.loads((prepared.teacher_dir / A.METRICS_FILE).read_text())["accuracy"]
        == prepared.teacher_accuracy
    )
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-arithmetic")]

    def no_training(*args, **kwargs):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(sft, "train_sft", no_training)
    again = A.prepare_models(cache_dir=cache, quick=True, progress=False)
    assert again.cached
    assert again.teacher_dir == prepared.teacher_dir and again.student_dir == prepared.student_dir
    assert again.teacher_accuracy == prepared.teacher_accuracy
    assert again.student_accuracy_by_level == prepared.student_accuracy_by_level

    student = again.load_student()
    ds = A.make_dataset(30, levels=A.QUICK_LEVELS, seed=A.EVAL_SEED, split="test")
    assert A.evaluate_accuracy(student, again.tokenizer, ds)["n"] == 30
