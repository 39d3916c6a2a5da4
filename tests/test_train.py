"""The train stage: periods, push, selection on val, and resume after a kill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from model.checkpoint import load_checkpoint
from model.training import run_training, schedule
from pipeline import layout
from pipeline.errors import ArtifactError, ParamsError
from pipeline.params import as_dict
from tests.e2e import kill_when, stage_env
from tests.tiny_project import copy_project, tiny_train_params


def weights(project: Path, kind: str, which: str = "final") -> dict[str, torch.Tensor]:
    return load_checkpoint(project / layout.train_dir(kind, 0) / which / "checkpoint.pt").model


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def trained(schedule_project: Path) -> Path:
    """Both models trained through every period (shared: copy before changing it)."""
    return schedule_project


def test_both_models_write_checkpoints_logs_push_and_metrics(trained: Path) -> None:
    for kind in ("protomask", "protopnet"):
        out = trained / layout.train_dir(kind, 0)
        for which in ("latest", "best", "final"):
            assert (out / which / "checkpoint.pt").exists()
        push = json.loads((out / "final" / "push.json").read_text())
        assert len(push) == 3 * 2 and all(r["image_id"] > 0 for r in push)
        assert (out / "best" / "push.json").read_bytes() == (
            out / "final" / "push.json"
        ).read_bytes()
        metrics = json.loads((trained / layout.train_metrics(kind, 0)).read_text())
        assert metrics["model"] == kind and 0 <= metrics["best_val_accuracy"] <= 100
        assert metrics["best_step"] >= 3  # the push (step 3) or after it
        assert "train_images_per_second" not in metrics  # wall-clock: logs/, not DVC
        assert (
            json.loads((trained / layout.run_log(f"train-{kind}-seed-0")).read_text())["seconds"]
            > 0
        )
        tsv = (out / "dvclive" / "plots" / "metrics" / "val_accuracy.tsv").read_text()
        assert len(tsv.strip().splitlines()) == 1 + 6  # header + every step
        assert tsv.splitlines()[0] == "step\tval_accuracy"  # no wall-clock timestamps


def test_push_puts_prototypes_on_training_embeddings(trained: Path) -> None:
    ckpt = load_checkpoint(trained / layout.train_dir("protomask", 0) / "latest" / "checkpoint.pt")
    assert ckpt.period == "last_layer"
    out = trained / layout.train_dir("protomask", 0)
    pushed = json.loads((out / "latest" / "push.json").read_text())
    assert all(r["distance"] < 1e-3 or r["distance"] >= 0 for r in pushed)


def test_schedule_pushes_every_n_joint_epochs_each_push_followed_by_last_layer_epochs() -> None:
    own = tiny_train_params(warmup_epochs=1, joint_epochs=5, push_every=2, last_layer_epochs=1)
    steps = [(s.period, s.epoch) for s in schedule(own.train, "protopnet")]
    assert steps == [
        ("warmup", 0),
        ("joint", 0),
        ("joint", 1),
        ("push", 0),
        ("last_layer", 0),
        ("joint", 2),
        ("joint", 3),
        ("push", 1),
        ("last_layer", 1),
        ("joint", 4),
        ("push", 2),
        ("last_layer", 2),
    ]
    once = tiny_train_params(joint_epochs=4, push_every=0, last_layer_epochs=0).train
    assert [s.period for s in schedule(once, "protomask")][-2:] == ["joint", "push"]
    exact = tiny_train_params(joint_epochs=4, push_every=2, last_layer_epochs=0).train
    assert [s.period for s in schedule(exact, "protomask")].count(
        "push"
    ) == 2  # no push twice at the end


def test_best_keeps_the_records_of_its_own_push(trained: Path, tmp_path: Path) -> None:
    project = copy_project(trained, tmp_path / "p")
    params = tiny_train_params(joint_epochs=2, push_every=1, last_layer_epochs=1)
    run_training(params, "protopnet", project)
    out = project / layout.train_dir("protopnet", 0)
    best = load_checkpoint(out / "best" / "checkpoint.pt")
    history = json.loads((out / "summary.json").read_text())
    assert best.pushed and history["steps"] == 1 + 2 + 2 * 2
    prototypes = best.model["head.prototypes"]
    for record in json.loads((out / "best" / "push.json").read_text()):  # its own vectors
        assert record["image_id"] > 0 and prototypes[record["prototype"]].isfinite().all()
    pushes = [json.loads((out / w / "push.json").read_text()) for w in ("best", "final")]
    if best.extra["next_step"] <= 5:  # best came after the first push: records differ
        assert pushes[0] != pushes[1]


@pytest.mark.parametrize("kind", ["protopool", "pipnet"])
def test_each_baseline_selects_valid_states_and_resumes_exactly(
    kind: str, trained: Path, tmp_path: Path
) -> None:
    """ProtoPool: only states after its projection are selectable, the projection puts
    every used pool prototype on a training patch of a class that uses it; PIP-Net: only
    states after pretraining (its classifier trained). Both: a run stopped and resumed
    ends with the same weights as one run through."""
    whole = copy_project(trained, tmp_path / "whole")
    params = tiny_train_params()
    summary = run_training(params, kind, whole)
    steps = schedule(params.train, kind)
    assert summary["steps"] == len(steps)
    best = load_checkpoint(whole / layout.train_dir(kind, 0) / "best" / "checkpoint.pt")
    assert best.pushed
    selected = steps[summary["best_step"]].period
    if kind == "protopool":
        assert selected in ("push", "last_layer")
        records = json.loads((whole / layout.train_dir(kind, 0) / "best" / "push.json").read_text())
        placed = [r for r in records if r["image_id"] >= 0]  # -1: no class uses it
        assert placed and all(r["image_id"] > 0 and r["distance"] < 1e9 for r in placed)
    else:
        assert selected != "pretrain" and not any(s.period == "push" for s in steps)
        assert (best.model["classifier.weight"] >= 0).all()  # clamped after each update
    stopped = copy_project(trained, tmp_path / "stopped")
    assert run_training(params, kind, stopped, stop_after=2)["stopped_at_step"] == 1
    run_training(params, kind, stopped)
    assert same_weights(weights(stopped, kind), weights(whole, kind))


def test_rerun_with_same_params_does_nothing_and_new_params_start_over(
    trained: Path, tmp_path: Path
) -> None:
    before = weights(trained, "protomask")
    summary = run_training(tiny_train_params(), "protomask", trained)
    assert same_weights(weights(trained, "protomask"), before)
    assert summary["steps"] == 6
    project = copy_project(trained, tmp_path / "p")
    run_training(tiny_train_params(batch_size=3), "protomask", project)
    assert not same_weights(weights(project, "protomask"), before)


def test_each_seed_trains_into_its_own_folder(trained: Path, tmp_path: Path) -> None:
    project = copy_project(trained, tmp_path / "p")
    before = weights(project, "protomask")
    two = tiny_train_params(seeds=[0, 1])
    summary = run_training(two, "protomask", project, seed=1)
    assert summary["seed"] == 1 and json.loads(
        (project / layout.train_metrics("protomask", 1)).read_text()
    ) == {k: v for k, v in summary.items() if k != "train_images_per_second"}
    seed1 = load_checkpoint(project / layout.train_dir("protomask", 1) / "final" / "checkpoint.pt")
    assert not same_weights(seed1.model, before)
    assert same_weights(weights(project, "protomask"), before)  # seed 0 untouched, and
    assert run_training(two, "protomask", project, seed=0)["steps"] == 6  # still finished
    assert same_weights(weights(project, "protomask"), before)
    with pytest.raises(ParamsError, match=r"seed 5 is not in train.seeds \[0, 1\]"):
        run_training(two, "protomask", project, seed=5)


def test_a_model_is_built_from_the_params_of_one_run() -> None:
    """The default lists two seeds; a network is one run's: the error says how to narrow."""
    from model.training import build_model, with_seed
    from pipeline.params import Params

    params = tiny_train_params(seeds=[0, 1])
    with pytest.raises(ValueError, match=r"train.seeds \[0, 1\]: .*with_seed\(params, seed\)"):
        build_model("protomask", params.train, 3)
    assert build_model("protomask", with_seed(params, 1).train, 3) is not None
    assert Params().train.seeds == [0, 1]  # the default run's seeds (README What you get)


