"""Do SEAD's and SG-OPD's mechanisms exist on the real pair? Measured on the student's own rollouts.

The real pair has no exact oracle (``sums`` has one: :mod:`sead.experiments.mechanisms`), so a completion token is
classed by its text instead: a **digit** token (its text, stripped, is digits: the numbers of the working and of
the answer) or a **text** token (the template around them: "The answer is", ``\\boxed{``, punctuation, EOS). Over
``num_prompts`` training prompts, one rollout each at the recipe's temperature (0.7):

- **teacher entropy** ``H_T`` (nats, SEAD's zone entropy: the teacher's top-64 renormalised), its mean, its mean at
  the positions where the teacher is uncertain (the top 10% of ``H_T``: SEAD's FKL zone) and which tokens those are;
- **zones** as the trainer decides them (:func:`sead.method.zones.sead_zones` over every token of a step of 8
  rollouts, the config's defaults): each zone's share of tokens, of digit tokens, its top-1 disagreement rate, its
  commonest tokens: what the skip zone holds;
- **SG-OPD's gate**: ``d_t = log pi_T(y_t) - log pi_S(y_t)``, consensus iff ``d_t * v > 0`` (``v = +1`` for a
  rollout the verifier passes, ``-1`` otherwise): how often the teacher's direction sides with the verifier's
  verdict, on passed and failed rollouts, at digit and at text tokens.
"""

from __future__ import annotations

from collections import Counter

import torch

from sead.method.divergences import zone_entropies
from sead.method.gates import consensus
from sead.method.zones import FKL, RKL, SKIP, sead_zones
from sead.utils.jsonl import read_jsonl

__all__ = ["gate_consensus", "measure_real", "zone_contents"]


def _share(sel: torch.Tensor, within: torch.Tensor) -> float | None:
    return float((sel & within).sum() / within.sum()) if bool(within.any()) else None


def _mean(x: torch.Tensor, sel: torch.Tensor) -> float | None:
    return float(x[sel].float().mean()) if bool(sel.any()) else None


