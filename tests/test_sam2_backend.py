"""segment.backend sam2: BatchedSam2Generator gives sam2's SAM2AutomaticMaskGenerator's
masks (tiny random SAM 2, CPU, fp32), and the loader's errors name the file."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # noqa: E402

from pipeline.errors import ProtomaskError  # noqa: E402
from pipeline.params import Sam2Params, SegmentParams  # noqa: E402
from pipeline.segmenters.sam2_batched import BatchedSam2Generator, feature_sizes  # noqa: E402
from pipeline.segmenters.sam2_loading import build_sam2_segmenter, load_sam2  # noqa: E402
from pipeline.segmenters.tiny_sam2 import build_tiny_sam2  # noqa: E402
from tests.sam_checks import IMAGES, assert_matches_stock  # noqa: E402

# low enough that the random tiny model's masks survive, high enough that the
# predicted-IoU and stability filters both drop some
PARAMS = dict(
    points_per_side=8, pred_iou_thresh=0.3, stability_score_thresh=0.5, stability_score_offset=0.5
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script inside sam2
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the tests: the calibration's rounding depends on it
    yield build_tiny_sam2(seed=0)
    torch.set_num_threads(before)


def stock_records(model, image, **params) -> list:
    gen = SAM2AutomaticMaskGenerator(model, output_mode="binary_mask", **params)
    gen.predictor._bb_feat_sizes = feature_sizes(model)  # sam2 assumes a 1024 px input
    return gen.generate(image)


@pytest.mark.parametrize(
    "params, ours",
    [
        (dict(PARAMS, crop_n_layers=0), dict(points_per_batch=64)),
        (
            dict(
                PARAMS,
                crop_n_layers=1,
                crop_n_points_downscale_factor=2,
                crop_overlap_ratio=0.25,
                box_nms_thresh=0.8,
            ),
            dict(points_per_batch=37, encoder_batch_size=3),  # batches straddle crops, images
        ),
    ],
)
def test_batch_matches_stock(model, params, ours):
    results = BatchedSam2Generator(model, **params, **ours).generate(IMAGES)
    assert len(results) == len(IMAGES)
    counts = []
    for image, mask_set in zip(IMAGES, results, strict=True):
        records = stock_records(model, image, **params)
        assert_matches_stock(records, mask_set, image)
        counts.append(len(records))
    assert sum(counts) > 0, counts  # not vacuous
    # the filters really drop masks: without them more survive
    loose = dict(params, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert len(stock_records(model, IMAGES[0], **loose)) > counts[0]


def test_nothing_passes_gives_empty_sets(model):
    gen = BatchedSam2Generator(model, **dict(PARAMS, pred_iou_thresh=1.0, crop_n_layers=1))
    for image, ours in zip(IMAGES[:2], gen.generate(IMAGES[:2]), strict=True):
        assert len(ours) == 0 and (ours.height, ours.width) == image.shape[:2]


def test_read_only_images_reach_sam2_as_writable_crops(model, monkeypatch):
    """Decoded images are read-only arrays; sam2's ToTensor warns on those (once per
    process, so the warning itself cannot be the check): every crop it gets is writable."""
    gen = BatchedSam2Generator(model, **dict(PARAMS, crop_n_layers=0))
    writable: list[bool] = []
    set_image_batch = gen.predictor.set_image_batch

    def spy(pixels):
        writable.extend(p.flags.writeable for p in pixels)
        return set_image_batch(pixels)

    monkeypatch.setattr(gen.predictor, "set_image_batch", spy)
    frozen = IMAGES[0].copy()
    frozen.flags.writeable = False
    (ours,) = gen.generate([frozen])
    assert writable and all(writable), writable
    (expected,) = gen.generate([IMAGES[0].copy()])
    assert ours.rles == expected.rles


def test_tiny_sam2_is_deterministic(model):
    state, again = model.state_dict(), build_tiny_sam2(seed=0).state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)


def sam2_params(**kw) -> SegmentParams:
    base = SegmentParams()
    return dataclasses.replace(
        base, backend="sam2", device="cpu", sam2=dataclasses.replace(base.sam2, **kw)
    )


def test_loader_errors_name_the_file(tmp_path, model):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ProtomaskError, match=r"segment\.sam2\.checkpoint: .*nope\.pt"):
        load_sam2(sam2_params(config="tiny", checkpoint=str(missing)), "cpu")
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    with pytest.raises(ProtomaskError, match=r"segment\.sam2\.config: .*absent\.yaml"):
        load_sam2(sam2_params(config=str(tmp_path / "absent.yaml"), checkpoint=str(ckpt)), "cpu")
    other = tmp_path / "other.pt"
    state = dict(model.state_dict(), no_mem_embed=torch.zeros(1, 1, 7))
    torch.save({"model": state}, other)
    with pytest.raises(ProtomaskError, match=r"other\.pt does not hold .* no_mem_embed"):
        load_sam2(sam2_params(config="tiny", checkpoint=str(other)), "cpu")


def test_segmenter_from_params_equals_generator(tmp_path, model):
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    params = sam2_params(
        config="tiny", checkpoint=str(ckpt), crop_n_layers=0, min_mask_region_area=0, **PARAMS
    )
    (ours,) = build_sam2_segmenter(params)([IMAGES[1]])
    (direct,) = BatchedSam2Generator(model, **dict(PARAMS, crop_n_layers=0)).generate([IMAGES[1]])
    assert len(ours) == len(direct) > 0
    np.testing.assert_array_equal(ours.decode(), direct.decode())


def test_segment_shard_writes_the_generators_masks(tmp_path, model, cropped_project):
    """segment.backend sam2 through the segment stage's planning and shard task (in this
    process, on the shared tiny project's first shard): the shard says sam2 and holds the
    generator's masks."""
    from pipeline.imageio import load_rgb
    from pipeline.mask_shards import MaskShard
    from pipeline.segment import plan_tasks, segment_shard
    from tests.tiny_project import tiny_params

    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    sam2 = dict(PARAMS, config="tiny", checkpoint=str(ckpt), crop_n_layers=0)
    params = tiny_params(
        backend="sam2", device="cpu", sam2=dataclasses.replace(Sam2Params(), **sam2)
    )
    task = plan_tasks(params, cropped_project, tmp_path)[0]
    summary = segment_shard(task)
    assert summary.images > 0 and summary.masks > 0 and not summary.failures
    with MaskShard(task.out_path) as shard:
        assert shard.backend == "sam2"
        stored = shard.masks(task.image_ids[0])
    image = load_rgb(Path(task.data_root) / task.paths[0])
    gen = dict(PARAMS, crop_n_layers=0, min_mask_region_area=10)
    (direct,) = BatchedSam2Generator(model, **gen).generate([image])
    assert stored.rles == direct.rles
