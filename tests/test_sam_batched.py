"""BatchedSamGenerator gives the stock SamAutomaticMaskGenerator's masks (tiny SAM, CPU).

The fast paths' own parity tests sit beside their modules: tests/test_sam_encoder.py
(fused attention), tests/test_sam_decoder.py (re-associated decoder) and
tests/test_sam_postprocess.py (paste, small regions, RLE).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
pytest.importorskip("pycocotools")

from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

from pipeline.segmenters.sam_batched import BatchedSamGenerator  # noqa: E402
from pipeline.segmenters.tiny_sam import build_tiny_sam  # noqa: E402
from tests.sam_checks import IMAGES, assert_matches_stock  # noqa: E402

# thresholds low enough that the random tiny model's masks survive, high enough that
# the predicted-IoU and stability filters both drop some
PARAMS = dict(points_per_side=8, pred_iou_thresh=0.45, stability_score_thresh=0.5)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return build_tiny_sam(seed=0)


def stock_records(model, image, **params):
    gen = SamAutomaticMaskGenerator(model, output_mode="binary_mask", **params)
    return gen.generate(image)


def check_batch(model, params, images=IMAGES, **ours_kw) -> list:
    gen = BatchedSamGenerator(model, **params, **ours_kw)
    results = gen.generate(images)
    assert len(results) == len(images)
    counts = []
    for image, ours in zip(images, results, strict=False):
        records = stock_records(model, image, **params)
        assert_matches_stock(records, ours, image)
        counts.append(len(records))
    return counts


@pytest.mark.parametrize("crop_n_layers", [0, 1])
def test_batch_matches_stock(model, crop_n_layers):
    counts = check_batch(model, dict(PARAMS, crop_n_layers=crop_n_layers))
    assert all(n > 0 for n in counts), counts  # not vacuous


def test_crop_layers_with_downscaled_grids_and_small_decode_batches(model):
    """Decode batches (37 prompts) that straddle crops and images; stock decoder path too."""
    params = dict(
        PARAMS,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        crop_overlap_ratio=0.25,
        box_nms_thresh=0.8,
    )
    counts = check_batch(
        model, params, points_per_batch=37, encoder_batch_size=3, fast_encoder=True
    )
    assert sum(counts) > 0
    counts_stock_decoder = check_batch(model, params, points_per_batch=37, fast_decoder=False)
    assert counts_stock_decoder == counts


def test_stock_encoder_path_matches_stock(model):
    """``fast_encoder=False`` (the stock ImageEncoderViT) gives the stock records too."""
    counts = check_batch(model, dict(PARAMS, crop_n_layers=1), IMAGES[:2], fast_encoder=False)
    assert sum(counts) > 0


def test_single_image_batches_equal_one_big_batch(model):
    params = dict(PARAMS, crop_n_layers=1)
    gen = BatchedSamGenerator(model, **params)
    together = gen.generate(IMAGES)
    for image, batched in zip(IMAGES, together, strict=False):
        (alone,) = gen.generate([image])
        assert len(alone) == len(batched) > 0
        np.testing.assert_array_equal(alone.decode(), batched.decode())
        np.testing.assert_allclose(alone.predicted_iou, batched.predicted_iou, atol=1e-5)


def test_min_mask_region_area_matches_stock(model):
    params = dict(PARAMS, crop_n_layers=1, min_mask_region_area=30)
    counts = check_batch(model, params)
    assert sum(counts) > 0
    # the post-processing really changed something on these images
    plain = [len(stock_records(model, im, **dict(params, min_mask_region_area=0))) for im in IMAGES]
    assert plain != counts


def test_no_masks_gives_empty_sets(model):
    # stock crashes on crop layers when nothing survives; ours returns empty sets
    gen = BatchedSamGenerator(model, **dict(PARAMS, pred_iou_thresh=5.0, crop_n_layers=1))
    results = gen.generate(IMAGES[:2])
    for image, ours in zip(IMAGES, results, strict=False):
        assert len(ours) == 0
        assert (ours.height, ours.width) == image.shape[:2]
        assert ours.boxes.shape == (0, 4) and ours.boxes.dtype == np.int32
        assert ours.decode().shape == (0,) + image.shape[:2]
    assert stock_records(model, IMAGES[0], **dict(PARAMS, pred_iou_thresh=5.0)) == []


def test_record_format(model):
    (ours,) = BatchedSamGenerator(model, **PARAMS).generate([IMAGES[1]])
    n = len(ours)
    assert n > 0
    h, w = IMAGES[1].shape[:2]
    assert ours.boxes.dtype == np.int32 and ours.boxes.shape == (n, 4)
    assert ours.crop_boxes.dtype == np.int32 and ours.crop_boxes.shape == (n, 4)
    assert ours.areas.dtype == np.int64
    assert ours.predicted_iou.dtype == np.float32 and ours.stability_score.dtype == np.float32
    assert ours.points.dtype == np.float32 and ours.points.shape == (n, 2)
    masks = ours.decode()
    for i, rle in enumerate(ours.rles):
        assert isinstance(rle, bytes)
        ys, xs = np.nonzero(masks[i])
        assert ours.boxes[i].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert ours.areas[i] == masks[i].sum()
    assert (ours.crop_boxes == [0, 0, w, h]).all()


def test_tiny_sam_is_deterministic(model):
    again = build_tiny_sam(seed=0)
    other = build_tiny_sam(seed=1)
    state, same, diff = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert not all(torch.equal(state[k], diff[k]) for k in state)
    assert model.image_encoder.img_size == 128


def test_bad_inputs(model):
    gen = BatchedSamGenerator(model, **PARAMS)
    with pytest.raises(ValueError):
        gen.generate([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError):
        gen.generate([np.zeros((10, 10, 3), np.float32)])
    assert gen.generate([]) == []
    with pytest.warns(UserWarning):
        BatchedSamGenerator(model, autocast_bf16=True)
