"""Issue 29: how SEAD's zones differ when the zone pass takes the student's hidden states from generation (recorded
at its lm_head while HF generate samples: ``zone_student_hidden: generation``) instead of a no-grad forward.

The built-in sums task's prepared models (fp32), 4 steps of 64 rollouts sampled at temperature 1, zones with the
trainer's defaults (top-64 entropies over the teacher's ids, teacher quantile 0.9, skip 0.5, cuts over the step).
Usage: ``python benchmarks/diagnosis/zone_student_hidden.py OUT.json [bf16]`` (results of both: zone_student_hidden.json) (prints the same JSON); ``bf16``: both
generation and the forward under bf16 autocast (as under ``bf16: true``; emulated on a CPU without bf16 units).
"""
import contextlib, json, sys, torch
from sead.tasks import get_task
from sead.engines.generation_hidden import GenerationHidden
from sead.losses.fused import LMHead, fused_zone_entropies
from sead.losses.spec import LossSpec
from sead.method.zones import zone_thresholds, zones_from_thresholds
from sead.tasks.sums import make_dataset

torch.manual_seed(0); torch.set_num_threads(1)
prepared = get_task("sums").prepare_models(seed=0, progress=False)
student, teacher = prepared.load_student().eval(), prepared.load_teacher().eval()
tok = prepared.tokenizer; tok.padding_side = "left"
spec = LossSpec.from_options(zones=True, entropy_top_k=64, entropy_support="teacher")
ds = make_dataset(256, seed=5)
agree, n_tok, max_dh, same_cut = [], 0, 0.0, []
bf16 = len(sys.argv) > 2 and sys.argv[2] == "bf16"
autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
for step in range(4):
    prompts = ds["prompt"][step * 64:(step + 1) * 64]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    rec = GenerationHidden()
    with torch.no_grad(), rec.recording(student), autocast():
        out = student.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=48,
                               pad_token_id=tok.pad_token_id)
    comp = out[:, enc["input_ids"].shape[1]:]
    B, T = comp.shape
    eos = (comp == tok.eos_token_id).int()
    first = torch.where(eos.any(1), eos.argmax(1), torch.full((B,), T))
    mask = (torch.arange(T)[None] <= first[:, None]).long()
    recorded = rec.take(B, T)
    ids = torch.cat([enc["input_ids"], comp], 1); attn = torch.cat([enc["attention_mask"], mask], 1)
    with torch.no_grad(), autocast():
        h_fwd = student.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, -T - 1:-1]
        h_t = teacher.model(input_ids=ids, attention_mask=attn).last_hidden_state[:, -T - 1:-1]
    t_head = LMHead(h_t, teacher.lm_head.weight)
    res = {}
    for name, h in (("forward", h_fwd), ("generation", recorded)):
        H_T, H_S = fused_zone_entropies(spec, LMHead(h, student.lm_head.weight), t_head, mask)
        v = mask.bool()
        cuts = zone_thresholds(H_T[v], H_S[v], None, 0.9, 0.5)
        res[name] = (zones_from_thresholds(H_T[v], H_S[v], torch.ones(int(v.sum())), cuts), cuts)
    v = mask.bool()
    max_dh = max(max_dh, float((recorded[v].float() - h_fwd[v].float()).abs().max()))
    agree.append(float((res["forward"][0] == res["generation"][0]).double().mean())); n_tok += int(v.sum())
result = {"precision": "bf16 autocast" if bf16 else "fp32", "tokens": n_tok, "zone_agreement_per_step": agree, "max_abs_hidden_diff": max_dh,
          "command": "python benchmarks/diagnosis/zone_student_hidden.py OUT.json" + (" bf16" if bf16 else ""), "date": "2026-12-07"}
print(json.dumps(result))
if len(sys.argv) > 1:
    json.dump(result, open(sys.argv[1], "w"), indent=1)
