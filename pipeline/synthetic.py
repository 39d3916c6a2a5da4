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
the same bytes. :func:`generate_synthetic` writes into a temporary sibling
folder and renames it onto ``root`` only when complete, and only over a folder that is
absent, empty or marked as written by synthesize (``WRITTEN_BY_PROTOMASK.txt``).
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from pipeline.atomic import atomic_dir
from pipeline.errors import DatasetError
from pipeline.params import SyntheticParams, as_dict

GENERATOR_VERSION = "1"

# ------------------------------------------------------------------ vocabulary
PALETTE: dict[str, tuple[int, int, int]] = {        # RGB
    "red": (214, 40, 40),
    "orange": (242, 140, 24),
    "yellow": (236, 214, 44),
    "green": (52, 160, 64),
    "teal": (28, 168, 168),
    "blue": (44, 84, 204),
    "purple": (142, 62, 172),
    "white": (236, 236, 236),
}
BEAK_RGB = (72, 64, 56)
EYE_RGB = (16, 16, 16)
SHADE = 0.45                    # the second colour of a texture: the base colour x SHADE

PART_NAMES: tuple[str, ...] = ("head", "body", "wing", "tail", "beak", "eye")
PART_ID = {name: i + 1 for i, name in enumerate(PART_NAMES)}     # 1-based, as in CUB

COLOUR_ATTRIBUTES = ("head_colour", "body_colour", "wing_colour", "tail_colour")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    **{name: tuple(PALETTE) for name in COLOUR_ATTRIBUTES},
    "body_texture": ("solid", "stripes", "dots"),
    "wing_texture": ("solid", "stripes", "dots"),
    "head_shape": ("plain", "crested"),
    "wing_shape": ("round", "pointed"),
    "tail_shape": ("fan", "fork", "pointed"),
}
APPEARANCE_ATTRIBUTES = COLOUR_ATTRIBUTES + ("body_texture", "wing_texture")
MIN_ATTRIBUTE_DIFFERENCES = 2       # between any two classes, over all attributes
MIN_APPEARANCE_DIFFERENCES = 1      # of which at least this many colours or textures

# ------------------------------------------------------- geometry (object units)
# The bird faces +x, image convention (y grows downwards). Its canonical length, tail tip
# to beak tip, is about OBJECT_LENGTH units; ``scale`` maps that length to a share of the
# image side.
OBJECT_LENGTH = 2.0
SCALE_RANGE = (0.45, 0.8)
HEAD_ANGLE_DEG = (-25.0, 25.0)
WING_ANGLE_DEG = (-10.0, 40.0)
TAIL_ANGLE_DEG = (-25.0, 25.0)
BODY_AXES = (0.5, 0.3)
NECK = (0.32, -0.14)
HEAD_OFFSET = (0.14, -0.16)         # head centre from the neck pivot
HEAD_RADIUS = 0.23
SHOULDER = (0.18, -0.12)
RUMP = (-0.42, 0.02)
TEXTURE_PERIOD = 0.2                # stripe period and dot spacing, object units
DOT_RADIUS = 0.065
MIN_VISIBLE_SHARE = 0.6             # front distractors never hide more of the object


@dataclass(frozen=True)
class ClassDesign:
    """One class: its 1-based id, CUB folder name and attribute values."""

    class_id: int
    folder: str
    attributes: dict[str, str]


@dataclass(frozen=True)
class Frame:
    """A part's own coordinate frame: origin and angle in object units."""

    origin: tuple[float, float]
    angle: float


@dataclass(frozen=True)
class PartShape:
    """One part of the posed bird: polygons, frame (for textures) and keypoint anchor."""

    name: str
    polygons: tuple[np.ndarray, ...]      # each (N, 2), object units
    frame: Frame
    anchor: tuple[float, float]           # the keypoint, in the part's frame
    rgb: tuple[int, int, int]
    texture: str


