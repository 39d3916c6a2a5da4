"""The report's pictures: tiles enlarged to a readable size, saliency overlays with the
S and G outlines, boxes, and PNGs written deterministically (no metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from PIL import Image

from model.metrics import top_fraction_mask
from pipeline.atomic import atomic_file
from pipeline.drawing import draw_boxes

TILE = 128  # displayed side of a tile in px (PNGs are at least this large)


def upscale(rgb: np.ndarray, side: int = TILE) -> np.ndarray:
    """Enlarge small images (nearest for tiny crops, keeping aspect) so tiles are readable."""
    h, w = rgb.shape[:2]
    f = max(1, int(np.ceil(side / max(h, w))))
    if f == 1:
        return rgb
    return cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_NEAREST)


def overlay(
    rgb: np.ndarray, saliency: np.ndarray, top_fraction: float, g: Optional[np.ndarray] = None
) -> np.ndarray:
    """rgb (H, W, 3) uint8 with the saliency (H, W) heat map, S outlined white, G green."""
    sal = np.clip(np.nan_to_num(saliency.astype(np.float64)), 0, None)
    positive = sal[sal > 0]
    # scale to a high percentile, not the maximum: a few extreme LRP pixels would leave
    # everything else invisible
    peak = float(np.percentile(positive, 99.5)) if positive.size else 0.0
    norm = np.clip(sal / peak, 0, 1) if peak > 0 else sal
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    alpha = (0.85 * norm)[:, :, None]  # linear: weak diffuse relevance stays faint
    out = (rgb * (1 - alpha) + heat * alpha).astype(np.uint8)
    f = max(1, int(np.ceil(TILE / max(rgb.shape[:2]))))
    out = cv2.resize(out, (rgb.shape[1] * f, rgb.shape[0] * f), interpolation=cv2.INTER_NEAREST)
    s = top_fraction_mask(torch.from_numpy(saliency.astype(np.float32)), top_fraction).numpy()
    _outline(out, s, f, (255, 255, 255))
    if g is not None:
        _outline(out, g, f, (0, 200, 0))
    return out


def _outline(canvas: np.ndarray, mask: np.ndarray, factor: int, colour: tuple) -> None:
    if not mask.any():
        return
    big = cv2.resize(
        mask.astype(np.uint8), (canvas.shape[1], canvas.shape[0]), interpolation=cv2.INTER_NEAREST
    )
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, 1)


def with_boxes(rgb: np.ndarray, boxes: np.ndarray, labels: bool = True) -> np.ndarray:
    """The image enlarged (:func:`upscale`) with inclusive boxes (x0, y0, x1, y1) drawn:
    numbered views (``labels``) or single regions (:func:`pipeline.drawing.draw_boxes`)."""
    out = upscale(rgb).copy()
    boxes = np.asarray(boxes).reshape(-1, 4)
    return draw_boxes(
        out, boxes, out.shape[0] / rgb.shape[0], views=range(len(boxes)) if labels else None
    )


def save_png(path: Path, rgb: np.ndarray) -> None:
    """Write H x W x 3 uint8 pixels as a PNG (folders made as needed), to a temporary name
    renamed over ``path``: a hard-linked copy in the DVC cache is never written into."""
    with atomic_file(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG", optimize=False)
