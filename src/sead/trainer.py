"""``OPDTrainer``: TRL's ``DistillationTrainer`` with OPD, SEAD and SG-OPD objectives.

Thin glue. Hooks overridden:

- ``_generate_and_score_completions``: curriculum draw (only open prompts), verifier grading of the
  rollouts, SG-OPD teacher mixing; TRL still does the student's generation.
- ``_compute_loss``: the objective (fused chunked loss or the logits path of ``sead.objective``).
- ``_save_checkpoint`` / ``train``: the method's own state (curriculum gate, counters) travels with the
  checkpoint, so a resumed run continues exactly.

The method logic itself lives in ``zones``, ``schedules``, ``gates``, ``curriculum``, ``fused`` and
``objective``, all testable without a trainer.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import DistillationTrainer
from trl.trainer.utils import pad

from .config import OPDConfig
from .curriculum import CompetenceCurriculum
from .errors import NonFiniteError, SeadError
from .fused import fused_sead_loss
from .objective import logits_objective
from .schedules import cosine_anneal, teacher_mix_ratio
from .verify import GradeCounter, make_math_reward

__all__ = ["OPDTrainer"]

STATE_FILE = "sead_state.json"

RewardFunc = Callable[..., list[float]]


def _default_reward(answer_column: str, timeout: float, counter: GradeCounter) -> RewardFunc:
    """math-verify on ``\\boxed{}`` against the dataset's answer column (the project's one grader)."""
    grade = make_math_reward(timeout_seconds=timeout, counter=counter)

    def math_verify(prompts, completions, **columns):
        if answer_column not in columns:
            raise SeadError(f"the verifier needs the `{answer_column}` column in the training dataset")
        return grade(prompts=prompts, completions=completions, answer=columns[answer_column])

    return math_verify


def check_dataset(dataset, args: OPDConfig, needs_answer: bool) -> None:
    """Refuse, before any step, a dataset the run cannot use (missing columns, empty)."""
    if dataset is None:
        raise SeadError("train_dataset is required: a dataset with a `prompt` column.")
    columns = getattr(dataset, "column_names", None) or []
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise SeadError("the training dataset is empty: it needs at least one row with a `prompt`.")
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


class _SkipNonFiniteStep(TrainerCallback):
    """With ``nonfinite_policy="skip"``: drop the whole optimizer step (no update) after a non-finite micro-step."""

    def __init__(self, trainer: OPDTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        t = self.trainer
        flag = torch.tensor(float(t._skip_step), device=t.accelerator.device)
        if t.accelerator.num_processes > 1:
            flag = t.accelerator.reduce(flag, reduction="sum")
        if flag.item() > 0:
            # Optimizers skip parameters whose grad is None: no update, no moment change.
            t.model.zero_grad(set_to_none=True)
            t.sead_counters["nonfinite_skipped_steps"] += 1
        t._skip_step = False


class OPDTrainer(DistillationTrainer):
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
        if not isinstance(args, OPDConfig):
            raise SeadError(f"args must be an OPDConfig, got {type(args).__name__}")
        needs_verdict = bool(args.curriculum or args.sign_gate or args.teacher_mixing)
        columns = getattr(train_dataset, "column_names", None) or []
        user_rewards = reward_funcs is not None
        grade_counter = GradeCounter()
        if not user_rewards and (needs_verdict or args.answer_column in columns):
            reward_funcs = [_default_reward(args.answer_column, args.grader_timeout, grade_counter)]
        check_dataset(train_dataset, args, needs_answer=needs_verdict and not user_rewards)
        if reward_funcs is None:
            reward_funcs = []
        self.reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]

        # The frozen initial student (SG-OPD reference), copied before training changes anything.
        ref = None
        if args.sign_gate and args.use_reference_model and not isinstance(model, str):
            ref = copy.deepcopy(model).eval().requires_grad_(False)

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
        self._check_tokenizer_fits()
        if args.sign_gate and args.use_reference_model:
            if ref is None:
                ref = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval().requires_grad_(False)
            self.ref_model = self.accelerator.prepare_model(ref, evaluation_mode=True)
        else:
            self.ref_model = None

        self.curriculum = None
        if args.curriculum:
            self.curriculum = CompetenceCurriculum(
                train_dataset[args.difficulty_column],
                threshold=args.competence_threshold,
                window=args.competence_window,
                num_buckets=args.curriculum_num_buckets,
                full_open_fraction=args.curriculum_full_open_fraction,
                seed=args.seed,
                column=args.difficulty_column,
            )
        self.grade_counter = grade_counter
        self.sead_counters = {"nonfinite_skipped_steps": 0, "grader_timeouts": 0, "grader_errors": 0}
        self._skip_step = False
        self.add_callback(_SkipNonFiniteStep(self))

    # ---- checks ---------------------------------------------------------------------------------
    def _check_tokenizer_fits(self) -> None:
        student_vocab = self.model.config.get_text_config().vocab_size
        if len(self._tokenizer) > student_vocab:
            raise SeadError(
                f"the tokenizer has {len(self._tokenizer)} tokens but the student's vocab_size is {student_vocab}: "
                "they do not belong together. Use the student's own tokenizer."
            )

    # ---- schedule positions -----------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return max(int(self.state.max_steps or self.args.max_steps or 0), 0)

    def current_alpha(self) -> float:
        if not self.args.anneal:
            return 0.0
        return cosine_anneal(
            self.state.global_step, self.total_steps, self.args.alpha_start, self.args.alpha_end
        )

    def current_rho(self) -> float:
        if not self.args.teacher_mixing:
            return 0.0
        return teacher_mix_ratio(
            self.state.global_step,
            self.total_steps,
            self.args.teacher_mix_rho0,
            self.args.teacher_mix_phase_fraction,
        )

    # ---- rollouts -------------------------------------------------------------------------------
    def _curriculum_inputs(self, local_batch: int) -> list[dict[str, Any]]:
        """Replace the dataloader's rows by a draw from the open pool (same global draw on every rank)."""
        n_proc, rank = self.accelerator.num_processes, self.accelerator.process_index
        indices = self.curriculum.draw(self.state.global_step, self.total_steps, local_batch * n_proc)
        mine = indices[rank * local_batch : (rank + 1) * local_batch]
        return [self.train_dataset[i] for i in mine]

    def _grade(self, inputs: list[dict[str, Any]], completions: list[str]) -> list[bool]:
        prompts = [x["prompt"] for x in inputs]
        keys = [k for k in inputs[0] if k not in ("prompt", "completion")]
        columns = {k: [x[k] for x in inputs] for k in keys}
        total = [0.0] * len(completions)
        for func in self.reward_funcs:
            try:
                rewards = func(prompts=prompts, completions=completions, **columns)
            except SeadError:
                raise
            except Exception as err:  # a broken reward must not kill a long run; it is counted
                self.sead_counters["grader_errors"] += len(completions)
                print(
                    f"[sead] reward function {getattr(func, '__name__', func)} failed: {err!r}; counted as 0"
                )
                rewards = [0.0] * len(completions)
            total = [
                t + (0.0 if r is None or not math.isfinite(r) else float(r)) for t, r in zip(total, rewards)
            ]
        return [t >= self.args.correct_threshold for t in total]

    def _decode(self, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
        rows = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask)]
        return self.processing_class.batch_decode(rows, skip_special_tokens=True)

    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        if training and self.curriculum is not None:
            inputs = self._curriculum_inputs(len(inputs))
        output = super()._generate_and_score_completions(inputs)
        if not self.reward_funcs:
            return output
        correct = self._grade(inputs, self._decode(output["completion_ids"], output["completion_mask"]))
        mixed = [False] * len(correct)
        if training and self.args.teacher_mixing:
            output, correct, mixed = self._mix_teacher_rollouts(inputs, output, correct)
        device = self.accelerator.device
        correct_t = torch.tensor(correct, dtype=torch.bool, device=device)
        output["correct"] = correct_t
        mode = "train" if training else "eval"
        # student rollouts only, gathered over ranks: the competence signal and the pass-rate metric
        own = torch.tensor(
            [c for c, m in zip(correct, mixed) if not m] or [], dtype=torch.float, device=device
        )
        counts = torch.tensor(
            [own.sum().item(), float(own.numel()), float(sum(mixed)), float(len(mixed))], device=device
        )
        counts = (
            self.accelerator.reduce(counts, reduction="sum") if self.accelerator.num_processes > 1 else counts
        )
        if counts[1] > 0:
            self._metrics[mode]["rollout/pass_rate"].append((counts[0] / counts[1]).item())
        if self.args.teacher_mixing:
            self._metrics[mode]["sgopd/teacher_mixed_frac"].append(
                (counts[2] / counts[3].clamp(min=1)).item()
            )
            self._metrics[mode]["sgopd/rho"].append(self.current_rho())
        if training and self.curriculum is not None:
            own_all = self.accelerator.gather(own) if self.accelerator.num_processes > 1 else own
            self.curriculum.update([bool(x) for x in own_all.tolist()])
            self._metrics[mode]["curriculum/gate"].append(
                self.curriculum.gate(self.state.global_step, self.total_steps)
            )
            self._metrics[mode]["curriculum/open_pool"].append(
                float(self.curriculum.open_indices(self.state.global_step, self.total_steps).numel())
            )
            self._metrics[mode]["curriculum/bucket"].append(float(self.curriculum.bucket))
        return output

    @torch.no_grad()
    def _mix_teacher_rollouts(self, inputs, output, correct):
        """SG-OPD phased teacher sampling: for a fraction rho of the prompts, G teacher rollouts; the first one
        the verifier accepts replaces the student's rollout. No endorsed rollout: keep the student's."""
        rho = self.current_rho()
        n = len(inputs)
        g = torch.Generator().manual_seed(
            self.args.seed * 7919 + self.state.global_step * 131 + self.accelerator.process_index
        )
        n_pick = int(math.floor(rho * n + torch.rand((), generator=g).item()))
        mixed = [False] * n
        if n_pick == 0:
            return output, correct, mixed
        picks = torch.randperm(n, generator=g)[:n_pick].tolist()
        G = self.args.teacher_num_generations
        prompt_ids, prompt_mask = output["prompt_ids"][picks], output["prompt_mask"][picks]
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        gen = GenerationConfig(
            max_new_tokens=self.max_completion_length,
            do_sample=True,
            temperature=self.args.teacher_temperature,
            top_k=0,
            top_p=1.0,
            pad_token_id=self._tokenizer.pad_token_id,
            eos_token_id=self.eos_token_ids,
        )
        seqs = teacher.generate(
            input_ids=prompt_ids.repeat_interleave(G, 0),
            attention_mask=prompt_mask.repeat_interleave(G, 0),
            generation_config=gen,
        )[:, prompt_ids.shape[1] :]
        candidates = [self._trim_at_eos(row) for row in seqs.tolist()]
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
                ids, padding_value=self._tokenizer.pad_token_id, padding_side="right"
            ).to(device)
            output["completion_mask"] = pad(
                [torch.ones_like(c) for c in ids], padding_value=0, padding_side="right"
            ).to(device)
        # every rank joins this collective, mixed or not: the global token count changed
        output["num_items_in_batch"] = self.accelerator.gather(output["completion_mask"].sum()).sum()
        return output, correct, mixed

    def _trim_at_eos(self, ids: list[int]) -> list[int]:
        for pos, tok in enumerate(ids):
            if tok in self.eos_token_ids:
                return ids[: pos + 1]
        return (
            [t for t in ids if t != self._tokenizer.pad_token_id]
            if self._tokenizer.pad_token_id not in self.eos_token_ids
            else ids
        )

    # ---- loss -----------------------------------------------------------------------------------
    def _loss_num_items(self, num_items_in_batch):
        """Global normaliser: TRL's global valid-token count (per process), times (1 - skip_fraction) for
        ``loss_normalization="kept"`` with zones: the expected number of kept tokens."""
        if num_items_in_batch is None:
            return None
        if self.args.zones and self.args.loss_normalization == "kept":
            return num_items_in_batch * max(1.0 - self.args.skip_fraction, 1e-6)
        return num_items_in_batch

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        args = self.args
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask_BT = inputs["completion_mask"]
        logits_to_keep = inputs["completion_ids"].size(1)
        h_s = self._get_last_hidden_state(unwrapped_student, input_ids, attention_mask, logits_to_keep)
        self.teacher_model.eval()
        unwrapped_teacher = self.accelerator.unwrap_model(self.teacher_model)
        with torch.no_grad():
            h_t = self._forward_redirection(
                self.teacher_model,
                unwrapped_teacher,
                self._get_last_hidden_state,
                unwrapped_teacher,
                input_ids,
                attention_mask,
                logits_to_keep,
            )
        head_s, head_t = unwrapped_student.get_output_embeddings(), unwrapped_teacher.get_output_embeddings()
        alpha = self.current_alpha()
        common = {
            "alpha": alpha,
            "zones": bool(args.zones),
            "teacher_quantile": args.teacher_quantile,
            "skip_fraction": args.skip_fraction,
            "entropy_top_k": args.entropy_top_k,
            "temperature": self.temperature,
            "normalize": args.loss_normalization,
            "num_items": self._loss_num_items(num_items_in_batch),
        }
        try:
            self._check_finite(h_s, h_t, mask_BT)
            if args.estimator == "full" and not args.sign_gate and args.use_fused_loss:
                out = fused_sead_loss(
                    h_s,
                    head_s.weight,
                    h_t.to(head_t.weight.device),
                    head_t.weight,
                    mask_BT,
                    student_bias=head_s.bias,
                    teacher_bias=head_t.bias,
                    chunk_size=args.loss_chunk_size,
                    **common,
                )
            else:
                ref_logits = None
                if args.sign_gate and self.ref_model is not None:
                    unwrapped_ref = self.accelerator.unwrap_model(self.ref_model)
                    with torch.no_grad():
                        h_ref = self._get_last_hidden_state(
                            unwrapped_ref, input_ids, attention_mask, logits_to_keep
                        )
                        ref_logits = unwrapped_ref.get_output_embeddings()(h_ref).float()
                out = logits_objective(
                    head_s(h_s).float(),
                    head_t(h_t).float(),
                    mask_BT,
                    inputs["completion_ids"],
                    estimator=args.estimator,
                    estimator_top_k=args.estimator_top_k,
                    sign_gate=bool(args.sign_gate),
                    correct=inputs.get("correct"),
                    ref_logits=ref_logits,
                    lambda_consensus=args.lambda_consensus,
                    lambda_conflict=args.lambda_conflict,
                    **common,
                )
            if not torch.isfinite(out.loss):
                raise NonFiniteError(f"the loss is {out.loss.item()} at step {self.state.global_step}")
        except (NonFiniteError, ValueError) as err:
            if not ("NaN" in str(err) or "inf" in str(err) or isinstance(err, NonFiniteError)):
                raise
            if args.nonfinite_policy == "error":
                raise NonFiniteError(
                    f"non-finite values at step {self.state.global_step}: {err} The step was not applied. "
                    "Lower the learning rate, check the teacher, or set `nonfinite_policy: skip` to drop such steps."
                ) from err
            self._skip_step = True
            zero = (h_s * 0).sum()
            return zero, zero.detach(), mask_BT.sum()
        self._log_loss_stats(out.stats, alpha)
        n_valid = mask_BT.sum()
        return (
            out.loss,
            torch.tensor(out.stats["mean_h_s"] * out.stats["num_valid"], device=h_s.device),
            n_valid,
        )

    @staticmethod
    def _check_finite(h_s, h_t, mask_BT) -> None:
        valid = mask_BT.bool()
        if not torch.isfinite(h_s.detach()[valid]).all():
            raise NonFiniteError("student hidden states contain NaN or inf")
        if not torch.isfinite(h_t[valid]).all():
            raise NonFiniteError("teacher hidden states contain NaN or inf")

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

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            grades = self.grade_counter.reset()
            self.sead_counters["grader_timeouts"] += grades["timeouts"]
            self.sead_counters["grader_errors"] += grades["errors"]
            for key, value in self.sead_counters.items():
                self._metrics[mode][f"counters/{key}"] = [float(value)]
        super().log(logs, start_time)

    # ---- checkpoint state -------------------------------------------------------------------------
    def sead_state(self) -> dict[str, Any]:
        return {
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
                with open(path) as f:
                    self.load_sead_state(json.load(f))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