@dataclass(frozen=True)
class Placement:
    """Object units to pixels: x_px = ppu * R(angle) @ (x, mirror * y) + offset."""

    ppu: float
    angle: float
    mirror: float
    offset: np.ndarray

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Object-unit points (N, 2) to pixel coordinates (N, 2)."""
        pts = np.asarray(points, dtype=np.float64) * np.array([1.0, self.mirror])
        return self.ppu * pts @ rotation(self.angle).T + self.offset

    def to_object(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) back to object units (N, 2)."""
        pts = (np.asarray(pixels, dtype=np.float64) - self.offset) @ rotation(self.angle)
        return pts / self.ppu * np.array([1.0, self.mirror])


@dataclass(frozen=True)
class Distractor:
    """A clutter shape: pixel polygon, colour, texture, and whether it occludes."""

    polygon: np.ndarray
    rgb: tuple[int, int, int]
    texture: str
    texture_angle: float
    period_px: float
    in_front: bool


@dataclass(frozen=True)
class RenderedImage:
    """One generated image with its ground truth (pixel coordinates)."""

    rgb: np.ndarray                     # (H, W, 3) uint8
    part_labels: np.ndarray             # (H, W) uint8: visible part id, 0 elsewhere
    keypoints: dict[str, Optional[tuple[float, float]]]   # None = not visible

    @property
    def mask(self) -> np.ndarray:
        """The visible object pixels."""
        return self.part_labels > 0

    @property
    def box_xywh(self) -> tuple[float, float, float, float]:
        """Tight box of the visible mask: x_min, y_min, width, height (pixels inclusive)."""
        ys, xs = np.nonzero(self.mask)
        return (float(xs.min()), float(ys.min()),
                float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1))


# ------------------------------------------------------------------ helpers
def rotation(angle: float) -> np.ndarray:
    """2x2 rotation matrix (counter-clockwise in maths axes, clockwise on screen)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def ellipse_points(centre: tuple[float, float], axes: tuple[float, float],
                   n: int = 40) -> np.ndarray:
    """Polygon approximating an axis-aligned ellipse."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([centre[0] + axes[0] * np.cos(t), centre[1] + axes[1] * np.sin(t)], axis=1)


def in_frame(points: np.ndarray | list, frame: Frame) -> np.ndarray:
    """Points given in ``frame`` to object units."""
    return np.asarray(points, dtype=np.float64) @ rotation(frame.angle).T + np.array(frame.origin)


STREAM_DESIGNS, STREAM_SPLIT, STREAM_IMAGE = 1, 2, 3     # keys of the random streams