def test_stop_then_resume_equals_uninterrupted(trained: Path, tmp_path: Path) -> None:
    project = copy_project(trained, tmp_path / "p")
    params = tiny_train_params()
    out = project / layout.train_dir("protomask", 0)
    import shutil

    shutil.rmtree(out)
    assert run_training(params, "protomask", project, stop_after=3) == {"stopped_at_step": 2}
    run_training(params, "protomask", project)
    assert same_weights(weights(project, "protomask"), weights(trained, "protomask"))


def test_sigkill_then_rerun_equals_uninterrupted(trained: Path, tmp_path: Path) -> None:
    project = copy_project(trained, tmp_path / "p")
    shutil_rm = __import__("shutil").rmtree
    shutil_rm(project / layout.train_dir("protomask", 0))
    params = tiny_train_params()
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(params)))
    env = stage_env()
    cmd = [sys.executable, "-m", "stages.cli", "train", "--model", "protomask"]
    latest = project / layout.train_dir("protomask", 0) / "latest" / "checkpoint.pt"

    def two_steps_saved() -> bool:
        try:
            return latest.exists() and load_checkpoint(latest).extra["next_step"] >= 2
        except Exception:  # noqa: BLE001 - being replaced right now
            return False

    # The reference runs the same command uninterrupted (same process settings: thread
    # counts change float reductions, so an in-process run is no reference), from a copy
    # made before the kill, alongside the killed run and the rerun.
    reference = copy_project(project, tmp_path / "reference")
    log = tmp_path / "reference.log"
    with log.open("w") as stderr:  # a file, not a pipe: a full pipe would stall the run
        uninterrupted = subprocess.Popen(
            cmd, cwd=reference, env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
        try:
            kill_when(cmd, project, two_steps_saved)
            steps = len(schedule(params.train, "protomask"))
            assert load_checkpoint(latest).extra["next_step"] < steps
            rerun = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
            assert rerun.returncode == 0, rerun.stderr
        finally:
            uninterrupted.wait()
    assert uninterrupted.returncode == 0, log.read_text()[-3000:]
    assert same_weights(weights(project, "protomask"), weights(reference, "protomask"))


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_best_is_a_pushed_state_even_without_last_layer_epochs(
    trained: Path, tmp_path: Path
) -> None:
    from model.evaluation import load_model

    project = copy_project(trained, tmp_path / "p")
    params = tiny_train_params(last_layer_epochs=0)  # steps: warm-up, joint x2, push
    summary = run_training(params, "protomask", project)
    assert summary["best_step"] == 3
    out = project / layout.train_dir("protomask", 0)
    best = load_checkpoint(out / "best" / "checkpoint.pt")
    assert best.pushed and best.period == "push"
    # a pre-push state is never evaluated, whatever file it sits in
    from model.checkpoint import save_checkpoint
    from model.training import build_model

    model = build_model("protomask", params.train, 3)
    save_checkpoint(
        out / "best" / "checkpoint.pt",
        model=model,
        fingerprint=best.fingerprint,
        period="joint",
        pushed=False,
    )
    with pytest.raises(ArtifactError, match="never pushed"):
        load_model(project, "protomask", "best", 3, torch.device("cpu"))


def test_two_clean_runs_give_byte_identical_outputs_whatever_the_speed_settings(
    trained: Path, tmp_path: Path
) -> None:
    import random

    project = copy_project(trained, tmp_path / "p")
    out = project / layout.train_dir("protomask", 0)
    import shutil

    shutil.rmtree(out)
    random.seed(12345)  # whatever state Python's generator is in before the stage
    # speed-only settings differ from the reference run's: the bytes must not
    run_training(tiny_train_params(loader_workers=1), "protomask", project)
    assert tree(out) == tree(trained / layout.train_dir("protomask", 0))
    assert (project / layout.train_metrics("protomask", 0)).read_bytes() == (
        trained / layout.train_metrics("protomask", 0)
    ).read_bytes()


def test_damaged_best_and_truncated_final_are_rebuilt_never_loaded(
    trained: Path, tmp_path: Path
) -> None:
    from tests.faults import flip, prototypes_record, record_offset

    project = copy_project(trained, tmp_path / "p")
    out = project / layout.train_dir("protomask", 0)
    good = tree(out)
    best, final = out / "best" / "checkpoint.pt", out / "final" / "checkpoint.pt"
    flip(best, record_offset(best, "/" + prototypes_record(best)) + 4)
    final.write_bytes(final.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="damaged checkpoint"):
        load_checkpoint(best)
    run_training(tiny_train_params(), "protomask", project)
    assert tree(out) == good


def test_damaged_latest_means_training_again(trained: Path, tmp_path: Path) -> None:
    project = copy_project(trained, tmp_path / "p")
    out = project / layout.train_dir("protomask", 0)
    good = tree(out)
    latest, best = out / "latest" / "checkpoint.pt", out / "best" / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:-100])
    best.write_bytes(b"not a checkpoint")  # not rebuildable from a damaged latest/
    run_training(tiny_train_params(), "protomask", project)
    assert tree(out) == good


