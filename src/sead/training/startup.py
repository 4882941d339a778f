"""Every refusal before the first step, in one place: the recipe, the inputs, the loaded models.

Three moments, each checked once:

- :func:`check_recipe` (``sead train``, from :func:`sead.training.recipe.build_trainer`): what a recipe names
  exists and belongs together (a student, a teacher or a served one, a dataset; local paths; one tokenizer).
- :func:`check_inputs` (first thing in ``OPDTrainer.__init__``, before any weight is loaded): the config type,
  the dataset's columns, the teacher (local or served, and resolved from ``teacher_model_name_or_path``), one
  vocabulary, a sharding the launcher can do, the student's vLLM mode. It returns the checked inputs
  (:class:`CheckedInputs`) that the trainer is built from.
- :func:`check_tokenizer_fits` and :func:`check_curriculum_opens` (after TRL has loaded the models): checks that
  need the loaded student or the built curriculum.

Field-by-field checks of the config itself are :meth:`sead.training.config.OPDConfig._validate` (run when the
config is made) and :func:`sead.training.inherited.check_inherited_fields`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sead.components.teachers import parse_teachers
from sead.engines.student_vllm import check_student_vllm
from sead.grading.rewards import RewardFunc, default_reward
from sead.grading.verifier import GradeCounter
from sead.training.config import OPDConfig
from sead.training.sharding import check_sharding
from sead.training.teacher_set import check_teacher_set, teacher_entries
from sead.utils.errors import SeadError

__all__ = [
    "CheckedInputs",
    "check_curriculum_opens",
    "check_dataset",
    "check_inputs",
    "check_prompt_lengths",
    "check_recipe",
    "check_teacher_tokenizer",
    "check_tokenizer_fits",
    "check_vocabularies",
    "prompt_length_limit",
    "resolve_gguf_inputs",
    "resolve_top_k_limits",
    "tokenizer_difference",
]


# ----------------------------------------------------------------------------------------------
# The recipe (sead train)
# ----------------------------------------------------------------------------------------------


def _builtin_conflicts(script, cfg: OPDConfig) -> list[str]:
    """The fields a built-in task would silently ignore: its own models and data replace them."""
    defaults = {"dataset_train_split": "train", "prompt_column": "prompt", "apply_chat_template": False}
    named = [(name, getattr(script, name)) for name in ("model_name_or_path", "dataset_name", "dataset_config",
                                                         "answer_column_source")]  # fmt: skip
    named.append(("teacher_model_name_or_path", cfg.teacher_model_name_or_path))
    named.append(("teachers", ", ".join(cfg.teachers) if cfg.teachers else None))
    named += [(name, getattr(script, name)) for name, default in defaults.items() if getattr(script, name) != default]
    return [f"{name}: {value}" for name, value in named if value not in (None, "")]


def check_recipe(script, cfg: OPDConfig, tasks: tuple[str, ...]) -> None:
    """Refuse a recipe (``ScriptArguments`` + ``OPDConfig``) that names no student, teacher or dataset, two data
    sources (a built-in task and a model or dataset of one's own: the built-in task would silently win), an unknown
    built-in task (``tasks``: the known ones), or a local model directory that does not exist."""
    if script.builtin_task is not None:
        if script.builtin_task not in tasks:
            raise SeadError(f"builtin_task must be one of {', '.join(tasks)}; got {script.builtin_task!r}")
        conflicts = _builtin_conflicts(script, cfg)
        if conflicts:
            raise SeadError(
                f"builtin_task: {script.builtin_task} brings its own student, teacher and data, but the recipe or the "
                f"command line also sets {', '.join(conflicts)}, which it would ignore. Drop one: pass "
                "--builtin_task none to train on your own model and dataset (model_name_or_path, "
                "teacher_model_name_or_path and dataset_name), or remove those fields."
            )
        return
    if script.builtin_quick:
        raise SeadError("builtin_quick only applies with builtin_task (which is not set): remove it, or set builtin_task.")
    if not script.model_name_or_path:
        raise SeadError("model_name_or_path (the student) is required unless builtin_task is set.")
    if not cfg.teacher_model_name_or_path and not cfg.teacher_server_url and not cfg.teachers:
        raise SeadError(
            "teacher_model_name_or_path (or teacher_server_url, a served teacher, or teachers, several) is required "
            "unless builtin_task is set."
        )
    if not script.dataset_name:
        raise SeadError("dataset_name is required unless builtin_task is set.")
    named = [(f"teachers.{e.name}", e.model) for e in parse_teachers(cfg.teachers) if isinstance(e.model, str)]
    for role, name in (
        ("model_name_or_path", script.model_name_or_path),
        ("teacher_model_name_or_path", cfg.teacher_model_name_or_path or ""),
        *named,
    ):
        if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
            raise SeadError(f"{role}: the directory {name} does not exist.")


CROSS_TOKENIZER_HINT = (
    "On-policy distillation here compares next-token distributions over one shared vocabulary, so it needs a "
    "teacher with the student's tokenizer (any embedding size). For a teacher with another tokenizer, use a "
    "cross-tokenizer method: TRL's GOLDTrainer (trl.experimental.gold, Universal Logit Distillation)."
)


def tokenizer_difference(student_tok, teacher_tok) -> str | None:
    """Where two tokenizers differ, in words (``None``: the same vocabulary and special tokens).

    Compared: each id's token string over both vocabularies, added and special tokens included (the first
    differing ids are named), and the EOS token. The pad token is not compared: a user often sets it on the
    student's tokenizer (to the EOS), and it only fills positions no loss reads."""
    n_s, n_t = len(student_tok), len(teacher_tok)
    vocab_s, vocab_t = student_tok.get_vocab(), teacher_tok.get_vocab()
    by_id_s = {i: t for t, i in vocab_s.items()}
    by_id_t = {i: t for t, i in vocab_t.items()}
    differing = [i for i in range(max(n_s, n_t)) if by_id_s.get(i) != by_id_t.get(i)]
    if differing:
        shown = ", ".join(f"id {i}: {by_id_s.get(i)!r} vs {by_id_t.get(i)!r}" for i in differing[:3])
        more = f" (and {len(differing) - 3} more)" if len(differing) > 3 else ""
        return (
            f"their vocabularies differ at {len(differing)} ids ({n_s} tokens in the student's tokenizer, {n_t} in "
            f"the teacher's); first, student vs teacher: {shown}{more}"
        )
    if student_tok.eos_token != teacher_tok.eos_token:  # where a rollout ends, for both models
        return f"their eos_token differs: {student_tok.eos_token!r} (student) vs {teacher_tok.eos_token!r} (teacher)"
    return None


