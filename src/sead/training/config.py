"""``OPDConfig``: TRL's ``DistillationConfig`` plus the knobs of vanilla OPD, SEAD and SG-OPD."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trl import DistillationConfig

from sead.components.teachers import parse_teachers
from sead.losses.spec import ESTIMATORS, GateSpec, LossSpec, ZoneSpec
from sead.method.curriculum import THRESHOLD_MODES, CompetenceCurriculum
from sead.method.schedules import StepSchedules
from sead.training.inherited import check_inherited_fields
from sead.utils.errors import SeadError

METHODS = ("opd", "sead", "sgopd")

# The loss's and the schedules' own names for a config field, where they differ (their errors name the field).
_RENAMED = {
    "normalize": "loss_normalization",
    "chunk_size": "loss_chunk_size",
    "importance_cap": "vllm_importance_sampling_cap",
    "rho0": "teacher_mix_rho0",
    "phase_fraction": "teacher_mix_phase_fraction",
}

# Which components each preset switches on (any of them can be overridden one by one).
PRESETS: dict[str, dict[str, bool]] = {
    "opd": {
        "zones": False,
        "anneal": False,
        "curriculum": False,
        "sign_gate": False,
        "teacher_mixing": False,
    },
    "sead": {"zones": True, "anneal": True, "curriculum": True, "sign_gate": False, "teacher_mixing": False},
    "sgopd": {
        "zones": False,
        "anneal": False,
        "curriculum": False,
        "sign_gate": True,
        "teacher_mixing": True,
    },
}

# Defaults that METHODS.md marks as assumed (the papers' full texts were not available). docs/methods.md lists them.
ASSUMED_DEFAULTS = {
    "entropy_top_k": "64: zone entropies over the top-64 ids, renormalised",
    "entropy_support": "'teacher': both entropies over the teacher's top-k ids (METHODS.md wording)",
    "teacher_quantile": "0.9: FKL zone = top 10% teacher entropy",
    "skip_fraction": "0.5: half of the valid tokens skipped",
    "zone_scope": "'step': percentiles over every valid token of the optimizer step, all processes (the paper's 96 rollouts)",
    "loss_normalization": "'kept': divide by the kept (non-skipped) tokens",
    "alpha_start": "0.8 (secondary summary)",
    "alpha_end": "0.0 (secondary summary)",
    "zone_composition": "'paper': the paper's loss as a note from its full text gives it (RKL zone RKL, FKL zone alpha*lambda*FKL)",
    "fkl_zone_lambda": "1.0: the FKL zone's weight lambda in the paper's loss (value not given)",
    "competence_threshold": "0.6 pass rate over a running window",
    "competence_window": "one optimizer step's rollouts (all ranks), at least 64",
    "curriculum_num_buckets": "4 difficulty quantiles",
    "curriculum_full_open_fraction": "0.8 of training: every prompt open by then",
    "competence_threshold_mode": "'absolute': the window's pass rate against competence_threshold itself",
    "difficulty_num_rollouts": "8 rollouts per prompt at temperature 0.7",
    "lambda_consensus": "1.8 (extrapolate)",
    "lambda_conflict": "1.0 (two secondary sources: the best configuration is 1.8 / 1.0; 0.5 is the other reading)",
    "teacher_mix_rho0": "0.5",
    "teacher_mix_phase_fraction": "0.2 of training, linear decay",
    "teacher_num_generations": "8 (G, secondary sources)",
}


def _accelerator() -> str | None:
    """The accelerator torch sees (``"cuda"``, ``"xpu"``, ``"mps"``, ``"npu"``), or ``None`` on a CPU-only machine."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    for name in ("xpu", "mps", "npu"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        try:
            if backend is not None and backend.is_available():
                return name
        except Exception:  # a backend stub that cannot answer: not there
            continue
    return None


def _cuda_bf16() -> bool:
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(is_torch_bf16_gpu_available())


