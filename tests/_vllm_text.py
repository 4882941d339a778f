"""sead.engines.sampling's callers on a real vLLM engine and a real vLLM server next to HF generate, for tests/test_vllm.py
(not a test module): ``python tests/_vllm_text.py ROOT OUT.json`` (environment: ``_tiny.vllm_env()``).

On one tiny model (head dimension 32, saved in fp32 with the byte-level task tokenizer):

- greedy token ids (and seeded samples) from :class:`sead.engines.vllm_engine.VLLMSampler` (an fp32 engine) and :class:`~sead.engines.hf.HFSampler`;
- ``sead eval --k 0`` greedy answers with ``--backend hf``, ``--backend vllm --dtype float32`` and
  ``--backend vllm`` (dtype auto: vLLM runs an fp32 checkpoint in bf16 on a CPU);
- ``sead difficulty`` with both backends, and :func:`sead.data.difficulty.estimate_difficulty` with the engine, at
  ``--top-p 1e-9`` (the nucleus is the argmax token alone: greedy, whatever the temperature), against gold
  answers made from HF's greedy answers on every other prompt: the expected difficulties are 0 there, 1
  elsewhere.

- the same model served by ``python -m vllm.entrypoints.openai.api_server`` (fp32, 127.0.0.1, started first so
  that it boots while the engine work runs, again on a fresh port if another process took its port first,
  stopped by its pid at the end): greedy token ids from
  :func:`sead.engines.vllm_server.sample_from_server`, ``sead eval`` and ``sead difficulty`` with ``--backend server``,
  and TRL's own ``VLLMClient``: its generation, and its weight-sync set-up on this CPU.

Writes everything to OUT.json; the test compares.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from _ports import free_port, retry_on_port_collision

torch.set_num_threads(1)

MAX_NEW = 12
SERVER_START_TIMEOUT_S = 240


def start_server(model_dir: Path, log: Path, port: int):
    """``(process, url)``: the OpenAI-compatible server on local ``port``, with the dev endpoints and the
    weight-transfer engine TRL's client asks for (``VLLM_SERVER_DEV_MODE``, ``--weight-transfer-config``)."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env["VLLM_SERVER_DEV_MODE"] = "1"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host",
           "127.0.0.1", "--port", str(port), "--dtype", "float32", "--gpu-memory-utilization", "0.3",
           "--weight-transfer-config", '{"backend": "nccl"}']  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)  # noqa: SIM115
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc) -> None:
    """The server and its engine process, by the group of its pid (gone already: nothing to stop)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class Server:
    """The vLLM server, started on a free port at once (it boots while the engine work runs). :meth:`ready` waits
    for it; a server that exited because another process took its port between the probe and its bind (its log
    names the address in use) is started again on a fresh port (tests/_ports.py)."""

    def __init__(self, model_dir: Path, log: Path):
        self.model_dir, self.log = model_dir, log
        self.port = free_port()
        self.proc, self.url = start_server(model_dir, log, self.port)

    def ready(self, timeout: float) -> str:
        """The server's address, once it answers /health."""

        def attempt(port: int) -> str:
            if port != self.port:
                stop_server(self.proc)
                self.port = port
                self.proc, self.url = start_server(self.model_dir, self.log, port)
            wait_for(self.url, self.proc, timeout, self.log)
            return self.url

        return retry_on_port_collision(attempt, first_port=self.port)

    def stop(self) -> None:
        stop_server(self.proc)


def wait_for(url: str, proc, timeout: float, log: Path | None = None) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"the vLLM server exited with {proc.returncode} before answering /health:\n{tail}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            time.sleep(1.0)
    raise RuntimeError(f"the vLLM server did not answer /health within {timeout:.0f} s")


