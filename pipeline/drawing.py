"""Boxes of an image's views drawn on its pixels: one palette and one drawing function, for
the evaluate report and ``protomask show``.

Boxes are inclusive pixel boxes (x0, y0, x1, y1) of the original image; ``scale`` maps
them onto a canvas that shows the image enlarged or shrunk by that factor, the box
covering whole canvas pixels of its first to its last image pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import cv2
import numpy as np

Colour = tuple[int, int, int]

# one colour per view number, cycled (RGB)
VIEW_COLOURS: tuple[Colour, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)
REGION_COLOUR: Colour = (255, 255, 0)  # a single region (not a view), on a dark halo
_FONT, _FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.35


def view_colour(view: int) -> Colour:
    """The colour of view number ``view``."""
    return VIEW_COLOURS[int(view) % len(VIEW_COLOURS)]


def draw_boxes(
    canvas: np.ndarray,
    boxes: np.ndarray,
    scale: float,
    *,
    views: Optional[Sequence[int]] = None,
    numbered: bool = True,
    width: int = 1,
    filled_labels: bool = False,
) -> np.ndarray:
    """Draw boxes on ``canvas`` (H x W x 3 uint8, in place).

    Args:
        canvas: the image as shown, ``scale`` times its original size.
        boxes: (N, 4) inclusive boxes in original image pixels.
        scale: canvas pixels per image pixel.
        views: the view number of each box (its colour and label); None draws each box as
            a single region instead: thick, in REGION_COLOUR on a dark halo, unlabelled.
        numbered: write each view's number at its box's top-left corner.
        width: line width of a view's box.
        filled_labels: write the numbers in white on a patch of the view's colour.

    Returns:
        ``canvas``.
    """
    for j, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).reshape(-1, 4)):
        p0 = (int(round(x0 * scale)), int(round(y0 * scale)))
        p1 = (int(round((x1 + 1) * scale)) - 1, int(round((y1 + 1) * scale)) - 1)
        if views is None:
            cv2.rectangle(canvas, p0, p1, (0, 0, 0), 5)
            cv2.rectangle(canvas, p0, p1, REGION_COLOUR, 3)
            continue
        colour = view_colour(views[j])
        cv2.rectangle(canvas, p0, p1, colour, width)
        if numbered:
            _label(canvas, str(views[j]), p0, colour, filled_labels)
    return canvas


def _label(
    canvas: np.ndarray, text: str, corner: tuple[int, int], colour: Colour, filled: bool
) -> None:
    """``text`` just inside ``corner`` (a box's top-left), in ``colour`` or on a patch of it."""
    if filled:
        (text_w, _), _ = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
        cv2.rectangle(canvas, corner, (corner[0] + text_w + 3, corner[1] + 13), colour, -1)
        colour = (255, 255, 255)
    cv2.putText(
        canvas, text, (corner[0] + 2, corner[1] + 11), _FONT, _FONT_SCALE, colour, 1, cv2.LINE_AA
    )
