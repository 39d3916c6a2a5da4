"""Session fixtures: tiny projects built once per test run and shared read-only.

Never modify a shared project in a test: ``copy_project`` it first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_project import (
    EvaluatedProject,
    make_cropped_project,
    make_evaluated_project,
    make_trained_project,
    tiny_evaluated_params,
    tiny_train_params,
    tiny_trained_params,
)


@pytest.fixture(scope="session")
def cropped_project(tmp_path_factory) -> Path:
    """A tiny project segmented and cropped (tiny_crops_params())."""
    return make_cropped_project(tmp_path_factory.mktemp("cropped"))


@pytest.fixture(scope="session")
def trained_project(cropped_project: Path, tmp_path_factory) -> Path:
    """cropped_project with both models trained for 2 steps (tiny_trained_params())."""
    return make_trained_project(
        cropped_project, tmp_path_factory.mktemp("trained") / "p", tiny_trained_params()
    )


@pytest.fixture(scope="session")
def schedule_project(cropped_project: Path, tmp_path_factory) -> Path:
    """cropped_project with both models trained through every period (tiny_train_params())."""
    return make_trained_project(
        cropped_project, tmp_path_factory.mktemp("schedule") / "p", tiny_train_params()
    )


@pytest.fixture(scope="session")
def evaluated_project(trained_project: Path, tmp_path_factory) -> EvaluatedProject:
    """trained_project with both models evaluated and compared (tiny_evaluated_params())."""
    return make_evaluated_project(
        trained_project, tmp_path_factory.mktemp("evaluated") / "p", tiny_evaluated_params()
    )