def load_tokenizer(path: str | None):
    """The tokenizer saved at ``path`` (a directory or hub id), or ``None`` when there is none to load."""
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception:
        return None


def check_teacher_tokenizer(teacher_path: str, student_tokenizer) -> None:
    """Refuse a teacher whose tokenizer is not the student's (:func:`tokenizer_difference`), or maps text to
    different ids, naming the first differing tokens."""
    teacher_tok = load_tokenizer(teacher_path)
    if teacher_tok is None:
        return  # no tokenizer shipped with the teacher: the vocabulary check in the trainer still runs
    problem = tokenizer_difference(student_tokenizer, teacher_tok)
    probe = "The answer is \\boxed{42}. 0123456789 +-*/=()"
    ids_t = teacher_tok(probe, add_special_tokens=False)["input_ids"]
    ids_s = student_tokenizer(probe, add_special_tokens=False)["input_ids"]
    if problem is None and ids_t != ids_s:
        first = next((i for i, (a, b) in enumerate(zip(ids_s, ids_t)) if a != b), min(len(ids_s), len(ids_t)))
        problem = (
            f"they encode {probe!r} differently: from token {first} on, student ids {ids_s[first:first + 3]} vs "
            f"teacher ids {ids_t[first:first + 3]}"
        )
    if problem is not None:
        raise SeadError(
            f"the teacher at {teacher_path} tokenizes text differently from the student: {problem}. "
            + CROSS_TOKENIZER_HINT
        )


# ----------------------------------------------------------------------------------------------
# The trainer's inputs, before any weight is loaded
# ----------------------------------------------------------------------------------------------


