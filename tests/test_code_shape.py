"""The package stays readable: small modules with one job, short functions, no repeats.

Limits: a module of the package (pipeline/, model/, stages/) has at most 450 lines and a
function at most 60 (ruff's complexity rules, run by ``make test``, cover branches and
statements; these cover length, which ruff does not measure).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FILES = sorted(p for folder in ("pipeline", "model", "stages")
                       for p in (REPO / folder).rglob("*.py"))
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", PACKAGE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_module_and_function_lengths(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name}: split it by concern"
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for f in functions(ast.parse(text))
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_tests_do_not_import_other_test_modules() -> None:
    offenders = []
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.test_"):
                offenders.append(f"{path.name} imports {node.module}")
    assert not offenders, offenders
