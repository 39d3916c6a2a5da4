"""The package stays readable: small modules with one job, short functions.

Limits: a module of the package (pipeline/, model/, stages/) has at most 450 lines and a
function at most 60 (ruff's complexity rules, run by ``make test``, cover branches and
statements; these cover length, which ruff does not measure). Lines are counted without
the formatter's wrapping: a line that only continues a bracketed expression (an argument
list ``ruff format`` put one item per line) does not count, so the limits measure code,
not layout.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FILES = sorted(
    p for folder in ("pipeline", "model", "stages") for p in (REPO / folder).rglob("*.py")
)
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def wrapped_lines(text: str) -> set[int]:
    """Numbers of the physical lines that continue a bracketed expression."""
    lines, depth = set(), 0
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.OP and token.string in "([{":
            depth += 1
        elif token.type == tokenize.OP and token.string in ")]}":
            depth -= 1
        elif token.type == tokenize.NL and depth > 0:
            lines.add(token.start[0] + 1)
    return lines


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_and_function_lengths(path: Path) -> None:
    text = path.read_text()
    wrapped = wrapped_lines(text)

    def size(first: int, last: int) -> int:
        return sum(1 for line in range(first, last + 1) if line not in wrapped)

    module = size(1, len(text.splitlines()))
    assert module <= MAX_MODULE_LINES, f"{path.name}: {module} lines, split it by concern"
    long = [
        f"{f.name} ({size(f.lineno, f.end_lineno)} lines)"
        for f in functions(ast.parse(text))
        if size(f.lineno, f.end_lineno) > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_measure_ignores_wrapping() -> None:
    one = "def f():\n    return g(1, 2, 3)\n"
    wrapped = "def f():\n    return g(\n        1,\n        2,\n        3,\n    )\n"
    assert len(wrapped_lines(one)) == 0 and len(wrapped_lines(wrapped)) == 4


def test_tests_do_not_import_other_test_modules() -> None:
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                offenders.append(f"{path.name} imports {node.module}")
    assert not offenders, offenders
