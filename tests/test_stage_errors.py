"""One-line stage errors: from DataLoader workers, and for devices a machine lacks."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import ImageDecodeError, ParamsError
from stages.common import stage_command


class BrokenImages(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise ImageDecodeError("images/001.png", "truncated image")


def test_an_image_error_in_a_dataloader_worker_ends_the_stage_in_one_line(
    tmp_path, monkeypatch
) -> None:
    @stage_command("probe", help="reads broken images through a worker")
    def probe(params) -> None:
        for _ in DataLoader(BrokenImages(), num_workers=1):
            pass

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    result = CliRunner().invoke(probe, [])
    assert result.exit_code == 1
    assert result.output.strip() == "protomask probe: images/001.png: truncated image"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key", ["segment.device", "train.device", "evaluate.device"])
def test_a_gpu_asked_for_without_one_is_named(key: str) -> None:
    from dataclasses import replace

    from model.training import resolve_device
    from pipeline.params import Params

    with pytest.raises(ParamsError, match=f"^{key} is cuda:1 but no CUDA device is available"):
        resolve_device("cuda:1", key)
    section, name = key.split(".")
    bad = replace(Params(), **{section: replace(getattr(Params(), section), **{name: "gpu"})})
    with pytest.raises(ParamsError, match=f"^{key} must be one of auto"):
        bad.check()
    assert resolve_device("auto", key) == torch.device("cpu")
