"""JSON Lines files: one JSON object per line, read with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sead.utils.errors import SeadError

__all__ = ["read_jsonl", "write_jsonl"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a ``.jsonl`` file, blank lines skipped. A line that is not JSON, or not a JSON object, is a
    :class:`SeadError` naming ``path:line``."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SeadError(f"{path}:{lineno}: not valid JSON ({err.msg}); fix or remove that line.") from err
            if not isinstance(row, dict):
                raise SeadError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept as it is)."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
