"""The trainer's loss glue: from a micro-batch to one call of the objective.

``OPDTrainer._compute_loss`` (TRL's hook, run inside the student's redirected forward) gathers the student's
hidden states and head, the teacher's (its hidden states and head, or a served teacher's top-k log-probs), the
SG-OPD reference's, each with its output transform, and calls :func:`sead.losses.fused.fused_objective` (or, with
``use_fused_loss: false``, :func:`sead.losses.objective.logits_objective` on projected logits). The method math lives
there; what lives here is where each input comes from:

- **output transforms** (:meth:`LossGlue._setup_output_transforms`): read from each model's config and checked
  once against its own forward at start-up (:func:`sead.method.logit_transforms.check_output_transform`);
- **zone scope** (:meth:`LossGlue._step_zone_cuts`): with ``zone_scope: step`` the zone cuts of the whole optimizer
  step (every micro-batch, every process) come from an entropies-only pre-pass when the step's rollouts are ready,
  and travel with the batch as 0-dim tensors, which TRL's micro-batch split keeps whole.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from sead.losses.fused import LMHead, SparseTeacher, fused_objective, fused_zone_entropies
from sead.losses.objective import logits_objective
from sead.method.logit_transforms import IDENTITY, LogitTransform, check_output_transform, logit_transform_of
from sead.method.zones import ZoneThresholds, zone_thresholds, zones_from_thresholds
from sead.training.nonfinite import stand_in_loss
from sead.utils.errors import NonFiniteError, SeadError

__all__ = ["LossGlue", "MULTIMODAL_KEYS", "full_tensor", "project"]

_NONFINITE_MESSAGE = re.compile(r"NaN or inf")

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

# Keys of the step's zone cuts and of a served teacher's prefetched log-probs in a generation batch.
ZONE_CUT_KEYS = ("zone_cut_teacher_entropy", "zone_cut_student_entropy")
SERVED_KEYS = ("served_topk_ids", "served_topk_logprobs", "served_sampled_logprobs")


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


def project(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``head(hidden)``: through the module (its hooks and adapters run), except when its weight is a sharded FSDP2
    ``DTensor`` outside the owner's forward: then with the gathered weight (:func:`full_tensor`)."""
    if not _is_dtensor(head.weight):
        return head(hidden.to(head.weight.device))
    return F.linear(hidden, full_tensor(head.weight, hidden.dtype), full_tensor(head.bias))


def _lm_head(model, hidden: torch.Tensor, transform: LogitTransform, rows: int | None = None) -> LMHead:
    """``model``'s head over ``hidden``; with ``rows`` (a padded embedding matrix, one tokenizer), its first ``rows``
    rows only: the distribution over the shared vocabulary ``softmax(z[:rows])`` (docs/methods.md, "Padded
    vocabularies"). A slice is a view: a tied weight stays one tensor and its gradient reaches the whole matrix."""
    head = model.get_output_embeddings()
    weight, bias = full_tensor(head.weight, hidden.dtype), full_tensor(head.bias)
    if rows is not None and rows < weight.shape[0]:
        weight = weight[:rows]
        bias = None if bias is None else bias[:rows]
    return LMHead(hidden.to(weight.device), weight, bias, transform)


def _one_masked_column(inputs: dict[str, Any], pad_token_id: int) -> dict[str, Any]:
    """A micro-batch whose completions are all empty (width 0), with one masked pad column instead: the shapes stay
    valid (TRL's slicing by ``-logits_to_keep`` would otherwise keep the whole sequence). A served teacher's
    prefetched answers get the same masked column (zeros: never read), so this micro-batch, like every other one of
    the step, asks the server nothing more; the sampler's log-probs are dropped (nothing is sampled)."""
    inputs = dict(inputs)
    inputs["completion_ids"] = torch.full_like(inputs["prompt_ids"][:, :1], pad_token_id)
    inputs["completion_mask"] = torch.zeros_like(inputs["prompt_mask"][:, :1])
    for key in SERVED_KEYS:
        if key in inputs:
            t = inputs[key]
            inputs[key] = t.new_zeros((t.shape[0], 1, *t.shape[2:]))
    if inputs.get("tool_mask") is not None:
        inputs["tool_mask"] = torch.ones_like(inputs["completion_mask"])
    inputs.pop("sampler_logprobs", None)
    return inputs


