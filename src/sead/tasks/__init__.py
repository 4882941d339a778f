"""Built-in tasks that need no download: ``sums`` (the default of ``sead demo`` and ``sead bench quality``)
and ``arithmetic``. :func:`get_task` returns a task's :class:`sead.tasks.prepare.BuiltinTask`."""

from __future__ import annotations

import importlib

from sead.utils.errors import SeadError

__all__ = ["TASKS", "DEFAULT_TASK", "get_task"]

#: Registry name -> module holding ``TASK``.
TASKS: dict[str, str] = {"sums": "sead.tasks.sums", "arithmetic": "sead.tasks.arithmetic"}
DEFAULT_TASK = "sums"


def get_task(name: str):
    """The built-in task ``name`` (one of :data:`TASKS`)."""
    if name not in TASKS:
        raise SeadError(f"unknown built-in task {name!r}; choose from {', '.join(TASKS)}")
    return importlib.import_module(TASKS[name]).TASK
