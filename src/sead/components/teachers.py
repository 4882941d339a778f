"""Several teachers in one run (MOPD style): each prompt is distilled from the teacher its dataset row names.

A recipe names its teachers (``OPDConfig.teachers``: ``{name: model path}``, ``{name: {model: ..., init_kwargs:
{...}}}``, or a vLLM server's address), a dataset column (``teacher_column``) picks one per row. The step's rollouts carry each row's teacher
as an index (:data:`TEACHER_INDEX_KEY`, ``[B]``), so TRL's shuffle and split keep it with its row. Each micro-batch
is then cut into one group of rows per teacher (:func:`teacher_groups`): the student's hidden states are computed
once for the whole micro-batch and sliced, each teacher runs its forward on its own rows only (a teacher that serves
no row does no forward), and each group's loss adds up with the step's normaliser, so the sum is the loss of the
whole micro-batch with each token scored by its own teacher.

SEAD's zone cuts are taken per teacher (:class:`~sead.components.zone_cuts.StepZoneCuts` keyed by the teacher):
teachers differ in how sure they are (a chat teacher's entropies are not a math teacher's), and pooled percentiles
would hand the skip and reverse-KL zones to the most confident teacher's rows; per teacher, every teacher's tokens
are split as SEAD splits one teacher's. SG-OPD's gate is per token already; its cold-start rollouts come from each
row's own teacher (:class:`RoutedRollouts`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sead.utils.errors import SeadError

__all__ = [
    "TEACHER_INDEX_KEY",
    "RoutedRollouts",
    "TeacherEntry",
    "group_rows",
    "parse_teachers",
    "row_teachers",
    "sub_batch",
    "teacher_groups",
]

#: Key of each rollout's teacher (its index in the run's teacher list, ``[B]`` long) in TRL's generation batch.
TEACHER_INDEX_KEY = "teacher_index"


@dataclass(frozen=True)
class TeacherEntry:
    """One named teacher of a run: ``model`` (a hub id, a local path, or a loaded model) and the keyword arguments
    it is loaded with (``init_kwargs``; ``None``: the run's ``teacher_model_init_kwargs``); or, served by vLLM,
    ``url`` and the served model's name (``served_model``; ``None``: the only one the server serves)."""

    name: str
    model: Any
    init_kwargs: dict | None = field(default=None)
    url: str | None = None
    served_model: str | None = None

    @property
    def served(self) -> bool:
        return self.url is not None


def parse_teachers(value: Mapping[str, Any] | None) -> list[TeacherEntry]:
    """``OPDConfig.teachers`` (or a ``teacher_model`` dict) as a list of :class:`TeacherEntry`, in the order given
    (the order of the indices in :data:`TEACHER_INDEX_KEY`). Each value is a model (path, hub id or loaded model),
    ``{"model": ..., "init_kwargs": {...}}``, a vLLM server's http(s) address, or ``{"url": ..., "served_model":
    ...}``. Refuses, naming the entry, an empty name or model, unknown keys."""
    if value is None:
        return []
    if not isinstance(value, Mapping) or not value:
        raise SeadError(f"teachers must be a non-empty mapping of name -> model path; got {value!r}.")
    entries = []
    for name, spec in value.items():
        if not isinstance(name, str) or not name.strip():
            raise SeadError(f"teachers: every teacher needs a non-empty name; got {name!r}.")
        kwargs, served_model = None, None
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"model", "init_kwargs", "url", "served_model"})
            if unknown or ("model" in spec) == ("url" in spec):
                raise SeadError(
                    f"teachers.{name}: expected a model path, {{model: ..., init_kwargs: {{...}}}} or {{url: ..., "
                    f"served_model: ...}}; got keys {sorted(spec)}"
                    f"{' (unknown: ' + ', '.join(unknown) + ')' if unknown else ''}."
                )
            kwargs, served_model = spec.get("init_kwargs"), spec.get("served_model")
            if kwargs is not None and not isinstance(kwargs, Mapping):
                raise SeadError(f"teachers.{name}.init_kwargs must be a mapping; got {kwargs!r}.")
            spec = spec["model"] if "model" in spec else spec["url"]
        if spec is None or (isinstance(spec, str) and not spec.strip()):
            raise SeadError(f"teachers.{name}: no model given.")
        if isinstance(spec, str) and spec.startswith(("http://", "https://")):
            entries.append(TeacherEntry(name, None, url=spec, served_model=served_model))
        else:
            entries.append(TeacherEntry(name, spec, None if kwargs is None else dict(kwargs)))
    return entries