@dataclass
class CheckedInputs:
    """What :func:`check_inputs` hands the trainer.

    Attributes:
        teacher_model: the teacher as TRL takes it (a loaded model, or a hub id / path it loads), ``None`` with
            ``teacher_server_url``.
        teacher_source: the teacher's hub id or path, for SG-OPD's vLLM teacher engine (``None`` if unknown).
        reward_funcs: the verifier's reward functions (the user's, or the default math-verify reward when the run
            needs verdicts or logs the pass rate; may be empty).
        grade_counter: counts the default reward's timeouts and errors.
        model: the student as TRL takes it (a GGUF checkpoint replaced by its converted directory).
        shared_rows: the embedding rows both models have when their sizes differ (one tokenizer, a padded
            embedding matrix): the loss compares the distributions over rows ``0..shared_rows-1``. ``None``: the
            same size.
        teachers: several teachers' :class:`~sead.components.teachers.TeacherEntry` list (``teacher_model`` is
            then ``None``); ``[]``: one teacher.
    """

    teacher_model: Any
    teacher_source: str | None
    reward_funcs: list[RewardFunc]
    grade_counter: GradeCounter
    model: Any = None
    shared_rows: int | None = None
    teachers: list = field(default_factory=list)


def resolve_gguf_inputs(model, teacher_model, args: OPDConfig):
    """``(model, teacher_model)`` with a GGUF checkpoint (``gguf_file`` in ``model_init_kwargs`` /
    ``teacher_model_init_kwargs``) replaced by its plain directory, converted once into the cache
    (:func:`sead.checkpoints.gguf.resolve_gguf`); the key is taken out of the config's kwargs, so TRL loads the
    directory as any other."""
    from sead.checkpoints.gguf import split_gguf_kwargs

    for role, kwargs_field in (("model", "model_init_kwargs"), ("teacher", "teacher_model_init_kwargs")):
        kwargs = getattr(args, kwargs_field, None)
        if not (isinstance(kwargs, dict) and kwargs.get("gguf_file")):
            continue
        name = model if role == "model" else teacher_model
        if not isinstance(name, str):
            raise SeadError(
                f"{kwargs_field} has a gguf_file, but the {role} was passed as a loaded model: give its directory "
                "(or hub id) as a string, or drop gguf_file."
            )
        path, rest = split_gguf_kwargs(name, kwargs)
        setattr(args, kwargs_field, rest or None)
        if role == "model":
            model = path
        else:
            teacher_model = path
            if args.teacher_model_name_or_path == name:
                args.teacher_model_name_or_path = path
    return model, teacher_model


def check_inputs(model, teacher_model, args, train_dataset, reward_funcs, processing_class=None) -> CheckedInputs:
    """Refuse, before any weight is loaded, inputs the run cannot use; return them checked and resolved."""
    if not isinstance(args, OPDConfig):
        raise SeadError(f"args must be an OPDConfig, got {type(args).__name__}")
    needs_verdict = bool(args.curriculum or args.sign_gate or args.teacher_mixing)
    columns = getattr(train_dataset, "column_names", None) or []
    user_rewards = reward_funcs is not None
    grade_counter = GradeCounter()
    if not user_rewards and (needs_verdict or (args.log_pass_rate and args.answer_column in columns)):
        reward_funcs = [default_reward(args.answer_column, args.grader_timeout, grade_counter)]
    check_dataset(train_dataset, args, needs_answer=needs_verdict and not user_rewards)
    if reward_funcs is None:
        reward_funcs = []
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]

    entries = teacher_entries(teacher_model, args)
    if entries:
        return _checked_teacher_set(model, entries, args, train_dataset, processing_class, funcs, grade_counter)
    if args.teacher_server_url and teacher_model is not None:
        raise SeadError(
            "teacher_server_url is set and a teacher_model was passed: the teacher is either served or local. "
            "Pass teacher_model=None with a served teacher."
        )
    if teacher_model is None and not args.teacher_server_url:
        if not args.teacher_model_name_or_path:
            raise SeadError(
                "no teacher: pass teacher_model= to OPDTrainer (a hub id, a local path or a loaded model), or set "
                "teacher_model_name_or_path, or teacher_server_url for a teacher served by vLLM."
            )
        teacher_model = args.teacher_model_name_or_path  # loaded by TRL's __init__, like a teacher passed by name
    model, teacher_model = resolve_gguf_inputs(model, teacher_model, args)
    shared_rows = check_vocabularies(model, teacher_model, args, processing_class)
    # top-k of V <= k ids is the whole vocabulary: capped here, before any work, for a local and a served teacher alike
    resolve_top_k_limits(args, shared_rows if shared_rows is not None else _vocab_size(model, args))
    state = getattr(args, "distributed_state", None)
    if state is not None:  # refuse a launch that asks for FSDP / DeepSpeed on CPU before loading any model
        check_sharding(args, state.distributed_type, final=False)
    check_student_vllm(args)  # server mode needs CUDA: refuse it before TRL waits for a server
    teacher_source = (
        teacher_model
        if isinstance(teacher_model, str)
        else getattr(getattr(teacher_model, "config", None), "_name_or_path", None)
    )
    return CheckedInputs(teacher_model, teacher_source, funcs, grade_counter, model=model, shared_rows=shared_rows)


