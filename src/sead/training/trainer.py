"""``OPDTrainer``: TRL's ``DistillationTrainer`` with OPD, SEAD and SG-OPD objectives.

Thin glue. Hooks overridden:

- ``_generate_and_score_completions``: curriculum draw (only open prompts), verifier grading of the
  rollouts, SG-OPD teacher mixing (picks agreed across ranks), the step's zone cuts (``zone_scope: step``);
  TRL still does the student's generation.
- ``_compute_loss`` (:mod:`sead.training.loss_glue`): one call of :func:`sead.losses.fused.fused_objective` (or the logits
  path of :mod:`sead.losses.objective`) over the student's, the teacher's and the reference's heads; with
  ``teacher_server_url`` (:mod:`sead.training.served_glue`), the served teacher's top-k log-probs and no local teacher.
- ``_save_checkpoint`` / ``train``: the method's own state (curriculum gate, counters) travels with the
  checkpoint, so a resumed run continues exactly.

Where the models live (sharded teacher and reference under FSDP2 / ZeRO-3) is :mod:`sead.training.sharding`; rollouts
beyond TRL's (SG-OPD's teacher) go through :mod:`sead.engines.sampling`; every refusal before the first step is
:mod:`sead.training.startup` (``__init__`` is built from what :func:`~sead.training.startup.check_inputs` returns).
The method logic itself lives in :mod:`sead.method` and :mod:`sead.losses`, all testable without a trainer.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import torch
from transformers.trainer_utils import get_last_checkpoint
from trl import DistillationTrainer
from trl.trainer.utils import RepeatSampler, pad

from sead.engines.hf import HFSampler
from sead.engines.sampling import Sampling, sample_ids
from sead.engines.student_vllm import SamplerLogprobs, enable_cpu_weight_sync
from sead.engines.teacher_server import TeacherServerError
from sead.engines.vllm_engine import as_sampler, choose_backend, vllm_engine
from sead.grading.rewards import RewardFunc, VerdictGrader
from sead.method.curriculum import CompetenceCurriculum
from sead.method.schedules import cosine_anneal, teacher_mix_ratio
from sead.training.config import OPDConfig
from sead.training.loss_glue import LossGlue
from sead.training.nonfinite import NonFiniteGuard
from sead.training.served_glue import ServedTeacherGlue, StepEndSnapshot
from sead.training.sharding import (
    FSDP,
    check_sharding,
    frozen_copy,
    is_partitioned,
    load_teacher_like_trl,
    prepare_frozen,
    reload_model,
)
from sead.training.startup import check_curriculum_opens, check_inputs, check_tokenizer_fits
from sead.utils.errors import SeadError

__all__ = ["OPDTrainer"]

STATE_FILE = "sead_state.json"

# TRL 1.16's generation helper (trl.models.utils.unwrap_model_for_generation) reads transformers 5's deprecated
# `model.is_gradient_checkpointing` and calls `gradient_checkpointing_disable` / `_enable` around every rollout: FutureWarnings
# per step that no setting of the user's (or sead's) causes or can avoid. Those messages, during TRL's rollout
# generation only, are silenced (OPDTrainer._generate_and_score_completions); every other warning stays.
_TRL_DEPRECATED_READS = r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is deprecated"



def teacher_mix_picks(rho: float, n: int, *, seed: int, step: int, rank: int) -> list[int]:
    """Rows of a rank's ``n`` prompts offered teacher rollouts at ``step``: ``k = floor(rho * n + u)`` of them
    (``E[k] = rho * n``), chosen by a permutation.

    ``u ~ U[0, 1)`` is drawn from ``(seed, step)`` alone, so every rank (each with the same ``n``, TRL's generation
    batch) picks the same number ``k`` and all ranks make the same teacher ``generate`` calls or none: a sharded
    teacher (ZeRO-3, FSDP2) gathers its parameters collectively, and a rank that skipped generation would leave the
    others waiting. Which rows is drawn from ``(seed, step, rank)``. A pure function of its arguments, so a resumed run
    picks the same."""
    u = torch.rand((), generator=torch.Generator().manual_seed(seed * 7919 + step * 131)).item()
    k = min(int(math.floor(rho * n + u)), n)
    if k <= 0:
        return []
    g = torch.Generator().manual_seed(seed * 7919 + step * 131 + rank + 1_000_003)
    return torch.randperm(n, generator=g)[:k].tolist()


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose shuffle order is a pure function of ``(seed, epoch)``.

    TRL's sampler draws each epoch's permutation from one generator seeded once, so a run resumed in
    epoch ``e > 0`` (a fresh sampler) would replay epoch 0's order instead of epoch ``e``'s. The
    Trainer calls ``set_epoch`` before each epoch (also on resume), which reseeds here: an interrupted
    and resumed run sees exactly the batches of the uninterrupted one.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle:
            self.generator = torch.Generator().manual_seed(int(self.seed or 0) * 1_000_003 + self.epoch)
        return super().__iter__()


class OPDTrainer(LossGlue, ServedTeacherGlue, DistillationTrainer):
    """On-policy distillation trainer: vanilla OPD, SEAD and SG-OPD (see ``OPDConfig.method``).

    Args:
        model, teacher_model, train_dataset, eval_dataset, processing_class, callbacks, optimizers,
        peft_config: as in ``trl.DistillationTrainer``. The dataset needs a ``prompt`` column; the
            verifier needs ``args.answer_column`` (default ``answer``); the curriculum needs
            ``args.difficulty_column``.
        args: an :class:`OPDConfig`.
        reward_funcs: verifier rewards as in TRL's GRPO: callables ``f(prompts, completions, **columns)``
            returning one float per completion. A rollout is correct when their sum is at least
            ``args.correct_threshold``. Default: math-verify against ``args.answer_column``.
    """

    _tag_names = ["trl", "distillation", "sead"]
    _name = "OPD"

    def __init__(
        self,
        model,
        teacher_model=None,
        args: OPDConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        reward_funcs: RewardFunc | list[RewardFunc] | None = None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        if args is None:
            args = OPDConfig(output_dir="runs/opd")
        checked = check_inputs(model, teacher_model, args, train_dataset, reward_funcs, processing_class)
        model, teacher_model, teacher_source = checked.model, checked.teacher_model, checked.teacher_source
        self.shared_rows = checked.shared_rows
        own_teacher = None
        if self.shared_rows is not None and teacher_model is not None:
            # TRL refuses different embedding sizes; sead compares the shared rows (one tokenizer, checked): the
            # teacher is loaded here as TRL would load it and prepared after TRL's __init__ (_attach_teacher).
            own_teacher, teacher_model = load_teacher_like_trl(teacher_model, args), None
        self.grader = VerdictGrader(checked.reward_funcs, args.grader_timeout, args.correct_threshold)

        # The frozen initial student (SG-OPD reference), copied before training changes anything.
        ref = None
        if args.sign_gate and args.use_reference_model and not isinstance(model, str) and not is_partitioned(model):
            ref = frozen_copy(model)

        try:
            super().__init__(
                model=model,
                teacher_model=teacher_model,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                peft_config=peft_config,
            )
        except ValueError as err:
            if isinstance(err, SeadError) or "vocab_size" not in str(err):
                raise
            raise SeadError(" ".join(str(err).split())) from err
        if own_teacher is not None:
            self._attach_teacher(own_teacher)
        self.sampler_logprobs = None
        if args.use_vllm:
            enable_cpu_weight_sync(self.vllm_generation)  # vLLM's CPU backend: TRL's weight sync as vLLM reloads
            if args.estimator == "sampled" and args.vllm_importance_sampling_correction:
                self.sampler_logprobs = SamplerLogprobs()  # the engine's q(y_t): importance weights in the loss
                self.sampler_logprobs.attach(self.vllm_generation)
        check_tokenizer_fits(self.model, self._tokenizer)
        self._check_prompt_lengths()
        self._setup_output_transforms()  # before sharding: the check runs each model's forward
        self._prepare_frozen_models(ref)

        self.curriculum = None
        if args.curriculum:
            try:
                self.curriculum = CompetenceCurriculum(
                    self.train_dataset[args.difficulty_column],
                    threshold=args.competence_threshold,
                    window=self.competence_window(),
                    num_buckets=args.curriculum_num_buckets,
                    full_open_fraction=args.curriculum_full_open_fraction,
                    seed=args.seed,
                    column=args.difficulty_column,
                )
            except ValueError as err:
                raise SeadError(str(err)) from err
            check_curriculum_opens(
                self.curriculum, self.planned_total_steps(), args.difficulty_column, args.curriculum_num_buckets
            )
        self.teacher_server = self._connect_teacher_server() if args.teacher_server_url else None
        if args.teacher_mixing and self.teacher_server is None:
            self.teacher_llm = self._make_teacher_engine(teacher_source)
        else:
            self.teacher_llm = None
        self.grade_counter = checked.grade_counter
        self.sead_counters = {"nonfinite_skipped_steps": 0, "grader_timeouts": 0, "grader_errors": 0}
        self._nonfinite_reason: str | None = None
        self.add_callback(NonFiniteGuard(self))
        self._step_end_snapshot = None
        if self.teacher_server is not None:
            self._step_end_snapshot = StepEndSnapshot(self)
            self.add_callback(self._step_end_snapshot)

    def _attach_teacher(self, teacher) -> None:
        """The teacher as TRL's ``__init__`` prepares it (DeepSpeed: ``prepare_deepspeed``; otherwise
        ``prepare_model(evaluation_mode=True)``), for a teacher sead loaded itself."""
        from trl.models.utils import prepare_deepspeed

        if self.is_deepspeed_enabled:
            self.teacher_model = prepare_deepspeed(teacher, self.accelerator)
        else:
            self.teacher_model = self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _prepare_frozen_models(self, ref) -> None:
        """Teacher and reference sharded as the launcher shards the student (:mod:`sead.training.sharding`). TRL prepared the
        teacher already: with DeepSpeed (stage 3 partitions it), otherwise with ``prepare_model(evaluation_mode=True)``,
        which under FSDP neither wraps nor shards it: sharded here."""
        check_sharding(self.args, self.accelerator.distributed_type,
                       plugin=getattr(self.accelerator.state, "fsdp_plugin", None))
        if self.teacher_model is not None and str(self.accelerator.distributed_type).endswith(FSDP):
            self.teacher_model = prepare_frozen(self.teacher_model, self.accelerator)
        self.ref_model = None
        if self.args.sign_gate and self.args.use_reference_model:
            if ref is None:
                student = self.accelerator.unwrap_model(self.model)
                ref = frozen_copy(student, load=lambda: reload_model(student, self.args))
            self.ref_model = prepare_frozen(ref, self.accelerator)

    def _make_teacher_engine(self, source: str | None):
        """A vLLM engine for the frozen teacher's SG-OPD rollouts, or ``None`` (HF ``generate``)."""
        if choose_backend(self.args.teacher_generation_backend, field="teacher_generation_backend") != "vllm":
            return None
        if not source:
            raise SeadError(
                "teacher_generation_backend='vllm' needs the teacher's hub id or local path to build its engine: "
                "pass `teacher_model` as a string (or a model loaded with `from_pretrained`), or set "
                "`teacher_generation_backend: hf`."
            )
        return vllm_engine(
            source,
            dtype="bfloat16",  # the teacher is frozen: no weight sync, so any dtype vLLM runs would do
            gpu_memory_utilization=self.args.teacher_vllm_gpu_memory_utilization,
            # several training processes: each holds an engine of its own, launched by them (as TRL's colocate mode)
            distributed_executor_backend="external_launcher" if self.accelerator.num_processes > 1 else None,
            max_model_len=self.prompt_length_limit() and self.prompt_length_limit() + self.max_completion_length,
            seed=self.args.seed + self.accelerator.process_index,
        )

    # ---- checks ---------------------------------------------------------------------------------
    def prompt_length_limit(self) -> int | None:
        """Longest prompt (in tokens) a rollout can start from: ``args.max_prompt_length`` when set, else the
        student's context (``max_position_embeddings``, and the tokenizer's ``model_max_length`` when it is a
        real limit) minus ``max_completion_length``. ``None``: no known limit."""
        if self.args.max_prompt_length is not None:
            return int(self.args.max_prompt_length)
        contexts = []
        ctx = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if isinstance(ctx, int) and ctx > 0:
            contexts.append(ctx)
        tok_max = getattr(self._tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < 10**8:
            contexts.append(tok_max)
        if not contexts:
            return None
        limit = min(contexts) - int(self.max_completion_length or 0)
        if limit < 1:
            raise SeadError(
                f"max_completion_length ({self.max_completion_length}) leaves no room for a prompt in the "
                f"student's context of {min(contexts)} tokens. Lower max_completion_length."
            )
        return limit

    def _check_prompt_lengths(self) -> None:
        """Drop prompts longer than :meth:`prompt_length_limit` (with a warning); refuse a dataset where every
        prompt is too long. Map-style datasets only (a stream cannot be checked up front)."""
        ds = self.train_dataset
        if ds is None or not hasattr(ds, "__len__") or not hasattr(ds, "select"):
            return
        limit = self.prompt_length_limit()
        if limit is None:
            return
        lengths: list[int] = []
        try:
            for start in range(0, len(ds), 1024):
                prompts = ds[start : start + 1024]["prompt"]
                ids, _, _ = self._tokenize_prompts(list(prompts))
                lengths.extend(len(x) for x in ids)
        except Exception as err:  # prompts this check cannot tokenize alone (e.g. images): TRL checks them later
            warnings.warn(f"sead: prompt lengths not checked ({type(err).__name__}: {err})", stacklevel=2)
            return
        keep = [i for i, n in enumerate(lengths) if n <= limit]
        source = (
            "max_prompt_length"
            if self.args.max_prompt_length is not None
            else "the student's context minus max_completion_length"
        )
        if not keep:
            raise SeadError(
                f"every prompt of the training dataset is longer than {limit} tokens ({source}); the shortest has "
                f"{min(lengths)}. Shorten the prompts, raise max_prompt_length, or lower max_completion_length."
            )
        if len(keep) < len(ds):
            warnings.warn(
                f"sead: dropped {len(ds) - len(keep)} of {len(ds)} training prompts longer than {limit} tokens "
                f"({source}).",
                stacklevel=2,
            )
            self.train_dataset = ds.select(keep)

    def competence_window(self) -> int:
        """``competence_window``, or (``None``) one optimizer step's rollouts over all processes, at least 64."""
        if self.args.competence_window is not None:
            return int(self.args.competence_window)
        per_step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        return max(64, per_step * self.accelerator.num_processes)

    # ---- schedule positions -----------------------------------------------------------------------
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

    def current_alpha(self) -> float:
        if not self.args.anneal:
            return 0.0
        return cosine_anneal(
            self.state.global_step, self.total_steps, self.args.alpha_start, self.args.alpha_end
        )

    def current_fkl_zone_alpha(self) -> float:
        """The FKL zone's forward-KL weight: 1 (always forward KL), or with the ``fkl_zone_anneal`` ablation a cosine
        from 1 to ``alpha_end``."""
        if not (self.args.fkl_zone_anneal and self.args.anneal and self.args.zones):
            return 1.0
        return cosine_anneal(self.state.global_step, self.total_steps, 1.0, self.args.alpha_end)

    def current_rho(self) -> float:
        if not self.args.teacher_mixing:
            return 0.0
        return teacher_mix_ratio(
            self.state.global_step,
            self.total_steps,
            self.args.teacher_mix_rho0,
            self.args.teacher_mix_phase_fraction,
        )

    def _get_train_sampler(self, dataset=None):
        # Same batches as TRL's sampler, but each epoch's order depends only on (seed, epoch): exact resume.
        dataset = self.train_dataset if dataset is None else dataset
        generation_batch_size = (
            self.args.per_device_train_batch_size
            * self.accelerator.num_processes
            * self.args.gradient_accumulation_steps
        )
        return EpochSeededRepeatSampler(
            data_source=dataset,
            mini_repeat_count=1,
            batch_size=generation_batch_size,
            repeat_count=self.args.gradient_accumulation_steps,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    # ---- rollouts -------------------------------------------------------------------------------
    def _curriculum_inputs(self, local_batch: int) -> list[dict[str, Any]]:
        """Replace the dataloader's rows by a draw from the open pool (same global draw on every rank)."""
        n_proc, rank = self.accelerator.num_processes, self.accelerator.process_index
        indices = self.curriculum.draw(self.state.global_step, self.total_steps, local_batch * n_proc)
        mine = indices[rank * local_batch : (rank + 1) * local_batch]
        return [self.train_dataset[i] for i in mine]

    def _grade(self, inputs: list[dict[str, Any]], completions: list[str]) -> list[bool]:
        return self.grader.grade(inputs, completions)

    @property
    def reward_funcs(self) -> list[RewardFunc]:
        return self.grader.funcs

    @reward_funcs.setter
    def reward_funcs(self, funcs) -> None:
        self.grader.funcs = list(funcs) if isinstance(funcs, (list, tuple)) else [funcs]

    def _decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        rows = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask)]
        return self.processing_class.batch_decode(rows, skip_special_tokens=True)

    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        if training and self.curriculum is not None:
            inputs = self._curriculum_inputs(len(inputs))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TRL_DEPRECATED_READS, category=FutureWarning)
            output = super()._generate_and_score_completions(inputs)
        if self.sampler_logprobs is not None:
            q_BT = self.sampler_logprobs.take(output["completion_ids"].shape[1], output["completion_ids"].device)
            if q_BT is not None:
                output["sampler_logprobs"] = q_BT
        if self.reward_funcs:
            output = self._score_completions(inputs, output, training)
        if training and self.args.zones and self.args.zone_scope == "step":
            self._step_zone_cuts(output)  # after teacher mixing: the step's final rollouts
        return output

    def _score_completions(self, inputs, output, training: bool):
        """Verdicts of the rollouts, SG-OPD's teacher mixing, and their metrics (pass rate, curriculum window)."""
        correct = self._grade(inputs, self._decode(output["completion_ids"], output["completion_mask"]))
        mixed = [False] * len(correct)
        device = self.accelerator.device
        multi = self.accelerator.num_processes > 1
        if training and self.args.teacher_mixing:
            output, correct, mixed = self._mix_teacher_rollouts(inputs, output, correct)
            # every rank joins this collective, mixed or not: the global token count may have changed
            loss_mask = output["completion_mask"]
            if output.get("tool_mask") is not None:
                loss_mask = loss_mask * output["tool_mask"]
            local = loss_mask.sum().reshape(1)
            output["num_items_in_batch"] = self.accelerator.gather(local).sum() if multi else local.sum()
        output["correct"] = torch.tensor(correct, dtype=torch.bool, device=device)
        mode = "train" if training else "eval"
        # Grader faults of this step, from the default verifier's counter and from user reward functions.
        grades = self.grade_counter.reset()
        faults = self.grader.take_faults()
        timeouts, errors = grades["timeouts"] + faults["grader_timeouts"], grades["errors"] + faults["grader_errors"]
        own = [c for c, m in zip(correct, mixed) if not m]  # student rollouts only: competence and pass rate
        counts = torch.tensor(
            [float(sum(own)), float(len(own)), float(sum(mixed)), float(len(mixed)), timeouts, errors],
            dtype=torch.float64 if device.type == "cpu" else torch.float32,
            device=device,
        )
        if multi:
            counts = self.accelerator.reduce(counts, reduction="sum")
        self.sead_counters["grader_timeouts"] += int(counts[4].item())
        self.sead_counters["grader_errors"] += int(counts[5].item())
        if counts[1] > 0:
            self._metrics[mode]["rollout/pass_rate"].append((counts[0] / counts[1]).item())
        if self.args.teacher_mixing:
            self._metrics[mode]["sgopd/teacher_mixed_frac"].append((counts[2] / counts[3].clamp(min=1)).item())
            self._metrics[mode]["sgopd/rho"].append(self.current_rho())
        if training and self.curriculum is not None:
            # verdicts of every rank's student rollouts, in rank order: the same window on every rank
            flags = torch.tensor(
                [[float(c), float(m)] for c, m in zip(correct, mixed)], dtype=torch.float32, device=device
            ).reshape(-1, 2)
            flags = self.accelerator.gather(flags) if multi else flags
            self.curriculum.update([bool(c) for c, m in flags.tolist() if not m])
            step, total = self.state.global_step, self.total_steps
            self._metrics[mode]["curriculum/gate"].append(self.curriculum.gate(step, total))
            self._metrics[mode]["curriculum/open_pool"].append(
                float(self.curriculum.open_indices(step, total).numel())
            )
            self._metrics[mode]["curriculum/bucket"].append(float(self.curriculum.bucket))
        return output

    @torch.no_grad()
    def _mix_teacher_rollouts(self, inputs, output, correct):
        """SG-OPD phased teacher sampling: for a fraction rho of the prompts, G teacher rollouts; the first one
        the verifier accepts replaces the student's rollout. No endorsed rollout: keep the student's."""
        n = len(inputs)
        picks = teacher_mix_picks(
            self.current_rho(), n, seed=self.args.seed, step=self.state.global_step, rank=self.accelerator.process_index
        )
        mixed = [False] * n
        if not picks:  # the same on every rank (teacher_mix_picks): no rank generates alone
            return output, correct, mixed
        G = self.args.teacher_num_generations
        prompt_ids, prompt_mask = output["prompt_ids"][picks], output["prompt_mask"][picks]
        seed = self.args.seed * 7919 + self.state.global_step * 131 + self.accelerator.process_index
        if self.teacher_server is not None:
            candidates = self._served_teacher_rollouts(prompt_ids, prompt_mask, G, seed)
        else:
            if self.teacher_llm is not None:  # a vLLM engine (or any sampler of sead.engines.sampling)
                # vLLM draws from its own generator: seeded from (seed, step, rank) so a resumed run draws the same
                sampler = as_sampler(self.teacher_llm)
            else:  # the HF path draws from torch's global stream, which the checkpoint restores
                teacher = self.accelerator.unwrap_model(self.teacher_model)
                sampler = HFSampler(
                    teacher, pad_token_id=self._tokenizer.pad_token_id, eos_token_ids=self.eos_token_ids,
                    batch_size=self.args.teacher_generation_batch_size,  # bounded KV cache; the same calls on every rank
                    vocab_rows=self.shared_rows,  # a padded teacher never samples a row the student lacks
                )  # fmt: skip
                seed = None
            top_p, top_k = self.args.teacher_sampling_filters()
            sampling = Sampling(
                n=G, max_new_tokens=self.max_completion_length, temperature=self.args.teacher_temperature,
                top_p=top_p, top_k=top_k, seed=seed,
            )  # fmt: skip
            candidates = sample_ids(
                sampler, prompt_ids, sampling, prompt_mask=prompt_mask, eos_token_ids=self.eos_token_ids,
                pad_token_id=self._tokenizer.pad_token_id,
            )  # fmt: skip
        texts = self.processing_class.batch_decode(candidates, skip_special_tokens=True)
        rows = [inputs[i] for i in picks for _ in range(G)]
        verdicts = self._grade(rows, texts)
        completions = [
            ids[m.bool()].tolist() for ids, m in zip(output["completion_ids"], output["completion_mask"])
        ]
        for j, i in enumerate(picks):
            for k in range(G):
                if verdicts[j * G + k]:
                    completions[i] = candidates[j * G + k]
                    correct[i], mixed[i] = True, True
                    break
        if any(mixed):
            device = self.accelerator.device
            ids = [torch.tensor(c, dtype=torch.long) for c in completions]
            output["completion_ids"] = pad(
                ids,
                padding_value=self._tokenizer.pad_token_id,
                padding_side="right",
                pad_to_multiple_of=self.pad_to_multiple_of,
            ).to(device)
            output["completion_mask"] = pad(
                [torch.ones_like(c) for c in ids],
                padding_value=0,
                padding_side="right",
                pad_to_multiple_of=self.pad_to_multiple_of,
            ).to(device)
            if output.get("tool_mask") is not None:
                # a teacher rollout has no tool results: all its tokens are trained on; other rows keep theirs
                rows = [
                    torch.ones(len(c), dtype=torch.long) if m else t[: len(c)].cpu()
                    for c, m, t in zip(completions, mixed, output["tool_mask"])
                ]
                output["tool_mask"] = pad(rows, padding_value=1, padding_side="right").to(device)
            if output.get("sampler_logprobs") is not None:
                # a teacher rollout has no student-sampler log-probs (NaN: weight 1); other rows keep theirs
                width = output["completion_ids"].shape[1]
                q_BT = torch.full((len(ids), width), float("nan"), device=device)
                for i, (m, q) in enumerate(zip(mixed, output["sampler_logprobs"])):
                    if not m:
                        n = min(width, q.shape[0])
                        q_BT[i, :n] = q[:n]
                output["sampler_logprobs"] = q_BT
        if self.log_completions:  # every rank is here (the same picks on every rank): the gather is safe
            self._log_mixed_completions(output)
        return output, correct, mixed

    def _log_mixed_completions(self, output) -> None:
        """``log_completions``: TRL logged the student's rollouts before teacher mixing; replace the step's logged
        completions (all ranks', in rank order) with those trained on."""
        from accelerate.utils import gather_object

        texts = gather_object(self._decode(output["completion_ids"], output["completion_mask"]))
        logged = self._logs["completion"]
        k = min(len(texts), len(logged))  # TRL's deque may hold fewer than a step's rollouts
        for _ in range(k):
            logged.pop()
        logged.extend(texts[len(texts) - k :])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            for key, value in self.sead_counters.items():
                self._metrics[mode][f"counters/{key}"] = [float(value)]
        super().log(logs, start_time)

    # ---- checkpoint state -------------------------------------------------------------------------
    def sead_state(self) -> dict[str, Any]:
        """The method's own state, saved as ``sead_state.json`` in every checkpoint. Everything else a resumed
        run needs is either saved by the Trainer (weights, optimizer, scheduler, RNG states, step) or a pure
        function of ``(seed, global_step)`` (curriculum draws, teacher-mix picks, anneal and rho schedules,
        the dataloader's order per epoch)."""
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
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(self.sead_state(), f)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise SeadError(f"no checkpoint to resume from in {self.args.output_dir}")
        if isinstance(resume_from_checkpoint, str):
            if not os.path.isdir(resume_from_checkpoint):
                raise SeadError(f"resume_from_checkpoint: {resume_from_checkpoint} is not a directory")
            path = os.path.join(resume_from_checkpoint, STATE_FILE)
            if os.path.exists(path):
                try:
                    with open(path) as f:
                        state = json.load(f)
                except (OSError, ValueError) as err:
                    raise SeadError(f"{path} could not be read ({err}); the checkpoint is damaged.") from err
                self.load_sead_state(state)
            elif self.curriculum is not None:
                warnings.warn(
                    f"sead: {resume_from_checkpoint} has no {STATE_FILE}: the curriculum restarts from its first "
                    "bucket (the rest of the training state is restored).",
                    stacklevel=2,
                )
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except TeacherServerError as err:
            raise self._checkpoint_after_server_fault(err) from err