def seeded_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """An independent random stream for (seed, stream, keys...): each image has its own,
    so no image depends on the order (or the subset) in which images are generated."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, *keys]))


# ------------------------------------------------------------- class designs
def class_designs(cfg: SyntheticParams) -> list[ClassDesign]:
    """Choose each class's attributes from the seed.

    Greedy: for each class, among random candidates that keep the distance rules (at least
    MIN_ATTRIBUTE_DIFFERENCES attributes and MIN_APPEARANCE_DIFFERENCES colours/textures
    apart from every earlier class; head, wing and tail coloured unlike the body), take
    the one whose values are least used so far, so colours (per part and overall),
    textures and shapes spread evenly over the classes.
    """
    rng = seeded_rng(cfg.seed, STREAM_DESIGNS)
    names = tuple(ATTRIBUTE_VALUES)
    sizes = np.array([len(ATTRIBUTE_VALUES[n]) for n in names])
    chosen = np.zeros((0, len(names)), np.int64)        # value indices, one row per class
    for _ in range(cfg.num_classes):
        candidates = np.floor(rng.random((1000, len(names))) * sizes).astype(np.int64)
        valid = _valid_designs(candidates, chosen, names)
        if not valid.any():
            raise DatasetError(f"synthetic: cannot design {cfg.num_classes} distinct classes")
        cost = np.where(valid, _usage_cost(candidates, chosen, names), np.inf)
        chosen = np.vstack([chosen, candidates[np.argmin(cost)]])
    designs = []
    for i, row in enumerate(chosen):
        attributes = {n: ATTRIBUTE_VALUES[n][v] for n, v in zip(names, row)}
        designs.append(ClassDesign(i + 1, f"{i + 1:03d}.{_class_name(attributes)}", attributes))
    return designs


def _valid_designs(candidates: np.ndarray, chosen: np.ndarray,
                   names: tuple[str, ...]) -> np.ndarray:
    """Which candidate rows keep the body colour apart and every class distance rule."""
    col = {n: candidates[:, names.index(n)] for n in COLOUR_ATTRIBUTES}
    body = col["body_colour"]
    valid = ((body != col["head_colour"]) & (body != col["wing_colour"])
             & (body != col["tail_colour"]))
    differs = candidates[:, None, :] != chosen[None, :, :]         # (candidates, classes, attrs)
    appearance = [names.index(n) for n in APPEARANCE_ATTRIBUTES]
    valid &= np.all(differs.sum(axis=2) >= MIN_ATTRIBUTE_DIFFERENCES, axis=1)
    valid &= np.all(differs[:, :, appearance].sum(axis=2) >= MIN_APPEARANCE_DIFFERENCES, axis=1)
    return valid


def _usage_cost(candidates: np.ndarray, chosen: np.ndarray,
                names: tuple[str, ...]) -> np.ndarray:
    """How much each candidate unbalances the value counts: mostly the use of each palette
    colour over all parts together, then each attribute's values on their own."""
    cost = np.zeros(len(candidates))
    for a, name in enumerate(names):
        counts = np.bincount(chosen[:, a], minlength=len(ATTRIBUTE_VALUES[name]))
        cost += counts[candidates[:, a]]
    colour_columns = [names.index(n) for n in COLOUR_ATTRIBUTES]
    used = np.bincount(chosen[:, colour_columns].ravel(), minlength=len(PALETTE))
    added = np.stack([np.count_nonzero(candidates[:, colour_columns] == c, axis=1)
                      for c in range(len(PALETTE))], axis=1)
    squares_increase = (2 * used * added + added * added).sum(axis=1)
    return cost + 10 * squares_increase


def _class_name(a: dict[str, str]) -> str:
    """A readable, unique CUB-style name, e.g. Red_crested_head_Blue_striped_body_..."""
    texture_word = {"solid": "", "stripes": "striped", "dots": "spotted"}
    words = [a["head_colour"], "crested" if a["head_shape"] == "crested" else "", "head",
             a["body_colour"], texture_word[a["body_texture"]], "body",
             a["wing_colour"], texture_word[a["wing_texture"]], a["wing_shape"], "wing",
             a["tail_colour"], {"fan": "fan", "fork": "forked", "pointed": "pointed"}[
                 a["tail_shape"]], "tail"]
    name = "_".join(w for w in words if w)
    return name[0].upper() + name[1:]


# ------------------------------------------------------------------ the bird
def bird_parts(design: ClassDesign, head_angle: float, wing_angle: float,
               tail_angle: float) -> list[PartShape]:
    """The posed bird's parts in drawing order (back to front), in object units."""
    a = design.attributes
    rgb = {k: PALETTE[a[f"{k}_colour"]] for k in ("head", "body", "wing", "tail")}
    neck = np.array(NECK)
    head_frame = Frame(tuple(neck + rotation(head_angle) @ np.array(HEAD_OFFSET)), head_angle)
    tail_frame = Frame(RUMP, math.pi + tail_angle)
    wing_frame = Frame(SHOULDER, wing_angle)
    body_frame = Frame((0.0, 0.0), 0.0)

    head_polys = [ellipse_points((0.0, 0.0), (HEAD_RADIUS, HEAD_RADIUS))]
    if a["head_shape"] == "crested":
        head_polys.append(np.array([(0.10, -0.18), (-0.06, -0.50), (-0.04, -0.24),
                                    (-0.24, -0.44), (-0.18, -0.12)]))
    beak = np.array([(0.12, -0.11), (0.50, 0.02), (0.12, 0.11)])
    eye = ellipse_points((0.07, -0.08), (0.055, 0.055), n=16)

    return [
        PartShape("tail", (in_frame(_tail_polygon(a["tail_shape"]), tail_frame),),
                  tail_frame, (0.2, 0.0), rgb["tail"], "solid"),
        PartShape("body", (ellipse_points((0.0, 0.0), BODY_AXES),), body_frame,
                  (0.12, 0.18), rgb["body"], a["body_texture"]),
        PartShape("beak", (in_frame(beak, head_frame),), head_frame, (0.30, 0.0),
                  BEAK_RGB, "solid"),
        PartShape("head", tuple(in_frame(p, head_frame) for p in head_polys), head_frame,
                  (-0.04, 0.04), rgb["head"], "solid"),
        PartShape("eye", (in_frame(eye, head_frame),), head_frame, (0.07, -0.08),
                  EYE_RGB, "solid"),
        PartShape("wing", (in_frame(_wing_polygon(a["wing_shape"]), wing_frame),),
                  wing_frame, (-0.3, 0.02), rgb["wing"], a["wing_texture"]),
    ]