def teach_the_answer_format(model, tok, steps: int = 300) -> None:
    """A few hundred SFT steps on the arithmetic task's gold completions: greedy answers then end in ``\\boxed{N}``
    (right on some prompts, wrong on others), so the pre-pass's strict verdicts (explicit final answers only) are
    not all "incorrect" and the backends' difficulty columns are compared on varied values."""
    from sead.tasks.arithmetic import make_dataset

    torch.manual_seed(0)
    rows = make_dataset(512, seed=9).to_list()
    seqs = [tok(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows]
    starts = [len(tok(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        batch = [(i % len(seqs)) for i in range(step * 32, step * 32 + 32)]
        width = max(len(seqs[i]) for i in batch)
        ids = torch.full((32, width), tok.pad_token_id)
        labels = torch.full((32, width), -100)
        for row, i in enumerate(batch):
            ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
            labels[row, starts[i] : len(seqs[i])] = torch.tensor(seqs[i][starts[i] :])
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def main(root: Path, out_path: Path) -> None:
    from _tiny import VLLM_HEADS, tiny_model, tokenizer

    t0 = time.perf_counter()
    tok = tokenizer()
    model_dir = root / "model"
    model = tiny_model(5, max_position_embeddings=512, num_attention_heads=VLLM_HEADS)
    teach_the_answer_format(model, tok)
    model.eval()
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    server = Server(model_dir, root / "server.log")
    try:
        run_all(root, out_path, model, tok, model_dir, server, t0)
    finally:
        server.stop()


def run_all(root, out_path, model, tok, model_dir, server, t0) -> None:
    from _tiny import write_jsonl
    from sead.cli import main as sead
    from sead.data.difficulty import estimate_difficulty
    from sead.engines.hf import hf_sampler
    from sead.engines.sampling import Sampling, sample_ids, sample_texts
    from sead.engines.vllm_engine import VLLMSampler, vllm_engine
    from sead.engines.vllm_server import sample_from_server
    from sead.grading.verifier import grade_many
    from sead.tasks.arithmetic import make_dataset

    rows = make_dataset(8, seed=4).to_list()
    prompts = [r["prompt"] for r in rows]
    res: dict = {}

    # the layer itself: greedy token ids, HF vs an fp32 engine
    hf = hf_sampler(model, tok, batch_size=4)
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=MAX_NEW)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = [tok.eos_token_id]
    res["hf_ids"] = sample_ids(hf, ids, greedy, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
    start = time.perf_counter()
    engine = vllm_engine(str(model_dir), dtype="float32", seed=0, gpu_memory_utilization=0.3)
    res["engine_start_s"] = time.perf_counter() - start
    vllm = VLLMSampler(engine)
    res["vllm_ids"] = sample_ids(vllm, ids, greedy, eos_token_ids=eos, pad_token_id=tok.pad_token_id)
    sampled = Sampling(n=3, temperature=1.0, max_new_tokens=MAX_NEW, seed=11)
    res["vllm_sampled"] = [sample_ids(vllm, ids[:2], sampled, eos_token_ids=eos) for _ in range(2)]

    # gold answers: HF's greedy answer on even rows, an answer nobody gives on odd rows
    texts = [t[0] for t in sample_texts(hf, tok, prompts, greedy)]
    preds = [g.pred for g in grade_many(texts, ["0"] * len(texts), mode="strict")]  # the pre-pass's verdicts
    golds = [p if i % 2 == 0 and p is not None else "-987654" for i, p in enumerate(preds)]
    res["expected_difficulty"] = [0.0 if i % 2 == 0 and p is not None else 1.0 for i, p in enumerate(preds)]
    res["hf_greedy_texts"], res["hf_preds"] = texts, preds
    res["library_difficulty_vllm"] = estimate_difficulty(
        vllm, tok, prompts, golds, num_rollouts=2, temperature=0.7, top_p=1e-9, max_new_tokens=MAX_NEW,
        prompts_per_chunk=4, progress=False,
    )  # fmt: skip

    def cli(argv):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = sead(argv)
        return code, buf.getvalue()

    # sead eval: greedy answers per backend
    bench = write_jsonl([{"question": p, "answer": f"#### {g}"} for p, g in zip(prompts, golds)], root / "b.jsonl")
    res["eval"] = {}
    url = server.ready(SERVER_START_TIMEOUT_S)
    res["server_ready_after_s"] = time.perf_counter() - t0  # since the script started (the server: right after)
    res["server_ids"] = sample_from_server(url, None, ids, 1, 0.0, MAX_NEW, None)
    res["server_sampled"] = [sample_from_server(url, None, ids[:2], 3, 1.0, MAX_NEW, 11) for _ in range(2)]
    for name, extra in (("hf", ["--backend", "hf", "--dtype", "float32"]),
                        ("vllm_fp32", ["--backend", "vllm", "--dtype", "float32"]),
                        ("vllm_auto", ["--backend", "vllm"]),
                        ("server", ["--backend", "server", "--server-url", url])):  # fmt: skip
        out = root / f"eval-{name}"
        start = time.perf_counter()
        code, printed = cli([
            "eval", "--model", str(model_dir), "--benchmarks", f"gsm8k={bench}", "--k", "2", "--max-new-tokens",
            str(MAX_NEW), "--out", str(out), "--no-chat-template", "--vllm-gpu-memory-utilization", "0.3", *extra,
        ])  # fmt: skip
        records = [json.loads(line) for line in (out / "gsm8k.jsonl").read_text().splitlines()] if code == 0 else []
        res["eval"][name] = {
            "code": code, "seconds": time.perf_counter() - start,
            "greedy": [r["greedy_response"] for r in records], "sampled": [r["responses"] for r in records],
            "results": json.loads((out / "results.json").read_text()) if code == 0 else None,
        }  # fmt: skip

    # sead difficulty: both backends
    data = write_jsonl([{"question": p, "gold": g} for p, g in zip(prompts, golds)], root / "d.jsonl")
    res["difficulty"] = {}
    for backend in ("hf", "vllm", "server"):
        out = root / f"difficulty-{backend}.jsonl"
        start = time.perf_counter()
        code, _ = cli([
            "difficulty", "--model", str(model_dir), "--dataset", str(data), "--prompt-column", "question",
            "--answer-column", "gold", "--num-rollouts", "2", "--temperature", "0.7", "--top-p", "1e-9",
            "--max-new-tokens", str(MAX_NEW), "--out", str(out), "--backend", backend, "--dtype", "float32",
            "--vllm-gpu-memory-utilization", "0.3", "--server-url", url, "--no-progress",
        ])  # fmt: skip
        column = [json.loads(line)["difficulty"] for line in out.read_text().splitlines()] if code == 0 else None
        res["difficulty"][backend] = {"code": code, "column": column, "seconds": time.perf_counter() - start}

    # TRL's server mode client against the same server: generation works, the weight sync set-up does not
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=url, connection_timeout=30)
    res["trl_client_completions"] = client.generate(prompts=ids[:2], n=2, temperature=1.0, max_tokens=4)["completion_ids"]
    try:
        client.init_communicator(device="cpu")
        res["trl_init_communicator"] = "no error"
    except Exception as err:  # what TRL does here, recorded for the test
        res["trl_init_communicator"] = f"{type(err).__name__}: {err}"
    res["total_s"] = time.perf_counter() - t0
    out_path.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(Path(sys.argv[1]), Path(sys.argv[2]))
