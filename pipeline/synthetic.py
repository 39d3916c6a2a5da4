"""The built-in synthetic fine-grained dataset, written in the CUB-200-2011 layout.

Every image shows one stylised bird (parts: head, body, wing, tail, beak, eye) at a
random position, scale, rotation, mirror and articulation (head, wing and tail angles)
on a cluttered background. A class is a combination of part attributes: the colour of
head, body, wing and tail (from one shared palette), the texture of body and wing
(solid, striped, spotted) and the shape of head (plain, crested), wing (round, pointed)
and tail (fan, forked, pointed). Any two classes differ in at least two attributes, and
the palette colours are spread evenly over the classes. The background and the
distractor shapes reuse the palette colours and textures, and some distractors are drawn
in front of the bird, so no global colour statistic names the class: only the parts do.

Ground truth, as CUB writes it: a tight object box, one keypoint per part (``0.0 0.0 0``
when the part is hidden at its keypoint) and a segmentation PNG of the visible object
pixels (255 object, 0 background). Coordinates are 0-based pixel indices (pixel centres
at integers); a box is ``x_min y_min width height`` with width = x_max - x_min + 1.
Keypoints sit on whole pixels that show their part (not hidden by a front distractor or
by another part of the bird).

Everything is deterministic from ``SyntheticParams.seed``: each image has its own random
stream seeded by (seed, class, index), PNGs carry no timestamps, so the same params give
the same bytes. The class designs are chosen in pipeline/synthetic_designs.py, each image
drawn in pipeline/synthetic_drawing.py; this module writes the dataset.
:func:`generate_synthetic` writes into a temporary sibling
folder and renames it onto ``root`` only when complete, and only over a folder that is
absent, empty or marked as written by synthesize (``WRITTEN_BY_PROTOMASK.txt``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from pipeline.atomic import atomic_dir, write_json
from pipeline.errors import DatasetError
from pipeline.params import SyntheticParams, as_dict
from pipeline.synthetic_designs import (
    ATTRIBUTE_VALUES,
    BEAK_RGB,
    EYE_RGB,
    PALETTE,
    PART_NAMES,
    SHADE,
    STREAM_SPLIT,
    ClassDesign,
    class_designs,
    seeded_rng,
)
from pipeline.synthetic_drawing import render_image

__all__ = [
    "GENERATOR_VERSION",
    "PART_NAMES",
    "class_designs",
    "generate_synthetic",
    "render_image",
    "write_not_used",
]

GENERATOR_VERSION = "1"


# ------------------------------------------------------------------ writing
def held_out_count(n: int, test_fraction: float) -> int:
    """Test images of a class of n: round(test_fraction * n), at least 1 train and 1 test."""
    return min(max(round(test_fraction * n), 1), n - 1)


def _png_bytes(array: np.ndarray) -> bytes:
    """PNG with fixed settings and no metadata (RGB input, or single channel)."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise DatasetError("synthetic: PNG encoding failed")
    return buf.tobytes()


def _attributes_document(designs: list[ClassDesign]) -> dict:
    return {
        "palette_rgb": {k: list(v) for k, v in PALETTE.items()},
        "texture_second_colour": f"base colour x {SHADE}",
        "attribute_values": {k: list(v) for k, v in ATTRIBUTE_VALUES.items()},
        "parts": list(PART_NAMES),
        "fixed": {
            "beak_rgb": list(BEAK_RGB),
            "eye_rgb": list(EYE_RGB),
            "head_texture": "solid",
            "tail_texture": "solid",
        },
        "classes": [
            {"class_id": d.class_id, "folder": d.folder, "attributes": d.attributes}
            for d in designs
        ],
    }


# The per-image listing files of the CUB layout, by the key _write_images writes them under.
LISTING_FILES = {
    "images": "images.txt",
    "labels": "image_class_labels.txt",
    "split": "train_test_split.txt",
    "boxes": "bounding_boxes.txt",
    "part_locs": "parts/part_locs.txt",
}


def _write_dataset(out: Path, cfg: SyntheticParams) -> None:
    """Write the complete CUB layout into the (empty) folder ``out``."""
    designs = class_designs(cfg)
    (out / "parts").mkdir()
    with contextlib.ExitStack() as stack:
        # Every image's lines go out as it is drawn: memory stays flat in the image count.
        lines = {
            key: stack.enter_context((out / name).open("w", encoding="utf-8", newline="\n"))
            for key, name in LISTING_FILES.items()
        }
        _write_images(out, cfg, designs, lines)

    def write(name: str, rows: list[str]) -> None:
        (out / name).write_text("".join(r + "\n" for r in rows), encoding="utf-8")

    write("classes.txt", [f"{d.class_id} {d.folder}" for d in designs])
    write("parts/parts.txt", [f"{i} {n}" for i, n in enumerate(PART_NAMES, start=1)])
    write_json(out / "attributes.json", _attributes_document(designs), sort_keys=False)
    write_json(
        out / "generator.json",
        {"generator": "protomask.synthetic", "version": GENERATOR_VERSION, "params": as_dict(cfg)},
    )


