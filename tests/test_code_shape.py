"""The code's own size limits (issue 27): no function of the method, loss, component or training layers is longer
than 80 lines of code, and the trainer stays readable on a few screens. Lines of code: not blank, not a comment,
not the docstring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "sead"
FOLDERS = ("method", "losses", "components", "training")
MAX_FUNCTION_LINES = 80
MAX_TRAINER_LINES = 375


def code_lines(lines: list[str], node: ast.AST) -> int:
    """Lines of ``node`` that hold code: no blank line, no comment-only line, no docstring."""
    doc: set[int] = set()
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        doc = set(range(first.lineno, first.end_lineno + 1))
    kept = (i for i in range(node.lineno, node.end_lineno + 1) if i not in doc)
    return sum(1 for i in kept if lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def functions(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_the_counter_by_hand():
    source = 'def f(x):\n    """Doc.\n\n    More."""\n    # a comment\n\n    y = x\n    return y\n'
    (node,) = functions(source)
    assert code_lines(source.split("\n"), node) == 3  # def, y = x, return


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_function_is_longer_than_80_lines_of_code(folder):
    long = []
    for path in sorted((SRC / folder).rglob("*.py")):
        source = path.read_text()
        lines = source.split("\n")
        long += [f"{path.relative_to(SRC)}:{f.name} ({n})" for f in functions(source)
                 if (n := code_lines(lines, f)) > MAX_FUNCTION_LINES]  # fmt: skip
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code: {long}"


def test_the_trainer_is_thin():
    tree = ast.parse((SRC / "training" / "trainer.py").read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OPDTrainer"]
    assert [b.id for b in trainer.bases if isinstance(b, ast.Name)] == ["DistillationTrainer"]  # no mixins
    assert trainer.end_lineno - trainer.lineno + 1 <= MAX_TRAINER_LINES
