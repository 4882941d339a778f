"""Old import paths (sead 0.1's flat layout) that keep working for one release, with a ``DeprecationWarning``.

``import sead.zones`` / ``from sead.trainer import OPDTrainer`` still work: a finder at the end of
``sys.meta_path`` answers for the old names only (a real module always wins). A module that moved whole is the new
module itself (same object: patching and ``isinstance`` keep working); a module whose contents were split is a
stand-in that looks each name up in its new home. docs/architecture.md lists the moves. Removed in sead 0.2.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED", "SPLIT", "install"]

#: Old module -> its new home (moved whole).
MOVED: dict[str, str] = {
    "sead.errors": "sead.utils.errors",
    "sead.progress": "sead.utils.progress",
    "sead.divergences": "sead.method.divergences",
    "sead.zones": "sead.method.zones",
    "sead.gates": "sead.method.gates",
    "sead.schedules": "sead.method.schedules",
    "sead.curriculum": "sead.method.curriculum",
    "sead.logit_transforms": "sead.method.logit_transforms",
    "sead.fused": "sead.losses.fused",
    "sead.fused_heads": "sead.losses.heads",
    "sead.fused_passes": "sead.losses.passes",
    "sead.fused_terms": "sead.losses.terms",
    "sead.loss_output": "sead.losses.output",
    "sead.objective": "sead.losses.objective",
    "sead.generation": "sead.engines.hf",
    "sead.vllm_server": "sead.engines.vllm_server",
    "sead.teacher_server": "sead.engines.teacher_server",
    "sead.student_vllm": "sead.engines.student_vllm",
    "sead.verify": "sead.grading.verifier",
    "sead.rewards": "sead.grading.rewards",
    "sead.benchmarks": "sead.evaluation.benchmarks",
    "sead.difficulty": "sead.data.difficulty",
    "sead.config": "sead.training.config",
    "sead.inherited": "sead.training.inherited",
    "sead.checks": "sead.training.startup",
    "sead.sharding": "sead.training.sharding",
    "sead.interrupt": "sead.training.interrupt",
    "sead.trainer": "sead.training.trainer",
    "sead.trainer_loss": "sead.training.loss_glue",
    "sead.trainer_served": "sead.training.served_glue",
    "sead.plots": "sead.experiments.plots",
    "sead.bench.mechanisms": "sead.experiments.mechanisms",
}

_E = "sead.experiments"
#: Old module -> (home of the names not listed, {old name: "new.module" or "new.module:new_name"}).
SPLIT: dict[str, tuple[str, dict[str, str]]] = {
    "sead.sampling": (
        "sead.engines.sampling",
        {
            **dict.fromkeys(("HFSampler", "hf_sampler", "load_hf_model", "load_tokenizer"), "sead.engines.hf"),
            **dict.fromkeys(
                ("BACKENDS", "VLLMSampler", "as_sampler", "choose_backend", "vllm_engine", "vllm_installed"),
                "sead.engines.vllm_engine",
            ),
            "load_text_sampler": "sead.engines.backends",
        },
    ),
    "sead.evaluate": (
        "sead.evaluation.evaluate",
        dict.fromkeys(
            ("pass_at_k", "avg_at_k", "mean_pass_at_k", "report_ks", "pass_at_k_curve", "summarize_grades"),
            "sead.grading.metrics",
        ),
    ),
    "sead.run": (
        "sead.training.recipe",
        {
            "load_train_dataset": "sead.data.datasets",
            "answers_from_column": "sead.data.datasets",
            "check_teacher_tokenizer": "sead.training.startup",
        },
    ),
    "sead.demo": (
        _E + ".demo",
        {
            **dict.fromkeys(("TASK_SIZES", "SIZES", "task_size", "demo_config"), _E + ".settings"),
            "_task": _E + ".settings:task_of",
            **dict.fromkeys(("DemoData", "prepare_demo", "evaluate_final"), _E + ".seeds"),
            **dict.fromkeys(("AccuracyCurve", "run_variant", "training_mechanisms", "POOL_MARKS"), _E + ".runs"),
            "_normalized_auc": _E + ".runs:normalized_auc",
            "_series": _E + ".runs:series",
            "measure_mechanisms": _E + ".mechanisms:measure",
        },
    ),
    "sead.bench.quality": (
        _E + ".runs",
        {
            **dict.fromkeys(("VARIANTS", "DEFAULT_VARIANTS", "QUICK_VARIANTS"), _E + ".settings"),
            **dict.fromkeys(("save_data", "prepare_seed"), _E + ".seeds"),
        },
    ),
}


def _where(old: str) -> str:
    return MOVED[old] if old in MOVED else ", ".join(sorted({SPLIT[old][0], *(t.split(":")[0] for t in SPLIT[old][1].values())}))


class _SplitModule(types.ModuleType):
    """A split module's old name: each attribute is looked up in its new home."""

    def __init__(self, name: str, default: str, names: dict[str, str]):
        super().__init__(name, f"Deprecated: moved to {_where(name)}.")
        self._sead_default, self._sead_names = default, names

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        module, _, new = self._sead_names.get(attr, self._sead_default).partition(":")
        return getattr(importlib.import_module(module), new or attr)

    def __dir__(self):
        return sorted({*dir(importlib.import_module(self._sead_default)), *self._sead_names})


def _user_stacklevel() -> int:
    """The warning's stacklevel that points at the importing code, past importlib's frames."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename.startswith("<frozen importlib") or frame.f_code.co_filename == __file__
    ):
        frame, level = frame.f_back, level + 1
    return level


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        old = spec.name
        warnings.warn(
            f"`{old}` is deprecated: it moved to `{_where(old)}` (docs/architecture.md). The old path goes in sead 0.2.",
            DeprecationWarning,
            stacklevel=_user_stacklevel(),
        )
        if old in MOVED:
            return importlib.import_module(MOVED[old])
        return _SplitModule(old, *SPLIT[old])

    def exec_module(self, module) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED or fullname in SPLIT:
            return importlib.util.spec_from_loader(fullname, _Loader())
        return None


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