def _tail_polygon(shape: str) -> np.ndarray:
    """Tail in its own frame: base at the origin, pointing along +x."""
    if shape == "fan":
        t = np.linspace(-0.42, 0.42, 12)
        arc = np.stack([0.05 + 0.58 * np.cos(t), 0.58 * np.sin(t)], axis=1)
        return np.vstack([[(-0.05, 0.07)], arc, [(-0.05, -0.07)]])
    if shape == "fork":
        return np.array([(-0.05, -0.07), (0.64, -0.24), (0.54, -0.10), (0.36, 0.0),
                         (0.54, 0.10), (0.64, 0.24), (-0.05, 0.07)])
    return np.array([(-0.05, -0.10), (0.30, -0.10), (0.70, 0.0), (0.30, 0.10),
                     (-0.05, 0.10)])


def _wing_polygon(shape: str) -> np.ndarray:
    """Wing in its own frame: hinged at the origin (the shoulder), pointing along -x."""
    rounded = ellipse_points((-0.3, 0.02), (0.38, 0.16))
    if shape == "round":
        return rounded
    front = rounded[rounded[:, 0] >= -0.3 - 1e-9]
    front = front[np.argsort(np.arctan2(front[:, 1] - 0.02, front[:, 0] + 0.3))]
    return np.vstack([front, [(-0.82, 0.08)]])     # top, front, bottom, then the tip


# ------------------------------------------------------------------ rendering
def render_image(design: ClassDesign, cfg: SyntheticParams, image_index: int) -> RenderedImage:
    """Draw one image of ``design``; deterministic in (seed, class, image_index)."""
    rng = seeded_rng(cfg.seed, STREAM_IMAGE, design.class_id, image_index)
    size = cfg.image_size
    parts = bird_parts(design, *np.deg2rad([rng.uniform(*HEAD_ANGLE_DEG),
                                             rng.uniform(*WING_ANGLE_DEG),
                                             rng.uniform(*TAIL_ANGLE_DEG)]))
    placement = _place_object(parts, size, rng)
    labels = _part_label_map(parts, placement, size)
    distractors = _choose_distractors(rng, size, cfg.distractors)
    occluder, distractors = _occlusion(distractors, labels > 0, size)

    canvas = _background(rng, size)
    for d in distractors:
        if not d.in_front:
            _paint_distractor(canvas, d)
    for part in parts:
        _paint_part(canvas, labels == PART_ID[part.name], part, placement)
    for d in distractors:
        if d.in_front:
            _paint_distractor(canvas, d)
    visible = np.where(occluder, 0, labels).astype(np.uint8)
    return RenderedImage(_finish(canvas, rng), visible, _keypoints(parts, placement, visible))


def _place_object(parts: list[PartShape], size: int, rng: np.random.Generator) -> Placement:
    """Random scale, rotation, mirror and position with the whole bird inside the image."""
    points = np.vstack([p for part in parts for p in part.polygons])
    scale = rng.uniform(*SCALE_RANGE)
    angle = rng.uniform(0.0, 2 * math.pi)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    u, v = rng.random(2)
    margin = 2.0
    ppu = scale * size / OBJECT_LENGTH
    while True:
        placed = Placement(ppu, angle, mirror, np.zeros(2)).to_pixels(points)
        lo, hi = placed.min(axis=0), placed.max(axis=0)
        room = (size - 1 - margin) - margin - (hi - lo)
        if np.all(room >= 0):
            break
        ppu *= 0.95
    offset = margin - lo + np.array([u, v]) * room
    return Placement(ppu, angle, mirror, offset)


