"""dvc.yaml lists, for every stage, all the code its command runs.

A stage's code is the import closure of its command: the module-level imports of its
``stages/<module>.py``, the imports inside its command function, then every import
(module level or inside functions) of each project module reached, transitively, plus
the package ``__init__`` files on the way and the CLI entry (``stages/cli.py``,
``stages/common.py``). Other stage modules that ``stages/cli.py`` imports only to
register their commands are not part of it. A change to any file of the closure must
make ``dvc status`` report the stage, so each must lie under one of the stage's deps.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model", "stages")
ENTRY = ("stages/cli.py", "stages/common.py", "stages/__init__.py")


def module_file(name: str) -> Path | None:
    """The repository file of module ``name`` (a .py file or a package __init__)."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(nodes: list[ast.AST], package: str) -> set[str]:
    """Module names imported anywhere in ``nodes`` (``from a import b`` gives a and a.b)."""
    names: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                names.update(alias.name for alias in sub.names)
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    parent = package.split(".")[: len(package.split(".")) - sub.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in sub.names)
    return names


def with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def closure(start: set[str]) -> set[str]:
    """Repository files of the modules ``start`` and everything they import."""
    seen: set[str] = set()
    todo = [p for name in start for p in with_parents(name)]
    files: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        files.add(str(path.relative_to(REPO)))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        for found in imported_modules(tree.body, package):
            todo.extend(p for p in with_parents(found) if p not in seen)
    return files


def command_closure(command: str) -> set[str]:
    """The code the ``protomask <command>`` click command runs (see the module docstring)."""
    for path in sorted((REPO / "stages").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call)
                and getattr(d.func, "id", "") == "stage_command"
                and d.args
                and getattr(d.args[0], "value", None) == command
                for d in node.decorator_list
            ):
                module_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
                start = imported_modules(module_level + [node], "stages")
                own = str(path.relative_to(REPO))  # its other commands' imports do not run
                return closure(start - {f"stages.{path.stem}"}) | set(ENTRY) | {own}
    raise AssertionError(f"no stage_command named {command!r} in stages/")


def code_deps(stage: dict) -> list[str]:
    return [d for d in stage.get("deps", []) if isinstance(d, str) and not d.startswith("$")]


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_imported_file_is_a_dependency(name: str) -> None:
    stage = stages()[name]
    command = stage["cmd"].split()[1]
    deps = code_deps(stage)
    missing = sorted(
        f
        for f in command_closure(command)
        if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
    )
    assert not missing, f"dvc.yaml stage {name} misses deps: {missing}"


def test_the_closure_follows_imports_inside_functions() -> None:
    files = command_closure("segment")
    # run_segment is imported inside the command; the segmenters inside functions of it
    assert {
        "pipeline/segment.py",
        "pipeline/segmenters/loading.py",
        "pipeline/segmenters/__init__.py",
        "pipeline/params.py",
    } <= files
    assert "stages/train.py" not in files and "model/training.py" not in files


@pytest.mark.parametrize(
    ("name", "outside"),
    [
        ("train", ["model/metrics/reference.py", "model/report.py", "model/comparison.py"]),
        ("evaluate", ["model/comparison.py", "model/seed_stats.py"]),
    ],
)
def test_a_later_stage_module_does_not_stale_an_earlier_stage(
    name: str, outside: list[str]
) -> None:
    """train lists its own import closure, not the model folder: editing a metric does not
    retrain every model (and editing compare does not re-evaluate them)."""
    deps = code_deps(stages()[name])
    for path in outside:
        assert path not in command_closure(name), path
        assert not any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps), path
