"""Diagnostic run: python run.py OUT.json STEPS 'OPDConfig overrides JSON' ['size overrides JSON'] [data dir]"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from sead.experiments.seeds import load_data
from sead.experiments.runs import run_variant, normalized_auc
from sead.experiments.settings import bench_size
from sead.tasks import scoring

out, steps, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
size_over = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
data_dir = Path(sys.argv[5]) if len(sys.argv) > 5 else Path("/tmp/diag/d0")
size = bench_size("sums", False, steps)
size.update(size_over)
data, curve_start = load_data("sums", False, data_dir)
import os, dataclasses
if os.environ.get("STUDENT_DIR"):
    data.prepared = dataclasses.replace(data.prepared, student_dir=Path(os.environ["STUDENT_DIR"]))
    curve_start = scoring.evaluate_accuracy(data.prepared.load_student(), data.prepared.tokenizer, data.curve, batch_size=512, max_new_tokens=64)["accuracy"]
t0 = time.time()
name = overrides.pop("name", "opd")
overrides.setdefault("method", "opd")
res = run_variant(name, data, size, Path("/tmp/diag/runs") / Path(out).stem, 0, steps, overrides, progress=False)
res["curve"] = [[0, curve_start], *res["curve"]]
res["auc"] = normalized_auc([p[0] for p in res["curve"]], [p[1] for p in res["curve"]])
hist = res.pop("log_history")
res["losses"] = [(h["step"], h.get("loss")) for h in hist if "loss" in h]
res["pass_rate"] = [(h["step"], h.get("rollout/pass_rate")) for h in hist if "rollout/pass_rate" in h]
res["overrides"] = overrides; res["size_over"] = size_over; res["seconds"] = time.time() - t0
Path(out).write_text(json.dumps(res))
print(out, "final", round(res["accuracy"], 4), {k: round(v, 3) for k, v in res["accuracy_by_level"].items()}, "curve", [(s, round(a, 3)) for s, a in res["curve"]])