def _is_sharded_or_meta(model) -> bool:
    from sead.training.sharding import is_partitioned

    if is_partitioned(model):
        return True
    return any(p.is_meta or _is_dtensor(p) for p in model.parameters())


class LossGlue:
    """Mixin of :class:`sead.training.trainer.OPDTrainer`: the loss hook and where its inputs come from."""

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
            with torch.no_grad(), self._autocast():
                return check_output_transform(model)
        except ValueError as err:
            raise SeadError(
                f"the {role}'s output logits are not what sead's loss computes from its lm_head ({err}). Its model "
                "family applies an output transform sead does not know; distilling it would train on the wrong "
                "distributions. Please report the model type."
            ) from err

    def _setup_output_transforms(self) -> None:
        student = self.accelerator.unwrap_model(self.model)
        teacher = None if self.teacher_model is None else self.accelerator.unwrap_model(self.teacher_model)
        self.logit_transforms = {
            "student": self._output_transform(student, "student"),
            "teacher": self._output_transform(teacher, "teacher"),
        }
        self.logit_transforms["reference"] = self.logit_transforms["student"]  # the frozen initial student

    # ---- the normaliser and the shared keywords -----------------------------------------------------
    def _loss_num_items(self, num_items_in_batch):
        """Global normaliser: TRL's global valid-token count (per process), times (1 - skip_fraction) for
        ``loss_normalization="kept"`` with zones: the expected number of kept tokens."""
        if num_items_in_batch is None:
            return None
        if self.args.zones and self.args.loss_normalization == "kept":
            return num_items_in_batch * max(1.0 - self.args.skip_fraction, 1e-6)
        return num_items_in_batch

    def _loss_common(self, num_items_in_batch, inputs=None) -> tuple[float, dict[str, Any]]:
        """``(alpha, keywords)`` every loss implementation shares (zones, zone cuts, anneal weight, normaliser)."""
        args = self.args
        alpha = self.current_alpha()
        cuts = None
        if inputs is not None and all(key in inputs for key in ZONE_CUT_KEYS):
            cuts = ZoneThresholds(*(float(inputs[key]) for key in ZONE_CUT_KEYS))
        entropy_top_k = args.entropy_top_k
        if self.teacher_server is not None and not args.zones:
            # without zones the entropies are only logged: over the k ids the server returns
            entropy_top_k = min(entropy_top_k or self._served_top_k, self._served_top_k)
        return alpha, {
            "alpha": alpha,
            "fkl_zone_alpha": self.current_fkl_zone_alpha(),
            "zones": bool(args.zones),
            "teacher_quantile": args.teacher_quantile,
            "skip_fraction": args.skip_fraction,
            "zone_thresholds": cuts,
            "entropy_top_k": entropy_top_k,
            "entropy_support": args.entropy_support,
            "temperature": self.temperature,
            "normalize": args.loss_normalization,
            "num_items": self._loss_num_items(num_items_in_batch),
        }

    # ---- the three heads ----------------------------------------------------------------------------
    @staticmethod
    def _sequences(inputs) -> tuple[torch.Tensor, torch.Tensor, int]:
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        return input_ids, attention_mask, inputs["completion_ids"].size(1)

    def _frozen_hidden(self, wrapped, input_ids, attention_mask, logits_to_keep):
        """A frozen model's last hidden states at the completion positions, through its wrapper (a sharded teacher or
        reference gathers its parameters in its own forward, as TRL's teacher does)."""
        wrapped.eval()
        unwrapped = self.accelerator.unwrap_model(wrapped)
        with torch.no_grad(), self._autocast():
            hidden = self._forward_redirection(
                wrapped, unwrapped, self._get_last_hidden_state, unwrapped, input_ids, attention_mask, logits_to_keep
            )
        return unwrapped, hidden

    def _autocast(self):
        """The launch's mixed precision for a model forward sead runs itself (``accelerator.autocast()``: bf16 /
        fp16 autocast under DDP, FSDP and one process; nothing under DeepSpeed, whose engine holds bf16 weights, or
        without mixed precision).

        accelerate applies mixed precision by wrapping each prepared model's instance ``forward`` in autocast. TRL's
        ``_ForwardRedirection`` replaces that instance ``forward`` for the call it redirects, and the backbone
        (``model.model``) is called directly: without this, every forward of student, teacher and reference ran in
        fp32 under DDP (twice the activation memory ``sead plan`` counts, and no bf16 tensor-core matmuls). Only
        the forwards: the loss itself projects in fp32 (:mod:`sead.losses.fused`)."""
        return self.accelerator.autocast()

    def _teacher_forward(self, inputs, input_ids, attention_mask, logits_to_keep):
        """The teacher's side of the loss: ``(model, hidden states)`` of a local teacher (its forward runs now), or
        a served teacher's top-k log-probs at every completion position (prefetched with the step's rollouts, or
        asked for now) as a :class:`SparseTeacher`."""
        if self.teacher_server is None:
            return self._frozen_hidden(self.teacher_model, input_ids, attention_mask, logits_to_keep)
        if all(key in inputs for key in SERVED_KEYS):
            return SparseTeacher(*(inputs[key] for key in SERVED_KEYS))
        return self._served_sparse(inputs)

    def _served_sparse(self, inputs) -> SparseTeacher:
        """One request for a micro-batch's (or a step's) served log-probs, shaped ``[B, T, k]`` / ``[B, T]``."""
        return self._ask_teacher_server(
            self.teacher_server.sparse_teacher,
            inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"],
            self._served_top_k,
        )  # fmt: skip

    def _reference_forward(self, input_ids, attention_mask, logits_to_keep):
        """SG-OPD's reference: ``(model, hidden states)``, or ``None`` without the sign gate or a reference model."""
        if not (self.args.sign_gate and self.ref_model is not None):
            return None
        return self._frozen_hidden(self.ref_model, input_ids, attention_mask, logits_to_keep)

    def _heads(self, student, h_s, teacher, reference) -> tuple[LMHead, LMHead | SparseTeacher, LMHead | None]:
        """The objective's inputs from the forwards' outputs (``teacher`` / ``reference``: ``(model, hidden)``, a
        :class:`SparseTeacher` or ``None``). Under ZeRO-3 it runs inside :meth:`_gathered_heads`."""
        t = self.logit_transforms
        rows = self.shared_rows
        s_head = _lm_head(student, h_s, t["student"], rows)
        t_head = teacher if not isinstance(teacher, tuple) else _lm_head(*teacher, t["teacher"], rows)
        r_head = None if reference is None else _lm_head(*reference, t["reference"], rows)
        return s_head, t_head, r_head

    @staticmethod
    def _gathered_heads(student, teacher, reference, train: bool):
        """The ``lm_head``s of the student, a local teacher and the reference readable for the loss
        (:func:`sead.training.sharding.zero3_gathered`): under DeepSpeed ZeRO-3 their weights are empty outside
        their modules' forwards. Entered after every forward has run (a model's forward partitions its parameters
        again as it ends). ``train``: the student's head gets a gradient; the block runs inside the student's
        forward, which then owns the head (gathered with it for the backward)."""
        from sead.training.sharding import zero3_gathered

        params = []
        for model in (student, *(m[0] for m in (teacher, reference) if isinstance(m, tuple))):
            head = model.get_output_embeddings()
            params += [head.weight, head.bias]
        return zero3_gathered(params, owner=student if train else None)

    def _loss_mask(self, inputs) -> torch.Tensor:
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

    # ---- TRL's hooks ----------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's ``compute_loss``; after a loss without gradients (evaluation) an FSDP2 student is resharded
        (:func:`sead.training.sharding.reshard_fsdp2`: its root unit would stay gathered until the next backward)."""
        from sead.training.sharding import reshard_fsdp2

        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not torch.is_grad_enabled():
            reshard_fsdp2(model)
        return out

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        if inputs["completion_ids"].size(1) == 0:
            inputs = _one_masked_column(inputs, self._tokenizer.pad_token_id)
        self._refuse_multimodal(inputs)
        input_ids, attention_mask, logits_to_keep = self._sequences(inputs)
        mask_BT = self._loss_mask(inputs)
        with self._autocast():
            h_s = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, logits_to_keep)
        t_side = self._teacher_forward(inputs, input_ids, attention_mask, logits_to_keep)
        r_side = self._reference_forward(input_ids, attention_mask, logits_to_keep)
        alpha, common = self._loss_common(num_items_in_batch, inputs)
        with self._gathered_heads(unwrapped_student, t_side, r_side, train=torch.is_grad_enabled()):
            student, teacher, reference = self._heads(unwrapped_student, h_s, t_side, r_side)
            mask_BT = mask_BT.to(student.weight.device)
            try:
                self._check_finite(student, teacher, reference, mask_BT)
                out = self._objective(student, teacher, reference, mask_BT, inputs, common)
                if not torch.isfinite(out.loss.detach()):
                    raise NonFiniteError(f"the loss is {out.loss.item()}")
            except ValueError as err:
                if not (isinstance(err, NonFiniteError) or _NONFINITE_MESSAGE.search(str(err))):
                    raise
                return self._refuse_nonfinite(str(err), h_s, unwrapped_student.get_output_embeddings(), mask_BT)
        self._log_loss_stats(out.stats, alpha)
        return (
            out.loss,
            torch.tensor(out.stats["mean_h_s"] * out.stats["num_valid"], device=h_s.device),
            mask_BT.sum(),
        )

    def _objective(self, student: LMHead, teacher, reference, mask_BT, inputs, common):
        args = self.args
        options = {
            "estimator": args.estimator,
            "estimator_top_k": args.estimator_top_k,
            "topk_convention": args.topk_convention,
            "sign_gate": bool(args.sign_gate),
            "correct": inputs.get("correct"),
            "lambda_consensus": args.lambda_consensus,
            "lambda_conflict": args.lambda_conflict,
            **common,
        }
        completion_ids = inputs["completion_ids"].to(mask_BT.device)
        if inputs.get("sampler_logprobs") is not None:  # vLLM rollouts: truncated importance weights (sampled)
            options["sampler_logprobs"] = inputs["sampler_logprobs"].to(mask_BT.device)
            options["importance_cap"] = args.vllm_importance_sampling_cap
        if args.use_fused_loss:
            return fused_objective(
                student, teacher, mask_BT, completion_ids, reference=reference,
                chunk_size=args.loss_chunk_size, zone_precision=args.zone_precision, **options,
            )  # fmt: skip

        def logits(head: LMHead) -> torch.Tensor:  # the readable path: full [B, T, V] logits, fp32
            z = head.hidden.to(head.weight.dtype) @ head.weight.T  # bf16 hidden states of an autocast forward
            if head.bias is not None:
                z = z + head.bias
            return head.transform(z.float())

        return logits_objective(
            logits(student), logits(teacher), mask_BT, completion_ids,
            ref_logits=None if reference is None else logits(reference), **options,
        )  # fmt: skip

    # ---- zone scope: the step's cuts ------------------------------------------------------------------
    def _step_zone_cuts(self, output: dict[str, Any]) -> None:
        """``zone_scope: step``: the zone cuts of the whole optimizer step, written into the generation batch.

        Runs the entropies-only pass (:func:`sead.losses.fused.fused_zone_entropies`, no gradient) over this process's
        micro-batches (the student's parameters do not change within a step, so its entropies are those its loss
        will see), gathers every process's valid entropies, and takes :func:`sead.method.zones.zone_thresholds` of the
        pool: the same cuts on every process. A served teacher's log-probs fetched here are kept in the batch for
        the loss. Cost: one no-grad forward of student and teacher (the teacher's alone when it is served) per
        rollout."""
        args = self.args
        rows = output["completion_ids"].shape[0]
        step = args.per_device_train_batch_size
        wrapped = getattr(self, "model_wrapped", None) or self.model
        student_model = self.accelerator.unwrap_model(wrapped)
        h_t_parts, h_s_parts, served = [], [], []
        for start in range(0, rows, step):
            part = {k: v[start : start + step] for k, v in output.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
            if part["completion_ids"].size(1) == 0:  # one masked column: every process runs the same forwards
                part = _one_masked_column(part, self._tokenizer.pad_token_id)
            input_ids, attention_mask, logits_to_keep = self._sequences(part)
            mask_BT = self._loss_mask(part)
            with torch.no_grad(), self._autocast():  # the hidden states the loss will see (same precision)
                h_s = self._forward_redirection(
                    wrapped, student_model, self._get_last_hidden_state, student_model,
                    input_ids, attention_mask, logits_to_keep,
                )  # fmt: skip
            t_side = self._teacher_forward(part, input_ids, attention_mask, logits_to_keep)
            if isinstance(t_side, SparseTeacher):
                served.append(t_side)
            with self._gathered_heads(student_model, t_side, None, train=False):
                student, teacher, _ = self._heads(student_model, h_s, t_side, None)
                mask_BT = mask_BT.to(student.weight.device)
                try:
                    h_t, h_s = fused_zone_entropies(
                        student, teacher, mask_BT, entropy_top_k=args.entropy_top_k,
                        entropy_support=args.entropy_support, temperature=self.temperature,
                        chunk_size=args.loss_chunk_size, zone_precision=args.zone_precision,
                    )  # fmt: skip
                except ValueError as err:
                    if not _NONFINITE_MESSAGE.search(str(err)):
                        raise
                    continue  # its micro-batch's loss refuses the NaN (the step is dropped): no entropies from it
            valid = mask_BT.bool()
            h_t_parts.append(h_t[valid].float())
            h_s_parts.append(h_s[valid].float())
        device = self.accelerator.device
        pooled = torch.stack([torch.cat(h_t_parts) if h_t_parts else torch.zeros(0),
                              torch.cat(h_s_parts) if h_s_parts else torch.zeros(0)], dim=-1).to(device)
        if self.accelerator.num_processes > 1:
            pooled = self._gather_rows(pooled)
        cuts = zone_thresholds(pooled[:, 0], pooled[:, 1], None, args.teacher_quantile, args.skip_fraction)
        output[ZONE_CUT_KEYS[0]] = torch.tensor(cuts.teacher_entropy, dtype=torch.float64)
        output[ZONE_CUT_KEYS[1]] = torch.tensor(cuts.student_entropy_cut, dtype=torch.float64)
        if self.args.zones and pooled.shape[0]:
            zones = zones_from_thresholds(pooled[:, 0], pooled[:, 1], torch.ones(pooled.shape[0]), cuts)
            self._metrics["train"]["sead/step_scope_tokens"].append(float(pooled.shape[0]))
            self._metrics["train"]["sead/step_frac_skip"].append(float((zones == 0).double().mean()))
        if served:
            # kept on every rank, also where every completion is empty (width 0): whether the loss asks the server
            # again must be the same on every rank (each request joins a collective, `_ask_teacher_server`)
            self._keep_served(output, served)

    def _gather_rows(self, rows_NC: torch.Tensor) -> torch.Tensor:
        """Every process's rows, concatenated in rank order (ranks may hold different numbers of rows)."""
        padded = self.accelerator.pad_across_processes(rows_NC, dim=0, pad_index=float("nan"))
        gathered = self.accelerator.gather(padded)
        return gathered[~torch.isnan(gathered[:, 0])]

    @staticmethod
    def _keep_served(output: dict[str, Any], served: list[SparseTeacher]) -> None:
        """A served teacher's per-micro-batch log-probs as whole-batch tensors (rows padded to the widest)."""
        width = output["completion_ids"].shape[1]

        def cat(tensors, fill):
            parts = [F.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]), value=fill) for t in tensors]
            return torch.cat(parts)

        output[SERVED_KEYS[0]] = cat([s.token_ids for s in served], 0)
        output[SERVED_KEYS[1]] = cat([s.logprobs for s in served], 0.0)
        output[SERVED_KEYS[2]] = cat([s.sampled_logprobs for s in served], 0.0)

    # ---- checks and faults ----------------------------------------------------------------------------
    @staticmethod
    def _refuse_multimodal(inputs) -> None:
        present = [key for key in MULTIMODAL_KEYS if key in inputs]
        if present:
            raise SeadError(
                f"the batch holds image inputs ({', '.join(present)}): sead's losses run the models on token ids only "
                "and would train the student on distributions computed without the images. Vision-language "
                "distillation is not supported; remove the image column or use TRL's DistillationTrainer."
            )

    @staticmethod
    def _check_finite(student: LMHead, teacher, reference, mask_BT) -> None:
        valid = mask_BT.bool()
        for name, head in (("student", student), ("teacher", teacher), ("reference", reference)):
            if isinstance(head, LMHead) and not torch.isfinite(head.hidden.detach()[valid]).all():
                raise NonFiniteError(f"{name} hidden states contain NaN or inf")

    def _refuse_nonfinite(self, reason: str, h_s, head_s, mask_BT):
        """The micro-step trains on a stand-in loss that reaches every trainable parameter (DDP expects a gradient
        for each): an exact zero, or under DeepSpeed one with a NaN gradient, which DeepSpeed's own check drops
        (:func:`sead.training.nonfinite.stand_in_loss`); :class:`sead.training.nonfinite.NonFiniteGuard` then drops
        the whole optimizer step on every rank, or stops training, per ``nonfinite_policy``."""
        if not self.model.training and self.args.nonfinite_policy == "error":
            raise NonFiniteError(f"non-finite values during evaluation at step {self.state.global_step}: {reason}")
        if self.model.training and self._nonfinite_reason is None:
            self._nonfinite_reason = reason
        poison = self.model.training and bool(getattr(self, "is_deepspeed_enabled", False))
        loss = stand_in_loss(h_s, head_s.parameters(), poison=poison)
        return loss, torch.zeros_like(loss).detach(), mask_BT.sum()

    def _log_loss_stats(self, stats: dict[str, float], alpha: float) -> None:
        mode = "train" if self.model.training else "eval"
        m = self._metrics[mode]
        if self.args.anneal:
            m["sead/alpha"].append(alpha)
        m["sead/mean_h_t"].append(stats["mean_h_t"])
        m["sead/mean_h_s"].append(stats["mean_h_s"])
        if self.args.zones:
            for zone in ("skip", "rkl", "fkl"):
                m[f"sead/frac_{zone}"].append(stats[f"frac_{zone}"])
        for zone in ("rkl", "fkl") if self.args.zones else ("rkl",):
            m[f"sead/loss_{zone}"].append(stats[f"loss_{zone}"])
        if "consensus_frac" in stats:
            m["sgopd/consensus_frac"].append(stats["consensus_frac"])
