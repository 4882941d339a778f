"""Several teachers in a trainer: their start-up checks, their loading, and what is logged per teacher.

The routing itself (which rows each teacher scores, SG-OPD's rollouts from the row's own teacher) is
:mod:`sead.components.teachers`; the zone pass and the loss run each teacher on its own rows
(:meth:`sead.training.forwards.ModelForwards.step_heads`, ``OPDTrainer._compute_loss``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import torch

from sead.components.served import ServedTeacher
from sead.components.teacher_mix import TeacherMix
from sead.components.teacher_rollouts import RolloutSettings, TeacherRollouts, teacher_engine
from sead.components.teachers import RoutedRollouts, TeacherEntry, parse_teachers, row_teachers
from sead.training.config import OPDConfig
from sead.training.sharding import DEEPSPEED, FSDP, load_teacher_like_trl
from sead.utils.errors import SeadError

__all__ = [
    "build_teacher_mix",
    "check_teacher_set",
    "connect_served",
    "load_teacher_set",
    "pass_rates",
    "teacher_entries",
    "teacher_metrics",
    "teacher_sources",
]


def teacher_entries(teacher_model, args: OPDConfig) -> list[TeacherEntry]:
    """The run's named teachers: ``args.teachers``, or a ``teacher_model`` passed as ``{name: model}``; ``[]``: one
    teacher, the usual way. Both at once are refused."""
    passed = isinstance(teacher_model, Mapping)
    if teacher_model is not None and args.teachers:
        raise SeadError(
            f"args.teachers names {', '.join(args.teachers)} and a teacher_model was passed as well: give the "
            "teachers once (teacher_model=None with args.teachers, or teacher_model={name: model})."
        )
    return parse_teachers(teacher_model if passed else args.teachers)


def check_teacher_set(model, entries: list[TeacherEntry], args: OPDConfig, dataset, *, check_vocab,
                      check_tokenizer) -> int | None:
    """Refuse, before loading weights, what several teachers cannot do; return the embedding rows every model
    shares (``None``: all the same size).

    - each teacher's vocabulary and tokenizer must be the student's (``check_vocab(model, teacher)`` and
      ``check_tokenizer(path)``, the single-teacher checks, each refusal naming the teacher);
    - the dataset's ``teacher_column`` must exist and name a known teacher in every row;
    - FSDP / DeepSpeed ZeRO (sharded teachers run a collective forward: every process would have to run every
      teacher on every micro-batch) are one per run in this version; a served teacher among several runs in one
      process (each request is agreed over every process, which would need every process to ask every teacher for
      every micro-batch). A served teacher's tokenizer is checked over HTTP when the trainer connects."""
    state = getattr(args, "distributed_state", None)
    kind = str(getattr(state, "distributed_type", ""))
    if kind.endswith((FSDP, DEEPSPEED)):
        raise SeadError(
            f"several teachers ({', '.join(e.name for e in entries)}) under {kind.split('.')[-1]}: sharded teachers "
            "are one per run in this version. Launch with DDP (each process holds every teacher) or one process."
        )
    served = [e.name for e in entries if e.served]
    if served and int(getattr(state, "num_processes", 1) or 1) > 1:
        raise SeadError(
            f"served teacher(s) {', '.join(served)} among several teachers, in {state.num_processes} processes: this "
            "version runs served teachers among several in one process. Load them locally, or launch one process."
        )
    columns = getattr(dataset, "column_names", None) or []
    if args.teacher_column not in columns:
        raise SeadError(
            f"several teachers need each row's teacher in column `{args.teacher_column}`, which the training dataset "
            f"lacks (columns: {', '.join(columns) or 'none'}). Add it, or set `teacher_column`."
        )
    names = [e.name for e in entries]
    row_teachers(dataset[args.teacher_column], names, args.teacher_column)
    shared = []
    for entry in (e for e in entries if not e.served):
        try:
            rows = check_vocab(model, entry.model)
            path = entry.model if isinstance(entry.model, str) else getattr(entry.model.config, "_name_or_path", None)
            if path:
                check_tokenizer(path)
        except SeadError as err:
            raise SeadError(f"teacher `{entry.name}`: {err}") from err
        if rows is not None:
            shared.append(rows)
    return min(shared) if shared else None


def load_teacher_set(entries: list[TeacherEntry], args: OPDConfig) -> list[torch.nn.Module]:
    """Every teacher loaded as TRL loads one given by name, each with its own ``init_kwargs`` (else the run's
    ``teacher_model_init_kwargs``); a loaded model is taken as it is; a served one is ``None`` (its client:
    :func:`connect_served`)."""
    return [None if e.served else load_teacher_like_trl(e.model, args, init_kwargs=e.init_kwargs) for e in entries]


