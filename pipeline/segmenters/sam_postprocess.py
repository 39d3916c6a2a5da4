"""One image's kept SAM masks, from crop-sized candidates to image-sized COCO RLE.

* :func:`to_mask_set`: the records of one image as a :class:`MaskSet` (the tail of stock
  ``SamAutomaticMaskGenerator.generate``, without its per-mask host work);
* :func:`paste_masks`: the kept masks of every crop pasted into image-sized masks on the
  device (stock ``uncrop_masks``, for all crops at once);
* :func:`postprocess_small_regions`: stock
  ``SamAutomaticMaskGenerator.postprocess_small_regions`` on image-sized masks;
* :func:`rle_encode_device` / :func:`rle_encode_host`: COCO RLE of all masks of an
  image with one host transfer and one ``pycocotools.mask.encode`` call per chunk.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils
from segment_anything.utils.amg import MaskData, batched_mask_to_box, remove_small_regions
from torchvision.ops.boxes import batched_nms

from pipeline.segmenters.base import MaskSet

__all__ = [
    "paste_masks",
    "postprocess_small_regions",
    "rle_encode_device",
    "rle_encode_host",
    "to_mask_set",
]


def to_mask_set(
    full: torch.Tensor,
    data: MaskData,
    image_size: tuple[int, int],
    min_area: int,
    nms_thresh: float,
) -> MaskSet:
    """Small-region post-processing (if ``min_area > 0``), RLE and the records of one image.

    Args:
        full: the image-sized bool masks (n, h, w), on the device.
        data: their records in the image frame: ``boxes``, ``iou_preds``,
            ``stability_score``, ``points``, ``crop_boxes`` (XYXY); filtered in place.
        image_size: (h, w).
        min_area: ``min_mask_region_area``.
        nms_thresh: IoU threshold of the NMS after the post-processing.

    Returns:
        the image's MaskSet.
    """
    if min_area > 0:
        masks_np, boxes, keep = postprocess_small_regions(full, data["boxes"], min_area, nms_thresh)
        data.filter(keep)
        data["boxes"] = boxes
        rles = rle_encode_host(masks_np)
        areas = masks_np.reshape(masks_np.shape[0], -1).sum(1, dtype=np.int64)
    else:
        rles = rle_encode_device(full)
        areas = full.flatten(1).sum(1).cpu().numpy().astype(np.int64)
    xywh = data["crop_boxes"].clone()
    xywh[:, 2:] -= xywh[:, :2]
    return MaskSet(
        height=image_size[0],
        width=image_size[1],
        rles=[r["counts"] for r in rles],
        boxes=data["boxes"].cpu().numpy().astype(np.int32),
        areas=areas,
        predicted_iou=data["iou_preds"].float().cpu().numpy(),
        stability_score=data["stability_score"].float().cpu().numpy(),
        points=data["points"].cpu().numpy().astype(np.float32),
        crop_boxes=xywh.numpy().astype(np.int32),
    )


def paste_masks(
    parts: list[tuple[list[int], torch.Tensor]],
    part: torch.Tensor,
    local: torch.Tensor,
    image_size: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """Image-sized bool masks (n, h, w) on ``device`` from crop-sized ones.

    Args:
        parts: per crop: its box [x0, y0, x1, y1] and its masks (m, y1 - y0, x1 - x0).
        part: for each output mask, its index in ``parts`` (host, int64 (n,)).
        local: for each output mask, its row in that part's masks (host, int64 (n,)).
        image_size: (h, w).
        device: where the result lives.

    Returns:
        one image-sized mask per entry of ``part``, in that order.
    """
    full = torch.zeros((part.shape[0], *image_size), dtype=torch.bool, device=device)
    for p, (box, masks) in enumerate(parts):
        rows = torch.nonzero(part == p).flatten()
        if rows.numel() == 0:
            continue
        x0, y0, x1, y1 = box
        full[rows.to(device), y0:y1, x0:x1] = masks[local[rows].to(masks.device)]
    return full


def postprocess_small_regions(
    full: torch.Tensor, boxes: torch.Tensor, min_area: int, nms_thresh: float
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Remove small holes, then small islands, then duplicates (host, per mask).

    As stock: a changed mask scores 0, an unchanged one 1, box NMS at ``nms_thresh``
    prefers unchanged masks, and only kept changed masks get their new mask and box.

    Args:
        full: image-sized bool masks (n, h, w), any device.
        boxes: their XYXY boxes (n, 4).
        min_area: ``min_mask_region_area``.
        nms_thresh: IoU threshold of the NMS.

    Returns:
        the kept masks (host), their boxes (host) and the indices kept.
    """
    masks_np = full.cpu().numpy()
    if masks_np.shape[0] == 0:
        return masks_np, boxes, torch.arange(0)
    new_masks, scores = [], []
    for mask in masks_np:
        mask, changed = remove_small_regions(mask, min_area, mode="holes")
        unchanged = not changed
        mask, changed = remove_small_regions(mask, min_area, mode="islands")
        unchanged = unchanged and not changed
        new_masks.append(mask)
        scores.append(float(unchanged))
    new_boxes = batched_mask_to_box(torch.as_tensor(np.stack(new_masks)))
    scores_t = torch.as_tensor(scores)
    keep = batched_nms(new_boxes.float(), scores_t, torch.zeros(len(new_boxes)), nms_thresh)
    boxes = boxes.cpu().clone()
    out = masks_np.copy()
    changed = scores_t[keep] == 0.0
    for i in keep[changed].tolist():  # only masks that were modified and kept
        out[i] = new_masks[i]
        boxes[i] = new_boxes[i]
    return out[keep.numpy()], boxes[keep], keep


def rle_encode_device(full: torch.Tensor, max_bytes: int = 1 << 28) -> list[dict]:
    """COCO RLE of image-sized bool masks on any device.

    Args:
        full: bool masks (N, H, W).
        max_bytes: at most this many mask bytes per transfer and ``encode`` call.

    Returns:
        one pycocotools RLE dict per mask.
    """
    n, h, w = full.shape
    if n == 0:
        return []
    per_chunk = max(1, max_bytes // max(1, h * w))
    rles = []
    for s in range(0, n, per_chunk):
        # (n, W, H) C-order is the (H, W, n) Fortran-order layout pycocotools wants
        chunk = full[s : s + per_chunk].transpose(1, 2).contiguous().view(torch.uint8).cpu().numpy()
        rles.extend(mask_utils.encode(chunk.transpose(2, 1, 0)))
    return rles


def rle_encode_host(masks: np.ndarray) -> list[dict]:
    """COCO RLE of bool masks (N, H, W) on the host, one ``pycocotools`` call."""
    if masks.shape[0] == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
