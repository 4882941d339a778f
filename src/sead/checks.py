"""Refusals before any step: datasets the run cannot use, teachers from another vocabulary."""

from __future__ import annotations

from .config import OPDConfig
from .errors import SeadError

__all__ = ["check_dataset", "check_vocabularies"]


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


def _vocab_size(model, args: OPDConfig) -> int | None:
    """The vocabulary size of a model object or of the config at a path / hub id (None if unknown)."""
    if model is None:
        return None
    if isinstance(model, str):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model, trust_remote_code=args.trust_remote_code)
        except Exception:  # not loadable here: TRL's own loading reports it
            return None
    else:
        config = getattr(model, "config", None)
    if config is None:
        return None
    size = getattr(config.get_text_config(), "vocab_size", None)
    return int(size) if size is not None else None


def check_vocabularies(model, teacher_model, args: OPDConfig) -> None:
    """Refuse, before loading weights or training, a teacher whose vocabulary differs from the student's."""
    student, teacher = _vocab_size(model, args), _vocab_size(teacher_model, args)
    if student is not None and teacher is not None and student != teacher:
        raise SeadError(
            f"the student has a vocabulary of {student} tokens but the teacher has {teacher}: on-policy "
            "distillation compares next-token distributions over one shared vocabulary. Use a teacher from the "
            "student's model family (same tokenizer and vocab_size)."
        )
