"""Training prompts from a file, a ``save_to_disk`` folder or the hub, and their gold answers.

Shared by ``sead train`` (:mod:`sead.training.recipe`) and the difficulty pre-pass (:mod:`sead.data.difficulty`),
so both read a recipe's ``dataset_name`` the same way and name the setting that is wrong.
"""

from __future__ import annotations

from pathlib import Path

from sead.utils.errors import SeadError

__all__ = ["answers_from_column", "load_train_dataset"]

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_train_dataset(
    name: str, config: str | None = None, split: str = "train", prompt_column: str = "prompt"
):
    """Load a dataset from a local file, a ``save_to_disk`` directory or the hub; rename the prompt column."""
    import datasets

    path = Path(name)
    if path.suffix in _FILE_BUILDERS:
        if not path.is_file():
            raise SeadError(f"dataset file {name} does not exist. Check `dataset_name`.")
        if path.stat().st_size == 0:
            raise SeadError(f"the dataset file {name} is empty: it needs at least one row with a `prompt`.")
        try:
            ds = datasets.load_dataset(_FILE_BUILDERS[path.suffix], data_files=str(path), split="train")
        except Exception as err:
            detail = " ".join(f"{type(err).__name__}: {err}".split())
            raise SeadError(f"could not read the dataset file {name} ({detail}). Check its format.") from err
    elif path.is_dir() and (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(name, config, split=split)
        except Exception as err:
            raise SeadError(
                f"could not load dataset `{name}` (split `{split}`): {err}. Give a local file or directory, "
                "or check the name and your network."
            ) from err
    if prompt_column != "prompt":
        if prompt_column not in ds.column_names:
            raise SeadError(
                f"dataset `{name}` has no column `{prompt_column}` (prompt_column); columns: {ds.column_names}"
            )
        if "prompt" in ds.column_names:
            ds = ds.remove_columns("prompt")
        ds = ds.rename_column(prompt_column, "prompt")
    return ds


def answers_from_column(ds, source: str, option: str) -> list[str]:
    """The gold answers of ``ds`` as strings, from column ``source`` or a field nested in it (``col.key.key``,
    e.g. DAPO-Math's ``reward_model.ground_truth``). Errors name ``option``, the setting that gave ``source``."""
    column, *keys = source.split(".")
    if column not in ds.column_names:
        raise SeadError(f"{option} `{source}`: the dataset has no column `{column}`; columns: {ds.column_names}")
    answers = []
    for value in ds[column]:
        try:
            for key in keys:
                value = value[key]
        except (KeyError, TypeError, IndexError) as err:
            raise SeadError(f"{option} `{source}`: a row has no such nested field ({err!r})") from err
        answers.append(str(value))
    return answers
