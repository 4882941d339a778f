"""``OPDTrainer``: TRL's ``DistillationTrainer`` with OPD, SEAD and SG-OPD objectives.

Thin glue: the trainer holds the method's components and calls them from the few TRL hooks it overrides.

- ``_generate_and_score_completions``: the curriculum's draw (:class:`~sead.method.curriculum.CompetenceCurriculum`,
  only open prompts), the verifier's verdicts, SG-OPD's teacher rollouts (:class:`~sead.components.teacher_mix.
  TeacherMix`), the step's zone cuts (:class:`~sead.components.zone_cuts.StepZoneCuts`); TRL still samples the
  student's rollouts.
- ``_compute_loss``: the micro-batch's heads (:class:`~sead.training.forwards.ModelForwards`) and one call of the
  objective with the step's :class:`~sead.losses.spec.LossSpec` (:meth:`~sead.losses.spec.LossSpec.at_step` with
  the :class:`~sead.method.schedules.StepSchedules`' values and the step's cuts).
- ``_get_train_sampler``, ``_save_checkpoint``, ``train``: exact resume (:mod:`sead.training.run_state`).

Every refusal before the first step is :mod:`sead.training.startup`; where the frozen models live (sharded teacher
and reference under FSDP2 / ZeRO-3) is :mod:`sead.training.sharding`; a served teacher is
:class:`~sead.components.served.ServedTeacher`. The method logic itself lives in :mod:`sead.method`,
:mod:`sead.losses` and :mod:`sead.components`, all testable without a trainer.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Any

import torch
from trl import DistillationTrainer

from sead.components.served import ServedTeacher
from sead.components.teacher_mix import MixResult, replace_logged
from sead.components.teachers import (
    TEACHER_INDEX_KEY,
    row_teachers,
    sub_batch,
    teacher_groups,
)
from sead.components.verdicts import StepVerdicts
from sead.components.zone_cuts import StepZoneCuts, kept_zone_entropies
from sead.engines.generation_hidden import GenerationHidden
from sead.engines.student_vllm import SamplerLogprobs, enable_cpu_weight_sync
from sead.engines.teacher_server import TeacherServerError
from sead.grading.rewards import RewardFunc, VerdictGrader
from sead.losses.fused import fused_objective
from sead.losses.objective import logits_objective
from sead.losses.output import loss_metrics
from sead.losses.spec import LossSpec
from sead.training.config import OPDConfig
from sead.training.forwards import Heads, ModelForwards, keep_teacher_side
from sead.training.lora import check_peft_inputs, copies_reference_first, reference_model, reference_side
from sead.training.nonfinite import NonFiniteGuard
from sead.training.run_state import (
    EpochSeededRepeatSampler,
    StepEndSnapshot,
    checkpoint_after_server_fault,
    resume_point,
    write_state,
)
from sead.training.sharding import (
    FSDP,
    attach_teacher,
    check_sharding,
    frozen_copy,
    load_teacher_like_trl,
    prepare_frozen,
    reshard_fsdp2,
)
from sead.training.startup import (
    check_curriculum_opens,
    check_inputs,
    check_prompt_lengths,
    check_tokenizer_fits,
    prompt_length_limit,
)
from sead.training.teacher_set import (
    build_teacher_mix,
    connect_served,
    load_teacher_set,
    pass_rates,
    teacher_metrics,
    teacher_sources,
)
from sead.utils.distributed import gather_rows
from sead.utils.errors import NonFiniteError, SeadError, is_nonfinite

__all__ = ["OPDTrainer"]

# TRL 1.16's generation helper (trl.models.utils.unwrap_model_for_generation) reads transformers 5's deprecated
# `model.is_gradient_checkpointing` and calls `gradient_checkpointing_disable` / `_enable` around every rollout: FutureWarnings
# per step that no setting of the user's (or sead's) causes or can avoid. Those messages, during TRL's rollout
# generation only, are silenced (OPDTrainer._generate_and_score_completions); every other warning stays.
_TRL_DEPRECATED_READS = r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is deprecated"


class OPDTrainer(DistillationTrainer):
    """On-policy distillation trainer: vanilla OPD, SEAD and SG-OPD (see ``OPDConfig.method``).

    Args:
        model, teacher_model, train_dataset, eval_dataset, processing_class, callbacks, optimizers,
        peft_config: as in ``trl.DistillationTrainer``. The dataset needs a ``prompt`` column; the
            verifier needs ``args.answer_column`` (default ``answer``); the curriculum needs
            ``args.difficulty_column``. A LoRA student (``peft_config``, or a ``PeftModel``): what the fused loss
            reads exactly, what it refuses, SG-OPD's adapters-off reference: :mod:`sead.training.lora`.
        args: an :class:`OPDConfig`.
        reward_funcs: verifier rewards as in TRL's GRPO: callables ``f(prompts, completions, **columns)``
            returning one float per completion. A rollout is correct when their sum is at least
            ``args.correct_threshold``. Default: math-verify against ``args.answer_column``.
    """

    _tag_names = ["trl", "distillation", "sead"]
    _name = "OPD"

    def __init__(self, model, teacher_model=None, args: OPDConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, reward_funcs: RewardFunc | list[RewardFunc] | None = None,
                 callbacks=None, optimizers=(None, None), peft_config=None):
        args = args if args is not None else OPDConfig(output_dir="runs/opd")
        checked = check_inputs(model, teacher_model, args, train_dataset, reward_funcs, processing_class)
        model, teacher_model = checked.model, checked.teacher_model
        self.shared_rows = checked.shared_rows
        self.teacher_names = [e.name for e in checked.teachers]  # several teachers (sead.components.teachers)
        own_teachers = load_teacher_set(checked.teachers, args)
        if self.shared_rows is not None and teacher_model is not None:
            # TRL refuses different embedding sizes; sead compares the shared rows (one tokenizer, checked): the
            # teacher is loaded here as TRL would load it and prepared after TRL's __init__.
            own_teachers, teacher_model = [load_teacher_like_trl(teacher_model, args)], None
        self.grader = VerdictGrader(checked.reward_funcs, args.grader_timeout, args.correct_threshold)
        check_peft_inputs(model, peft_config)  # an adapter the fused loss cannot read exactly: refused by name
        ref = None  # the frozen initial student (SG-OPD reference), copied before training changes anything
        if args.sign_gate and args.use_reference_model and copies_reference_first(model, peft_config):
            ref = frozen_copy(model)
        try:
            super().__init__(model=model, teacher_model=teacher_model, args=args, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                             optimizers=optimizers, peft_config=peft_config)  # fmt: skip
        except ValueError as err:
            if isinstance(err, SeadError) or "vocab_size" not in str(err):
                raise
            raise SeadError(" ".join(str(err).split())) from err
        self._place_models(own_teachers, ref)
        self._build_components(checked, teacher_sources(checked))

    # ---- start-up -------------------------------------------------------------------------------
    def _place_models(self, own_teachers, ref) -> None:
        """The models after TRL's ``__init__``: the teachers sead loaded, vLLM's sampler log-probs, the start-up checks
        that need the loaded student, each model's output transform, then the frozen models placed."""
        args = self.args
        attach = lambda t: None if t is None else attach_teacher(t, self.accelerator, self.is_deepspeed_enabled)  # noqa: E731
        if own_teachers:  # sead loaded them (several teachers: a served one is None)
            self.teacher_model = attach(own_teachers[0])
        self.teachers = [self.teacher_model] + [attach(t) for t in own_teachers[1:]]
        self.sampler_logprobs = None  # the student's vLLM engine's q(y_t): importance weights in the loss (sampled)
        if args.use_vllm:
            enable_cpu_weight_sync(self.vllm_generation)  # vLLM's CPU backend: TRL's weight sync as vLLM reloads
            if args.estimator == "sampled" and args.vllm_importance_sampling_correction:
                self.sampler_logprobs = SamplerLogprobs.attached_to(self.vllm_generation)
        check_tokenizer_fits(self.model, self._tokenizer)
        self.train_dataset = check_prompt_lengths(
            self.train_dataset, self.prompt_length_limit, lambda prompts: self._tokenize_prompts(prompts)[0],
            args.max_prompt_length is not None,
        )  # fmt: skip
        self.forwards = ModelForwards(  # TRL's hooks, looked up at each call (a subclass or a test may replace them)
            self.accelerator, lambda *a: self._forward_redirection(*a), lambda *a: self._get_last_hidden_state(*a),
            shared_rows=self.shared_rows, pad_token_id=self._tokenizer.pad_token_id,
        )  # fmt: skip
        self.forwards.read_output_transforms(self.model, self.teacher_model, self.teachers[1:])  # runs the forwards
        self._shard_frozen_models(ref)

    def _shard_frozen_models(self, ref) -> None:
        """Teacher and reference sharded as the launcher shards the student (:mod:`sead.training.sharding`). TRL
        prepared the teacher already: with DeepSpeed (stage 3 partitions it), otherwise with ``prepare_model(
        evaluation_mode=True)``, which under FSDP neither wraps nor shards it: sharded here."""
        args = self.args
        check_sharding(args, self.accelerator.distributed_type,
                       plugin=getattr(self.accelerator.state, "fsdp_plugin", None))  # fmt: skip
        if self.teacher_model is not None and str(self.accelerator.distributed_type).endswith(FSDP):
            self.teacher_model = self.teachers[0] = prepare_frozen(self.teacher_model, self.accelerator)
        self.ref_model = None
        if args.sign_gate and args.use_reference_model:  # a peft student's: its adapters off, no copy (training.lora)
            self.ref_model = reference_model(self.accelerator.unwrap_model(self.model), ref, args, self.accelerator)

    def _build_components(self, checked, sources: list[str | None]) -> None:
        """The method's components, built once from the config."""
        args = self.args
        self.schedules = args.schedules()
        self.curriculum, self.curriculum_draw = None, None
        if args.curriculum:
            self.curriculum = args.curriculum_of(self.train_dataset[args.difficulty_column], self.accelerator.num_processes)
            check_curriculum_opens(self.curriculum, self.planned_total_steps(), args.difficulty_column,
                                   args.curriculum_num_buckets)  # fmt: skip
        limit, vocab = self.prompt_length_limit(), int(self.model.config.get_text_config().vocab_size)
        connect = dict(max_sequence_length=None if limit is None else limit + int(self.max_completion_length or 0),
                       device=self.accelerator.device, eos_token_ids=self.eos_token_ids)  # fmt: skip
        self.served = ServedTeacher.connect(args, vocab, self._tokenizer, **connect) if args.teacher_server_url else None
        self.served_by = connect_served(checked.teachers, args, vocab, self._tokenizer, **connect)  # several teachers
        top_ks = [t.top_k for t in (self.served, *self.served_by) if t is not None]
        self.spec = args.loss_spec(served_top_k=min(top_ks) if top_ks else None)
        self.zone_cuts = StepZoneCuts(self.spec) if args.zones and args.zone_scope == "step" else None
        self.teacher_mix = build_teacher_mix(self, sources) if args.teacher_mixing else None
        recorded = args.zone_student_hidden == "generation" and not (args.use_vllm or self.teacher_mix or self.tools)
        self.generation_hidden = GenerationHidden() if self.zone_cuts is not None and recorded else None
        self.grade_counter = checked.grade_counter
        self.sead_counters = {"nonfinite_skipped_steps": 0, "grader_timeouts": 0, "grader_errors": 0}
        self.nonfinite = NonFiniteGuard(self)
        self.add_callback(self.nonfinite)
        self._step_end_snapshot = None
        if self.served is not None or any(self.served_by):
            self._step_end_snapshot = StepEndSnapshot(self)
            self.add_callback(self._step_end_snapshot)

    def prompt_length_limit(self) -> int | None:
        """Longest prompt a rollout can start from (:func:`sead.training.startup.prompt_length_limit`)."""
        return prompt_length_limit(self.args, self.model, self._tokenizer, self.max_completion_length)

    def planned_total_steps(self) -> int:
        """Optimizer steps the run will take, known before ``train()`` (the Trainer's own count once it runs):
        ``max_steps`` when set, else ``num_train_epochs`` x update steps per epoch (as ``Trainer`` counts them)."""
        if self.state.max_steps:
            return int(self.state.max_steps)
        if self.args.max_steps and self.args.max_steps > 0:
            return int(self.args.max_steps)
        per_epoch = max(len(self.get_train_dataloader()) // self.args.gradient_accumulation_steps, 1)
        return int(math.ceil(self.args.num_train_epochs * per_epoch))

    @property
    def total_steps(self) -> int:
        return max(int(self.state.max_steps or self.args.max_steps or 0), 0)

    def step_spec(self, teacher: int = 0) -> LossSpec:
        """The loss's spec at the current step: the schedules' values and, in training, the step's zone cuts (the
        ``teacher``'s: several teachers have their own)."""
        step, total = self.state.global_step, self.total_steps
        cuts = None
        if self.zone_cuts is not None and self.model.training:
            cuts = self.zone_cuts.cuts_at(step, teacher)
        return self.spec.at_step(alpha=self.schedules.alpha(step, total),
                                 fkl_zone_alpha=self.schedules.fkl_zone_alpha(step, total), cuts=cuts)  # fmt: skip

    # ---- rollouts -------------------------------------------------------------------------------
    def _get_train_sampler(self, dataset=None):
        # Same batches as TRL's sampler, but each epoch's order depends only on (seed, epoch): exact resume.
        # num_generations: each prompt G times in a row, G times fewer prompts (the same rollouts per step).
        args, G = self.args, self.args.num_generations
        return EpochSeededRepeatSampler(
            data_source=self.train_dataset if dataset is None else dataset, mini_repeat_count=G,
            batch_size=args.per_device_train_batch_size * self.accelerator.num_processes * args.gradient_accumulation_steps // G,
            repeat_count=args.gradient_accumulation_steps, shuffle=self.shuffle_dataset, seed=args.seed,
        )  # fmt: skip

    @property
    def reward_funcs(self) -> list[RewardFunc]:
        """The verifier's reward functions (:class:`~sead.grading.rewards.VerdictGrader`)."""
        return self.grader.funcs

    def _decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        rows = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask)]
        return self.processing_class.batch_decode(rows, skip_special_tokens=True)

    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        if training and self.curriculum is not None:  # a draw from the open pool (the same on every rank)
            n_proc, rank = self.accelerator.num_processes, self.accelerator.process_index
            indices = self.curriculum.draw(self.state.global_step, self.total_steps, len(inputs) * n_proc,
                                           repeat=self.args.num_generations)  # fmt: skip
            self.curriculum_draw = indices  # the verdicts' prompts, for the online difficulty
            inputs = [self.train_dataset[i] for i in indices[rank * len(inputs) : (rank + 1) * len(inputs)]]
        recorder = self.generation_hidden if training else None  # the student's hidden states, as it samples
        with warnings.catch_warnings(), (recorder.recording(self.accelerator.unwrap_model(self.model)) if recorder
                                         else contextlib.nullcontext()):  # fmt: skip
            warnings.filterwarnings("ignore", message=_TRL_DEPRECATED_READS, category=FutureWarning)
            output = super()._generate_and_score_completions(inputs)
        if len(self.teachers) > 1:  # each rollout's teacher, carried with its row through TRL's shuffle and split
            names = row_teachers([x[self.args.teacher_column] for x in inputs], self.teacher_names, self.args.teacher_column)
            output[TEACHER_INDEX_KEY] = torch.tensor(names, dtype=torch.long, device=self.accelerator.device)
        if self.sampler_logprobs is not None:
            q_BT = self.sampler_logprobs.take(output["completion_ids"].shape[1], output["completion_ids"].device)
            if q_BT is not None:
                output["sampler_logprobs"] = q_BT
        if training and self.served is not None and self.zone_cuts is not None and self.teacher_mix is None:
            self.served.prefetch(output)  # the server scores the step while the rollouts are graded (every rank)
        if self.reward_funcs:
            output = self._score_completions(inputs, output, training)
        if training and self.zone_cuts is not None:
            self._step_zone_cuts(output)  # after teacher mixing: the step's final rollouts
        return output

    def _score_completions(self, inputs, output, training: bool):
        """Verdicts of the rollouts, SG-OPD's teacher mixing, and their metrics (pass rate, curriculum window)."""
        correct = self.grader.grade(inputs, self._decode(output["completion_ids"], output["completion_mask"]))
        mixed = [False] * len(correct)
        multi = self.accelerator.num_processes > 1
        step, total = self.state.global_step, self.total_steps
        mode = "train" if training else "eval"
        if training and self.teacher_mix is not None:
            mix = self._mix_teacher_rollouts(inputs, output, correct)
            output, correct, mixed = mix.output, mix.correct, mix.mixed
        output["correct"] = torch.tensor(correct, dtype=torch.bool, device=self.accelerator.device)
        grades, faults = self.grade_counter.reset(), self.grader.take_faults()
        local_counts = StepVerdicts.of(correct, mixed, grades["timeouts"] + faults["grader_timeouts"],
                                       grades["errors"] + faults["grader_errors"])  # fmt: skip
        counts = local_counts.summed(self.accelerator.device,
                                     (lambda t: self.accelerator.reduce(t, reduction="sum")) if multi else None)
        self.sead_counters["grader_timeouts"] += int(counts.grader_timeouts)
        self.sead_counters["grader_errors"] += int(counts.grader_errors)
        if counts.pass_rate is not None:
            self._metrics[mode]["rollout/pass_rate"].append(counts.pass_rate)
        for name, rate in pass_rates(correct, output.get(TEACHER_INDEX_KEY), self.teacher_names).items():
            self._metrics[mode][f"teacher/{name}/pass_rate"].append(rate)
        if self.teacher_mix is not None:
            self._metrics[mode]["sgopd/teacher_mixed_frac"].append(counts.mixed_fraction)
            self._metrics[mode]["sgopd/rho"].append(self.schedules.rho(step, total))
        if training and self.curriculum is not None:
            self._update_curriculum(correct, mixed, mode)
        return output

    def _mix_teacher_rollouts(self, inputs, output, correct) -> MixResult:
        """SG-OPD's cold start at this step and rank (:class:`TeacherMix`); the logged completions and the step's
        global token count follow the mixed batch."""
        step = self.state.global_step
        mix = self.teacher_mix.mix(inputs, output, correct, rho=self.schedules.rho(step, self.total_steps), step=step,
                                   rank=self.accelerator.process_index)  # fmt: skip
        if mix.picks and self.log_completions:  # every rank has picks or none: the gather is safe
            replace_logged(self._logs["completion"], self._decode(mix.output["completion_ids"],
                                                                  mix.output["completion_mask"]))  # fmt: skip
        # every rank joins this collective, mixed or not: the global token count may have changed
        loss_mask = mix.output["completion_mask"]
        if mix.output.get("tool_mask") is not None:
            loss_mask = loss_mask * mix.output["tool_mask"]
        local = loss_mask.sum().reshape(1)
        multi = self.accelerator.num_processes > 1
        mix.output["num_items_in_batch"] = self.accelerator.gather(local).sum() if multi else local.sum()
        return mix

    def _update_curriculum(self, correct: list[bool], mixed: list[bool], mode: str) -> None:
        """The curriculum's window takes every rank's student rollouts' verdicts, in rank order (the same window on
        every rank); the gate's metrics."""
        flags = torch.tensor([[float(c), float(m)] for c, m in zip(correct, mixed)], dtype=torch.float32,
                             device=self.accelerator.device).reshape(-1, 2)  # fmt: skip
        flags = self.accelerator.gather(flags) if self.accelerator.num_processes > 1 else flags
        kept = [(bool(c), i) for (c, m), i in zip(flags.tolist(), self.curriculum_draw or [None] * len(flags)) if not m]
        self.curriculum.update([c for c, _ in kept], [i for _, i in kept])  # the prompts: for the online difficulty
        step, total = self.state.global_step, self.total_steps
        self._metrics[mode]["curriculum/gate"].append(self.curriculum.gate(step, total))
        self._metrics[mode]["curriculum/open_pool"].append(float(self.curriculum.open_indices(step, total).numel()))
        self._metrics[mode]["curriculum/bucket"].append(float(self.curriculum.bucket))

    def _step_zone_cuts(self, output: dict[str, Any]) -> None:
        """``zone_scope: step``: the step's zone cuts from the entropies of every micro-batch of every process
        (:class:`StepZoneCuts`; the teacher's no-grad forward, the student's hidden states recorded while it sampled
        or its no-grad forward: ``zone_student_hidden``). Kept in the batch for the losses: every position's entropies
        and the teacher's side (a served teacher's answers; a local one's hidden states: ``teacher_cache``): per step,
        one teacher forward and one zone-entropy projection per rollout."""
        wrapped, kept = getattr(self, "model_wrapped", None) or self.model, []
        self.zone_cuts.start(self.state.global_step)
        rows, width = output["completion_ids"].shape
        recorded = self.generation_hidden.take(rows, width) if self.generation_hidden is not None else None
        several = len(self.teachers) > 1
        teachers, served = (self.teachers, self.served_by) if several else (self.teacher_model, self.served)
        for part in self.forwards.step_heads(output, self.args.per_device_train_batch_size, wrapped, teachers,
                                             served, self.args.teacher_cache, recorded):  # fmt: skip
            kept.append((part.teacher_side, part.rows))
            self.zone_cuts.add(part.heads.student, part.heads.teacher, part.heads.mask_BT, part.teacher, part.rows)
        result = self.zone_cuts.finish(self.accelerator.device, lambda rows: gather_rows(self.accelerator, rows),
                                       keep_in=output, num_teachers=len(self.teachers))  # fmt: skip
        if result.tokens:
            self._metrics["train"]["sead/step_scope_tokens"].append(float(result.tokens))
            self._metrics["train"]["sead/step_frac_skip"].append(result.frac_skip)
        for i, (_tokens, frac_skip) in result.by_teacher.items():
            self._metrics["train"][f"teacher/{self.teacher_names[i]}/step_frac_skip"].append(frac_skip)
        keep_teacher_side(output, [k for k, _ in kept], [r for _, r in kept])  # every rank, also for empty completions

    # ---- the loss -------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's ``compute_loss``; after a loss without gradients (evaluation) an FSDP2 student is resharded
        (:func:`sead.training.sharding.reshard_fsdp2`: its root unit would stay gathered until the next backward)."""
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not torch.is_grad_enabled():
            reshard_fsdp2(model)
        return out

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        f = self.forwards
        inputs = f.prepared(inputs)
        sequence = f.sequences(inputs)
        with f.autocast():
            h_s = self._get_last_hidden_state(unwrapped_student, *sequence)
        r_side = reference_side(f, self.ref_model, sequence) if self.args.sign_gate and self.ref_model is not None else None
        groups = teacher_groups(inputs, len(self.teachers))  # several teachers: each scores its own rows only
        if num_items_in_batch is None and len(groups) > 1:  # evaluation: the groups share the micro-batch's count
            num_items_in_batch = f.loss_mask(inputs).sum()
        loss, mean_h_s_sum, total = 0.0, 0.0, f.loss_mask(inputs).sum()
        for i, rows in groups:
            group = sub_batch(inputs, rows)
            h_group, r_group = (h_s, r_side) if rows is None else (h_s[rows], r_side and (r_side[0], r_side[1][rows]))
            served = self.served_by[i] if rows is not None else self.served
            t_side = f.teacher_side(self.teachers[i], served, group, *f.sequences(group))
            spec = self.step_spec(i)
            with f.heads(unwrapped_student, h_group, t_side, r_group, f.loss_mask(group), train=torch.is_grad_enabled(),
                         teacher_index=i) as heads:  # fmt: skip
                try:
                    heads.check_finite()
                    out = self._objective(spec, heads, group, spec.normaliser(num_items_in_batch))
                    if not torch.isfinite(out.loss.detach()):
                        raise NonFiniteError(f"the loss is {out.loss.item()}")
                except ValueError as err:
                    if not is_nonfinite(err):
                        raise
                    return self.nonfinite.stand_in(str(err), h_s, unwrapped_student.get_output_embeddings(),
                                                   f.loss_mask(inputs).to(heads.mask_BT.device))  # fmt: skip
            self._log_loss(out, spec, i if rows is not None else None, heads.mask_BT.sum(), total)
            loss = loss + out.loss
            mean_h_s_sum = mean_h_s_sum + out.stats["mean_h_s"] * out.stats["num_valid"]
        return loss, torch.tensor(mean_h_s_sum, device=h_s.device), total.to(h_s.device)

    def _log_loss(self, out, spec: LossSpec, teacher: int | None, tokens, total) -> None:
        """One loss call's metrics; with several teachers, also under ``teacher/<name>/``."""
        metrics = self._metrics["train" if self.model.training else "eval"]
        for name, value in loss_metrics(out.stats, zones=bool(self.args.zones),
                                        alpha=spec.alpha if self.args.anneal else None).items():  # fmt: skip
            metrics[name].append(value)
        if teacher is not None:
            teacher_metrics(metrics, self.teacher_names[teacher], out.stats, float(tokens), float(total), float(out.loss.detach()))

    def _objective(self, spec: LossSpec, heads: Heads, inputs, num_items):
        """One call of the fused objective (or, with ``use_fused_loss: false``, the full-logits one)."""
        device = heads.mask_BT.device
        ids = inputs["completion_ids"].to(device)
        q_BT = inputs.get("sampler_logprobs")  # vLLM rollouts: truncated importance weights (sampled)
        q_BT = None if q_BT is None else q_BT.to(device)
        tensors = dict(correct=inputs.get("correct"), sampler_logprobs=q_BT, num_items=num_items)
        if self.args.use_fused_loss:
            return fused_objective(spec, heads.student, heads.teacher, heads.mask_BT, ids, reference=heads.reference,
                                   zone_entropies=kept_zone_entropies(inputs, device), **tensors)  # fmt: skip
        ref_logits = None if heads.reference is None else heads.reference.full_logits()
        return logits_objective(spec, heads.student.full_logits(), heads.teacher.full_logits(), heads.mask_BT, ids,
                                ref_logits=ref_logits, **tensors)  # fmt: skip

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            for key, value in self.sead_counters.items():
                self._metrics["train"][f"counters/{key}"] = [float(value)]
        super().log(logs, start_time)

    # ---- checkpoint state -------------------------------------------------------------------------
    def sead_state(self) -> dict[str, Any]:
        """The method's own state, saved as ``sead_state.json`` in every checkpoint (:mod:`sead.training.run_state`)."""
        return {
            "global_step": int(self.state.global_step),
            "curriculum": None if self.curriculum is None else self.curriculum.state_dict(),
            "counters": dict(self.sead_counters),
        }

    def load_sead_state(self, state: dict[str, Any]) -> None:
        if self.curriculum is not None and state.get("curriculum") is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        self.sead_counters.update(state.get("counters", {}))

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            write_state(folder, self.sead_state())

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        resume_from_checkpoint = resume_point(resume_from_checkpoint, self.args.output_dir, self)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except TeacherServerError as err:
            raise checkpoint_after_server_fault(self, self._step_end_snapshot, err) from err
