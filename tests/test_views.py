"""View maths on hand-built masks: boxes, usability, order, padding, fallback, fill, resize,
the planned views cut in one call."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.segmenters.base import MaskSet, boxes_of
from pipeline.views import (
    apply_fill,
    boxes_and_areas,
    cut_planned_views,
    cut_view,
    interpolation_for,
    order_masks,
    pad_cyclically,
    plan_views,
    resize_square,
    usable_masks,
    view_owners,
)


def mask_set(masks: np.ndarray, iou: list[float] | None = None) -> MaskSet:
    n = len(masks)
    return MaskSet.from_binary_masks(
        masks, np.asarray(iou or [0.5] * n), np.full(n, 0.9), np.zeros((n, 2))
    )


def test_boxes_from_rle_are_inclusive_at_borders_and_for_one_pixel() -> None:
    masks = np.zeros((4, 5, 7), bool)
    masks[0, 4, 6] = True  # one pixel, bottom-right corner
    masks[1] = True  # the whole image
    masks[2, 0, 0] = True  # one pixel, top-left corner
    masks[3, 1:3, 2:7] = True  # touches the right border
    boxes, areas = boxes_and_areas(5, 7, mask_set(masks).rles)
    assert boxes.tolist() == [[6, 4, 6, 4], [0, 0, 6, 4], [0, 0, 0, 0], [2, 1, 6, 2]]
    assert boxes.tolist() == boxes_of(masks).tolist()
    assert areas.tolist() == [1, 35, 1, 10]


def test_empty_mask_is_never_usable() -> None:
    boxes, areas = boxes_and_areas(5, 7, mask_set(np.zeros((1, 5, 7), bool)).rles)
    assert areas.tolist() == [0]
    assert not usable_masks(boxes, 0).any()


def test_min_box_size_drops_boxes_at_most_that_wide_or_tall() -> None:
    boxes = np.array(
        [
            [3, 3, 3, 3],  # 1 x 1
            [0, 0, 1, 9],  # 2 wide, 10 tall
            [0, 0, 9, 1],  # 10 wide, 2 tall
            [0, 0, 2, 2],
        ]
    )  # 3 x 3
    assert usable_masks(boxes, 0).tolist() == [True, True, True, True]
    assert usable_masks(boxes, 1).tolist() == [False, True, True, True]
    assert usable_masks(boxes, 2).tolist() == [False, False, False, True]


def test_order_is_score_then_area_then_row() -> None:
    scores = np.array([5.0, 7.0, 5.0, np.nan, 5.0])
    areas = np.array([10, 1, 30, 99, 10])
    assert order_masks(scores, areas).tolist() == [1, 2, 0, 4, 3]


def test_padding_repeats_cyclically_and_records_the_original() -> None:
    chosen, dup = pad_cyclically(np.array([7, 4, 9]), 8)
    assert chosen.tolist() == [7, 4, 9, 7, 4, 9, 7, 4]
    assert dup.tolist() == [-1, -1, -1, 0, 1, 2, 0, 1]
    chosen, dup = pad_cyclically(np.array([7, 4, 9, 1]), 2)
    assert chosen.tolist() == [7, 4] and dup.tolist() == [-1, -1]


def test_plan_keeps_the_largest_usable_masks_and_pads() -> None:
    masks = np.zeros((4, 10, 12), bool)
    masks[0, 2:4, 2:4] = True  # 2 x 2, area 4
    masks[1, 0:9, 0:9] = True  # 9 x 9, area 81
    masks[2, 5, 0:12] = True  # 1 px tall: dropped at min_box_size 1
    masks[3, 1:7, 4:10] = True  # 6 x 6, area 36
    ms = mask_set(masks, iou=[0.9, 0.1, 0.5, 0.3])
    boxes, areas = boxes_and_areas(10, 12, ms.rles)
    plan = plan_views(boxes, areas, areas, width=12, height=10, num_views=5, min_box_size=1)
    assert plan.mask_index.tolist() == [1, 3, 0, 1, 3]
    assert plan.duplicate_of.tolist() == [-1, -1, -1, 0, 1]
    assert plan.boxes[0].tolist() == [0, 0, 8, 8] and plan.distinct == 3 and not plan.fallback
    by_iou = plan_views(
        boxes, areas, ms.predicted_iou, width=12, height=10, num_views=2, min_box_size=1
    )
    assert by_iou.mask_index.tolist() == [0, 3]


def test_no_usable_mask_falls_back_to_the_whole_image() -> None:
    masks = np.zeros((1, 10, 12), bool)
    masks[0, 3, 3] = True
    boxes, areas = boxes_and_areas(10, 12, mask_set(masks).rles)
    for b, a in ((boxes, areas), (np.zeros((0, 4)), np.zeros(0))):
        plan = plan_views(b, a, a, width=12, height=10, num_views=3, min_box_size=1)
        assert plan.fallback and plan.distinct == 1
        assert plan.mask_index.tolist() == [-1, -1, -1]
        assert plan.duplicate_of.tolist() == [-1, 0, 0]
        assert plan.boxes.tolist() == [[0, 0, 11, 9]] * 3


def test_fill_modes_on_a_hand_built_mask() -> None:
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    box = np.array([0, 0, 3, 3])
    original = cut_view(image, box, 4, mask=mask, fill="original")
    assert np.array_equal(original, image)
    zero = cut_view(image, box, 4, mask=mask, fill="zero")
    assert np.array_equal(zero[mask], image[mask]) and not zero[~mask].any()
    mean = cut_view(image, box, 4, mask=mask, fill="mean")
    colour = np.rint(image[mask].mean(axis=0)).astype(np.uint8)
    assert np.array_equal(mean[mask], image[mask])
    assert (mean[~mask] == colour).all()
    with pytest.raises(ValueError, match="unknown fill mode"):
        apply_fill(image, mask, "blur")


def test_view_cuts_the_box_only() -> None:
    image = np.zeros((10, 12, 3), np.uint8)
    image[2:5, 6:9] = 200  # the box, inclusive (6, 2, 8, 4)
    view = cut_view(image, np.array([6, 2, 8, 4]), 9)
    assert view.shape == (9, 9, 3) and view.dtype == np.uint8 and (view == 200).all()
    corner = cut_view(image, np.array([11, 9, 11, 9]), 8)  # 1-px box at the corner
    assert corner.shape == (8, 8, 3) and not corner.any()


def test_resize_uses_area_when_shrinking_and_ignores_aspect() -> None:
    assert interpolation_for(20, 10, 16) == cv2.INTER_AREA
    assert interpolation_for(10, 16, 16) == cv2.INTER_LINEAR
    blocks = np.kron(np.array([[0, 100], [200, 50]], np.uint8), np.ones((4, 8), np.uint8))
    region = np.repeat(blocks[:, :, None], 3, axis=2)  # 8 x 16, 2 x 2 blocks
    small = resize_square(region, 2)
    assert small[:, :, 0].tolist() == [[0, 100], [200, 50]]
    shrunk = resize_square(
        np.repeat(np.arange(16, dtype=np.uint8)[None, :, None] * 10, 3, 2).repeat(4, axis=0), 8
    )
    assert shrunk.shape == (8, 8, 3) and shrunk[0, :, 0].tolist() == [
        5,
        25,
        45,
        65,
        85,
        105,
        125,
        145,
    ]


@pytest.mark.parametrize("fill", ["original", "zero", "mean"])
def test_planned_views_are_the_boxes_cut_with_their_own_masks(fill: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)
    masks = np.zeros((2, 10, 12), bool)
    masks[0, 1:6, 2:9] = True
    masks[1, 4:10, 0:5] = True
    ms = mask_set(masks)
    plan = plan_views(
        *boxes_and_areas(10, 12, ms.rles),
        np.zeros(2),
        width=12,
        height=10,
        num_views=4,
        min_box_size=1,
    )
    k = plan.distinct
    views = cut_planned_views(image, plan.boxes[:k], plan.mask_index[:k], ms.rles, 6, fill)
    assert views.shape == (k, 6, 6, 3) and views.dtype == np.uint8
    for v in range(k):
        mask = masks[plan.mask_index[v]]
        assert np.array_equal(views[v], cut_view(image, plan.boxes[v], 6, mask=mask, fill=fill))
    assert view_owners(plan.duplicate_of).tolist() == [0, 1, 0, 1]


def test_the_whole_image_view_is_the_resized_image_whatever_the_fill() -> None:
    image = np.random.default_rng(1).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    whole = cut_planned_views(image, np.array([[0, 0, 11, 9]]), np.array([-1]), [], 8, "zero")
    assert np.array_equal(whole[0], resize_square(image, 8))