def _write_images(
    out: Path, cfg: SyntheticParams, designs: list[ClassDesign], lines: dict[str, TextIO]
) -> None:
    """Draw and write every image and its segmentation; its lines of the listing files."""
    image_id = 0
    for design in designs:
        (out / "images" / design.folder).mkdir(parents=True)
        (out / "segmentations" / design.folder).mkdir(parents=True)
        split_rng = seeded_rng(cfg.seed, STREAM_SPLIT, design.class_id)
        order = split_rng.permutation(cfg.images_per_class)
        is_test = np.zeros(cfg.images_per_class, bool)
        is_test[order[: held_out_count(cfg.images_per_class, cfg.test_fraction)]] = True
        for index in range(cfg.images_per_class):
            image_id += 1
            image = render_image(design, cfg, index)
            rel = f"{design.folder}/synth_{design.class_id:03d}_{index + 1:04d}.png"
            (out / "images" / rel).write_bytes(_png_bytes(image.rgb))
            (out / "segmentations" / rel).write_bytes(
                _png_bytes(np.where(image.mask, 255, 0).astype(np.uint8))
            )
            lines["images"].write(f"{image_id} {rel}\n")
            lines["labels"].write(f"{image_id} {design.class_id}\n")
            lines["split"].write(f"{image_id} {0 if is_test[index] else 1}\n")
            x, y, w, h = image.box_xywh
            lines["boxes"].write(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n")
            for part_id, name in enumerate(PART_NAMES, start=1):
                point = image.keypoints[name]
                loc = f"{point[0]:.1f} {point[1]:.1f} 1" if point else "0.0 0.0 0"
                lines["part_locs"].write(f"{image_id} {part_id} {loc}\n")


# ------------------------------------------------------- replacing the folder
# Every folder synthesize writes carries this file; synthesize replaces only a folder that
# is absent, empty or carries it, so it never deletes files it did not write.
MARKER = "WRITTEN_BY_PROTOMASK.txt"
MARKER_TEXT = (
    "This folder is written by `protomask synthesize` and replaced as a whole each "
    "time it runs:\nkeep no files of your own here.\n"
)
NOT_USED = "NOT_USED.txt"


def written_by_protomask(root: Path) -> bool:
    """Whether the folder ``root`` carries the marker, or is what a release before the
    marker wrote: a synthetic set with its generator.json, or the lone NOT_USED.txt note."""
    if (root / MARKER).is_file():
        return True
    if sorted(p.name for p in root.iterdir()) == [NOT_USED]:
        return True
    try:
        meta = json.loads((root / "generator.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == "protomask.synthetic"


def check_replaceable(root: Path) -> None:
    """Refuse, in one line, to replace ``root`` unless it is absent, an empty folder, or a
    folder synthesize wrote (:func:`written_by_protomask`)."""
    refuse = (
        f"{root}: holds files protomask synthesize did not write (no {MARKER}); it will "
        "not delete files it did not write: move them elsewhere (and point data.root "
        "there) or empty the folder"
    )
    if root.is_symlink():
        raise DatasetError(
            f"{root}: is a symbolic link; synthesize will not replace it: "
            "remove the link (its target is left alone)"
        )
    if not root.exists():
        return
    if not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder")
    try:
        if any(root.iterdir()) and not written_by_protomask(root):
            raise DatasetError(refuse)
    except OSError as exc:
        raise DatasetError(
            f"{root}: cannot read ({exc.strerror or exc}); synthesize will "
            "not replace a folder it cannot check"
        ) from None


@contextlib.contextmanager
def replacing(root: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``root`` (marked as ours) when the
    body succeeds; ``root`` is checked first with :func:`check_replaceable`."""
    root = Path(root)
    check_replaceable(root)
    with atomic_dir(root) as tmp:
        yield tmp
        (tmp / MARKER).write_text(MARKER_TEXT, encoding="utf-8")


def write_not_used(root: Path | str, source: str) -> None:
    """Replace ``root`` by a folder holding only a note: data.source is not synthetic."""
    with replacing(root) as tmp:
        (tmp / NOT_USED).write_text(
            f"data.source is {source}: the synthetic set is not generated.\n", encoding="utf-8"
        )


def generate_synthetic(root: Path | str, cfg: SyntheticParams) -> None:
    """Write the synthetic dataset (CUB-200-2011 layout) to ``root``, atomically.

    The data go to a temporary sibling folder that replaces ``root`` only once complete;
    if anything fails, ``root`` keeps what it held before (or stays absent). A ``root``
    holding files synthesize did not write is refused, never deleted.
    """
    with replacing(root) as tmp:
        _write_dataset(tmp, cfg)
