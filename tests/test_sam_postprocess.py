"""Paste, small-region post-processing and RLE of pipeline/segmenters/sam_postprocess.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
pytest.importorskip("pycocotools")

from pycocotools import mask as mask_utils  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.utils.amg import (  # noqa: E402
    MaskData,
    batched_mask_to_box,
    mask_to_rle_pytorch,
    rle_to_mask,
)

from pipeline.segmenters.sam_postprocess import (  # noqa: E402
    paste_masks,
    postprocess_small_regions,
    rle_encode_device,
    rle_encode_host,
)


def random_masks(n: int, h: int, w: int, seed: int, specks: bool = True) -> np.ndarray:
    """Rectangles; with ``specks``, a few flipped pixels (holes and islands) on each."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), bool)
    for m in masks:
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        m[y0 : y0 + rng.integers(2, h // 2 + 3), x0 : x0 + rng.integers(2, w // 2 + 3)] = True
        if specks:
            m[rng.integers(0, h, 3), rng.integers(0, w, 3)] ^= True
    return masks


@pytest.mark.parametrize("max_bytes", [1, 500, 1 << 28])  # one mask, a few, all per chunk
def test_rle_encode_device_equals_host_encoding(max_bytes):
    masks = random_masks(7, 23, 31, 0)
    host = rle_encode_host(masks)
    device = rle_encode_device(torch.as_tensor(masks), max_bytes=max_bytes)
    assert [r["counts"] for r in device] == [r["counts"] for r in host]
    assert (mask_utils.decode(host).transpose(2, 0, 1) == masks).all()
    assert rle_encode_device(torch.zeros(0, 5, 5, dtype=torch.bool)) == []
    assert rle_encode_host(np.zeros((0, 5, 5), bool)) == []


def test_paste_masks_puts_each_kept_mask_at_its_crop():
    a = torch.as_tensor(random_masks(3, 10, 12, 1))  # crop box [0, 0, 12, 10]
    b = torch.as_tensor(random_masks(2, 8, 6, 2))  # crop box [5, 4, 11, 12]
    parts = [([0, 0, 12, 10], a), ([5, 4, 11, 12], b)]
    part = torch.tensor([1, 0, 0])
    local = torch.tensor([1, 2, 0])
    full = paste_masks(parts, part, local, (14, 16), torch.device("cpu"))
    expected = torch.zeros(3, 14, 16, dtype=torch.bool)
    expected[0, 4:12, 5:11] = b[1]
    expected[1, :10, :12] = a[2]
    expected[2, :10, :12] = a[0]
    assert torch.equal(full, expected)


def test_postprocess_small_regions_equals_stock():
    pytest.importorskip("cv2")
    clean = random_masks(6, 30, 40, 3, specks=False)
    specked = clean.copy()
    specked[:, 29, 39] ^= True  # a one-pixel island or hole: removed or filled
    # the first three specked masks clean up into a clean one: NMS keeps the unchanged
    masks = np.concatenate([specked, clean[:3]])
    boxes = batched_mask_to_box(torch.as_tensor(masks))
    ours, our_boxes, keep = postprocess_small_regions(torch.as_tensor(masks), boxes, 5, 0.7)
    assert len(keep) == len(ours)
    data = MaskData(rles=mask_to_rle_pytorch(torch.as_tensor(masks)), boxes=boxes.clone())
    stock = SamAutomaticMaskGenerator.postprocess_small_regions(data, 5, 0.7)
    assert len(ours) == len(stock["rles"]) < len(masks)
    assert any(not (m == masks).all(axis=(1, 2)).any() for m in ours)  # a changed one kept
    assert (ours == np.stack([rle_to_mask(r) for r in stock["rles"]])).all()
    assert torch.equal(our_boxes, stock["boxes"])
