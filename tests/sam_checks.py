"""Checks shared by the SAM parity tests (v1 and SAM 2): small structured images, and
whether a MaskSet equals a stock generator's records."""

from __future__ import annotations

import numpy as np

from pipeline.segmenters.base import MaskSet


def structured_image(h: int, w: int, seed: int) -> np.ndarray:
    """A flat background with a few coloured rectangles."""
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 255, 3)
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        y1, x1 = rng.integers(y0 + 3, h + 1), rng.integers(x0 + 3, w + 1)
        image[y0:y1, x0:x1] = rng.integers(0, 255, 3)
    return image


IMAGES = [structured_image(40, 56, 1), structured_image(64, 48, 2), structured_image(50, 50, 3)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of bool masks a (n, H, W) and b (m, H, W); two empty masks: 1."""
    fa = a.reshape(len(a), -1).astype(np.float64)
    fb = b.reshape(len(b), -1).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def assert_matches_stock(records: list, ours: MaskSet, image: np.ndarray) -> None:
    h, w = image.shape[:2]
    assert (ours.height, ours.width) == (h, w)
    assert len(ours) == len(records), (len(ours), len(records))
    if not records:
        return
    stock_masks = np.stack([r["segmentation"] for r in records])
    our_masks = ours.decode()
    assert our_masks.shape == stock_masks.shape
    iou = mask_iou(our_masks, stock_masks)
    # greedy one-to-one matching by IoU
    pairs, used = [], set()
    for i in np.argsort(-iou.max(1)):
        j = max((j for j in range(len(records)) if j not in used), key=lambda j: iou[i, j])
        used.add(j)
        pairs.append((i, j))
    for i, j in pairs:
        rec = records[j]
        assert iou[i, j] >= 0.99, (i, j, iou[i, j])
        assert abs(ours.predicted_iou[i] - rec["predicted_iou"]) <= 1e-4
        # stability of an empty mask is 0/0 = nan in both (kept when the threshold is 0)
        assert np.isclose(
            ours.stability_score[i], rec["stability_score"], rtol=0, atol=1e-4, equal_nan=True
        ), (ours.stability_score[i], rec["stability_score"])
        x, y, bw, bh = rec["bbox"]  # stock: XYWH of the inclusive box
        assert ours.boxes[i].tolist() == [x, y, x + bw, y + bh]
        np.testing.assert_allclose(ours.points[i], rec["point_coords"][0], atol=1e-4)
        assert ours.crop_boxes[i].tolist() == rec["crop_box"]
        assert ours.areas[i] == rec["area"]