def _fill(mask: np.ndarray, polygon_px: np.ndarray, value: int) -> None:
    """Fill a pixel polygon (sub-pixel precise, pixel centres at integer coordinates)."""
    pts = np.round(polygon_px * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(mask, [pts], value, lineType=cv2.LINE_8, shift=4)


def _part_label_map(parts: list[PartShape], placement: Placement, size: int) -> np.ndarray:
    """Which part each pixel shows (later parts cover earlier ones), 0 = no object."""
    labels = np.zeros((size, size), np.uint8)
    for part in parts:
        for polygon in part.polygons:
            _fill(labels, placement.to_pixels(polygon), PART_ID[part.name])
    return labels


def _texture_mask(u: np.ndarray, v: np.ndarray, texture: str, period: float) -> np.ndarray:
    """Where a texture shows its second colour; (u, v) in the pattern's frame."""
    if texture == "stripes":
        return np.mod(u / period, 1.0) < 0.5
    if texture == "dots":
        du = np.mod(u / period + 0.5, 1.0) - 0.5
        dv = np.mod(v / period + 0.5, 1.0) - 0.5
        return du * du + dv * dv < (DOT_RADIUS / period) ** 2
    return np.zeros(u.shape, bool)


def _paint_textured(canvas: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                    rgb: tuple[int, int, int], second: np.ndarray) -> None:
    colour = np.array(rgb, np.float32)
    canvas[ys, xs] = colour
    canvas[ys[second], xs[second]] = colour * SHADE


def _paint_part(canvas: np.ndarray, where: np.ndarray, part: PartShape,
                placement: Placement) -> None:
    """Paint a part's pixels with its colour and texture (which follows the part's pose)."""
    ys, xs = np.nonzero(where)
    if ys.size == 0:
        return
    obj = placement.to_object(np.stack([xs, ys], axis=1))
    local = (obj - np.array(part.frame.origin)) @ rotation(part.frame.angle)
    second = _texture_mask(local[:, 0], local[:, 1], part.texture, TEXTURE_PERIOD)
    _paint_textured(canvas, ys, xs, part.rgb, second)


def _keypoints(parts: list[PartShape], placement: Placement,
               visible_labels: np.ndarray) -> dict[str, Optional[tuple[float, float]]]:
    """Each part's anchor in pixels, or None where the pixel does not show that part."""
    size = visible_labels.shape[0]
    points: dict[str, Optional[tuple[float, float]]] = {}
    for part in parts:
        anchor = in_frame([part.anchor], part.frame)
        x, y = np.round(placement.to_pixels(anchor)[0]).astype(int)
        inside = 0 <= x < size and 0 <= y < size
        shown = inside and visible_labels[y, x] == PART_ID[part.name]
        points[part.name] = (float(x), float(y)) if shown else None
    return points


# ------------------------------------------------------- background, clutter
def _random_palette_colour(rng: np.random.Generator) -> np.ndarray:
    names = tuple(PALETTE)
    return np.array(PALETTE[names[rng.integers(len(names))]], np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft-edged fields of palette colours (full, or in the texture or a middle shade),
    crossed by a few lines: the object's colours, at the object's saturation, everywhere."""
    cells = int(rng.integers(3, 6))
    shades = np.where(rng.random(cells * cells) < 0.5, 1.0,
                      rng.choice([SHADE, 0.7], cells * cells))
    grid = np.stack([_random_palette_colour(rng) * shade for shade in shades])
    blocks = cv2.resize(grid.reshape(cells, cells, 3).astype(np.float32),
                        (8 * cells, 8 * cells), interpolation=cv2.INTER_NEAREST)
    blocks = cv2.GaussianBlur(blocks, (0, 0), 8 / 5)     # blurred at low resolution: cheap
    canvas = cv2.resize(blocks, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(3, 9))):
        p, q = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        colour = _random_palette_colour(rng) * rng.uniform(0.45, 1.0)
        thickness = max(1, int(round(size * rng.uniform(0.005, 0.02))))
        cv2.line(canvas, tuple(int(c) for c in p), tuple(int(c) for c in q),
                 colour.tolist(), thickness, cv2.LINE_AA)
    return np.clip(canvas, 0, 255).astype(np.float32)


def _choose_distractors(rng: np.random.Generator, size: int, most: int) -> list[Distractor]:
    """0..most part-sized shapes (blobs, boxes, triangles, twigs) in palette colours."""
    shapes: list[Distractor] = []
    for _ in range(int(rng.integers(0, most + 1))):
        kind = ("ellipse", "box", "polygon", "twig")[rng.integers(4)]
        centre = rng.uniform(0, size, 2)
        radius = size * rng.uniform(0.05, 0.15)
        angle = rng.uniform(0, math.pi)
        if kind == "ellipse":
            local = ellipse_points((0, 0), (radius, radius * rng.uniform(0.4, 1.0)), 32)
        elif kind == "box":
            w, h = radius, radius * rng.uniform(0.4, 1.0)
            local = np.array([(-w, -h), (w, -h), (w, h), (-w, h)])
        elif kind == "polygon":
            n = int(rng.integers(3, 7))
            t = np.sort(rng.uniform(0, 2 * math.pi, n))
            r = radius * rng.uniform(0.5, 1.0, n)
            local = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        else:
            half = size * rng.uniform(0.15, 0.4)
            w = max(1.5, size * rng.uniform(0.012, 0.03))
            local = np.array([(-half, -w), (half, -w), (half, w), (-half, w)])
        polygon = local @ rotation(angle).T + centre
        texture = ("solid", "stripes", "dots")[rng.integers(3)]
        shapes.append(Distractor(polygon, tuple(_random_palette_colour(rng).astype(int)),
                                 texture, rng.uniform(0, math.pi),
                                 size * rng.uniform(0.03, 0.06), bool(rng.random() < 0.45)))
    return shapes


def _occlusion(distractors: list[Distractor], object_mask: np.ndarray,
               size: int) -> tuple[np.ndarray, list[Distractor]]:
    """The front distractors' mask; one that would hide too much is moved behind."""
    occluder = np.zeros((size, size), np.uint8)
    area = max(int(object_mask.sum()), 1)
    kept: list[Distractor] = []
    for d in distractors:
        if d.in_front:
            trial = occluder.copy()
            _fill(trial, d.polygon, 1)
            if np.count_nonzero(object_mask & (trial == 0)) >= MIN_VISIBLE_SHARE * area:
                occluder = trial
            else:
                d = Distractor(d.polygon, d.rgb, d.texture, d.texture_angle, d.period_px, False)
        kept.append(d)
    return occluder.astype(bool), kept


def _paint_distractor(canvas: np.ndarray, d: Distractor) -> None:
    size = canvas.shape[0]
    mask = np.zeros((size, size), np.uint8)
    _fill(mask, d.polygon, 1)
    ys, xs = np.nonzero(mask)
    c, s = math.cos(d.texture_angle), math.sin(d.texture_angle)
    u, v = xs * c + ys * s, -xs * s + ys * c
    second = _texture_mask(u, v, d.texture, d.period_px)
    _paint_textured(canvas, ys, xs, d.rgb, second)


def _finish(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting, a slight blur and sensor noise; to uint8 RGB."""
    gain = rng.uniform(0.85, 1.15) * rng.uniform(0.94, 1.06, 3)
    image = cv2.GaussianBlur(canvas * gain.astype(np.float32), (3, 3), 0.6)
    image += 4.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


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
        "fixed": {"beak_rgb": list(BEAK_RGB), "eye_rgb": list(EYE_RGB),
                  "head_texture": "solid", "tail_texture": "solid"},
        "classes": [{"class_id": d.class_id, "folder": d.folder, "attributes": d.attributes}
                    for d in designs],
    }


def _write_dataset(out: Path, cfg: SyntheticParams) -> None:
    """Write the complete CUB layout into the (empty) folder ``out``."""
    designs = class_designs(cfg)
    lines: dict[str, list[str]] = {k: [] for k in (
        "images", "labels", "split", "boxes", "part_locs")}
    image_id = 0
    for design in designs:
        (out / "images" / design.folder).mkdir(parents=True)
        (out / "segmentations" / design.folder).mkdir(parents=True)
        split_rng = seeded_rng(cfg.seed, STREAM_SPLIT, design.class_id)
        order = split_rng.permutation(cfg.images_per_class)
        is_test = np.zeros(cfg.images_per_class, bool)
        is_test[order[:held_out_count(cfg.images_per_class, cfg.test_fraction)]] = True
        for index in range(cfg.images_per_class):
            image_id += 1
            image = render_image(design, cfg, index)
            rel = f"{design.folder}/synth_{design.class_id:03d}_{index + 1:04d}.png"
            (out / "images" / rel).write_bytes(_png_bytes(image.rgb))
            (out / "segmentations" / rel).write_bytes(
                _png_bytes(np.where(image.mask, 255, 0).astype(np.uint8)))
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {design.class_id}")
            lines["split"].append(f"{image_id} {0 if is_test[index] else 1}")
            x, y, w, h = image.box_xywh
            lines["boxes"].append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
            for part_id, name in enumerate(PART_NAMES, start=1):
                point = image.keypoints[name]
                loc = f"{point[0]:.1f} {point[1]:.1f} 1" if point else "0.0 0.0 0"
                lines["part_locs"].append(f"{image_id} {part_id} {loc}")

    def write(name: str, rows: list[str]) -> None:
        (out / name).write_text("".join(r + "\n" for r in rows), encoding="utf-8")

    (out / "parts").mkdir()
    write("images.txt", lines["images"])
    write("classes.txt", [f"{d.class_id} {d.folder}" for d in designs])
    write("image_class_labels.txt", lines["labels"])
    write("train_test_split.txt", lines["split"])
    write("bounding_boxes.txt", lines["boxes"])
    write("parts/parts.txt", [f"{i} {n}" for i, n in enumerate(PART_NAMES, start=1)])
    write("parts/part_locs.txt", lines["part_locs"])
    (out / "attributes.json").write_text(
        json.dumps(_attributes_document(designs), indent=2) + "\n", encoding="utf-8")
    (out / "generator.json").write_text(json.dumps(
        {"generator": "protomask.synthetic", "version": GENERATOR_VERSION,
         "params": as_dict(cfg)}, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ------------------------------------------------------- replacing the folder
# Every folder synthesize writes carries this file; synthesize replaces only a folder that
# is absent, empty or carries it, so it never deletes files it did not write.
MARKER = "WRITTEN_BY_PROTOMASK.txt"
MARKER_TEXT = ("This folder is written by `protomask synthesize` and replaced as a whole each "
               "time it runs:\nkeep no files of your own here.\n")
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
    refuse = (f"{root}: holds files protomask synthesize did not write (no {MARKER}); it will "
              "not delete files it did not write: move them elsewhere (and point data.root "
              "there) or empty the folder")
    if root.is_symlink():
        raise DatasetError(f"{root}: is a symbolic link; synthesize will not replace it: "
                           "remove the link (its target is left alone)")
    if not root.exists():
        return
    if not root.is_dir():
        raise DatasetError(f"{root}: exists and is not a folder")
    try:
        if any(root.iterdir()) and not written_by_protomask(root):
            raise DatasetError(refuse)
    except OSError as exc:
        raise DatasetError(f"{root}: cannot read ({exc.strerror or exc}); synthesize will "
                           "not replace a folder it cannot check") from None


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
            f"data.source is {source}: the synthetic set is not generated.\n", encoding="utf-8")


def generate_synthetic(root: Path | str, cfg: SyntheticParams) -> None:
    """Write the synthetic dataset (CUB-200-2011 layout) to ``root``, atomically.

    The data go to a temporary sibling folder that replaces ``root`` only once complete;
    if anything fails, ``root`` keeps what it held before (or stays absent). A ``root``
    holding files synthesize did not write is refused, never deleted.
    """
    with replacing(root) as tmp:
        _write_dataset(tmp, cfg)
