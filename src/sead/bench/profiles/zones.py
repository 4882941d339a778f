"""Which tokens the zones skip, at the start of training: ``python -m sead.bench.profiles.zones [N_PROMPTS [TASK]]``
(default task: the demo's; ``python -m sead.bench.profiles.mechanisms`` measures more, against the task's oracle).

Samples one rollout per training prompt from the prepared demo student (temperature 1), scores it with
both models, decides SEAD's zones (top-64 entropies, teacher quantile 0.9, skip 0.5) over the teacher's
and over each model's own top-k, and prints per zone the share of tokens where the student's top-1
differs from the teacher's, and which share of all disagreeing tokens is skipped.
"""

from __future__ import annotations

import sys

import torch

from sead.method.divergences import zone_entropies
from sead.method.zones import FKL, RKL, SKIP, sead_zones
from sead.tasks import DEFAULT_TASK, get_task


def main(argv: list[str]) -> None:
    n = int(argv[0]) if argv else 512
    A = get_task(argv[1] if len(argv) > 1 else DEFAULT_TASK)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    prep = A.prepare_models(cache_dir=None, quick=False, seed=0, progress=False)
    tok, s, t = prep.tokenizer, prep.load_student().eval(), prep.load_teacher().eval()
    ds = A.make_dataset(n, levels=prep.levels, seed=0, split="train")
    enc = tok(list(ds["prompt"]), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = s.generate(**enc, max_new_tokens=A.max_new_tokens, do_sample=True, temperature=1.0, top_k=0,
                         top_p=1.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        p = enc["input_ids"].shape[1]
        comp_BT = out[:, p:]
        is_eos = comp_BT == tok.eos_token_id
        after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
        mask_BT = (~after_eos & (comp_BT != tok.pad_token_id)).long()
        am = torch.cat([enc["attention_mask"], torch.ones_like(comp_BT)], 1)
        zs_BTV = s(out, attention_mask=am).logits[:, p - 1 : -1]
        zt_BTV = t(out, attention_mask=am).logits[:, p - 1 : -1]
    print(f"vocabulary {zs_BTV.shape[-1]} ids, {int(mask_BT.sum())} valid completion tokens from {n} rollouts")
    disagree_BT = zs_BTV.argmax(-1) != zt_BTV.argmax(-1)
    valid_BT = mask_BT.bool()
    for support in ("teacher", "own"):
        ht, hs = zone_entropies(zs_BTV, zt_BTV, 64, 1.0, support)
        zones_BT = sead_zones(ht, hs, mask_BT, 0.9, 0.5)
        parts = [f"support={support}"]
        for name, code in (("skip", SKIP), ("rkl", RKL), ("fkl", FKL)):
            sel = zones_BT == code
            parts.append(f"{name}: {int(sel.sum())} tokens, top-1 disagree {100 * float(disagree_BT[sel].float().mean()):.1f}%")
        parts.append(f"all: top-1 disagree {100 * float(disagree_BT[valid_BT].float().mean()):.1f}%")
        skipped = (zones_BT[disagree_BT & valid_BT] == SKIP).float().mean()
        parts.append(f"disagreeing tokens skipped: {100 * float(skipped):.1f}%")
        print("; ".join(parts))


if __name__ == "__main__":
    main(sys.argv[1:])