def _checked_teacher_set(model, entries, args, dataset, processing_class, funcs, grade_counter) -> CheckedInputs:
    """:func:`check_inputs` for several teachers (:func:`sead.training.teacher_set.check_teacher_set`)."""
    # the student's tokenizer as saved with it (as `sead train` compares a teacher's), else the one passed
    source = _tokenizer_source(model)
    student_tok = (load_tokenizer(source) if source else None) or processing_class
    student_tok = getattr(student_tok, "tokenizer", student_tok)
    shared_rows = check_teacher_set(
        model, entries, args, dataset,
        check_vocab=lambda m, t: check_vocabularies(m, t, args, student_tok),
        check_tokenizer=lambda path: None if student_tok is None else check_teacher_tokenizer(path, student_tok),
    )  # fmt: skip
    resolve_top_k_limits(args, shared_rows if shared_rows is not None else _vocab_size(model, args))
    state = getattr(args, "distributed_state", None)
    if state is not None:
        check_sharding(args, state.distributed_type, final=False)
    check_student_vllm(args)
    return CheckedInputs(None, None, funcs, grade_counter, model=model, shared_rows=shared_rows, teachers=entries)


def check_dataset(dataset, args: OPDConfig, needs_answer: bool) -> None:
    """Refuse, before any step, a dataset the run cannot use (missing columns, empty)."""
    if dataset is None:
        raise SeadError("train_dataset is required: a dataset with a `prompt` column.")
    columns = getattr(dataset, "column_names", None) or []
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise SeadError("the training dataset is empty: it needs at least one row with a `prompt`.")
    images = [c for c in ("image", "images") if c in columns]
    if images:
        raise SeadError(
            f"the training dataset has an image column (`{images[0]}`): sead's losses run the models on token ids "
            "only, so the student would be trained on distributions computed without the images. Vision-language "
            "distillation is not supported: drop the column, or use TRL's DistillationTrainer."
        )
    if "prompt" not in columns:
        raise SeadError(
            f"the training dataset has no `prompt` column (columns: {', '.join(columns) or 'none'}). "
            "Rename your question column to `prompt`."
        )
    if needs_answer and args.answer_column not in columns:
        raise SeadError(
            f"the verifier needs the gold answers in column `{args.answer_column}`, which the training dataset "
            f"lacks (columns: {', '.join(columns)}). Set `answer_column`, or pass your own `reward_funcs`."
        )
    if args.curriculum and args.difficulty_column not in columns:
        raise SeadError(
            f"the curriculum needs a `{args.difficulty_column}` column (difficulty in [0, 1]). Compute it with "
            "`sead difficulty`, or set `curriculum: false`."
        )


def _model_config(model, args: OPDConfig):
    """The config of a model object, or of the checkpoint at a path / hub id (``None`` if unknown)."""
    if model is None:
        return None
    if isinstance(model, str):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code)
        except Exception:  # not loadable here: TRL's own loading reports it
            return None
    return getattr(model, "config", None)


def _vocab_size(model, args: OPDConfig) -> int | None:
    """The embedding rows (``vocab_size``) of a model object or of the config at a path / hub id (None if unknown)."""
    config = _model_config(model, args)
    if config is None:
        return None
    size = getattr(config.get_text_config(), "vocab_size", None)
    return int(size) if size is not None else None


