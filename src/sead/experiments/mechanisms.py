"""Do the mechanisms SEAD and SG-OPD rely on exist in a task? Measured on student rollouts.

:func:`score_rollouts` samples rollouts from the student, scores every completion token with both models
and with the task's exact oracle (``BuiltinTask.oracle_distributions``: the distribution of the text the
models were trained on, given the prefix), and :func:`summarize` turns that into the numbers
``docs/task.md`` argues from:

- **forks and mastered tokens**: the teacher's entropy ``H_T`` per token (mean, its distribution), at
  forks (oracle positions with several correct next tokens) and at forced positions (one);
- **zones** (SEAD's, decided per batch of ``batch_size`` rollouts as the trainer does): their share of
  tokens, of forks, and the share of teacher-student top-1 disagreements in each;
- **incoherence**: ``H_T`` on failed vs passed rollouts, and on failed ones before vs after the first
  token that leaves every correct path;
- **SG-OPD's gate**: ``d_t = log pi_T(y_t) - log pi_S(y_t)``, consensus iff ``d_t * v > 0`` (``v = +1``
  for a verified rollout); the teacher is *wrong* at a token when its direction ``sign(d_t)`` differs
  from the oracle's, ``sign(log p*(y_t) - log pi_S(y_t))`` (``p* = 0`` for a token that leaves every
  correct path: pushing it up is wrong). Judged where the prefix is still on a correct path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sead.method.divergences import zone_entropies
from sead.method.gates import consensus as gate_consensus
from sead.method.zones import FKL, RKL, SKIP, sead_zones

__all__ = ["FORK_MIN_PROB", "RolloutScores", "format_summary", "measure", "score_rollouts", "summarize"]

#: A position counts as a fork when at least two next tokens have at least this oracle probability.
FORK_MIN_PROB = 0.05


@dataclass
class RolloutScores:
    """Per-token measurements of ``B`` rollouts, ``T`` completion positions (padded)."""

    mask_BT: torch.Tensor  # completion tokens, EOS included
    h_t_BT: torch.Tensor  # teacher entropy (nats), over the zone support
    h_s_BT: torch.Tensor  # student entropy over the same support
    disagree_BT: torch.Tensor  # top-1 of teacher != top-1 of student
    d_BT: torch.Tensor  # log pi_T(y_t) - log pi_S(y_t)
    oracle_logp_BT: torch.Tensor  # log p*(y_t) (-inf for a token off every correct path; nan after it)
    student_logp_BT: torch.Tensor
    fork_BT: torch.Tensor  # oracle: several correct next tokens
    on_path_BT: torch.Tensor  # the prefix y_<t is on a correct path
    correct_B: torch.Tensor
    level_B: torch.Tensor
    zones_BT: torch.Tensor
    choice_BT: torch.Tensor  # the task's grammar leaves a choice here whatever the numbers


def _token_strings(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


@torch.no_grad()
def _logits(model, ids_BL, attn_BL, prompt_len: int):
    return model(input_ids=ids_BL, attention_mask=attn_BL).logits[:, prompt_len - 1 : -1].float()


@torch.no_grad()
def score_rollouts(
    task,
    teacher,
    student,
    tokenizer,
    dataset,
    *,
    temperature: float = 1.0,
    batch_size: int = 64,
    teacher_quantile: float = 0.9,
    skip_fraction: float = 0.5,
    entropy_top_k: int | None = 64,
    entropy_support: str = "teacher",
    seed: int = 0,
) -> RolloutScores:
    """One student rollout per row of ``dataset`` (sampled at ``temperature``), scored by both models,
    the verifier and the task's oracle; zones decided per chunk of ``batch_size`` rollouts."""
    from sead.grading.verifier import grade

    torch.manual_seed(seed)
    prompts = list(dataset["prompt"])
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    out = student.generate(
        **enc, max_new_tokens=task.max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
        pad_token_id=pad, eos_token_id=eos,
    )
    p = enc["input_ids"].shape[1]
    comp_BT = out[:, p:]
    is_eos = comp_BT == eos
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    mask_BT = ~after_eos & ((comp_BT != pad) | is_eos)
    attn = torch.cat([enc["attention_mask"], mask_BT.long()], 1)
    zs_BTV = _logits(student, out, attn, p)
    zt_BTV = _logits(teacher, out, attn, p)
    h_t_BT, h_s_BT = zone_entropies(zs_BTV, zt_BTV, entropy_top_k, 1.0, entropy_support)
    logp_s = torch.log_softmax(zs_BTV, -1).gather(-1, comp_BT.unsqueeze(-1)).squeeze(-1)
    logp_t = torch.log_softmax(zt_BTV, -1).gather(-1, comp_BT.unsqueeze(-1)).squeeze(-1)
    B, T = comp_BT.shape
    fork = torch.zeros(B, T, dtype=torch.bool)
    on_path = torch.zeros(B, T, dtype=torch.bool)
    choice = torch.zeros(B, T, dtype=torch.bool)
    oracle = torch.full((B, T), math.nan)
    correct = torch.zeros(B, dtype=torch.bool)
    for b in range(B):
        ids = comp_BT[b][mask_BT[b]].tolist()
        tokens = _token_strings(tokenizer, ids)
        text = tokenizer.decode([i for i in ids if i != eos], skip_special_tokens=True)
        correct[b] = bool(grade(text, str(dataset[b]["answer"])).correct)
        choice[b, : len(tokens)] = torch.tensor(task.choice_positions(tokens), dtype=torch.bool)
        for t, (tok, dist) in enumerate(zip(tokens, task.oracle_distributions(dataset[b], tokens))):
            if dist is None:
                break
            on_path[b, t] = True
            fork[b, t] = sum(q >= FORK_MIN_PROB for q in dist.values()) >= 2
            q = dist.get(tok, 0.0)
            oracle[b, t] = math.log(q) if q > 0 else -math.inf
    zones = torch.full((B, T), -1, dtype=torch.long)
    for start in range(0, B, batch_size):
        sl = slice(start, start + batch_size)
        zones[sl] = sead_zones(h_t_BT[sl], h_s_BT[sl], mask_BT[sl].long(), teacher_quantile, skip_fraction)
    return RolloutScores(
        mask_BT=mask_BT,
        h_t_BT=h_t_BT,
        h_s_BT=h_s_BT,
        disagree_BT=zs_BTV.argmax(-1) != zt_BTV.argmax(-1),
        d_BT=logp_t - logp_s,
        oracle_logp_BT=oracle,
        student_logp_BT=logp_s,
        fork_BT=fork,
        on_path_BT=on_path,
        correct_B=correct,
        level_B=torch.tensor([int(x) for x in dataset["level"]]),
        zones_BT=zones,
        choice_BT=choice & mask_BT,
    )


