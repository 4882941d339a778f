"""The quality benchmark's units of work, run by ``sead.bench.worker`` processes (one unit at a time each, outside
the parent process):

- :func:`prepare_seed`: one seed's data (training prompts with the difficulty pre-pass, held-out problems),
  saved to a directory, and the prepared student's (and teacher's) starting scores on it;
- :func:`run_one`: one variant on one seed's data, from the prepared student: final greedy accuracy, AUC,
  avg@k and pass@k, and what its logs say about the mechanisms.

Models come from the task's cache (prepared once by the parent), so both are deterministic given the seed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

# The methods, the SEAD factorial (components added to vanilla OPD; all three = SEAD) and TRL's trainer.
VARIANTS: dict[str, dict[str, Any]] = {
    "trl": {"method": "opd"},
    "opd": {"method": "opd"},
    "sgopd": {"method": "sgopd"},
    "zones": {"method": "opd", "zones": True},
    "anneal": {"method": "opd", "anneal": True},
    "curriculum": {"method": "opd", "curriculum": True},
    "zones+anneal": {"method": "opd", "zones": True, "anneal": True},
    "zones+curriculum": {"method": "opd", "zones": True, "curriculum": True},
    "anneal+curriculum": {"method": "opd", "anneal": True, "curriculum": True},
    "sead": {"method": "sead"},
    # Ablations that test why the zones remove the anneal's pass@k gain on this task (BENCHMARKS.md, analysis):
    # without the skip zone (every token kept: zones+anneal then differs from anneal alone only in the FKL
    # zone, which keeps plain forward KL instead of the anneal) ...
    "zones+anneal/no-skip": {"method": "opd", "zones": True, "anneal": True, "skip_fraction": 0.0},
    # ... and with the loss normalised over every token instead of the kept half (`loss_normalization: all`) ...
    "zones+anneal/all-tokens": {"method": "opd", "zones": True, "anneal": True, "loss_normalization": "all"},
    # ... and the test of the lead both point at: the FKL zone annealed from forward to reverse KL too
    # (`fkl_zone_anneal`), instead of fixed forward KL.
    "zones+anneal/fkl-annealed": {"method": "opd", "zones": True, "anneal": True, "fkl_zone_anneal": True},
    # ... and SEAD itself with the annealed FKL zone (the curriculum added to the ablation above).
    "sead/fkl-annealed": {"method": "sead", "fkl_zone_anneal": True},
}
#: What `sead bench quality` runs by default: the methods, the factorial, and the FKL-zone ablation (`--variants`
#: runs the others: two were measured in a preliminary run, sead/fkl-annealed in a follow-up, BENCHMARKS.md).
DEFAULT_VARIANTS = tuple(
    v for v in VARIANTS if v not in ("zones+anneal/all-tokens", "zones+anneal/no-skip", "sead/fkl-annealed")
)
QUICK_VARIANTS = ("trl", "opd", "sead", "sgopd")


def _trl_trainer(student, teacher, cfg, dataset, tokenizer, callbacks):
    from trl import DistillationTrainer

    return DistillationTrainer(
        model=student, teacher_model=teacher, args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )


def _size(task: str, quick: bool, steps: int | None) -> dict[str, Any]:
    from ..demo import task_size

    size = task_size(task, quick)
    if steps:
        size["steps"] = steps
    return size


def save_data(data, out: Path, curve_start: float) -> None:
    """Save a :class:`sead.demo.DemoData`'s datasets (and the student's accuracy on the curve subset) for
    :func:`run_one` in another process."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test", "curve"):
        getattr(data, name).save_to_disk(str(out / name))
    (out / "curve_start.json").write_text(json.dumps({"curve_start": curve_start}))


def prepare_seed(task: str, quick: bool, seed: int, out: Path, cache_dir: str | None = None) -> dict[str, Any]:
    """Save seed ``seed``'s data under ``out`` and return the starting scores (student, and teacher)."""
    from ..demo import evaluate_final, prepare_demo
    from ..tasks import get_task, scoring

    size = _size(task, quick, None)
    t0 = time.perf_counter()
    data = prepare_demo(size, seed, quick, cache_dir, progress=False)
    tok, t = data.prepared.tokenizer, get_task(task)
    student = data.prepared.load_student()
    start = evaluate_final(student, tok, data, size, seed=seed)
    curve_start = scoring.evaluate_accuracy(student, tok, data.curve, batch_size=512, max_new_tokens=t.max_new_tokens)["accuracy"]
    save_data(data, out, curve_start)
    difficulty = [float(d) for d in data.train["difficulty"]]
    res = {
        "seed": seed,
        "student_start": start,
        "curve_start": curve_start,
        "difficulty_values": sorted({round(d, 4) for d in difficulty}),
        "difficulty_share_solved": sum(d == 0 for d in difficulty) / len(difficulty),
        "difficulty_share_unsolved": sum(d == 1 for d in difficulty) / len(difficulty),
        "seconds": time.perf_counter() - t0,
    }
    if seed == 0:
        res["teacher"] = evaluate_final(data.prepared.load_teacher(), tok, data, size, seed=seed)
    (out / "start.json").write_text(json.dumps(res))
    return res


def run_one(
    task: str, quick: bool, seed: int, variant: str, data_dir: Path, out: Path, steps: int | None = None,
    cache_dir: str | None = None, overrides: dict | None = None, keep_log: bool = False,
) -> dict[str, Any]:
    """Train ``variant`` on seed ``seed``'s saved data; return its scores (the log history goes to
    ``out/log_history.json`` with ``keep_log``)."""
    from datasets import load_from_disk

    from ..demo import DemoData, _normalized_auc, run_variant, training_mechanisms
    from ..tasks import get_task

    size = _size(task, quick, steps)
    prepared = get_task(task).prepare_models(cache_dir=cache_dir, quick=quick, seed=0, progress=False)
    data = DemoData(prepared, *(load_from_disk(str(data_dir / name)) for name in ("train", "test", "curve")))
    start = json.loads((data_dir / "curve_start.json").read_text())
    config = dict(VARIANTS[variant]) if variant in VARIANTS else {}
    config.update(overrides or {})
    if "method" not in config:
        raise SystemExit(f"unknown variant {variant!r} and no --overrides with a method")
    t0 = time.perf_counter()
    res = run_variant(
        variant, data, size, out, seed, size["steps"], config,
        trainer_cls=_trl_trainer if variant == "trl" else None, progress=False,
    )
    res["curve"] = [[0, start["curve_start"]], *res["curve"]]
    res["auc"] = _normalized_auc([p[0] for p in res["curve"]], [p[1] for p in res["curve"]])
    history = res.pop("log_history")
    res["training_mechanisms"] = training_mechanisms(history)
    if keep_log:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(history))
    res.update(variant=variant, seed=seed, seconds=time.perf_counter() - t0, overrides=config)
    return res


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