def teacher_metrics(metrics: dict[str, list[float]], name: str, stats: dict[str, Any], tokens: float,
                    total_tokens: float, loss: float) -> None:
    """One teacher's rows of one micro-batch, logged under ``teacher/<name>/``: its loss (its share of the
    micro-batch's loss), its token share and, with zones, the zone shares of its tokens."""
    prefix = f"teacher/{name}/"
    metrics[prefix + "loss"].append(loss)
    metrics[prefix + "token_share"].append(tokens / total_tokens if total_tokens else 0.0)
    for zone in ("skip", "rkl", "fkl"):
        if f"frac_{zone}" in stats:
            metrics[prefix + f"frac_{zone}"].append(float(stats[f"frac_{zone}"]))


def teacher_sources(checked) -> list[str | None]:
    """Each teacher's hub id or path (SG-OPD's vLLM teacher engines are built from them; ``None``: unknown), in
    the run's teacher order: the named teachers', or the one teacher's."""
    if not checked.teachers:
        return [checked.teacher_source]
    return [None if e.served else e.model if isinstance(e.model, str)
            else getattr(e.model.config, "_name_or_path", None) or None for e in checked.teachers]  # fmt: skip


def connect_served(entries: list[TeacherEntry], args: OPDConfig, vocab: int, tokenizer, *, max_sequence_length=None,
                   **kwargs) -> list[ServedTeacher | None]:
    """Each served teacher's client, connected and checked before any step as a lone served teacher's is
    (:meth:`~sead.components.served.ServedTeacher.connect`: it answers, serves the model, holds the sequence, returns
    the log-probs the run needs, tokenizes like the student); ``None`` for a local teacher."""
    out = []
    for e in entries:
        if not e.served:
            out.append(None)
            continue
        one = copy.copy(args)  # the run's settings with this teacher's address
        one.teacher_server_url, one.teacher_server_model = e.url, e.served_model
        try:
            out.append(ServedTeacher.connect(one, vocab, tokenizer, max_sequence_length, **kwargs))
        except SeadError as err:
            raise type(err)(f"teacher `{e.name}` ({e.url}): {err}") from err
    return out


def pass_rates(correct: list[bool], index_B: torch.Tensor | None, names: list[str]) -> dict[str, float]:
    """This process's rollouts' pass rate per teacher (``{}`` with one teacher, or without verdicts): the share of
    each teacher's rows the verifier accepts; a teacher without rows here is left out."""
    if index_B is None or len(names) <= 1 or not correct:
        return {}
    index = index_B.tolist()
    rates = {}
    for i, name in enumerate(names):
        mine = [c for c, t in zip(correct, index) if t == i]
        if mine:
            rates[name] = sum(mine) / len(mine)
    return rates


def build_teacher_mix(trainer, sources: list[str | None]) -> TeacherMix:
    """SG-OPD's cold start: its teacher rollouts from the served teacher, a vLLM engine of the local teacher
    (built once, from the teacher's path) or the local teacher's HF ``generate``; several teachers: from each
    row's own (:class:`RoutedRollouts`)."""
    args, limit = trainer.args, trainer.prompt_length_limit()
    top_p, top_k = args.teacher_sampling_filters()
    settings = RolloutSettings(args.teacher_num_generations, args.teacher_temperature, trainer.max_completion_length,
                               top_p, top_k)  # fmt: skip
    samplers = []
    for i, source in enumerate(sources):
        engine, served = None, trainer.served if len(sources) == 1 else trainer.served_by[i]
        if served is None:
            engine = teacher_engine(
                source, args.teacher_generation_backend,
                gpu_memory_utilization=args.teacher_vllm_gpu_memory_utilization,
                num_processes=trainer.accelerator.num_processes, max_model_len=limit and limit + trainer.max_completion_length,
                seed=args.seed + trainer.accelerator.process_index,
            )  # fmt: skip
        samplers.append(TeacherRollouts(
            settings, eos_token_ids=trainer.eos_token_ids, pad_token_id=trainer._tokenizer.pad_token_id, served=served,
            engine=engine, local_teacher=lambda i=i: trainer.accelerator.unwrap_model(trainer.teachers[i]),
            batch_size=args.teacher_generation_batch_size, vocab_rows=trainer.shared_rows,
        ))  # fmt: skip
    sample = samplers[0] if len(samplers) == 1 else RoutedRollouts(samplers, args.teacher_num_generations)
    decode = functools.partial(trainer.processing_class.batch_decode, skip_special_tokens=True)
    return TeacherMix(sample, trainer.grader.grade, decode, num_generations=args.teacher_num_generations,
                      seed=args.seed, pad_token_id=trainer._tokenizer.pad_token_id,
                      pad_to_multiple_of=trainer.pad_to_multiple_of)  # fmt: skip
