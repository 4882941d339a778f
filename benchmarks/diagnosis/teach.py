"""Teacher SFT trajectory: python teach.py OUT STEPS EVERY [lr] — greedy accuracy on 1000 held-out (all levels) and a 512 train probe."""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from sead.tasks.sums import TASK, _TEACHER, LEVELS, greedy_probe
from sead.tasks.sft import SFTSettings, build_model, train_sft
from sead.tasks import scoring
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
steps, every = int(sys.argv[2]), int(sys.argv[3]); lr = float(sys.argv[4]) if len(sys.argv) > 4 else 3e-3
tok = TASK.build_tokenizer()
model = build_model(_TEACHER.model, tok, seed=0)
test = TASK.make_dataset(1000, levels=LEVELS, seed=TASK.eval_seed, split="test")
pr = greedy_probe(tok, LEVELS, 512, 0)
log = []; t0 = time.time(); st = {"step": 0}
def probe(m):
    st["step"] += every
    if st["step"] >= steps * 0.4:
        r = scoring.evaluate_accuracy(m, tok, test, batch_size=500, max_new_tokens=TASK.max_new_tokens)
        log.append({"step": st["step"], "acc": r["accuracy"], "by_level": r["accuracy_by_level"], "probe": pr(m), "s": time.time() - t0})
        print(json.dumps(log[-1]), flush=True); (out / "log.json").write_text(json.dumps(log))
    return -1.0
s = SFTSettings(steps=steps, batch_size=64, lr=lr, level_weights=(1, 2, 3, 4), stop_at_accuracy=1.0, check_every=every, probe_size=1)
train_sft(model, tok, s, TASK.draw_example, LEVELS, seed=0, progress=False, probe=probe)