@dataclass
class OPDConfig(DistillationConfig):
    r"""
    Configuration for [`OPDTrainer`]: every field of `trl.DistillationConfig`, plus the fields below.
    Fields left at `None` take the value of the `method` preset. Defaults marked *assumed* are not
    fixed by the papers' available texts; see `docs/methods.md`.

    Two inherited defaults depend on the machine (said on one line when sead picks them): `bf16` left unset is
    `True` where a GPU with bf16 is found (TRL's default) and `False` (fp32) elsewhere, where TRL's default would
    stop the run; `dataloader_pin_memory` is `False` without a GPU.

    Parameters:
        > Method and estimator

        method (`str`, *optional*, defaults to `"sead"`):
            Preset: `"opd"` (vanilla on-policy distillation, reverse KL), `"sead"` (entropy zones + cosine
            anneal + competence curriculum) or `"sgopd"` (sign gate + phased teacher sampling).
        estimator (`str`, *optional*, defaults to `"full"`):
            How the divergence is estimated per token: `"full"` (whole vocabulary), `"topk"` (teacher
            top-`estimator_top_k` ids plus one tail bucket) or `"sampled"` (REINFORCE on the sampled token with
            advantage `log pi_T(y_t) - log pi_S(y_t)`; the forward-KL parts of SEAD stay exact).
        estimator_top_k (`int`, *optional*, defaults to `64`):
            k of the `"topk"` estimator.
        vllm_importance_sampling_correction (`bool`, *optional*, defaults to `True`):
            With `estimator: sampled` and the student's rollouts from vLLM (`use_vllm`), weight each token's
            `-sg(A_t) log pi_S(y_t)` by the truncated importance weight `min(pi_S(y_t) / q(y_t), cap)`, `q` the
            engine's own log-prob of the token it sampled (it samples from its own numerics, bf16, not the
            trainer's `pi_S`), as TRL's GRPO does (same name). `False`: treat vLLM's rollouts as drawn from `pi_S`.
        vllm_importance_sampling_cap (`float`, *optional*, defaults to `3.0`):
            The cap of those weights (TRL GRPO's `vllm_importance_sampling_clip_max` default).
        topk_convention (`str`, *optional*, defaults to `"tail"`):
            How the `"topk"` estimator treats the vocabulary outside the teacher's top-k (formulas in docs/methods.md):
            `"tail"` (one tail bucket holding each model's remaining mass: the closest to the full KL), `"renormalized"`
            (NeMo-RL: both distributions renormalised over the teacher's top-k), `"clamped"` (verl: the student's
            full-vocabulary log-probs at the teacher's top-k, no tail, the per-token sum clamped at 0). The last two
            reproduce those frameworks' numbers.
        use_fused_loss (`bool`, *optional*, defaults to `True`):
            Compute the loss from hidden states and lm_head weights chunk by chunk with `sead.losses.fused.fused_objective`,
            for every estimator, with zones, anneal and the SG-OPD sign gate (student, teacher and reference heads):
            never an `[N, V]` logits tensor, everything in fp32. `False` projects full `[B, T, V]` logits and uses
            `sead.losses.objective.logits_objective` (the readable reference; not available with a served teacher).
        loss_chunk_size (`int`, *optional*):
            Tokens per chunk of the fused loss; `None` picks about 4M logits per tile.
        zone_precision (`str`, *optional*, defaults to `"auto"`):
            Precision of the fused loss's zone-deciding pass (zones on, training): `"bf16"` projects it with bfloat16
            copies of the hidden states and lm_head weights (about a third of the cost of fp32 on GPUs and on CPUs with
            AVX512-BF16 / AMX; on other CPUs torch emulates bf16 and it is 2.5x *slower* than fp32), `"exact"` in
            fp32, `"auto"` picks `"bf16"` only where bf16 matmuls are native. The loss value and the gradient of the
            kept tokens are computed in fp32 either way; with `"bf16"` a token whose entropy sits at a zone boundary
            may land in the neighbouring zone (99.2-100% of tokens agree with `"exact"` in our tests). Our default,
            not the papers'.

        > SEAD: entropy zones (METHODS.md 1a)

        zones (`bool`, *optional*):
            Split tokens into skip / reverse-KL / forward-KL zones by joint teacher-student entropy.
        teacher_quantile (`float`, *optional*, defaults to `0.9`):
            Tokens with teacher entropy at or above this quantile form the forward-KL zone (*assumed*).
        skip_fraction (`float`, *optional*, defaults to `0.5`):
            Fraction of valid tokens (lowest student entropy outside the FKL zone) that get no gradient (*assumed*).
        entropy_top_k (`int`, *optional*, defaults to `64`):
            Zone entropies are computed over k ids renormalised (*assumed*); `None` or `0`: full vocabulary.
        entropy_support (`str`, *optional*, defaults to `"teacher"`):
            Which k ids (*assumed*, from METHODS.md's "computed over the teacher's top-k renormalised"): `"teacher"`:
            `H_T` over the teacher's top-k logits and `H_S` over the student's logits at those same ids (the fused
            loss then never projects the student over the vocabulary to decide zones: SEAD's loss costs about 0.75x
            vanilla OPD's); `"own"`: each model over its own top-k.
        zone_scope (`str`, *optional*, defaults to `"step"`):
            Over which tokens the zone percentiles are taken (*assumed*; METHODS.md: "batch percentiles over valid tokens",
            the batch of one optimizer step). `"step"`: every valid token of the optimizer step on every process (all
            gradient-accumulation micro-batches), from an entropies-only pre-pass when the step's rollouts are ready
            (a no-grad teacher forward per rollout, whose hidden states and entropies the losses reuse: `teacher_cache`;
            the student's hidden states recorded while it sampled: `zone_student_hidden`; a served teacher's log-probs
            requested once per step); each micro-batch's loss then applies the step's cuts. `"micro_batch"`: percentiles over
            each micro-batch alone (free, but with `per_device_train_batch_size: 1` every rollout gets 10% FKL and 50%
            skip however easy or hard it is). Evaluation always uses its own batch.
        zone_student_hidden (`str`, *optional*, defaults to `"generation"`):
            With `zone_scope: "step"`, where the zone pass takes the student's last hidden states (for its zone
            entropies). `"generation"`: recorded at the student's lm_head while HF `generate` samples the rollouts
            (the same positions, up to the KV cache's rounding), so the zone pass runs no student forward; where
            they are not recorded (vLLM rollouts, SG-OPD's teacher rollouts mixed in, tool calls) it runs the
            forward. `"forward"`: always a no-grad forward of the student over the step's rollouts.
        teacher_cache (`str`, *optional*, defaults to `"device"`):
            With `zone_scope: "step"` and a local teacher, where the teacher's last hidden states from the step's
            zone pass are kept for the losses of the step's micro-batches, so the teacher runs one forward per
            rollout per step (as in vanilla OPD) instead of two. `"device"`: on the training device
            (`local rollouts x completion tokens x teacher hidden size` values, counted by `sead plan`); `"cpu"`:
            offloaded to host memory and brought back one micro-batch at a time; `"off"`: not kept, each loss runs
            the teacher again (the earlier behaviour). The loss is the same either way. A served teacher's answers
            are always kept.
        loss_normalization (`str`, *optional*, defaults to `"kept"`):
            `"kept"`: divide the loss by the kept (non-skipped) token count (*assumed*); `"all"`: by all valid
            tokens. In training the count is global: `global valid tokens x (1 - skip_fraction)` for `"kept"`.

        > SEAD: cosine annealing (METHODS.md 1b)

        anneal (`bool`, *optional*):
            Anneal `alpha` from `alpha_start` to `alpha_end` by a cosine over the optimizer steps. Without zones every
            token gets `alpha * FKL + (1 - alpha) * RKL`; with zones, `zone_composition` says where `alpha` goes.
        alpha_start (`float`, *optional*, defaults to `0.8`):
            Forward-KL weight at step 0 (*assumed*).
        alpha_end (`float`, *optional*, defaults to `0.0`):
            Forward-KL weight at the last step (*assumed*).
        zone_composition (`str`, *optional*, defaults to `"paper"`):
            How the zones compose with the anneal (METHODS.md 1b). `"paper"`: the paper's loss
            `1/|B u C| * (sum_{B} RKL_t + alpha(t) * lambda * sum_{C} FKL_t)`: the RKL zone is pure reverse KL all
            along, the FKL zone forward KL weighted by `alpha(t) * fkl_zone_lambda` (fading to 0 with the anneal;
            `fkl_zone_lambda` alone without it). `"mix"`: our earlier reading, which the 2026-12-03 benchmarks ran:
            the FKL zone forward KL at weight 1, the RKL zone `alpha * FKL + (1 - alpha) * RKL`.
        fkl_zone_lambda (`float`, *optional*, defaults to `1.0`):
            The FKL zone's weight `lambda` in the `"paper"` composition (*value not given*: 1.0 assumed).
        fkl_zone_anneal (`bool`, *optional*, defaults to `False`):
            An ablation of the `"mix"` composition: with zones and `anneal`, the FKL zone too moves from forward to
            reverse KL, its forward-KL weight following the same cosine from 1 to `alpha_end`.

        > SEAD: competence-gated curriculum (METHODS.md 1c)

        curriculum (`bool`, *optional*):
            Sample only prompts whose difficulty is at most the gate `c(t)`; the gate opens as the rollout pass rate
            on the open pool exceeds `competence_threshold`.
        difficulty_column (`str`, *optional*, defaults to `"difficulty"`):
            Dataset column with each prompt's difficulty in [0, 1] (`1 - pass rate` of the initial student, see
            `sead difficulty`).
        competence_threshold (`float`, *optional*, defaults to `0.6`):
            Pass rate over the running window above which the gate moves to the next difficulty quantile (*assumed*).
        competence_window (`int`, *optional*):
            Number of recent rollouts in the running pass-rate window (*assumed*). `None` (default): the rollouts of
            one optimizer step over all processes (`per_device_train_batch_size x gradient_accumulation_steps x
            processes`, 96 in the paper setup), and at least 64, so that one step's verdicts never overflow the
            window before the gate reads it.
        curriculum_num_buckets (`int`, *optional*, defaults to `4`):
            Number of difficulty quantiles the gate steps through (*assumed*).
        curriculum_full_open_fraction (`float`, *optional*, defaults to `0.8`):
            Floor schedule: every prompt is open by this fraction of training, whatever the competence (*assumed*).
        competence_threshold_mode (`str`, *optional*, defaults to `"absolute"`):
            Pacing beyond the paper's reading. `"absolute"`: the window's pass rate must exceed `competence_threshold`.
            `"relative"`: it must exceed `s_k + competence_margin`, `s_k` the open pool's starting pass rate: the pass
            rate of the first full window of rollouts after the current bucket opened.
        competence_margin (`float`, *optional*, defaults to `0.05`):
            The gain over the open pool's starting pass rate that opens the next bucket (`"relative"` only).
        curriculum_online_difficulty (`bool`, *optional*, defaults to `False`):
            Beyond the paper (whose stated limit is a static difficulty): each prompt's difficulty follows its
            rollouts' verdicts, `d <- (1 - ema) * d + ema * (1 - correct)`, and the gate's quantiles follow it.
        curriculum_difficulty_ema (`float`, *optional*, defaults to `0.5`):
            Weight of the newest verdict in the online difficulty.

        > SG-OPD (METHODS.md 2)

        sign_gate (`bool`, *optional*):
            Per-token sign-consistency gate: extrapolate where the teacher's direction agrees with the verifier, damp
            where it conflicts.
        lambda_consensus (`float`, *optional*, defaults to `1.8`):
            Gate value on consensus, `> 1` extrapolates (*assumed*).
        lambda_conflict (`float`, *optional*, defaults to `1.0`):
            Gate value on conflict (*assumed*). Two secondary sources, one of them a paper that reproduced SG-OPD with
            "the original paper's best config", give 1.8 on consensus and 1.0 on conflict: conflict tokens get the
            plain OPD update, not extrapolated. `0.5` (damped, towards the reference) is the other reading of
            "interpolates".
        use_reference_model (`bool`, *optional*, defaults to `True`):
            Use the frozen initial student as reference (`A = d + (lambda - 1)(log pi_T - log pi_ref)`); `False` saves
            its memory and uses `A = lambda * d`.
        teacher_mixing (`bool`, *optional*):
            Phased teacher sampling: for a fraction `rho` of prompts the teacher samples `teacher_num_generations`
            rollouts; one the verifier accepts replaces the student's rollout.
        teacher_mix_rho0 (`float`, *optional*, defaults to `0.5`):
            Initial fraction `rho` of prompts offered a teacher rollout (*assumed*).
        teacher_mix_phase_fraction (`float`, *optional*, defaults to `0.2`):
            Fraction of training over which `rho` decays linearly to 0 (*assumed*).
        teacher_num_generations (`int`, *optional*, defaults to `8`):
            Teacher rollouts per selected prompt (G, *assumed*).
        teacher_temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature of the teacher's rollouts.
        teacher_top_p (`float`, *optional*):
            Nucleus filter of the teacher's rollouts, in (0, 1]; `None`: the student's `top_p`, so a recipe that
            truncates the student's sampling truncates the teacher's the same way.
        teacher_top_k (`int`, *optional*):
            Top-k filter of the teacher's rollouts (0: off); `None`: the student's `top_k`.
        teacher_generation_batch_size (`int`, *optional*):
            HF path: the teacher's cold-start rollouts are generated this many sequences (prompt x sample) per
            `generate` call, so their KV cache is bounded by it; `None`: all of a step's picked sequences at once.
            Every process makes the same number of calls (the number of picked prompts is the same on every rank),
            as a sharded teacher's `generate` needs. `sead plan` counts `min(this, picked x G)` sequences.
        teacher_generation_backend (`str`, *optional*, defaults to `"auto"`):
            Engine of the teacher's rollouts: `"vllm"` (a `vllm.LLM` for the frozen teacher, built once in each
            training process, one GPU each, like TRL's colocate mode at tensor-parallel size 1; needs vLLM and a
            GPU), `"hf"` (the teacher's `generate`), or `"auto"`: vLLM when it is installed and CUDA is available, HF
            otherwise. The teacher is frozen, so its engine never needs a weight sync; it needs room for the teacher's
            whole bf16 weights on every GPU (`sead plan` counts it). Not run on a GPU here: see docs/scaling.md.
        teacher_vllm_gpu_memory_utilization (`float`, *optional*, defaults to `0.3`):
            Fraction of each GPU the teacher's vLLM engine may take (next to the trainer, and next to the student's
            vLLM engine in colocate mode).

        > Served teacher (a vLLM server instead of a local teacher)

        teacher_server_url (`str`, *optional*):
            Base address of a vLLM OpenAI-compatible server holding the teacher (e.g. `"http://10.0.0.5:8100"`). The
            training processes then hold no teacher weights: each rollout's teacher log-probs come from the server
            (`prompt_logprobs`: its top-`k` and the sampled token, `k` the larger of `estimator_top_k` and, with zones,
            `entropy_top_k`), and SG-OPD's cold-start rollouts are sampled there (`n = teacher_num_generations`).
            Estimators `"topk"` and `"sampled"` only (a server returns no full distribution); `temperature` must be
            1.0 (its log-probs are the raw distribution). Start the server with `--max-logprobs` at least that `k`
            (checked at start) and `--max-model-len` above the longest prompt + completion; docs/recipes.md gives the
            command. Leave `teacher_model_name_or_path` unset.
        teacher_server_model (`str`, *optional*):
            The served model's name (its `--served-model-name`); `None`: the only model the server serves.
        teacher_server_timeout (`float`, *optional*, defaults to `300.0`):
            Seconds allowed per request to the server.
        teacher_server_max_retries (`int`, *optional*, defaults to `5`):
            Retries of a failed request (refused connection, timeout, HTTP 5xx/429, a malformed answer), with
            exponential backoff; then training stops with a `TeacherServerError` after saving a checkpoint (`sead
            train` exits with status 4). Never a silent zero loss.
        teacher_server_backoff (`float`, *optional*, defaults to `2.0`):
            Seconds before the first retry, doubled at each retry (at most 60).
        teacher_server_startup_timeout (`float`, *optional*, defaults to `600.0`):
            How long the trainer waits at start for the server's `/health` (a 32B teacher takes minutes to load).
        teacher_server_prefetch (`bool`, *optional*):
            With `zone_scope: "step"`, request the step's log-probs as soon as the rollouts exist, from a background
            thread, so the server scores them while the trainer grades and runs its zone pass (one request per
            step). `None` (default): on where the trainer runs on a GPU (the server then computes on hardware of
            its own), off on a CPU, where a server on the same cores competes with the trainer for them and the
            overlap measured slower (docs/scaling.md, "What a step costs"). Off: one request per micro-batch, in
            the zone pass.

        > Several teachers (MOPD style; docs/recipes.md, "Several teachers")

        teachers (`dict`, *optional*):
            Several teachers in one run: `{name: model}` or `{name: {model: ..., init_kwargs: {...}}}` (a hub id or
            path, loaded as `teacher_model_name_or_path` is, with its own init kwargs or else
            `teacher_model_init_kwargs`), or a vLLM server's address `{name: http://...}` / `{name: {url: ...,
            served_model: ...}}` (checked and used as `teacher_server_url` is; one process). Every teacher must
            share the student's tokenizer (refused by name otherwise). Each row of the dataset names its teacher in `teacher_column`; each rollout is scored by its
            own teacher only, and a teacher that serves no row of a micro-batch runs no forward for it. SEAD's zone
            cuts are per teacher (each teacher's tokens split as SEAD splits one teacher's); SG-OPD's cold-start
            rollouts come from the row's own teacher. Logged per teacher under `teacher/<name>/...`. Leave
            `teacher_model_name_or_path` and `teacher_server_url` unset. One process or DDP (teachers sharded by
            FSDP / ZeRO-3 are one per run in this version; a served one among several runs in one process).
        teacher_column (`str`, *optional*, defaults to `"teacher"`):
            The dataset column naming each row's teacher (a key of `teachers`).

        > Prompts

        max_prompt_length (`int`, *optional*):
            Longest prompt, in tokens, a rollout may start from. Longer prompts are dropped from the training set
            before the first step (with a warning giving their number); if every prompt is longer, training is refused.
            `None`: the student's context (`max_position_embeddings`, or the tokenizer's `model_max_length` when
            smaller) minus `max_completion_length`.
        num_generations (`int`, *optional*, defaults to `1`):
            Student rollouts per prompt (G). An optimizer step draws `rollouts / G` prompts and samples G rollouts of
            each, so the rollouts per step stay `per_device_train_batch_size x processes x gradient_accumulation_steps`
            (which G must divide). TRL's distillation samples one rollout per prompt (G = 1).

        > Verifier

        answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column holding the gold answer for the default verifier (math-verify on `\boxed{}`).
        log_pass_rate (`bool`, *optional*, defaults to `True`):
            Grade every student rollout with the verifier to log `rollout/pass_rate`, also when no component needs the
            verdicts (vanilla OPD, SEAD without curriculum). `False` skips that grading (it costs the grader's time each
            step: about 7% of a step in `sead bench step --quick`); components that need verdicts grade regardless.
        correct_threshold (`float`, *optional*, defaults to `0.5`):
            A rollout is correct when the sum of its rewards is at least this value.
        grader_timeout (`float`, *optional*, defaults to `5.0`):
            Seconds allowed per grade; a timeout or an exception marks the rollout incorrect and is counted
            (`counters/grader_timeouts`, `counters/grader_errors` in the logs). The default verifier bounds each
            grade in a worker process. A reward function of your own gets `grader_timeout` per rollout for a batch
            call; a batch call that raises or overruns is retried one rollout at a time, each bounded by
            `grader_timeout` (by `SIGALRM`, in the main thread: Python code is interrupted, C code is not).

        > Numerical faults

        nonfinite_policy (`str`, *optional*, defaults to `"error"`):
            On NaN or inf in the hidden states or logits of either model, in the loss or in the gradients, the
            optimizer step is never applied. `"error"`: training stops with a `NonFiniteError` (on every rank; the
            `sead` CLI prints it and exits with status 2). `"skip"`: the step is dropped (no parameter or optimizer
            state update; the step counter and learning-rate schedule advance) and counted in
            `counters/nonfinite_skipped_steps`.
    """

    method: str = field(default="sead", metadata={"help": "Preset: 'opd', 'sead' or 'sgopd'."})
    estimator: str = field(default="full", metadata={"help": "'full', 'topk' or 'sampled'."})
    estimator_top_k: int = field(default=64, metadata={"help": "k of the 'topk' estimator."})
    vllm_importance_sampling_correction: bool = field(
        default=True, metadata={"help": "Sampled estimator on vLLM rollouts: truncated importance weights."}
    )
    vllm_importance_sampling_cap: float = field(default=3.0, metadata={"help": "Cap of those importance weights."})
    topk_convention: str = field(
        default="tail", metadata={"help": "'tail', 'renormalized' (NeMo-RL) or 'clamped' (verl)."}
    )
    use_fused_loss: bool = field(default=True, metadata={"help": "Fused chunked loss from hidden states."})
    loss_chunk_size: int | None = field(
        default=None, metadata={"help": "Tokens per chunk of the fused loss."}
    )
    zone_precision: str = field(
        default="auto", metadata={"help": "Zone-deciding pass of the fused loss: 'auto', 'bf16' or 'exact'."}
    )

    zones: bool | None = field(default=None, metadata={"help": "Entropy zones (skip / RKL / FKL)."})
    teacher_quantile: float = field(
        default=0.9, metadata={"help": "Teacher-entropy quantile of the FKL zone."}
    )
    skip_fraction: float = field(default=0.5, metadata={"help": "Fraction of valid tokens skipped."})
    entropy_top_k: int | None = field(
        default=64, metadata={"help": "Top-k of the zone entropies; 0/None: full."}
    )
    entropy_support: str = field(
        default="teacher", metadata={"help": "Ids of the zone entropies: the 'teacher''s top-k or each model's 'own'."}
    )
    zone_scope: str = field(
        default="step", metadata={"help": "Zone percentiles over the optimizer 'step' (all processes) or each 'micro_batch'."}
    )
    zone_student_hidden: str = field(
        default="generation",
        metadata={"help": "Zone pass: the student's hidden states from HF 'generation' or a 'forward'."},
    )
    teacher_cache: str = field(
        default="device",
        metadata={"help": "Keep the zone pass's teacher hidden states for the loss: 'device', 'cpu' or 'off'."},
    )
    loss_normalization: str = field(default="kept", metadata={"help": "'kept' or 'all'."})

    anneal: bool | None = field(default=None, metadata={"help": "Cosine anneal from forward to reverse KL."})
    alpha_start: float = field(default=0.8, metadata={"help": "Forward-KL weight at step 0."})
    alpha_end: float = field(default=0.0, metadata={"help": "Forward-KL weight at the last step."})
    zone_composition: str = field(
        default="paper",
        metadata={"help": "How zones and anneal compose: 'paper' (RKL zone RKL, FKL zone alpha*lambda*FKL) or 'mix'."},
    )
    fkl_zone_lambda: float = field(default=1.0, metadata={"help": "The FKL zone's weight lambda ('paper')."})
    fkl_zone_anneal: bool = field(
        default=False, metadata={"help": "Ablation of 'mix': anneal the FKL zone too (cosine from 1 to alpha_end)."}
    )

    curriculum: bool | None = field(default=None, metadata={"help": "Competence-gated curriculum."})
    difficulty_column: str = field(
        default="difficulty", metadata={"help": "Column with difficulty in [0, 1]."}
    )
    competence_threshold: float = field(
        default=0.6, metadata={"help": "Pass rate that opens the next bucket."}
    )
    competence_window: int | None = field(
        default=None, metadata={"help": "Rollouts in the running pass-rate window; None: one step's, at least 64."}
    )
    curriculum_num_buckets: int = field(default=4, metadata={"help": "Difficulty quantiles of the gate."})
    curriculum_full_open_fraction: float = field(
        default=0.8, metadata={"help": "All prompts open by this fraction."}
    )
    competence_threshold_mode: str = field(
        default="absolute", metadata={"help": "'absolute' or 'relative' (to the open pool's starting pass rate)."}
    )
    competence_margin: float = field(default=0.05, metadata={"help": "Gain that opens the next bucket ('relative')."})
    curriculum_online_difficulty: bool = field(
        default=False, metadata={"help": "Re-estimate difficulty online from the rollouts' verdicts."}
    )
    curriculum_difficulty_ema: float = field(default=0.5, metadata={"help": "Weight of the newest verdict (online)."})

    sign_gate: bool | None = field(default=None, metadata={"help": "SG-OPD per-token sign gate."})
    lambda_consensus: float = field(default=1.8, metadata={"help": "Gate on consensus."})
    lambda_conflict: float = field(default=1.0, metadata={"help": "Gate on conflict."})
    use_reference_model: bool = field(default=True, metadata={"help": "Frozen initial student as reference."})
    teacher_mixing: bool | None = field(
        default=None, metadata={"help": "Phased teacher sampling (cold start)."}
    )
    teacher_mix_rho0: float = field(default=0.5, metadata={"help": "Initial teacher-mix ratio."})
    teacher_mix_phase_fraction: float = field(
        default=0.2, metadata={"help": "Cold-start fraction of training."}
    )
    teacher_num_generations: int = field(
        default=8, metadata={"help": "Teacher rollouts per selected prompt."}
    )
    teacher_temperature: float = field(default=1.0, metadata={"help": "Teacher sampling temperature."})
    teacher_top_p: float | None = field(
        default=None, metadata={"help": "Teacher rollouts' top_p, in (0, 1] (None: the student's top_p)."}
    )
    teacher_top_k: int | None = field(
        default=None, metadata={"help": "Teacher rollouts' top_k, 0 is off (None: the student's top_k)."}
    )
    teacher_generation_batch_size: int | None = field(
        default=None, metadata={"help": "HF teacher rollouts: sequences per generate call (None: all at once)."}
    )
    teacher_generation_backend: str = field(
        default="auto", metadata={"help": "Teacher rollouts: 'auto', 'vllm' or 'hf'."}
    )
    teacher_vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU fraction of the teacher's vLLM engine."}
    )

    teacher_server_url: str | None = field(
        default=None, metadata={"help": "vLLM server holding the teacher (no local teacher)."}
    )
    teacher_server_model: str | None = field(default=None, metadata={"help": "Served teacher model name."})
    teacher_server_timeout: float = field(default=300.0, metadata={"help": "Seconds per server request."})
    teacher_server_max_retries: int = field(default=5, metadata={"help": "Retries of a failed server request."})
    teacher_server_backoff: float = field(default=2.0, metadata={"help": "Seconds before the first retry."})
    teacher_server_prefetch: bool | None = field(
        default=None, metadata={"help": "Request the step's log-probs when the rollouts exist (default: on a GPU)."}
    )
    teacher_server_startup_timeout: float = field(
        default=600.0, metadata={"help": "Seconds to wait for the server's /health at start."}
    )

    teachers: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Several teachers: {name: model path or {model, init_kwargs}} (JSON on the CLI)."}
    )
    teacher_column: str = field(default="teacher", metadata={"help": "Dataset column naming each row's teacher."})

    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Longest prompt in tokens; longer ones are dropped. None: context - completion."}
    )
    num_generations: int = field(default=1, metadata={"help": "Student rollouts per prompt (same rollouts per step)."})

    answer_column: str = field(default="answer", metadata={"help": "Gold-answer column for the verifier."})
    log_pass_rate: bool = field(default=True, metadata={"help": "Grade rollouts to log the pass rate."})
    correct_threshold: float = field(
        default=0.5, metadata={"help": "Reward sum at which a rollout is correct."}
    )
    grader_timeout: float = field(default=5.0, metadata={"help": "Seconds per grade."})
    nonfinite_policy: str = field(default="error", metadata={"help": "'error' or 'skip'."})

    def __post_init__(self):
        self.method = str(self.method).lower()
        if self.method not in METHODS:
            raise SeadError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}.")
        if self.estimator not in ESTIMATORS:
            raise SeadError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {self.estimator!r}.")
        for name, value in PRESETS[self.method].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.entropy_top_k == 0:
            self.entropy_top_k = None
        self._validate()
        check_inherited_fields(self)  # TRL fields sead does not read are refused (sead.training.inherited)
        self._current_checkpointing_name()
        self._machine_defaults()
        super().__post_init__()

    def _machine_defaults(self) -> None:
        """Defaults that depend on the machine, said on one line when sead picks them.

        - ``bf16`` left unset: TRL's default (``True`` unless ``fp16``) needs a GPU with bf16; transformers stops a
          run without one ("Your setup doesn't support bf16/gpu"). Without a GPU, or on a GPU without bf16, the
          default is fp32 (``bf16: false``). A recipe that sets ``bf16`` keeps it (``bf16: true`` with ``use_cpu:
          true`` is CPU autocast).
        - ``dataloader_pin_memory``: off without a GPU (pinning needs one; torch warns on every run otherwise)."""
        from sead.utils.progress import note

        accelerator = _accelerator()
        if self.bf16 is None and not self.fp16:
            if accelerator is None or (accelerator == "cuda" and not _cuda_bf16()):
                self.bf16 = False
                where = "no GPU" if accelerator is None else "the GPU has no bf16"
                note(f"bf16 not set and {where}: training in fp32 (bf16: false).")
            else:
                self.bf16 = True
                note(f"bf16 not set: training in bf16 mixed precision on {accelerator} (TRL's default).")
        if accelerator is None or self.use_cpu:
            self.dataloader_pin_memory = False

    def teacher_sampling_filters(self) -> tuple[float, int]:
        """``(top_p, top_k)`` of the teacher's cold-start rollouts: its own settings, else the student's (``top_p`` /
        ``top_k``, or ``generation_kwargs``, which TRL lets override them); ``top_k`` 0 or ``None``: off."""
        student = {"top_p": self.top_p, "top_k": self.top_k, **(self.generation_kwargs or {})}  # TRL: kwargs win
        top_p = self.teacher_top_p if self.teacher_top_p is not None else student["top_p"]
        top_k = self.teacher_top_k if self.teacher_top_k is not None else student["top_k"]
        return float(1.0 if top_p is None else top_p), int(top_k or 0)

    def _current_checkpointing_name(self) -> None:
        """TRL 1.16's configs default the deprecated ``gradient_checkpointing`` to ``True``; transformers 5 then warns
        on every config that does not set ``activation_checkpointing`` (a FutureWarning the user did not cause). Carry
        TRL's default over to the current name instead. A ``gradient_checkpointing`` the user set to another value
        still goes through transformers' own deprecation path (and its warning)."""
        if getattr(self, "activation_checkpointing", False) is None and self.gradient_checkpointing is True:
            self.activation_checkpointing, self.gradient_checkpointing = True, None

    # ---- what the config builds --------------------------------------------------------------------------------
    def loss_spec(self, served_top_k: int | None = None) -> LossSpec:
        """The loss's :class:`~sead.losses.spec.LossSpec` from these fields, built once per run; each step then
        takes its anneal weights and zone cuts (:meth:`~sead.losses.spec.LossSpec.at_step`). ``served_top_k``: the
        log-probs a served teacher returns per position; without zones the entropies are only logged, over at most
        those ids."""
        entropy_top_k = self.entropy_top_k
        if served_top_k is not None and not self.zones:
            entropy_top_k = min(entropy_top_k or served_top_k, served_top_k)
        return LossSpec.from_options(
            estimator=self.estimator, estimator_top_k=self.estimator_top_k, topk_convention=self.topk_convention,
            temperature=self.temperature, zones=bool(self.zones), teacher_quantile=self.teacher_quantile,
            skip_fraction=self.skip_fraction, entropy_top_k=entropy_top_k, entropy_support=self.entropy_support,
            zone_precision=self.zone_precision, zone_composition=self.zone_composition,
            fkl_zone_lambda=self.fkl_zone_lambda, sign_gate=bool(self.sign_gate),
            lambda_consensus=self.lambda_consensus, lambda_conflict=self.lambda_conflict,
            normalize=self.loss_normalization, importance_cap=self.vllm_importance_sampling_cap,
            chunk_size=self.loss_chunk_size,
        )  # fmt: skip

    def schedules(self) -> StepSchedules:
        """The run's step schedules (SEAD's anneal, the FKL zone's ablation, SG-OPD's teacher-mix ratio)."""
        return StepSchedules(
            anneal=bool(self.anneal), alpha_start=self.alpha_start, alpha_end=self.alpha_end,
            fkl_zone_anneal=bool(self.fkl_zone_anneal and self.anneal and self.zones),
            zone_composition=self.zone_composition,
            teacher_mixing=bool(self.teacher_mixing), rho0=self.teacher_mix_rho0,
            phase_fraction=self.teacher_mix_phase_fraction,
        )  # fmt: skip

    def competence_window_size(self, num_processes: int) -> int:
        """``competence_window``, or (``None``) one optimizer step's rollouts over all processes, at least 64."""
        if self.competence_window is not None:
            return int(self.competence_window)
        per_step = self.per_device_train_batch_size * self.gradient_accumulation_steps
        return max(64, per_step * num_processes)

    def curriculum_of(self, difficulties, num_processes: int) -> CompetenceCurriculum:
        """The competence-gated curriculum over a dataset's ``difficulties`` (its ``difficulty_column``); a column that
        cannot be one is refused naming it."""
        try:
            return CompetenceCurriculum(
                difficulties, threshold=self.competence_threshold, window=self.competence_window_size(num_processes),
                num_buckets=self.curriculum_num_buckets, full_open_fraction=self.curriculum_full_open_fraction,
                seed=self.seed, column=self.difficulty_column, threshold_mode=self.competence_threshold_mode,
                margin=self.competence_margin, online=bool(self.curriculum_online_difficulty),
                ema=self.curriculum_difficulty_ema,
            )  # fmt: skip
        except ValueError as err:
            raise SeadError(str(err)) from err

    # ---- checks ---------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        self._check_method_fields()
        self._check_loss_fields()
        self._check_choices()
        if self.teacher_server_url is not None:
            self._validate_served_teacher()
        if self.teachers is not None:
            self._validate_teachers()
        self._check_trainer_fields()

    def _check_loss_fields(self) -> None:
        """The loss's and the schedules' fields, checked by the types that hold them (one home for each check),
        also where their component is off (a recipe's typo is refused whatever the method)."""
        if self.entropy_top_k is not None and self.entropy_top_k < 0:
            raise SeadError(f"entropy_top_k must be >= 0 (0 or null: full vocabulary); got {self.entropy_top_k}.")
        try:
            ZoneSpec(self.teacher_quantile, self.skip_fraction, composition=self.zone_composition,
                     fkl_zone_lambda=self.fkl_zone_lambda)
            GateSpec(self.lambda_consensus, self.lambda_conflict)
            self.loss_spec()
            self.schedules()
        except ValueError as err:
            field, _, rest = str(err).partition(" ")
            raise SeadError(f"{_RENAMED.get(field, field)} {rest}.") from err

    def _check_method_fields(self) -> None:
        """The curriculum's, the teacher rollouts' and the verifier's fields."""
        if self.competence_threshold_mode not in THRESHOLD_MODES:
            raise SeadError(f"competence_threshold_mode must be one of {list(THRESHOLD_MODES)}; got "
                            f"{self.competence_threshold_mode!r}.")  # fmt: skip
        for name in ("competence_threshold", "curriculum_full_open_fraction", "competence_margin",
                     "curriculum_difficulty_ema"):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SeadError(f"{name} must be in [0, 1]; got {getattr(self, name)}.")
        if self.teacher_top_p is not None and not 0.0 < self.teacher_top_p <= 1.0:
            raise SeadError(f"teacher_top_p must be in (0, 1] (or null: the student's top_p); got {self.teacher_top_p}.")
        if self.teacher_top_k is not None and self.teacher_top_k < 0:
            raise SeadError(f"teacher_top_k must be >= 0 (0: off; null: the student's top_k); got {self.teacher_top_k}.")
        for name in ("teacher_temperature", "grader_timeout"):
            if not getattr(self, name) > 0:
                raise SeadError(f"{name} must be > 0; got {getattr(self, name)}.")
        for name in ("curriculum_num_buckets", "teacher_num_generations"):
            if getattr(self, name) < 1:
                raise SeadError(f"{name} must be >= 1; got {getattr(self, name)}.")
        if self.competence_window is not None and self.competence_window < 1:
            raise SeadError(f"competence_window must be >= 1 (or null: one optimizer step's rollouts); got {self.competence_window}.")
        if self.teacher_generation_batch_size is not None and self.teacher_generation_batch_size < 1:
            raise SeadError(
                f"teacher_generation_batch_size must be >= 1 (null: all at once); got {self.teacher_generation_batch_size}."
            )
        if not 0.0 < self.teacher_vllm_gpu_memory_utilization <= 1.0:
            raise SeadError(
                "teacher_vllm_gpu_memory_utilization must be in (0, 1]; "
                f"got {self.teacher_vllm_gpu_memory_utilization}."
            )
        self._check_sampled_estimator_is_on_policy()

    def _check_choices(self) -> None:
        """Fields that name one of a few options (the loss's own are checked by its spec)."""
        choices = {
            "zone_scope": ("step", "micro_batch"),
            "teacher_cache": ("device", "cpu", "off"),
            "zone_student_hidden": ("generation", "forward"),
            "teacher_generation_backend": ("auto", "vllm", "hf"),
            "nonfinite_policy": ("error", "skip"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                shown = ", ".join(repr(a) for a in allowed)
                raise SeadError(f"{name} must be one of {shown}; got {getattr(self, name)!r}.")

    def _check_trainer_fields(self) -> None:
        """TRL's and transformers' fields that sead reads, checked before TRL's own ``__post_init__``."""
        if self.max_steps is not None and self.max_steps < -1:
            raise SeadError(
                f"max_steps must be a positive number of steps (or -1: train for num_train_epochs); got {self.max_steps}."
            )
        if self.num_train_epochs is not None and self.num_train_epochs < 0:
            raise SeadError(f"num_train_epochs must be >= 0; got {self.num_train_epochs}.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length"):
            value = getattr(self, name, None)
            if value is not None and value < 1:
                raise SeadError(f"{name} must be >= 1; got {value}.")
        if self.num_generations < 1:
            raise SeadError(f"num_generations must be >= 1; got {self.num_generations}.")
        rollouts = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if rollouts % self.num_generations:
            raise SeadError(
                f"num_generations ({self.num_generations}) must divide the rollouts of a step on each process, "
                f"per_device_train_batch_size x gradient_accumulation_steps = {rollouts}; change either."
            )
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise SeadError(f"max_prompt_length must be >= 1 (or null: derived from the context); got {self.max_prompt_length}.")
        for name in ("save_steps", "logging_steps", "eval_steps", "warmup_steps", "save_total_limit"):
            value = getattr(self, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise SeadError(f"{name} must be >= 0; got {value}.")
        if self.learning_rate < 0:
            raise SeadError(f"learning_rate must be >= 0; got {self.learning_rate}.")

    def sampling_settings(self) -> dict[str, float | None]:
        """What the student's rollouts are sampled with: TRL's ``temperature``, ``top_p``, ``top_k``, ``min_p`` and
        ``repetition_penalty``, each overridden by ``generation_kwargs`` as TRL's generation does."""
        kwargs = self.generation_kwargs if isinstance(self.generation_kwargs, dict) else {}
        names = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
        return {name: kwargs.get(name, getattr(self, name, None)) for name in names}

    def _check_sampled_estimator_is_on_policy(self) -> None:
        """The sampled estimator ``-sg(A_t) log pi_S(y_t)`` is unbiased only for ``y ~ pi_S`` at the loss's temperature,
        untruncated (METHODS.md 0). Refuse rollouts sampled from anything else rather than train on a biased gradient
        (a toy check at 0.7 vs 1.0: expected gradient 0.70x the true norm, cosine 0.95)."""
        if self.estimator != "sampled":
            return
        sampling = self.sampling_settings()
        problems = []
        if sampling["temperature"] is not None and float(sampling["temperature"]) != float(self.temperature):
            problems.append(
                f"rollouts are sampled at temperature {float(sampling['temperature']):g} (generation_kwargs) but the "
                f"loss scores them at temperature {float(self.temperature):g} (`temperature`)"
            )
        if sampling["top_p"] is not None and float(sampling["top_p"]) < 1.0:
            problems.append(f"top_p {sampling['top_p']:g} truncates the rollout distribution")
        if sampling["top_k"] not in (None, 0, -1):
            problems.append(f"top_k {sampling['top_k']} truncates the rollout distribution")
        if sampling["min_p"] not in (None, 0, 0.0):
            problems.append(f"min_p {sampling['min_p']:g} truncates the rollout distribution")
        if sampling["repetition_penalty"] not in (None, 1, 1.0):
            problems.append(f"repetition_penalty {sampling['repetition_penalty']:g} reshapes the rollout distribution")
        if problems:
            raise SeadError(
                "estimator 'sampled' needs rollouts drawn from the student's own distribution at the loss temperature: "
                + "; ".join(problems)
                + ". Sample at the loss temperature without truncation (drop these from generation_kwargs), or use "
                "estimator 'full' or 'topk', which do not depend on how the rollouts were drawn."
            )

    def _validate_served_teacher(self) -> None:
        """What a served teacher cannot do, refused before anything loads."""
        if not str(self.teacher_server_url).startswith(("http://", "https://")):
            raise SeadError(
                f"teacher_server_url must be an http(s) address such as http://127.0.0.1:8100; got {self.teacher_server_url!r}."
            )
        self._check_served_loss()
        if self.teacher_model_name_or_path:
            raise SeadError(
                "teacher_model_name_or_path and teacher_server_url are both set: the teacher is either loaded here or "
                "served. Remove one."
            )
        self._check_server_client()

    def _check_served_loss(self) -> None:
        """The loss settings a teacher known only by its top-k log-probs cannot serve (one served teacher, or a
        served one among several)."""
        if self.estimator == "full":
            raise SeadError(
                "estimator: full needs the teacher's whole next-token distribution, but a teacher server returns only "
                "its top-k log-probs (and the sampled token's): use estimator: topk (top-k + tail bucket) or sampled "
                "with teacher_server_url, or a local teacher (teacher_model_name_or_path) for full."
            )
        if not self.use_fused_loss:
            raise SeadError(
                "use_fused_loss: false projects the teacher's full logits, which a teacher server does not return: "
                "keep use_fused_loss: true with teacher_server_url (the fused loss takes the served top-k log-probs)."
            )
        if self.zones and self.entropy_top_k is None:
            raise SeadError(
                "zones over the full vocabulary (entropy_top_k: 0 or null) need the teacher's whole distribution, which "
                "a teacher server does not return: set entropy_top_k (e.g. 64) with teacher_server_url."
            )
        if self.temperature != 1.0:
            raise SeadError(
                f"temperature {self.temperature:g} with teacher_server_url: the server's log-probs are the teacher's raw "
                "distribution (temperature 1) and cannot be rescaled from its top-k. Set temperature: 1.0 and sample "
                "the rollouts at another temperature through generation_kwargs (as the recipes do)."
            )

    def _check_server_client(self) -> None:
        """The served teacher's client settings (timeouts, retries)."""
        for name in ("teacher_server_timeout", "teacher_server_backoff"):
            if not getattr(self, name) > 0:
                raise SeadError(f"{name} must be > 0; got {getattr(self, name)}.")
        if self.teacher_server_max_retries < 0:
            raise SeadError(f"teacher_server_max_retries must be >= 0; got {self.teacher_server_max_retries}.")
        if self.teacher_server_startup_timeout < 0:
            raise SeadError(f"teacher_server_startup_timeout must be >= 0; got {self.teacher_server_startup_timeout}.")

    def _validate_teachers(self) -> None:
        """``teachers`` parsed (JSON text from the command line) and checked against the single-teacher fields."""
        if isinstance(self.teachers, str):
            try:
                self.teachers = json.loads(self.teachers)
            except json.JSONDecodeError as err:
                raise SeadError(f"teachers: not a JSON mapping of name -> model path ({err}); got {self.teachers!r}.") from err
        if any(e.served for e in parse_teachers(self.teachers)):  # refuses a malformed entry by name
            self._check_served_loss()
            self._check_server_client()
        for name in ("teacher_model_name_or_path", "teacher_server_url"):
            if getattr(self, name):
                raise SeadError(f"teachers and {name} are both set: name every teacher in `teachers`, or use one teacher.")
        if not str(self.teacher_column or "").strip():
            raise SeadError("teacher_column must name the dataset column that picks each row's teacher.")

    @property
    def teacher_server_top_k(self) -> int:
        """``k`` of the server's ``prompt_logprobs``: ``estimator_top_k``, or ``entropy_top_k`` with zones when larger."""
        k = int(self.estimator_top_k)
        if self.zones and self.entropy_top_k:
            k = max(k, int(self.entropy_top_k))
        return k

    @property
    def components(self) -> dict[str, bool]:
        """The resolved on/off switches, e.g. for logging the ablation cell of a run."""
        return {name: bool(getattr(self, name)) for name in PRESETS["opd"]}
