"""Issue 29: some rows of `sead bench step`, alternating, alone on the machine (python benchmarks/diagnosis/step_rows.py ROWS ROUNDS [SHAPE]); e.g. sead_topk,sead_server 4 -> step_rows_served.json."""
import contextlib, json, os, sys, tempfile
from pathlib import Path
from statistics import median
from sead.bench import suite
from sead.bench.common import run_worker

rows = sys.argv[1].split(",")
rounds = int(sys.argv[2])
shape = sys.argv[3] if len(sys.argv) > 3 else "tiny"
steps = "14" if shape == "tiny" else "5"
out = {}
with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
    url = None
    if "sead_server" in rows:
        url, err = suite._start_step_teacher_server(stack, Path(tmp))
        print("server", url, err, flush=True)
    for r in range(rounds):
        order = rows if r % 2 == 0 else rows[::-1]
        for name in order:
            args = ["step", name, "--shape", shape, "--steps", steps, "--threads", "1", "--out", f"{tmp}/{name}-{r}"]
            if name == "sead_server":
                args += ["--teacher-url", url]
            res = run_worker(args, env={"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"})
            out.setdefault(name, []).append(res.get("step_time_s", res.get("error")))
            print(name, r, res.get("step_time_s", res.get("error")), flush=True)
print(json.dumps({k: [median([x for x in v if isinstance(x, float)] or [0]), v] for k, v in out.items()}))
