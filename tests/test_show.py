"""``protomask show``'s contact sheet and the evaluate report draw view boxes one way: the
palette and drawing of pipeline/drawing.py."""

from __future__ import annotations

import numpy as np

from pipeline.drawing import REGION_COLOUR, VIEW_COLOURS, draw_boxes, view_colour
from pipeline.show import ImageViewsRecord, render_sheet


def test_boxes_cover_their_pixels_at_any_scale() -> None:
    canvas = np.zeros((40, 40, 3), np.uint8)
    draw_boxes(canvas, np.array([[2, 3, 5, 7]]), 4.0, views=[1], numbered=False)
    colour = VIEW_COLOURS[1]
    # inclusive box (2, 3)-(5, 7) at 4 px per pixel: canvas columns 8..23, rows 12..31
    assert tuple(canvas[12, 8]) == colour and tuple(canvas[31, 23]) == colour
    assert tuple(canvas[20, 15]) == (0, 0, 0) and not canvas[32:].any()


def test_a_region_is_drawn_on_a_halo_and_views_cycle_the_palette() -> None:
    canvas = np.full((30, 30, 3), 128, np.uint8)
    draw_boxes(canvas, np.array([[5, 5, 20, 20]]), 1.0)
    assert tuple(canvas[5, 12]) == REGION_COLOUR
    assert (canvas == 0).all(axis=2).any()  # the dark halo
    assert view_colour(len(VIEW_COLOURS) + 2) == VIEW_COLOURS[2]


def test_the_sheet_frames_each_crop_in_its_original_view_colour() -> None:
    image = np.full((20, 30, 3), 90, np.uint8)
    crops = np.zeros((3, 8, 8, 3), np.uint8)
    record = ImageViewsRecord(
        7,
        "image 7",
        image,
        np.array([[0, 0, 9, 9], [10, 5, 29, 19], [0, 0, 9, 9]]),
        np.array([-1, -1, 0]),
        np.array([0, 1, 0]),
        crops,
        False,
    )
    sheet = np.asarray(render_sheet(record))
    colours = {tuple(c) for c in sheet.reshape(-1, 3)}
    assert VIEW_COLOURS[0] in colours and VIEW_COLOURS[1] in colours
    assert VIEW_COLOURS[2] not in colours  # view 2 repeats view 0