def gate_consensus(d_BT: torch.Tensor, passed_B: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """SG-OPD's consensus per token: ``d_t * v > 0`` with ``v = +1`` on a passed rollout, ``-1`` on a failed one
    (METHODS.md 2); ``False`` on padding."""
    return mask_BT & consensus(d_BT, torch.where(passed_B, 1.0, -1.0).unsqueeze(1))


def zone_contents(zones_BT, strings_BT: list[list[str]], digit_BT, disagree_BT, h_t_BT, mask_BT, top: int = 8) -> dict:
    """Per zone: share of tokens, share of digit tokens, top-1 disagreement rate, mean ``H_T``, commonest tokens."""
    out = {}
    for name, code in (("skip", SKIP), ("rkl", RKL), ("fkl", FKL)):
        z = mask_BT & (zones_BT == code)
        counts = Counter(strings_BT[b][t] for b, t in z.nonzero().tolist())
        out[name] = {
            "token_share": _share(z, mask_BT),
            "digit_share": _share(digit_BT, z),
            "share_of_digits": _share(z, mask_BT & digit_BT),
            "disagree_rate": _share(disagree_BT, z),
            "mean_h_t": _mean(h_t_BT, z),
            "commonest": [[s, c] for s, c in counts.most_common(top)],
        }
    return out


@torch.no_grad()
def measure_real(student: str, teacher: str, data: str, num_prompts: int = 128, seed: int = 0,
                 batch_size: int = 8, temperature: float = 0.7) -> dict:  # fmt: skip
    """The mechanism numbers (module doc) of ``student`` with ``teacher`` on the first ``num_prompts`` rows of
    ``data`` (chat prompts with an ``answer``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sead.grading.verifier import grade
    from sead.training.config import OPDConfig

    defaults = {f: OPDConfig.__dataclass_fields__[f].default for f in ("teacher_quantile", "skip_fraction", "entropy_top_k", "entropy_support")}
    rows = read_jsonl(data)[:num_prompts]
    tok = AutoTokenizer.from_pretrained(student, padding_side="left")
    s_model = AutoModelForCausalLM.from_pretrained(student).eval()
    t_model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    torch.manual_seed(seed)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    parts = []
    for start in range(0, len(rows), 64):
        part = rows[start : start + 64]
        enc = tok.apply_chat_template([r["prompt"] for r in part], add_generation_prompt=True, padding=True,
                                      return_tensors="pt", return_dict=True)  # fmt: skip
        out = s_model.generate(**enc, max_new_tokens=24, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                               pad_token_id=pad, eos_token_id=eos)  # fmt: skip
        P = enc["input_ids"].shape[1]
        comp_BT = out[:, P:]
        is_eos = comp_BT == eos
        mask_BT = ~((is_eos.long().cumsum(1) - is_eos.long()) > 0)
        attn = torch.cat([enc["attention_mask"], mask_BT.long()], 1)
        zs_BTV = s_model(input_ids=out, attention_mask=attn).logits[:, P - 1 : -1].float()
        zt_BTV = t_model(input_ids=out, attention_mask=attn).logits[:, P - 1 : -1].float()
        h_t, h_s = zone_entropies(zs_BTV, zt_BTV, defaults["entropy_top_k"], 1.0, defaults["entropy_support"])
        logp_s = torch.log_softmax(zs_BTV, -1).gather(-1, comp_BT.unsqueeze(-1)).squeeze(-1)
        logp_t = torch.log_softmax(zt_BTV, -1).gather(-1, comp_BT.unsqueeze(-1)).squeeze(-1)
        strings = [[tok.decode([i]) for i in ids] for ids in comp_BT.tolist()]
        texts = [tok.decode(ids[m], skip_special_tokens=True) for ids, m in zip(comp_BT, mask_BT)]
        passed = torch.tensor([bool(grade(x, str(r["answer"])).correct) for x, r in zip(texts, part)])
        zones = torch.full(comp_BT.shape, -1, dtype=torch.long)
        for b in range(0, len(part), batch_size):  # the trainer's zones: percentiles over one step's tokens
            sl = slice(b, b + batch_size)
            zones[sl] = sead_zones(h_t[sl], h_s[sl], mask_BT[sl].long(), defaults["teacher_quantile"], defaults["skip_fraction"])
        parts.append((mask_BT, h_t, h_s, logp_t - logp_s, zs_BTV.argmax(-1) != zt_BTV.argmax(-1), strings, passed, zones))
    T = max(p[0].shape[1] for p in parts)

    def cat(i, fill):
        return torch.cat([torch.nn.functional.pad(p[i], (0, T - p[i].shape[1]), value=fill) for p in parts])

    mask, h_t, h_s, d, disagree, zones = cat(0, False), cat(1, 0.0), cat(2, 0.0), cat(3, 0.0), cat(4, False), cat(7, -1)
    strings = [s + [""] * (T - len(s)) for p in parts for s in p[5]]
    passed = torch.cat([p[6] for p in parts])
    digit = torch.tensor([[x.strip().isdigit() for x in s] for s in strings]) & mask
    text = mask & ~digit
    uncertain = mask & (zones == FKL)
    consensus = gate_consensus(d, passed, mask)
    passed_BT, failed_BT = passed.unsqueeze(1).expand_as(mask), (~passed).unsqueeze(1).expand_as(mask)
    gate = {"consensus": _share(consensus, mask)}
    for label, rows_sel in (("passed", passed_BT), ("failed", failed_BT)):
        for kind, sel in (("digit", digit), ("text", text)):
            gate[f"{label}_{kind}"] = {"tokens": int((rows_sel & sel).sum()), "consensus": _share(consensus, rows_sel & sel)}
    return {
        "student": student, "teacher": teacher, "data": data, "rollouts": len(rows), "tokens": int(mask.sum()),
        "temperature": temperature, "zone_settings": defaults, "pass_rate": float(passed.float().mean()),
        "digit_token_share": _share(digit, mask),
        "mean_h_t": _mean(h_t, mask), "mean_h_s": _mean(h_s, mask),
        "mean_h_t_uncertain": _mean(h_t, uncertain), "mean_h_t_rest": _mean(h_t, mask & ~uncertain),
        "mean_h_t_digit": _mean(h_t, digit), "mean_h_t_text": _mean(h_t, text),
        "both_confident_share": _share((h_t < 0.1) & (h_s < 0.1), mask),
        "zones": zone_contents(zones, strings, digit, disagree, h_t, mask),
        "disagree_rate": _share(disagree, mask),
        "sign_gate": gate,
    }  # fmt: skip
