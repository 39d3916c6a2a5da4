"""Open files stay bounded: training over more crop shards than the process may open."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

from pipeline import layout
from pipeline.crop_shards import crop_shard_paths
from pipeline.params import DataParams, SyntheticParams, TrainParams, as_dict
from pipeline.view_datasets import ShardFiles
from tests.e2e import stage_env
from tests.tiny_project import make_segmented_project, tiny_trained_params

# above MAX_OPEN_SHARDS (16) and what a training process opens besides (under 16)
FILE_LIMIT = 32


def many_shards_params():
    """Tiny training params over 36 one-image shards (more than FILE_LIMIT, by a few: each
    shard is an image to segment, crop and train on)."""
    params = tiny_trained_params()
    data = replace(
        DataParams(),
        synthetic=SyntheticParams(num_classes=4, images_per_class=9, image_size=64),
    )
    return replace(params, data=data, segment=replace(params.segment, shard_size=1))


def test_training_over_more_shards_than_open_files_allowed(tmp_path: Path) -> None:
    from pipeline.crops import run_crops

    params = many_shards_params()
    project = make_segmented_project(tmp_path / "p", params)
    run_crops(params, project)
    assert len(crop_shard_paths(project / layout.CROPS_DIR)) > FILE_LIMIT
    (project / "params.yaml").write_text(yaml.safe_dump(as_dict(params)))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT))

    proc = subprocess.run(
        [sys.executable, "-m", "stages.cli", "train", "--model", "protomask"],
        cwd=project,
        env=stage_env(),
        capture_output=True,
        text=True,
        preexec_fn=low_limit,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_handle_cache_closes_the_least_recently_used(cropped_project: Path) -> None:
    names = [p.name for p in crop_shard_paths(cropped_project / layout.CROPS_DIR)]
    assert len(names) >= 3
    files = ShardFiles(cropped_project / layout.CROPS_DIR, max_open=2)
    first = files(names[0])
    files(names[1])
    files(names[0])  # now the most recently used
    files(names[2])  # closes names[1], keeps names[0]
    assert files.open_count == 2 and files(names[0]) is first
    assert files(names[1]).rows([0]).shape[0] == 1  # reopened on demand


class _Counts(torch.utils.data.Dataset):
    """Items (input, label, image id) of a DataLoader whose workers share them by file."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return torch.zeros(2), i % 2, i


class _OpenFilesProbe(torch.nn.Module):
    """Logits of zeros; records this process's open files at each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.open_files: list[int] = []

    def forward(self, inputs: torch.Tensor):
        self.open_files.append(len(os.listdir("/proc/self/fd")))
        return SimpleNamespace(logits=torch.zeros(len(inputs), 2))


def test_validation_keeps_no_file_per_batch_of_the_split() -> None:
    """predict collects ids and labels of every batch: copies, not the workers' shared
    tensors, so open files do not grow with the split (a 10^5-image run held 345)."""
    from model.training import predict

    batches = torch.utils.data.DataLoader(_Counts(), batch_size=1, num_workers=1)
    probe = _OpenFilesProbe()
    ids, labels, _ = predict(probe, batches, torch.device("cpu"), TrainParams())
    assert list(ids) == list(range(40)) and list(labels) == [i % 2 for i in range(40)]
    assert probe.open_files[-1] - probe.open_files[5] <= 2, probe.open_files
