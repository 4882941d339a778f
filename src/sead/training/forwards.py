"""The models at a micro-batch's completion positions, as the loss reads them: each model's last hidden states and
its output head (:class:`sead.losses.fused.LMHead`), or a served teacher's top-k log-probs.

Where each input comes from:

- **hidden states**: each model's backbone through its wrapper (TRL's ``_forward_redirection``: a sharded teacher or
  reference gathers its parameters in its own forward, as TRL's teacher does), under the launch's mixed precision;
- **heads**: the ``lm_head`` weights, gathered where a launcher shards them (FSDP2 ``DTensor``: :func:`full_tensor`;
  DeepSpeed ZeRO-3: :func:`sead.training.sharding.zero3_gathered`), cut to the vocabulary both models share;
- **output transforms**: read from each model's config and checked once against its own forward at start-up
  (:func:`sead.method.logit_transforms.check_output_transform`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from sead.components.served import SERVED_KEYS, ServedTeacher, served_from_batch, served_rows
from sead.components.teachers import sub_batch, teacher_groups
from sead.components.zone_cuts import ZONE_ENTROPIES_KEY
from sead.losses.fused import LMHead, SparseTeacher
from sead.method.logit_transforms import IDENTITY, LogitTransform, check_output_transform, logit_transform_of
from sead.training.sharding import is_partitioned, zero3_gathered
from sead.utils.errors import NonFiniteError, SeadError
from sead.utils.tensors import to_width

__all__ = [
    "MULTIMODAL_KEYS",
    "TEACHER_HIDDEN_KEY",
    "Heads",
    "ModelForwards",
    "StepPart",
    "full_tensor",
    "keep_teacher_side",
    "one_masked_column",
]

# Multimodal fields TRL's generation extracts for vision-language models (its `_compute_loss` list); sead refuses them.
MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "spatial_shapes",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


#: Key of a local teacher's last hidden states at the completions, kept in TRL's generation batch by the step's zone
#: pass (``teacher_cache``) so that each micro-batch's loss reads them instead of running the teacher again. Per row
#: (``[B, T, H]``): TRL's shuffle and split keep each row's.
TEACHER_HIDDEN_KEY = "teacher_hidden"

#: A zone-pass part that keeps nothing on purpose (a served teacher among several: its loss asks the server again).
SKIPPED = object()


def _is_dtensor(x) -> bool:
    dtensor = getattr(getattr(torch.distributed, "tensor", None), "DTensor", None)
    return dtensor is not None and isinstance(x, dtensor)


def full_tensor(param: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """An lm_head parameter as a plain tensor. Under FSDP2 it is a sharded ``DTensor``: ``full_tensor()`` gathers it
    once per loss call (its backward reduce-scatters the gradient), not once per chunk, and the cast to the hidden
    states' dtype happens once too (as TRL's chunked loss does). Anything else is returned as it is."""
    if param is None:
        return None
    if _is_dtensor(param):
        param = param.full_tensor()
        return param.to(dtype) if dtype is not None else param
    return param


def _lm_head(model, hidden: torch.Tensor, transform: LogitTransform, rows: int | None = None) -> LMHead:
    """``model``'s head over ``hidden``; with ``rows`` (a padded embedding matrix, one tokenizer), its first ``rows``
    rows only: the distribution over the shared vocabulary ``softmax(z[:rows])`` (docs/methods.md, "Padded
    vocabularies"). A slice is a view: a tied weight stays one tensor and its gradient reaches the whole matrix."""
    head = model.get_output_embeddings()
    weight, bias = full_tensor(head.weight, hidden.dtype), full_tensor(getattr(head, "bias", None))  # peft's wrappers
    if rows is not None and rows < weight.shape[0]:
        weight = weight[:rows]
        bias = None if bias is None else bias[:rows]
    return LMHead(hidden.to(weight.device), weight, bias, transform)


def one_masked_column(inputs: dict[str, Any], pad_token_id: int) -> dict[str, Any]:
    """A micro-batch whose completions are all empty (width 0), with one masked pad column instead: the shapes stay
    valid (TRL's slicing by ``-logits_to_keep`` would otherwise keep the whole sequence). A served teacher's
    prefetched answers and a local teacher's kept hidden states get the same masked column (zeros: never read), so
    this micro-batch, like every other one of the step, runs no teacher forward and asks the server nothing more; the
    sampler's log-probs are dropped (nothing is sampled)."""
    inputs = dict(inputs)
    inputs["completion_ids"] = torch.full_like(inputs["prompt_ids"][:, :1], pad_token_id)
    inputs["completion_mask"] = torch.zeros_like(inputs["prompt_mask"][:, :1])
    for key in (*SERVED_KEYS, TEACHER_HIDDEN_KEY, ZONE_ENTROPIES_KEY):
        if key in inputs:
            t = inputs[key]
            inputs[key] = t.new_zeros((t.shape[0], 1, *t.shape[2:]))
    if inputs.get("tool_mask") is not None:
        inputs["tool_mask"] = torch.ones_like(inputs["completion_mask"])
    inputs.pop("sampler_logprobs", None)
    return inputs


def _is_sharded_or_meta(model) -> bool:
    if is_partitioned(model):
        return True
    return any(p.is_meta or _is_dtensor(p) for p in model.parameters())


def _placed(hidden_BTH: torch.Tensor, cache: str) -> torch.Tensor | None:
    """A local teacher's hidden states where ``teacher_cache`` keeps them: ``"device"``, ``"cpu"`` or ``"off"``."""
    if cache == "off":
        return None
    return hidden_BTH.detach().to("cpu") if cache == "cpu" else hidden_BTH.detach()


def keep_teacher_side(output: dict[str, Any], parts: list[SparseTeacher | torch.Tensor | None],
                      rows: list[torch.Tensor | None] | None = None) -> None:
    """Keep the step's teacher side in TRL's generation batch ``output`` (every micro-batch's part, in row order), so
    that each micro-batch's loss reads its rows instead of asking the teacher again: a served teacher's answers
    (:meth:`ServedTeacher.keep`), or a local teacher's hidden states under :data:`TEACHER_HIDDEN_KEY`. Nothing is
    kept when a part is ``None`` (``teacher_cache: off``). Every rank keeps or none does: the setting is the run's.

    ``rows``: with several teachers, the batch rows of each part (``None`` for none of them: the parts are the rows
    in order). The parts are then placed at their rows in one ``[B, T, H_max]`` tensor (a teacher with a narrower
    hidden size fills its first ``H`` columns: :meth:`ModelForwards.teacher_side` cuts them back)."""
    if rows is not None and any(r is not None for r in rows):  # several teachers: local hidden states only
        rows = [r for p, r in zip(parts, rows) if p is not SKIPPED]
        parts = [p for p in parts if p is not SKIPPED]
    if not parts or any(p is None for p in parts):
        return
    if isinstance(parts[0], SparseTeacher):
        ServedTeacher.keep(output, parts)
    elif rows is None or all(r is None for r in rows):
        output[TEACHER_HIDDEN_KEY] = torch.cat(parts, dim=0)
    else:
        kept = parts[0].new_zeros((output["completion_ids"].shape[0], parts[0].shape[1], max(p.shape[-1] for p in parts)))
        for part, at in zip(parts, rows):
            kept[at.to(kept.device), :, : part.shape[-1]] = part
        output[TEACHER_HIDDEN_KEY] = kept


class StepPart(NamedTuple):
    """One teacher's rows of one micro-batch in the step's zone pass (:meth:`ModelForwards.step_heads`): their
    :class:`Heads`, the teacher's side as the loss can reuse it, the teacher's index and the rows (indices into the
    generation batch; ``None``: the micro-batch's rows, one teacher)."""

    heads: Heads
    teacher_side: SparseTeacher | torch.Tensor | None
    teacher: int
    rows: torch.Tensor | None


@dataclass
class Heads:
    """One micro-batch as the loss reads it: the student's head, the teacher's (or a served teacher's top-k), the
    reference's (SG-OPD, or ``None``), and the loss mask on the heads' device."""

    student: LMHead
    teacher: LMHead | SparseTeacher
    reference: LMHead | None
    mask_BT: torch.Tensor

    def check_finite(self) -> None:
        """Refuse NaN or inf in a model's hidden states at the valid positions, naming the model."""
        valid = self.mask_BT.bool()
        for name, head in (("student", self.student), ("teacher", self.teacher), ("reference", self.reference)):
            if isinstance(head, LMHead) and not torch.isfinite(head.hidden.detach()[valid]).all():
                raise NonFiniteError(f"{name} hidden states contain NaN or inf")


#: A frozen model's side of the loss: ``(unwrapped model, hidden states)``, a served teacher's answers, or ``None``.
Side = tuple[torch.nn.Module, torch.Tensor] | SparseTeacher | None


class ModelForwards:
    """The forwards and heads of one trainer's models.

    Args:
        accelerator: the run's ``Accelerator`` (unwrapping, mixed precision).
        redirect: TRL's ``_forward_redirection`` (a model's function run through its wrapper's forward).
        last_hidden_state: TRL's ``_get_last_hidden_state`` (a backbone's last hidden states at the completions).
        shared_rows: the vocabulary both models share when their embedding matrices are padded differently (one
            tokenizer), else ``None``.
        pad_token_id: fills an empty micro-batch's one masked column.
    """

    def __init__(self, accelerator, redirect: Callable, last_hidden_state: Callable, *, shared_rows: int | None,
                 pad_token_id: int):
        self.accelerator, self.redirect, self.last_hidden_state = accelerator, redirect, last_hidden_state
        self.shared_rows, self.pad_token_id = shared_rows, pad_token_id
        self.transforms = {"student": IDENTITY, "teacher": IDENTITY, "reference": IDENTITY}
        self.teacher_transforms: list[LogitTransform] = [IDENTITY]  # several teachers: one each (the first's above)

    # ---- start-up ---------------------------------------------------------------------------------
    def _output_transform(self, model, role: str) -> LogitTransform:
        """The transform ``model``'s forward applies to ``lm_head(h)``: read from its config, and checked against its
        forward on a few tokens when the model is whole here (a partitioned or meta-device model is only read: the
        check would need every rank). A model whose forward does something else is refused by name."""
        if model is None:
            return IDENTITY
        if _is_sharded_or_meta(model):
            return logit_transform_of(model.config)
        try:
            # under the launch's autocast: a teacher prepared by accelerate already runs its forward in it, and the
            # check's own projection must be computed the same way (else bf16 rounding reads as a transform)
            with torch.no_grad(), self.autocast():
                return check_output_transform(model)
        except ValueError as err:
            raise SeadError(
                f"the {role}'s output logits are not what sead's loss computes from its lm_head ({err}). Its model "
                "family applies an output transform sead does not know; distilling it would train on the wrong "
                "distributions. Please report the model type."
            ) from err

    def read_output_transforms(self, student, teacher, others: list | None = None) -> None:
        """Each model's output transform (before sharding: the check runs each model's forward); the reference is
        the frozen initial student, so it has the student's. ``others``: a run's further teachers."""
        unwrap = self.accelerator.unwrap_model
        self.transforms["student"] = self._output_transform(unwrap(student), "student")
        self.transforms["teacher"] = self._output_transform(None if teacher is None else unwrap(teacher), "teacher")
        self.transforms["reference"] = self.transforms["student"]
        self.teacher_transforms = [self.transforms["teacher"]]
        self.teacher_transforms += [self._output_transform(None if t is None else unwrap(t), f"teacher {i + 1}")
                                    for i, t in enumerate(others or [])]  # fmt: skip

    def _teacher_transform(self, index: int) -> LogitTransform:
        return self.transforms["teacher"] if index == 0 else self.teacher_transforms[index]

    # ---- one micro-batch ----------------------------------------------------------------------------
    def autocast(self):
        """The launch's mixed precision for a model forward sead runs itself (``accelerator.autocast()``: bf16 /
        fp16 autocast under DDP, FSDP and one process; nothing under DeepSpeed, whose engine holds bf16 weights, or
        without mixed precision).

        accelerate applies mixed precision by wrapping each prepared model's instance ``forward`` in autocast. TRL's
        ``_ForwardRedirection`` replaces that instance ``forward`` for the call it redirects, and the backbone
        (``model.model``) is called directly: without this, every forward of student, teacher and reference ran in
        fp32 under DDP (twice the activation memory ``sead plan`` counts, and no bf16 tensor-core matmuls). Only
        the forwards: the loss itself projects in fp32 (:mod:`sead.losses.fused`)."""
        return self.accelerator.autocast()

    @staticmethod
    def sequences(inputs) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(input_ids, attention_mask, logits_to_keep)``: prompt and completion side by side."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        return input_ids, attention_mask, inputs["completion_ids"].size(1)

    def prepared(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A micro-batch the loss can take: image inputs refused, empty completions given one masked column."""
        present = [key for key in MULTIMODAL_KEYS if key in inputs]
        if present:
            raise SeadError(
                f"the batch holds image inputs ({', '.join(present)}): sead's losses run the models on token ids only "
                "and would train the student on distributions computed without the images. Vision-language "
                "distillation is not supported; remove the image column or use TRL's DistillationTrainer."
            )
        if inputs["completion_ids"].size(1) == 0:
            return one_masked_column(inputs, self.pad_token_id)
        return inputs

    def loss_mask(self, inputs) -> torch.Tensor:
        """The completion tokens the loss is taken over: TRL's ``completion_mask``, without tool-result tokens
        (``tool_mask`` = 0: not the student's, as in TRL's own loss) and, with a padded embedding matrix, without
        tokens outside the shared rows (a student with more rows than the teacher may sample one: the teacher has
        no probability for it)."""
        mask_BT = inputs["completion_mask"]
        if inputs.get("tool_mask") is not None:
            mask_BT = mask_BT * inputs["tool_mask"]
        if self.shared_rows is not None:
            mask_BT = mask_BT * (inputs["completion_ids"] < self.shared_rows).to(mask_BT.dtype)
        return mask_BT

    def hidden(self, wrapped, input_ids, attention_mask, logits_to_keep, *, frozen: bool = True):
        """``(unwrapped model, last hidden states at the completions)`` through the model's wrapper, under the launch's
        mixed precision, without gradient; a ``frozen`` model (teacher, reference) is put in eval mode first (the
        student keeps its mode: the step's zone pass sees the hidden states its loss will see)."""
        if frozen:
            wrapped.eval()
        unwrapped = self.accelerator.unwrap_model(wrapped)
        with torch.no_grad(), self.autocast():
            hidden = self.redirect(
                wrapped, unwrapped, self.last_hidden_state, unwrapped, input_ids, attention_mask, logits_to_keep
            )
        return unwrapped, hidden

    def teacher_side(self, teacher_model, served: ServedTeacher | None, inputs, *sequence) -> Side:
        """The teacher's side of the loss: ``(model, hidden states)`` of a local teacher (kept by the step's zone pass
        under ``TEACHER_HIDDEN_KEY``, else its forward runs now), or a served teacher's top-k log-probs at every
        completion position (prefetched with the step's zone pass, or asked for now)."""
        if served is None:
            kept = inputs.get(TEACHER_HIDDEN_KEY)
            if kept is None:
                return self.hidden(teacher_model, *sequence)
            device = sequence[0].device  # a cache offloaded to the CPU comes back one micro-batch at a time
            teacher = self.accelerator.unwrap_model(teacher_model)
            width = getattr(teacher.get_output_embeddings(), "in_features", None)
            if width is not None and kept.shape[-1] > width:  # several teachers: the widest one's columns
                kept = kept[..., :width]
            return teacher, kept.to(device, non_blocking=True)
        return served_from_batch(inputs) or served.sparse(inputs)

    def step_heads(self, output: dict[str, Any], size: int, wrapped, teacher_model, served: ServedTeacher | None,
                   cache: str = "device", student_hidden: torch.Tensor | None = None) -> Iterator[StepPart]:
        """Each micro-batch of ``size`` rows of a generation batch as its loss will read it, without gradient (the
        step's zone pass), one :class:`StepPart` per teacher that has rows in it: its :class:`Heads` (readable while
        the consumer holds them), and the teacher's side as the loss can reuse it: a served teacher's answers
        fetched for it, or a local teacher's last hidden states ``[rows, T, H]`` placed as ``cache`` says
        (``"device"``: where they are; ``"cpu"``: offloaded now, before the next micro-batch's forward; ``"off"``:
        ``None``, the loss runs the teacher again). ``wrapped``: the student as the launcher wraps it.
        ``teacher_model``: the teacher, or a list of teachers (several teachers: each runs on the rows
        :data:`~sead.components.teachers.TEACHER_INDEX_KEY` gives it, and on no other). ``student_hidden``: the
        student's hidden states at the batch's completion positions as generation recorded them
        (:class:`~sead.engines.generation_hidden.GenerationHidden`), read instead of its forward; ``None``: the
        forward runs."""
        student = self.accelerator.unwrap_model(wrapped)
        teachers = teacher_model if isinstance(teacher_model, list) else [teacher_model]
        servers = served if isinstance(served, list) else [served]  # several teachers: one client each, or None
        whole = None if isinstance(served, list) or served is None else served.prefetched()  # asked for at generation
        for start in range(0, output["completion_ids"].shape[0], size):
            part = {k: v[start : start + size] for k, v in output.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
            if part["completion_ids"].size(1) == 0:  # one masked column: every process runs the same forwards
                part = one_masked_column(part, self.pad_token_id)
            sequence = self.sequences(part)
            if student_hidden is not None:  # recorded while sampling: no student forward
                # (a batch without completion tokens: one masked column of zeros)
                h_s = to_width(student_hidden[start : start + size], sequence[2]).to(sequence[0].device)
            else:
                _, h_s = self.hidden(wrapped, *sequence, frozen=False)  # the hidden states the loss will see
            for i, rows in teacher_groups(part, len(teachers)):
                group = sub_batch(part, rows)
                if whole is not None:
                    t_side = served_rows(whole, start, start + size, sequence[2])
                else:
                    t_side = self.teacher_side(teachers[i], servers[i], group, *self.sequences(group))
                h_group = h_s if rows is None else h_s[rows.to(h_s.device)]
                with self.heads(student, h_group, t_side, None, self.loss_mask(group), train=False, teacher_index=i) as heads:
                    kept = t_side if isinstance(t_side, SparseTeacher) else _placed(t_side[1], cache)
                    if rows is not None and isinstance(t_side, SparseTeacher):
                        kept = SKIPPED  # several teachers: a served one's answers are asked for again by the loss
                    yield StepPart(heads, kept, i, None if rows is None else rows + start)

    @contextlib.contextmanager
    def heads(self, student, h_s, teacher: Side, reference: Side, mask_BT, train: bool,
              teacher_index: int = 0) -> Iterator[Heads]:
        """The micro-batch's :class:`Heads`, readable for the loss inside the block: under DeepSpeed ZeRO-3 the heads'
        weights are empty outside their modules' forwards (:func:`sead.training.sharding.zero3_gathered`). Entered
        after every forward has run (a model's forward partitions its parameters again as it ends). ``train``: the
        student's head gets a gradient; the block then runs inside the student's forward, which owns the head
        (gathered with it for the backward). ``teacher_index``: which of several teachers ``teacher`` is (its output
        transform)."""
        params = []
        for model in (student, *(m[0] for m in (teacher, reference) if isinstance(m, tuple))):
            head = model.get_output_embeddings()
            params += [head.weight, getattr(head, "bias", None)]  # peft's trainable-tokens head has no bias
        with zero3_gathered(params, owner=student if train else None):
            t, rows = self.transforms, self.shared_rows
            s_head = _lm_head(student, h_s, t["student"], rows)
            t_head = teacher if not isinstance(teacher, tuple) else _lm_head(*teacher, self._teacher_transform(teacher_index), rows)
            r_head = None if reference is None else _lm_head(*reference, t["reference"], rows)
            yield Heads(s_head, t_head, r_head, mask_BT.to(s_head.weight.device))