def _tokenizer_source(model) -> str | None:
    """Where a model's tokenizer may be found: its path / hub id, or the directory a loaded model came from."""
    if isinstance(model, str):
        return model
    path = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)
    return str(path) if path else None


def check_vocabularies(model, teacher_model, args: OPDConfig, student_tokenizer=None) -> int | None:
    """Refuse, before loading weights or training, a teacher whose vocabulary is not the student's; return the
    embedding rows both models have when their sizes differ (``None``: the same size).

    Models often pad their embedding matrix past the tokenizer (Qwen2.5-0.5B has 151,936 rows, Qwen2.5-7B 152,064,
    one tokenizer of 151,665 tokens). Different row counts are accepted when both tokenizers are one
    (:func:`tokenizer_difference`) and every token has a row in both models; the loss then compares the
    distributions over the shared rows ``0..V-1``, ``V = min(V_S, V_T)`` (docs/methods.md, "Padded vocabularies")."""
    student, teacher = _vocab_size(model, args), _vocab_size(teacher_model, args)
    if student is None or teacher is None or student == teacher:
        return None
    student_tok = student_tokenizer if student_tokenizer is not None else load_tokenizer(_tokenizer_source(model))
    student_tok = getattr(student_tok, "tokenizer", student_tok)  # a processor's text tokenizer
    teacher_tok = load_tokenizer(_tokenizer_source(teacher_model))
    sizes = f"the student has a vocabulary of {student} tokens but the teacher has {teacher} (embedding rows)"
    if student_tok is None or teacher_tok is None:
        which = "student's" if student_tok is None else "teacher's"
        raise SeadError(
            f"{sizes}. Different embedding sizes are accepted for one tokenizer (a padded embedding matrix), but "
            f"the {which} tokenizer could not be loaded to check that it is the same: save it next to the model "
            "(tokenizer.save_pretrained(model_dir)) and pass the model by path, or pass the student's "
            "processing_class."
        )
    problem = tokenizer_difference(student_tok, teacher_tok)
    if problem is not None:
        raise SeadError(f"{sizes}, and the tokenizers are not one: {problem}. " + CROSS_TOKENIZER_HINT)
    shared = min(student, teacher)
    if len(student_tok) > shared:
        raise SeadError(
            f"{sizes}: the tokenizer has {len(student_tok)} tokens, more than the {shared} rows both models have. "
            "Resize the smaller model's embeddings to the tokenizer (model.resize_token_embeddings(len(tokenizer)))."
        )
    return shared


def resolve_top_k_limits(args: OPDConfig, vocab: int | None) -> list[str]:
    """Cap ``estimator_top_k`` and ``entropy_top_k`` at the vocabulary both models share (``vocab`` ids), in
    ``args``, before any work, for a local and a served teacher alike: the top-``k`` of ``V <= k`` ids is the whole
    vocabulary (the top-k estimator's tail bucket is then empty, the zone entropies are the full entropies), which
    a local teacher computes and a served teacher returns when asked for ``V`` log-probs. Returns one line per
    field changed."""
    notes: list[str] = []
    if vocab is None:
        return notes
    for name in ("estimator_top_k", "entropy_top_k"):
        k = getattr(args, name)
        if k is not None and k > vocab:
            setattr(args, name, int(vocab))
            notes.append(f"{name} {k} > the {vocab}-token vocabulary: {vocab} (the whole vocabulary)")
    return notes


# ----------------------------------------------------------------------------------------------
# After loading
# ----------------------------------------------------------------------------------------------


def check_tokenizer_fits(model, tokenizer) -> None:
    """Refuse a tokenizer with more tokens than the student's vocabulary."""
    student_vocab = model.config.get_text_config().vocab_size
    if len(tokenizer) > student_vocab:
        raise SeadError(
            f"the tokenizer has {len(tokenizer)} tokens but the student's vocab_size is {student_vocab}: "
            "they do not belong together. Use the student's own tokenizer."
        )


