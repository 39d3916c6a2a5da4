"""dvc.yaml and pipeline/layout.py name the same paths; the CLI explains every stage."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

from pipeline import layout
from pipeline.params import Params
from stages.cli import main

REPO = Path(__file__).resolve().parents[1]


def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_dvc_outputs_are_the_layout_paths() -> None:
    stages = dvc_stages()
    assert out_paths(stages["synthesize"]) == [str(layout.SYNTHETIC_ROOT)]
    # the data stages' facts are plain outputs: `dvc metrics show` lists the models only
    assert stages["prepare"]["outs"] == [str(layout.PREPARE_DIR), str(layout.PREPARE_METRICS)]
    assert out_paths(stages["segment"]) == [str(layout.SEGMENT_DIR), str(layout.SEGMENT_METRICS)]
    assert out_paths(stages["crops"]) == [str(layout.CROPS_DIR), str(layout.CROPS_METRICS)]
    for name in ("prepare", "segment", "crops"):
        assert "metrics" not in stages[name]
    item = ("${item.model}", "${item.seed}")
    assert out_paths(stages["train"]) == [str(layout.train_dir(*item))]
    assert stages["train"]["metrics"] == [str(layout.train_metrics(*item))]
    assert out_paths(stages["evaluate"]) == [
        str(layout.evaluate_dir(*item)),
        str(layout.evaluate_metrics(*item)),
    ]
    assert stages["evaluate"]["metrics"] == [str(layout.headline_metrics(*item))]
    assert str(layout.EVALUATE_METRICS) in stages["compare"]["deps"]
    assert out_paths(stages["compare"]) == [str(layout.COMPARISON), str(layout.COMPARISON_JSON)]
    assert stages["compare"]["metrics"] == [str(layout.COMPARE_METRICS)]
    assert layout.IMAGES_INDEX.parent == layout.PREPARE_DIR


def test_every_dvc_stage_is_a_cli_subcommand_with_help() -> None:
    runner = CliRunner()
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0
    for name, stage in dvc_stages().items():
        assert stage["cmd"].split()[:2] == ["protomask", name]
        if "matrix" in stage:
            assert set(stage["matrix"]["model"]) == set(layout.MODELS)
            assert stage["matrix"]["seed"] == "${train.seeds}"
        assert name in top.output
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0 and "--params" in sub.output


def out_paths(stage: dict) -> list[str]:
    return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]


def expanded(stage: dict, paths: list[str]) -> list[str]:
    """Paths with a matrix stage's ${item.model} replaced by each model (and ${item.seed}
    by the default seeds)."""
    models = stage.get("matrix", {}).get("model", [None])
    seeds = Params().train.seeds
    return [
        p.replace("${item.model}", m).replace("${item.seed}", str(s)) if m else p
        for p in paths
        for m in models
        for s in seeds
    ]


def test_code_deps_exist_and_data_deps_are_outputs_of_earlier_stages() -> None:
    produced: set[str] = set()
    for stage in dvc_stages().values():
        for dep in stage.get("deps", []):
            if "${" in dep:
                continue
            below = any(Path(p).is_relative_to(dep) for p in produced)  # a folder of outputs
            assert dep in produced or below or (REPO / dep).exists(), dep
        produced.update(expanded(stage, out_paths(stage) + stage.get("metrics", [])))


def test_every_entry_point_waits_passively_unless_the_user_says_otherwise() -> None:
    import os
    import subprocess
    import sys

    probe = "import stages.cli, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "PASSIVE", run.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "ACTIVE", run.stderr
