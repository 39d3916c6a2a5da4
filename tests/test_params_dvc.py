"""dvc.yaml's params lists are the schema's result keys: a speed-only change reruns nothing
(checked on the reproduced pipeline project: tests/test_dvc_pipeline.py,
test_a_data_param_reruns_prepare_not_synthesize)."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path

import yaml

from pipeline.param_docs import dvc_stage_params, speed_only_keys
from pipeline.params import Params
from tests.e2e import run

REPO = Path(__file__).resolve().parents[1]


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def leaf_keys(cls: type = Params, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(leaf_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def covers(entry: str, key: str) -> bool:
    """Whether a DVC params entry (a key or a whole mapping) tracks ``key``."""
    return key == entry or key.startswith(entry + ".")


def test_each_stage_lists_exactly_its_result_keys() -> None:
    wanted = dvc_stage_params()
    stages = dvc_stages()
    assert set(stages) == set(wanted), "a new stage needs its entry in dvc_stage_params()"
    for name, stage in stages.items():
        assert stage.get("params", []) == wanted[name], (
            f"dvc.yaml stage {name}: params must be {wanted[name]} "
            "(pipeline.param_docs.dvc_stage_params)"
        )


def test_every_result_key_is_tracked_and_no_speed_only_key_is() -> None:
    entries = [
        e.replace("${item.model}", model)
        for stage in dvc_stages().values()
        for e in stage.get("params", [])
        for model in stage.get("matrix", {}).get("model", [""])
    ]
    speed = set(speed_only_keys())
    for key in leaf_keys():
        tracked = any(covers(e, key) for e in entries)
        assert tracked == (key not in speed), key


def test_dvc_accepts_the_pipeline(tmp_path: Path) -> None:
    """dvc parses dvc.yaml (templating, matrix, dotted params) against the committed params."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, tmp_path / name)
    run(["dvc", "init", "--no-scm", "-q"], tmp_path)
    listed = run(["dvc", "stage", "list"], tmp_path).stdout
    for name in (
        "synthesize",
        "prepare",
        "segment",
        "crops",
        "train@protomask-0",
        "evaluate@protopnet-0",
        "compare",
    ):
        assert name in listed