def prompt_length_limit(args: OPDConfig, model, tokenizer, max_completion_length: int | None) -> int | None:
    """Longest prompt (in tokens) a rollout can start from: ``args.max_prompt_length`` when set, else the
    student's context (``max_position_embeddings``, and the tokenizer's ``model_max_length`` when it is a
    real limit) minus ``max_completion_length``. ``None``: no known limit."""
    if args.max_prompt_length is not None:
        return int(args.max_prompt_length)
    contexts = []
    ctx = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if isinstance(ctx, int) and ctx > 0:
        contexts.append(ctx)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**8:
        contexts.append(tok_max)
    if not contexts:
        return None
    limit = min(contexts) - int(max_completion_length or 0)
    if limit < 1:
        raise SeadError(
            f"max_completion_length ({max_completion_length}) leaves no room for a prompt in the "
            f"student's context of {min(contexts)} tokens. Lower max_completion_length."
        )
    return limit


def check_prompt_lengths(ds, limit_of, tokenize, from_max_prompt_length: bool):
    """``ds`` without the prompts longer than ``limit_of()`` tokens (:func:`prompt_length_limit`; with a warning
    giving their number); refuse a dataset where every prompt is too long. ``tokenize(prompts)``: their token ids.
    Map-style datasets only (a stream cannot be checked up front: returned as it is)."""
    if ds is None or not hasattr(ds, "__len__") or not hasattr(ds, "select"):
        return ds
    limit = limit_of()
    if limit is None:
        return ds
    lengths: list[int] = []
    try:
        for start in range(0, len(ds), 1024):
            prompts = ds[start : start + 1024]["prompt"]
            lengths.extend(len(x) for x in tokenize(list(prompts)))
    except Exception as err:  # prompts this check cannot tokenize alone (e.g. images): TRL checks them later
        warnings.warn(f"sead: prompt lengths not checked ({type(err).__name__}: {err})", stacklevel=3)
        return ds
    keep = [i for i, n in enumerate(lengths) if n <= limit]
    source = "max_prompt_length" if from_max_prompt_length else "the student's context minus max_completion_length"
    if not keep:
        raise SeadError(
            f"every prompt of the training dataset is longer than {limit} tokens ({source}); the shortest has "
            f"{min(lengths)}. Shorten the prompts, raise max_prompt_length, or lower max_completion_length."
        )
    if len(keep) < len(ds):
        warnings.warn(
            f"sead: dropped {len(ds) - len(keep)} of {len(ds)} training prompts longer than {limit} tokens "
            f"({source}).",
            stacklevel=3,
        )
        return ds.select(keep)
    return ds


def check_curriculum_opens(curriculum, total_steps: int, column: str, num_buckets: int) -> None:
    """Refuse a curriculum that opens no prompt at step 0, and warn when it opens every prompt there (its gate
    at step 0 is the first difficulty quantile, computed with the run's planned length ``total_steps``): it would
    order nothing, most often because the difficulty column is nearly constant (a pre-pass whose model solved
    almost every prompt, or almost none). ``column``: the difficulty column, for the messages."""
    cur, total = curriculum, total_steps
    n_open, n = cur.open_indices(0, total).numel(), cur.difficulties.numel()
    if n_open == 0:  # cannot happen with the quantile gate (its first bucket is always open); a guard
        raise SeadError(
            f"the curriculum opens no prompt at step 0 (gate {cur.gate(0, total):g}, lowest difficulty "
            f"{float(cur.difficulties.min()):g} in column `{column}`): training would have "
            "nothing to sample. Check the difficulty column (recompute it with `sead difficulty`) or set "
            "`curriculum: false`."
        )
    if n > 1 and n_open == n:
        lo, hi = float(cur.difficulties.min()), float(cur.difficulties.max())
        warnings.warn(
            f"sead: the curriculum opens all {n} prompts at step 0 (column `{column}` ranges "
            f"{lo:g}..{hi:g}, gate {cur.gate(0, total):g}): it orders nothing (most often more than "
            f"{100 // num_buckets}% of the prompts share the top difficulty, e.g. never solved "
            "by the initial student). Recompute the column with more rollouts (`sead difficulty --num-rollouts`) "
            "or another checkpoint, or set `curriculum: false`.",
            stacklevel=3,
        )
