"""The params schema: defaults, and one-line errors naming key, allowed values and value."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.errors import ParamsError
from pipeline.params import (Params, defaults_yaml, load_params, params_reference_markdown,
                             readme_with_reference)
from stages.cli import main

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_committed_params_are_the_schema_defaults() -> None:
    assert load_params(REPO / "params.yaml") == Params()


def test_generated_defaults_round_trip(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, defaults_yaml())) == Params()


def test_missing_keys_take_defaults(tmp_path: Path) -> None:
    params = load_params(write(tmp_path, "data:\n  val_fraction: 0.2\n"))
    assert params.data.val_fraction == 0.2
    assert params.data.synthetic == Params().data.synthetic


@pytest.mark.parametrize("text, message", [
    ("data:\n  val_fraction: 0.7\n",
     "params.yaml: data.val_fraction must be in [0, 0.5), got 0.7"),
    ("data:\n  source: imagenet\n",
     "params.yaml: data.source must be one of synthetic | cub | folder, got 'imagenet'"),
    ("data:\n  seed: 1.5\n", "params.yaml: data.seed must be of type int, got 1.5"),
    ("data:\n  seed: true\n", "params.yaml: data.seed must be of type int, got True"),
    ("data:\n  synthetic:\n    num_classes: 1\n",
     "params.yaml: data.synthetic.num_classes must be in [2, 200], got 1"),
    ("data:\n  valfraction: 0.1\n", "params.yaml: unknown key data.valfraction (allowed: "),
    ("dat: {}\n", "params.yaml: unknown key dat (allowed: "),
    ("data: 3\n", "params.yaml: data must be a mapping, got 3"),
    ("data:\n  source: cub\n  root: data/synthetic\n  x: [\n", "params.yaml: not valid YAML"),
    ("data:\n  root: /elsewhere\n",
     "params.yaml: data.root must be data/synthetic when data.source is synthetic"),
])
def test_bad_params_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert str(info.value).startswith(message.replace("params.yaml", str(path), 1))
    assert "\n" not in str(info.value)


def test_ints_are_accepted_for_floats(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, "data:\n  val_fraction: 0\n")).data.val_fraction == 0.0


def test_stage_exits_nonzero_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "data:\n  val_fraction: 0.7\n")
    result = CliRunner().invoke(main, ["prepare", "--params", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"protomask prepare: {path}: data.val_fraction must be in [0, 0.5), got 0.7"]


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["prepare", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "nope.yaml: cannot read the params file" in result.output


def test_reference_lists_every_key() -> None:
    table = params_reference_markdown()
    for key in ("data.source", "data.val_fraction", "data.synthetic.num_classes"):
        assert f"| {key} |" in table


def test_readme_reference_is_generated_from_the_schema() -> None:
    text = (REPO / "README.md").read_text()
    assert readme_with_reference(text) == text, "run: python -m pipeline.params --readme"
