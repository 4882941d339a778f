"""From a recipe to a ready ``OPDTrainer``: script arguments, data and model loading.

``sead train --config recipes/X.yaml [--field value ...]`` parses ``ScriptArguments`` and
``OPDConfig`` with TRL's ``TrlParser`` (YAML values replace defaults, CLI flags override YAML),
then calls :func:`build_trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sead.data.datasets import answers_from_column, load_train_dataset
from sead.training.config import OPDConfig
from sead.training.startup import (
    check_recipe,
    check_teacher_tokenizer,
    resolve_gguf_inputs,
    resolve_top_k_limits,
)

__all__ = [
    "ScriptArguments",
    "map_dataset_columns",
    "build_trainer",
    "builtin_task_data",
    "builtin_arithmetic",
]


#: ``builtin_task: none`` (on the command line, over a recipe's built-in task): no built-in task.
NO_BUILTIN_TASK = ("", "none", "None", "null")


@dataclass
class ScriptArguments:
    """What to train on, besides the training configuration.

    Parameters:
        model_name_or_path (`str`, *optional*):
            Student: a hub id or a local `save_pretrained` directory.
        builtin_task (`str`, *optional*):
            A built-in task, `"sums"` (docs/task.md) or `"arithmetic"`. Prepares (or loads from cache) its teacher
            and student and builds its dataset, so no model, teacher or dataset is needed (naming one as well is
            refused). `none` on the command line switches a recipe's built-in task off.
        builtin_quick (`bool`, *optional*, defaults to `False`):
            With `builtin_task`, the smaller, faster variant.
        builtin_num_prompts (`int`, *optional*, defaults to `1024`):
            With `builtin_task`, the number of training prompts.
        cache_dir (`str`, *optional*):
            Where the built-in task caches its models (default `$SEAD_CACHE_DIR` or `~/.cache/sead`).
        dataset_name (`str`, *optional*):
            A hub dataset id, a local `.json`/`.jsonl`/`.parquet`/`.csv` file, or a `save_to_disk` directory.
        dataset_config (`str`, *optional*):
            Dataset configuration name (`load_dataset`'s `name`).
        dataset_train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on.
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column holding the prompts; renamed to `prompt`.
        difficulty_num_rollouts (`int`, *optional*, defaults to `8`):
            K of the difficulty pre-pass the built-in task runs when the curriculum is on (*assumed* 8).
        answer_column_source (`str`, *optional*):
            Column holding the gold answers when it is not `answer_column` already: copied to `answer_column`
            (an existing `answer_column` is replaced). A dotted path reads a nested field, e.g.
            `reward_model.ground_truth` in verl-style datasets such as `BytedTsinghua-SIA/DAPO-Math-17k`.
        apply_chat_template (`bool`, *optional*, defaults to `False`):
            Wrap each plain-string prompt as one user message (`[{"role": "user", "content": prompt}]`), so the
            trainer formats it with the tokenizer's chat template (and `chat_template_kwargs`), as it does for
            conversational prompts. Use it for chat/instruct/thinking models; `sead difficulty --chat-template`
            formats the pre-pass prompts the same way.

        > LoRA student (TRL's `ModelConfig` fields and defaults; docs/recipes.md, "LoRA students")

        use_peft (`bool`, *optional*, defaults to `False`):
            Train a LoRA adapter on the frozen student (`peft`, built by TRL's `get_peft_config`) instead of every
            weight. SG-OPD's reference is then the student with its adapters off (no copy); the saved model is the
            adapter (`PeftModel.from_pretrained(base, output_dir)`).
        lora_r (`int`, *optional*, defaults to `16`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `32`):
            LoRA alpha (the adapter's scale is `lora_alpha / lora_r`).
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            LoRA dropout.
        lora_target_modules (`list[str]`, *optional*):
            The modules that get adapters, e.g. `[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]` or
            `[all-linear]`; default: peft's for the model type. An adapter on the output head (`lm_head`) is refused:
            the fused loss reads the head's weight (train it whole with `lora_modules_to_save` instead).
        lora_modules_to_save (`list[str]`, *optional*):
            Modules trained whole next to the adapters, e.g. `[lm_head]`.
        use_rslora (`bool`, *optional*, defaults to `False`):
            Rank-stabilised LoRA (scale `lora_alpha / sqrt(lora_r)`).
        use_dora (`bool`, *optional*, defaults to `False`):
            DoRA (weight-decomposed LoRA).
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "Student model id or path."})
    builtin_task: str | None = field(default=None, metadata={"help": "Built-in task: 'sums' or 'arithmetic'."})
    builtin_quick: bool = field(default=False, metadata={"help": "Small, fast variant of the built-in task."})
    builtin_num_prompts: int = field(
        default=1024, metadata={"help": "Training prompts of the built-in task."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Cache of the built-in task's models."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id, local file or directory."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Training split."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompts."})
    difficulty_num_rollouts: int = field(default=8, metadata={"help": "K of the difficulty pre-pass."})
    answer_column_source: str | None = field(
        default=None,
        metadata={"help": "Column (dotted path for nested fields) copied to answer_column, e.g. reward_model.ground_truth."},
    )
    apply_chat_template: bool = field(
        default=False,
        metadata={"help": "Wrap plain-string prompts as a user message so the chat template is applied."},
    )

    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter on the frozen student (peft)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules that get LoRA adapters (not lm_head); default: peft's for the model."}
    )
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained whole next to the adapters, e.g. lm_head."}
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA."})
    use_dora: bool = field(default=False, metadata={"help": "DoRA (weight-decomposed LoRA)."})

    def __post_init__(self):
        if self.builtin_task in NO_BUILTIN_TASK:  # `--builtin_task none`: a recipe's built-in task switched off
            self.builtin_task = None


def map_dataset_columns(ds, script: ScriptArguments, cfg: OPDConfig):
    """Apply ``answer_column_source`` and ``apply_chat_template`` (after :func:`load_train_dataset`)."""
    if script.answer_column_source and script.answer_column_source != cfg.answer_column:
        answers = answers_from_column(ds, script.answer_column_source, "answer_column_source")
        if cfg.answer_column in ds.column_names:
            ds = ds.remove_columns(cfg.answer_column)
        ds = ds.add_column(cfg.answer_column, answers)
    if script.apply_chat_template and len(ds) and isinstance(ds[0]["prompt"], str):
        ds = ds.map(lambda row: {"prompt": [{"role": "user", "content": row["prompt"]}]})
    return ds


def builtin_task_data(script: ScriptArguments, cfg: OPDConfig, progress: bool = True):
    """Teacher, student and training data of the built-in task ``script.builtin_task`` (difficulty column
    included when the curriculum is on: the initial student's pass rate over K rollouts)."""
    from sead.data.difficulty import estimate_difficulty
    from sead.tasks import get_task

    task = get_task(script.builtin_task)
    prepared = task.prepare_models(cache_dir=script.cache_dir, quick=script.builtin_quick, seed=0, progress=progress)
    # the run's top-k limits against the task's vocabulary before the pre-pass, for a local or served teacher alike
    vocab = _config_vocab(prepared.student_dir)
    resolve_top_k_limits(cfg, vocab)
    if cfg.teacher_server_url and vocab is not None:  # the server's limits too, before the pre-pass's minutes
        from sead.components.served import connect_teacher_server

        connect_teacher_server(cfg, vocab, prepared.tokenizer)
    ds = task.make_dataset(script.builtin_num_prompts, levels=prepared.levels, seed=cfg.seed, split="train")
    if cfg.curriculum and cfg.difficulty_column not in ds.column_names:
        difficulty = estimate_difficulty(
            prepared.load_student(),
            prepared.tokenizer,
            ds["prompt"],
            ds[cfg.answer_column],
            num_rollouts=script.difficulty_num_rollouts,
            max_new_tokens=cfg.max_completion_length,  # the rollouts' length of this run
            batch_size=256,
            prompts_per_chunk=256,
            progress=progress,
            seed=cfg.seed,
        )
        ds = ds.add_column(cfg.difficulty_column, difficulty)
    return prepared, ds


def _config_vocab(model_dir) -> int | None:
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(str(model_dir)).get_text_config().vocab_size)
    except Exception:  # the trainer's own check reads it again
        return None


def builtin_arithmetic(script: ScriptArguments, cfg: OPDConfig, progress: bool = True):
    """:func:`builtin_task_data` (kept under its old name; it serves every built-in task)."""
    return builtin_task_data(script, cfg, progress)


def build_trainer(script: ScriptArguments, cfg: OPDConfig, callbacks=None, progress: bool = True):
    """Everything a recipe names, loaded and checked, as an ``OPDTrainer`` ready to ``train()``."""
    from transformers import AutoTokenizer

    from sead.tasks import TASKS
    from sead.training.lora import peft_config_from
    from sead.training.trainer import OPDTrainer

    check_recipe(script, cfg, tuple(TASKS))
    peft_config = peft_config_from(script)  # a LoRA student (use_peft, lora_*), or None
    if script.builtin_task is not None:
        prepared, ds = builtin_task_data(script, cfg, progress)
        student, tokenizer = prepared.load_student(), prepared.tokenizer
        teacher = None if cfg.teacher_server_url else prepared.load_teacher()
    else:
        ds = load_train_dataset(
            script.dataset_name, script.dataset_config, script.dataset_train_split, script.prompt_column
        )
        ds = map_dataset_columns(ds, script, cfg)
        # a GGUF checkpoint (gguf_file in the init kwargs): its converted directory from here on
        script.model_name_or_path, cfg.teacher_model_name_or_path = resolve_gguf_inputs(
            script.model_name_or_path, cfg.teacher_model_name_or_path, cfg
        )
        tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path, padding_side="left")
        if cfg.teacher_model_name_or_path:  # a served teacher's tokenizer is checked by the trainer, over HTTP
            check_teacher_tokenizer(cfg.teacher_model_name_or_path, tokenizer)
        student, teacher = script.model_name_or_path, cfg.teacher_model_name_or_path
    return OPDTrainer(
        student, teacher, args=cfg, train_dataset=ds, processing_class=tokenizer, callbacks=callbacks,
        peft_config=peft_config,
    )