def test_resume_gives_the_same_logs_and_folder_as_an_uninterrupted_run(
    trained: Path, tmp_path: Path
) -> None:
    import shutil

    project = copy_project(trained, tmp_path / "p")
    out = project / layout.train_dir("protomask", 0)
    shutil.rmtree(out)
    run_training(tiny_train_params(), "protomask", project, stop_after=4)
    # a kill between saving latest/ and logging the step: the last row never reached dvclive
    tsv = out / "dvclive" / "plots" / "metrics" / "val_accuracy.tsv"
    tsv.write_text("".join(tsv.read_text().splitlines(keepends=True)[:-1]))
    # a kill during a checkpoint save leaves its temporary file
    (out / "latest" / ".checkpoint.pt.tmp-99999").write_bytes(b"half")
    run_training(tiny_train_params(), "protomask", project)
    assert tree(out) == tree(trained / layout.train_dir("protomask", 0))


def test_speed_only_settings_do_not_retrain(trained: Path, tmp_path: Path) -> None:
    project = copy_project(trained, tmp_path / "p")
    out = project / layout.train_dir("protomask", 0)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    summary = run_training(
        tiny_train_params(loader_workers=1, device="auto"),
        "protomask",
        project,
    )
    assert "train_images_per_second" not in summary  # nothing was trained
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == before