def measure(task, teacher, student, tokenizer, num_prompts: int = 512, seed: int = 0, levels=None) -> dict:
    """Mechanism numbers of ``task`` on ``num_prompts`` training prompts (spread evenly over ``levels``)."""
    from sead.training.config import OPDConfig

    defaults = {f: OPDConfig.__dataclass_fields__[f].default for f in ("teacher_quantile", "skip_fraction", "entropy_top_k", "entropy_support")}
    ds = task.make_dataset(num_prompts, levels=levels or task.levels, seed=seed, split="train")
    scores = score_rollouts(task, teacher, student, tokenizer, ds, seed=seed, **defaults)
    return {"task": task.name, "prompts": num_prompts, "seed": seed, "zone_settings": defaults, **summarize(scores)}


def _mean(x: torch.Tensor, sel: torch.Tensor) -> float | None:
    return float(x[sel].float().mean()) if bool(sel.any()) else None


def _share(sel: torch.Tensor, within: torch.Tensor) -> float | None:
    return float((sel & within).sum() / within.sum()) if bool(within.any()) else None


def summarize(s: RolloutScores, entropy_bins: int = 24) -> dict:
    """The mechanism numbers of ``s`` (plain floats and lists, JSON-ready)."""
    m = s.mask_BT
    forced = m & s.on_path_BT & ~s.fork_BT
    fork = m & s.fork_BT
    off = m & ~s.on_path_BT
    passed_BT = s.correct_B.unsqueeze(1).expand_as(m)
    # the first token off every correct path and what follows it, on failed rollouts
    error_BT = m & s.on_path_BT & torch.isneginf(s.oracle_logp_BT)
    before_error = m & s.on_path_BT & ~error_BT & ~passed_BT
    after_error = (off | error_BT) & ~passed_BT
    h = s.h_t_BT
    total_h = float(h[m].sum())
    out: dict = {
        "rollouts": int(m.shape[0]),
        "tokens": int(m.sum()),
        "pass_rate": float(s.correct_B.float().mean()),
        "pass_rate_by_level": {
            str(lv): float(s.correct_B[s.level_B == lv].float().mean()) for lv in sorted(set(s.level_B.tolist()))
        },
        "mean_h_t": _mean(h, m),
        "mean_h_s": _mean(s.h_s_BT, m),
        "token_share": {"fork": _share(fork, m), "forced": _share(forced, m), "off_path": _share(off, m)},
        "mean_h_t_at": {"fork": _mean(h, fork), "forced": _mean(h, forced), "off_path": _mean(h, off)},
        "h_t_mass_share": {
            k: (float(h[sel].sum()) / total_h if total_h > 0 else None)
            for k, sel in (("fork", fork), ("forced", forced), ("off_path", off))
        },
        # mastered: both models confident (entropy < 0.1 nats)
        "both_confident_share": _share((h < 0.1) & (s.h_s_BT < 0.1), m),
        "incoherence": {
            "mean_h_t_passed": _mean(h, m & passed_BT),
            "mean_h_t_failed": _mean(h, m & ~passed_BT),
            "mean_h_t_failed_before_error": _mean(h, before_error),
            "mean_h_t_failed_from_error": _mean(h, after_error),
            "failed_rollouts_with_oracle_error": _share(error_BT.any(1), ~s.correct_B),
            # positions whose token the text's form determines (no grammar choice): ~0 on correct paths
            "mean_h_t_determined_passed": _mean(h, m & passed_BT & ~s.choice_BT),
            "mean_h_t_determined_failed_before_error": _mean(h, before_error & ~s.choice_BT),
            "mean_h_t_determined_failed_from_error": _mean(h, after_error & ~s.choice_BT),
            "mean_h_t_choice_passed": _mean(h, m & passed_BT & s.choice_BT),
            "mean_h_t_choice_failed_from_error": _mean(h, after_error & s.choice_BT),
        },
    }
    by_level = {}
    for lv in sorted(set(s.level_B.tolist())):
        rows = (s.level_B == lv).unsqueeze(1).expand_as(m)
        by_level[str(lv)] = {
            "mean_h_t": _mean(h, m & rows),
            "mean_h_t_passed": _mean(h, m & rows & passed_BT),
            "mean_h_t_failed": _mean(h, m & rows & ~passed_BT),
        }
    out["incoherence"]["by_level"] = by_level
    zones = {}
    disagree = m & s.disagree_BT
    for name, code in (("skip", SKIP), ("rkl", RKL), ("fkl", FKL)):
        z = m & (s.zones_BT == code)
        zones[name] = {
            "token_share": _share(z, m),
            "fork_share": _share(fork, z),
            "off_path_share": _share(off, z),
            "disagree_rate": _share(disagree, z),
            "share_of_disagreements": _share(z, disagree),
            "mean_h_t": _mean(h, z),
        }
    out["zones"] = zones
    out["disagree_rate"] = _share(disagree, m)
    out["forks_in_fkl_zone"] = _share(m & (s.zones_BT == FKL), fork)
    # SG-OPD's gate
    consensus = m & gate_consensus(s.d_BT, torch.where(s.correct_B, 1.0, -1.0).unsqueeze(1))
    conflict = m & ~consensus
    judged = m & s.on_path_BT
    oracle_dir = s.oracle_logp_BT - s.student_logp_BT  # -inf at an error token
    wrong = judged & ((s.d_BT > 0) != (oracle_dir > 0))
    gate = {"consensus_frac": _share(consensus, m), "judged_share": _share(judged, m)}
    size = s.d_BT.abs()

    def weighted(sel):  # share of the gate's signal |d_t| in ``sel`` that points the wrong way
        total = float(size[sel].sum())
        return float(size[sel & wrong].sum()) / total if total > 0 else None

    for label, rows in (("all", torch.ones_like(m)), ("passed", passed_BT), ("failed", ~passed_BT)):
        gate[label] = {
            "tokens": int((m & rows).sum()),
            "consensus_frac": _share(consensus, m & rows),
            "teacher_wrong_at_conflict": _share(wrong, conflict & judged & rows),
            "teacher_wrong_at_consensus": _share(wrong, consensus & judged & rows),
            "teacher_wrong_at_conflict_weighted": weighted(conflict & judged & rows),
            "teacher_wrong_at_consensus_weighted": weighted(consensus & judged & rows),
        }
    gate["teacher_endorses_error"] = _share(s.d_BT > 0, error_BT)
    out["sign_gate"] = gate
    edges = torch.linspace(0, max(float(h[m].max()) if bool(m.any()) else 1.0, 1e-6), entropy_bins + 1)
    out["h_t_histogram"] = {
        "edges": edges.tolist(),
        **{
            k: torch.histogram(h[sel].float(), bins=edges).hist.tolist()
            for k, sel in (("fork", fork), ("forced", forced), ("off_path", off))
        },
    }
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _nats(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def format_summary(summary: dict) -> str:
    """Plain-text lines of the mechanism numbers (the demo prints these)."""
    s = summary
    inc, gate, ts = s["incoherence"], s["sign_gate"], s["token_share"]
    lines = [
        f"student rollouts: {s['rollouts']} ({s['tokens']} tokens), verifier pass rate {_pct(s['pass_rate'])}",
        f"forks: teacher entropy {_nats(s['mean_h_t'])} nats/token; at forks {_nats(s['mean_h_t_at']['fork'])} "
        f"({_pct(ts['fork'])} of tokens, {_pct(s['h_t_mass_share']['fork'])} of the entropy), forced "
        f"{_nats(s['mean_h_t_at']['forced'])} ({_pct(ts['forced'])}), off every correct path "
        f"{_nats(s['mean_h_t_at']['off_path'])} ({_pct(ts['off_path'])})",
        f"mastered: both models below 0.1 nats on {_pct(s['both_confident_share'])} of tokens",
        f"incoherence: teacher entropy on passed rollouts {_nats(inc['mean_h_t_passed'])}, on failed "
        f"{_nats(inc['mean_h_t_failed'])} (before their first error {_nats(inc['mean_h_t_failed_before_error'])}, "
        f"from it on {_nats(inc['mean_h_t_failed_from_error'])}); at positions the text's form determines: passed "
        f"{_nats(inc['mean_h_t_determined_passed'])}, failed from the error on {_nats(inc['mean_h_t_determined_failed_from_error'])}",
        "zones (token share / top-1 disagreement rate / share of all disagreements / forks in zone):",
    ]
    for name, z in s["zones"].items():
        lines.append(
            f"  {name:4s} {_pct(z['token_share'])} / {_pct(z['disagree_rate'])} / {_pct(z['share_of_disagreements'])}"
            f" / {_pct(z['fork_share'])}"
        )
    lines.append(
        f"SG-OPD gate: consensus {_pct(gate['consensus_frac'])}; teacher wrong at conflict "
        f"{_pct(gate['all']['teacher_wrong_at_conflict'])} vs at consensus {_pct(gate['all']['teacher_wrong_at_consensus'])}"
        f" (failed rollouts: {_pct(gate['failed']['teacher_wrong_at_conflict'])} vs "
        f"{_pct(gate['failed']['teacher_wrong_at_consensus'])}; weighted by |d_t|: "
        f"{_pct(gate['all']['teacher_wrong_at_conflict_weighted'])} vs {_pct(gate['all']['teacher_wrong_at_consensus_weighted'])}); the teacher pushes up the student's error token in "
        f"{_pct(gate['teacher_endorses_error'])} of failed rollouts' errors"
    )
    return "\n".join(lines)
