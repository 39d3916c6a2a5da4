"""`dvc repro` never deletes a user's data that sits where the synthetic set goes."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.e2e import make_project, run

REPO = Path(__file__).resolve().parents[1]


def synthesize_out_persists() -> bool:
    outs = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["synthesize"]["outs"]
    return any(isinstance(o, dict) and o.get("data/synthetic", {}).get("persist") for o in outs)


def test_data_synthetic_is_a_persistent_output() -> None:
    """DVC deletes a stage's outputs before running it unless they persist: synthesize's
    own check (never replace a folder it did not write) must be what decides."""
    assert synthesize_out_persists()


def test_dvc_repro_keeps_the_users_files_in_data_synthetic(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", {"data": {"source": "cub", "root": "data/synthetic"}})
    mine = project / "data" / "synthetic"
    mine.mkdir(parents=True)
    for i in range(3):
        (mine / f"{i}.jpg").write_bytes(b"photo %d" % i)
    proc = run(["dvc", "repro", "synthesize"], project, check=False)
    assert proc.returncode != 0
    assert (
        "protomask synthesize: params.yaml: data.root 'data/synthetic' lies in "
        "data/synthetic" in proc.stderr
    )
    assert sorted(p.name for p in mine.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]
