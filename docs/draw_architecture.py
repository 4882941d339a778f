"""Draw docs/architecture.png: the package's folders by layer, and the imports between folders, read from the code.

``make architecture`` (or ``python docs/draw_architecture.py``). The layer order and the import reader are
tests/test_layers.py's, so the picture shows what the test checks.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_layers import LAYERS, import_graph, layer_of  # noqa: E402

#: What each folder holds, in a few words (docs/architecture.md says more).
HOLDS = {
    "utils": "errors, progress",
    "method": "divergences, zones, gates,\nschedules, curriculum",
    "losses": "LossSpec, fused objective,\nfull-logits reference",
    "engines": "sampling: HF, vLLM,\nvLLM server, served teacher",
    "grading": "answers, verifier,\nrewards, metrics",
    "data": "datasets,\ndifficulty pre-pass",
    "tasks": "built-in tasks\n(sums, arithmetic)",
    "components": "a step's parts: zone cuts,\nteacher mix, served teacher",
    "checkpoints": "fetch, GGUF, prune",
    "training": "OPDTrainer, OPDConfig,\nstart-up checks, recipe",
    "evaluation": "benchmarks,\nsead eval",
    "plan": "memory planner\n(sead plan)",
    "experiments": "quality experiment, demo",
    "bench": "sead bench",
    "commands": "one module per\nsead subcommand",
    "(top)": "sead (OPDConfig, OPDTrainer),\nsead.cli",
}


def main(out: Path = REPO / "docs" / "architecture.png") -> Path:
    graph = import_graph()
    lines = Counter()
    modules = Counter()
    for module, targets in graph.items():
        _, folder = layer_of(module)
        if module.count(".") > 1 or folder == "(top)":  # a module, not a folder's __init__
            modules[folder] += 1
        for target in targets:
            _, t_folder = layer_of(target)
            if t_folder != folder:
                lines[(folder, t_folder)] += 1
    rows = [*LAYERS, ("(top)",)]
    pos: dict[str, tuple[float, float]] = {}
    width, height = 2.6, 0.78
    for rank, folders in enumerate(rows):
        for i, folder in enumerate(folders):
            pos[folder] = ((i - (len(folders) - 1) / 2) * (width + 0.5), rank * 1.25)
    fig, ax = plt.subplots(figsize=(11, 14))
    for (a, b), n in lines.items():
        (xa, ya), (xb, yb) = pos[a], pos[b]
        ax.add_patch(
            FancyArrowPatch(
                (xa, ya - height / 2), (xb, yb + height / 2), arrowstyle="-|>", mutation_scale=10,
                color="0.55", lw=0.5 + 0.25 * min(n, 8), alpha=0.55, connectionstyle="arc3,rad=0.08", zorder=1,
            )
        )  # fmt: skip
    for folder, (x, y) in pos.items():
        ax.add_patch(
            FancyBboxPatch(
                (x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.02",
                fc="#eef3fb" if folder != "(top)" else "#f4f4f4", ec="#2b4c7e", lw=1.2, zorder=2,
            )
        )  # fmt: skip
        title = folder if folder == "(top)" else f"sead/{folder}/"
        ax.text(x, y + 0.17, f"{title}  ({modules[folder]})", ha="center", va="center", fontsize=10, weight="bold", zorder=3)
        ax.text(x, y - 0.13, HOLDS.get(folder, ""), ha="center", va="center", fontsize=7.5, color="0.25", zorder=3)
    for rank in range(len(rows)):
        ax.text(-7.2, rank * 1.25, f"layer {rank}" if rank < len(LAYERS) else "top", va="center", fontsize=9, color="0.4")
    ax.set_xlim(-7.5, 5.5)
    ax.set_ylim(-0.8, len(rows) * 1.25 - 0.4)
    ax.axis("off")
    ax.set_title(
        "sead's layers: every import runs down (arrow: folder A imports folder B; width: how many module pairs).\n"
        "Folders side by side do not import each other. (n): modules in the folder. Read from the code.",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main())
