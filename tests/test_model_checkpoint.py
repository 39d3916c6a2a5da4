"""Checkpoints: atomic writes, weights_only loading, exact restoration of RNG streams."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from model.backbones import build_backbone
from model.checkpoint import load_checkpoint, restore, save_checkpoint
from model.protomask import ProtoMask
from pipeline.errors import ArtifactError
from tests.faults import flip, prototypes_record, record_offset

torch.set_num_threads(1)


def setup(seed: int):
    torch.manual_seed(seed)
    model = ProtoMask(
        build_backbone("tiny_cnn", "none"), 2, prototypes_per_class=2, prototype_dim=4, seed=seed
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def step(model, opt, sched) -> None:
    out = model(torch.randn(2, 2, 3, 8, 8))
    out.logits.sum().backward()
    opt.step()
    opt.zero_grad()
    sched.step()


def draws() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.normal(),
        torch.rand(4).tolist(),
        torch.randn(2).tolist(),
    )


def test_round_trip_restores_weights_optimiser_and_rng_streams(tmp_path: Path) -> None:
    model, opt, sched = setup(0)
    for _ in range(3):
        step(model, opt, sched)
    random.seed(5)
    np.random.seed(6)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.normal()  # and in numpy's
    params = {"train": {"lr": 0.003, "backbone": "tiny_cnn", "steps": [1, 2]}, "seed": None}
    path = tmp_path / "ckpt" / "latest.pt"
    save_checkpoint(
        path,
        model=model,
        optimizers={"main": opt},
        schedulers={"main": sched},
        params=params,
        fingerprint="abc",
        period="joint",
        epoch=3,
        extra={"best_val": 0.5},
    )
    expected_draws = draws()
    step(model, opt, sched)
    expected_state = {k: v.clone() for k, v in model.state_dict().items()}

    # a fresh process: other weights, other RNG positions
    model2, opt2, sched2 = setup(1)
    random.seed(99)
    np.random.seed(99)
    ckpt = load_checkpoint(path)
    assert (ckpt.period, ckpt.epoch, ckpt.fingerprint) == ("joint", 3, "abc")
    assert ckpt.params == params and ckpt.extra == {"best_val": 0.5}
    restore(ckpt, model=model2, optimizers={"main": opt2}, schedulers={"main": sched2})
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == [0.005]
    assert draws() == expected_draws
    step(model2, opt2, sched2)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, expected_state[k]), k
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]  # no temporary left


def test_checkpoint_is_weights_only_loadable_and_atomic(tmp_path: Path) -> None:
    model, opt, sched = setup(0)
    path = tmp_path / "best.pt"
    save_checkpoint(path, model=model, epoch=1)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"params\.out"):  # would not load weights_only
        save_checkpoint(path, model=model, params={"out": Path("x")}, epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
    save_checkpoint(path, model=model, epoch=2, with_rng=False)
    assert load_checkpoint(path).epoch == 2 and load_checkpoint(path).rng is None


def test_unusable_checkpoints_raise_artifact_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"format": "protomask-checkpoint", "version": 99}, tmp_path / "v99.pt")
    with pytest.raises(ArtifactError, match="version 99 unknown"):
        load_checkpoint(tmp_path / "v99.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="not a protomask checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_flipped_bytes_in_the_weights_are_refused_not_loaded(tmp_path: Path) -> None:
    model, opt, sched = setup(0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=model, fingerprint="f", pushed=True)
    assert load_checkpoint(path).pushed is True
    # torch.load alone would load these flipped prototype values without a word
    flip(path, record_offset(path, "/" + prototypes_record(path)) + 4)
    assert not torch.equal(
        torch.load(path, weights_only=True)["model"]["head.prototypes"],
        model.state_dict()["head.prototypes"],
    )
    with pytest.raises(
        ArtifactError,
        match=r"checkpoint.pt: damaged checkpoint \(checksum "
        r"error in .*data/",
    ):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    model, _, _ = setup(0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=model)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="damaged checkpoint .*rerun train") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_same_state_same_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        model, opt, sched = setup(0)
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        save_checkpoint(tmp_path / name / "checkpoint.pt", model=model, optimizers={"o": opt})
    assert (tmp_path / "a" / "checkpoint.pt").read_bytes() == (
        tmp_path / "b" / "checkpoint.pt"
    ).read_bytes()
