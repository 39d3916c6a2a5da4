"""A contact sheet of one image's views: the image with its view boxes and the M crops
(boxes and colours as in the evaluate report: :mod:`pipeline.drawing`).

Reads only artifacts (the images index, the crops index, the crop shards) and the
image file itself; the segmenter is never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from PIL import Image, ImageDraw, ImageFont

from pipeline import layout
from pipeline.crop_shards import CropShard
from pipeline.drawing import draw_boxes, view_colour
from pipeline.errors import ArtifactError
from pipeline.imageio import load_rgb, resolve_inside
from pipeline.tables import read_table
from pipeline.views import view_owners

IMAGE_SIDE = 384  # the longer side of the image panel, px
TILE = 96  # the smallest side of a crop tile, px
COLUMNS = 4
PAD = 8
CAPTION = 14


@dataclass(frozen=True)
class ImageViewsRecord:
    """Everything the sheet shows about one image."""

    image_id: int
    title: str
    image: np.ndarray  # H x W x 3 uint8
    boxes: np.ndarray  # (M, 4) inclusive
    duplicate_of: np.ndarray  # (M,)
    mask_index: np.ndarray  # (M,)
    crops: np.ndarray  # (M, S, S, 3) uint8
    fallback: bool


def load_image_views(
    image_id: int, data_root: Path, project_root: Path = Path(".")
) -> ImageViewsRecord:
    """The image, its index rows and its crops, from the artifacts."""
    images, _ = read_table(project_root / layout.IMAGES_INDEX, "images")
    image_row = images.filter(pc.equal(images["image_id"], image_id)).to_pylist()
    if not image_row:
        raise ArtifactError(f"{layout.IMAGES_INDEX}: no image with id {image_id}")
    views, _ = read_table(project_root / layout.CROPS_INDEX, "crops")
    views = views.filter(pc.equal(views["image_id"], image_id)).sort_by("view")
    if len(views) == 0:
        raise ArtifactError(f"{layout.CROPS_INDEX}: image {image_id} has no views; rerun crops")
    shard = views["shard"][0].as_py()
    with CropShard(project_root / layout.CROPS_DIR / shard) as crops:
        pixels = crops.rows(views["row"].to_numpy())
    info = image_row[0]
    image = load_rgb(resolve_inside(project_root / data_root, info["path"]))
    fallback = bool(views["fallback"][0].as_py())
    title = f"image {image_id}  {info['class_name']}  ({info['split']})  {len(views)} views" + (
        "  FALLBACK: whole image" if fallback else ""
    )
    return ImageViewsRecord(
        image_id,
        title,
        image,
        np.asarray(views["box"].to_pylist()),
        views["duplicate_of"].to_numpy(),
        views["mask_index"].to_numpy(),
        pixels,
        fallback,
    )


def render_sheet(record: ImageViewsRecord) -> Image.Image:
    """The image with each distinct view's box and number, and every crop beside it."""
    font = ImageFont.load_default()
    height, width = record.image.shape[:2]
    scale = IMAGE_SIDE / max(height, width)
    panel = np.array(
        Image.fromarray(record.image).resize(
            (max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR
        )
    )
    distinct = np.flatnonzero(record.duplicate_of < 0)
    draw_boxes(
        panel, record.boxes[distinct], scale, views=distinct.tolist(), width=2, filled_labels=True
    )
    m, side = len(record.crops), max(TILE, record.crops.shape[1])
    rows = -(-m // COLUMNS)
    header = CAPTION + PAD
    sheet_w = PAD + panel.shape[1] + PAD + COLUMNS * (side + PAD)
    sheet_h = header + max(panel.shape[0], rows * (side + CAPTION + PAD)) + PAD
    sheet = Image.new("RGB", (sheet_w, sheet_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((PAD, PAD // 2), record.title, fill=(0, 0, 0), font=font)
    sheet.paste(Image.fromarray(panel), (PAD, header))
    left = PAD + panel.shape[1] + PAD
    owners = view_owners(record.duplicate_of)
    for v in range(m):
        x = left + (v % COLUMNS) * (side + PAD)
        y = header + (v // COLUMNS) * (side + CAPTION + PAD)
        tile = Image.fromarray(record.crops[v]).resize((side, side), Image.NEAREST)
        sheet.paste(tile, (x, y))
        colour = view_colour(int(owners[v]))
        draw.rectangle([x - 1, y - 1, x + side, y + side], outline=colour, width=2)
        caption = (
            f"{v} = {record.duplicate_of[v]}"
            if record.duplicate_of[v] >= 0
            else f"{v}: whole image"
            if record.mask_index[v] < 0
            else f"{v}: mask {record.mask_index[v]}"
        )
        draw.text((x, y + side + 2), caption, fill=(0, 0, 0), font=font)
    return sheet


def write_sheet(image_id: int, out: Path, data_root: Path, project_root: Path = Path(".")) -> Path:
    """Render the sheet of ``image_id`` and save it as PNG at ``out``."""
    sheet = render_sheet(load_image_views(image_id, data_root, project_root))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