def row_teachers(values: Sequence[Any], names: Sequence[str], column: str) -> list[int]:
    """Each row's teacher index from the dataset column ``column``'s ``values``; refuses an unknown name, naming
    the column, the value and the teachers the run has."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for row, value in enumerate(values):
        if value not in index:
            raise SeadError(
                f"row {row} of the training dataset names teacher {value!r} in column `{column}`, which is not one "
                f"of the run's teachers ({', '.join(names)}). Fix the column or add the teacher to `teachers`."
            )
        out.append(index[value])
    return out


def group_rows(index_B: torch.Tensor, num_teachers: int) -> list[tuple[int, torch.Tensor]]:
    """``[(teacher, rows)]`` for every teacher that has a row in ``index_B`` (teacher order; ``rows``: the row
    indices, ascending). A teacher without rows is left out: it does no forward for this batch."""
    groups = []
    for i in range(num_teachers):
        rows = (index_B == i).nonzero().flatten()
        if rows.numel():
            groups.append((i, rows))
    return groups


def teacher_groups(inputs: dict[str, Any], num_teachers: int) -> list[tuple[int, torch.Tensor | None]]:
    """The teacher groups of one micro-batch: ``[(0, None)]`` (every row, one teacher) unless the batch carries
    :data:`TEACHER_INDEX_KEY` and the run has several teachers; then :func:`group_rows`."""
    index_B = inputs.get(TEACHER_INDEX_KEY)
    if num_teachers <= 1 or index_B is None:
        return [(0, None)]
    return group_rows(index_B, num_teachers)


def sub_batch(inputs: dict[str, Any], rows: torch.Tensor | None) -> dict[str, Any]:
    """The rows ``rows`` of every per-row tensor of a batch (other entries as they are); ``None``: the batch."""
    if rows is None:
        return inputs
    n = inputs["completion_ids"].shape[0]
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n:
            value = value[rows.to(value.device)]
        out[key] = value
    return out


class RoutedRollouts:
    """SG-OPD's teacher rollouts from each prompt's own teacher: ``samplers[i]`` (a
    :class:`~sead.components.teacher_rollouts.TeacherRollouts`) for the prompts whose route is ``i``. Called as
    one sampler, ``(prompt_ids, prompt_mask, seed, routes=None)``; returns ``G`` rollouts per prompt, prompt-major,
    as every sampler does. ``routes=None``: every prompt goes to the first teacher."""

    def __init__(self, samplers: Sequence[Callable[..., list[list[int]]]], num_generations: int):
        self.samplers, self.num_generations = list(samplers), int(num_generations)

    def __call__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, seed: int,
                 routes: torch.Tensor | None = None) -> list[list[int]]:
        if routes is None:
            return self.samplers[0](prompt_ids, prompt_mask, seed)
        G = self.num_generations
        out: list[list[int] | None] = [None] * (prompt_ids.shape[0] * G)
        for i, rows in group_rows(routes.to(prompt_ids.device), len(self.samplers)):
            got = self.samplers[i](prompt_ids[rows], prompt_mask[rows], seed + 7919 * i)
            for j, row in enumerate(rows.tolist()):
                out[row * G : (row + 1) * G] = got[j * G : (j + 1) * G]
        return out  # type: ignore[return-value]
