"""Student capacity: SFT the sums student spec on ALL levels far past the recipe; greedy held-out accuracy by level
every EVERY steps; checkpoints saved. python ceiling.py OUTDIR STEPS EVERY [hidden layers heads inter] [levels]"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from sead.tasks.sums import TASK, _STUDENT, LEVELS
from sead.tasks.sft import SFTSettings, ModelSpec, build_model, train_sft
from sead.tasks import scoring

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
steps, every = int(sys.argv[2]), int(sys.argv[3])
spec = _STUDENT.model
if len(sys.argv) > 7:
    h, l, nh, inter = map(int, sys.argv[4:8])
    spec = ModelSpec(hidden_size=h, num_layers=l, num_heads=nh, intermediate_size=inter, max_position_embeddings=128)
levels = tuple(int(x) for x in sys.argv[8].split(",")) if len(sys.argv) > 8 else LEVELS
tok = TASK.build_tokenizer()
model = build_model(spec, tok, seed=0)
test = TASK.make_dataset(1000, levels=LEVELS, seed=TASK.eval_seed, split="test")
log = []
t0 = time.time()
state = {"step": 0}
def probe(m):
    state["step"] += every
    r = scoring.evaluate_accuracy(m, tok, test, batch_size=500, max_new_tokens=TASK.max_new_tokens)
    log.append({"step": state["step"], "acc": r["accuracy"], "by_level": r["accuracy_by_level"], "s": time.time() - t0})
    print(json.dumps(log[-1]), flush=True)
    m.save_pretrained(out / f"step{state['step']}"); tok.save_pretrained(out / f"step{state['step']}")
    (out / "log.json").write_text(json.dumps(log))
    return -1.0
settings = SFTSettings(steps=steps, batch_size=64, lr=3e-3, levels=levels, level_weights=None if levels != LEVELS else (1, 2, 3, 4),
                       stop_at_accuracy=1.0, check_every=every, probe_size=1)
train_sft(model, tok, settings, TASK.draw_example, levels, seed=0, progress=False, probe=probe)
