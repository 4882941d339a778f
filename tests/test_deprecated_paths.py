"""The old flat import paths (sead 0.1) keep working for one release, with a DeprecationWarning that names the new
home; each old name is the very object at its new place. The new paths and the public API warn about nothing."""

import importlib
import subprocess
import sys
import warnings

import pytest

from sead._deprecated import MOVED, SPLIT


def _fresh_import(name: str):
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_a_moved_module_is_its_new_home_and_warns(old):
    with pytest.warns(DeprecationWarning, match=MOVED[old].replace(".", r"\.")):
        module = _fresh_import(old)
    assert module is importlib.import_module(MOVED[old])


@pytest.mark.parametrize("old", sorted(SPLIT))
def test_a_split_module_finds_each_name_where_it_went(old):
    default, names = SPLIT[old]
    with pytest.warns(DeprecationWarning, match="deprecated"):
        module = _fresh_import(old)
    for name, where in names.items():
        home, _, new_name = where.partition(":")
        assert getattr(module, name) is getattr(importlib.import_module(home), new_name or name), name
    public = [n for n in dir(importlib.import_module(default)) if not n.startswith("_")]
    assert public and all(getattr(module, n) is getattr(importlib.import_module(default), n) for n in public)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_old_from_imports_that_users_wrote_still_work():
    code = (
        "import warnings; warnings.filterwarnings('error', '.sead.* is deprecated', DeprecationWarning)\n"
        "from sead import OPDConfig, OPDTrainer\n"
        "import sead.losses, sead.tasks, sead.plan\n"
        "from sead.losses import sead_loss, fused_objective, sead_zones\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "from sead.trainer import OPDTrainer as T\n"
        "from sead.config import OPDConfig as C\n"
        "from sead.sampling import HFSampler, Sampling, sample_ids, choose_backend\n"
        "from sead.run import build_trainer, load_train_dataset, ScriptArguments\n"
        "from sead.verify import grade\n"
        "from sead.evaluate import pass_at_k, evaluate_model\n"
        "from sead.zones import sead_zones as z\n"
        "assert T is OPDTrainer and C is OPDConfig and z is sead_zones\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_a_real_module_wins_over_the_old_names():
    # the finder answers only for names no real module has: the new paths import without any warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".sead.* is deprecated", DeprecationWarning)
        for new in sorted(set(MOVED.values()) | {d for d, _ in SPLIT.values()}):
            importlib.import_module(new)
