"""Drawing one synthetic image: the posed bird, its placement, the cluttered background
and the ground truth (part labels, keypoints) of what stays visible (pipeline/synthetic.py
describes the dataset as a whole).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from pipeline.params import SyntheticParams
from pipeline.synthetic_designs import (
    BEAK_RGB,
    EYE_RGB,
    PALETTE,
    PART_ID,
    SHADE,
    STREAM_IMAGE,
    ClassDesign,
    seeded_rng,
)

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
HEAD_OFFSET = (0.14, -0.16)  # head centre from the neck pivot
HEAD_RADIUS = 0.23
SHOULDER = (0.18, -0.12)
RUMP = (-0.42, 0.02)
TEXTURE_PERIOD = 0.2  # stripe period and dot spacing, object units
DOT_RADIUS = 0.065
MIN_VISIBLE_SHARE = 0.6  # front distractors never hide more of the object


@dataclass(frozen=True)
class Frame:
    """A part's own coordinate frame: origin and angle in object units."""

    origin: tuple[float, float]
    angle: float


@dataclass(frozen=True)
class PartShape:
    """One part of the posed bird: polygons, frame (for textures) and keypoint anchor."""

    name: str
    polygons: tuple[np.ndarray, ...]  # each (N, 2), object units
    frame: Frame
    anchor: tuple[float, float]  # the keypoint, in the part's frame
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

    rgb: np.ndarray  # (H, W, 3) uint8
    part_labels: np.ndarray  # (H, W) uint8: visible part id, 0 elsewhere
    keypoints: dict[str, Optional[tuple[float, float]]]  # None = not visible

    @property
    def mask(self) -> np.ndarray:
        """The visible object pixels."""
        return self.part_labels > 0

    @property
    def box_xywh(self) -> tuple[float, float, float, float]:
        """Tight box of the visible mask: x_min, y_min, width, height (pixels inclusive)."""
        ys, xs = np.nonzero(self.mask)
        return (
            float(xs.min()),
            float(ys.min()),
            float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1),
        )


# ------------------------------------------------------------------ helpers
def rotation(angle: float) -> np.ndarray:
    """2x2 rotation matrix (counter-clockwise in maths axes, clockwise on screen)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def ellipse_points(
    centre: tuple[float, float], axes: tuple[float, float], n: int = 40
) -> np.ndarray:
    """Polygon approximating an axis-aligned ellipse."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.stack([centre[0] + axes[0] * np.cos(t), centre[1] + axes[1] * np.sin(t)], axis=1)


def in_frame(points: np.ndarray | list, frame: Frame) -> np.ndarray:
    """Points given in ``frame`` to object units."""
    return np.asarray(points, dtype=np.float64) @ rotation(frame.angle).T + np.array(frame.origin)


# ------------------------------------------------------------------ the bird
def bird_parts(
    design: ClassDesign, head_angle: float, wing_angle: float, tail_angle: float
) -> list[PartShape]:
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
        head_polys.append(
            np.array(
                [(0.10, -0.18), (-0.06, -0.50), (-0.04, -0.24), (-0.24, -0.44), (-0.18, -0.12)]
            )
        )
    beak = np.array([(0.12, -0.11), (0.50, 0.02), (0.12, 0.11)])
    eye = ellipse_points((0.07, -0.08), (0.055, 0.055), n=16)

    return [
        PartShape(
            "tail",
            (in_frame(_tail_polygon(a["tail_shape"]), tail_frame),),
            tail_frame,
            (0.2, 0.0),
            rgb["tail"],
            "solid",
        ),
        PartShape(
            "body",
            (ellipse_points((0.0, 0.0), BODY_AXES),),
            body_frame,
            (0.12, 0.18),
            rgb["body"],
            a["body_texture"],
        ),
        PartShape(
            "beak", (in_frame(beak, head_frame),), head_frame, (0.30, 0.0), BEAK_RGB, "solid"
        ),
        PartShape(
            "head",
            tuple(in_frame(p, head_frame) for p in head_polys),
            head_frame,
            (-0.04, 0.04),
            rgb["head"],
            "solid",
        ),
        PartShape("eye", (in_frame(eye, head_frame),), head_frame, (0.07, -0.08), EYE_RGB, "solid"),
        PartShape(
            "wing",
            (in_frame(_wing_polygon(a["wing_shape"]), wing_frame),),
            wing_frame,
            (-0.3, 0.02),
            rgb["wing"],
            a["wing_texture"],
        ),
    ]


def _tail_polygon(shape: str) -> np.ndarray:
    """Tail in its own frame: base at the origin, pointing along +x."""
    if shape == "fan":
        t = np.linspace(-0.42, 0.42, 12)
        arc = np.stack([0.05 + 0.58 * np.cos(t), 0.58 * np.sin(t)], axis=1)
        return np.vstack([[(-0.05, 0.07)], arc, [(-0.05, -0.07)]])
    if shape == "fork":
        return np.array(
            [
                (-0.05, -0.07),
                (0.64, -0.24),
                (0.54, -0.10),
                (0.36, 0.0),
                (0.54, 0.10),
                (0.64, 0.24),
                (-0.05, 0.07),
            ]
        )
    return np.array([(-0.05, -0.10), (0.30, -0.10), (0.70, 0.0), (0.30, 0.10), (-0.05, 0.10)])


def _wing_polygon(shape: str) -> np.ndarray:
    """Wing in its own frame: hinged at the origin (the shoulder), pointing along -x."""
    rounded = ellipse_points((-0.3, 0.02), (0.38, 0.16))
    if shape == "round":
        return rounded
    front = rounded[rounded[:, 0] >= -0.3 - 1e-9]
    front = front[np.argsort(np.arctan2(front[:, 1] - 0.02, front[:, 0] + 0.3))]
    return np.vstack([front, [(-0.82, 0.08)]])  # top, front, bottom, then the tip


# ------------------------------------------------------------------ rendering
def render_image(design: ClassDesign, cfg: SyntheticParams, image_index: int) -> RenderedImage:
    """Draw one image of ``design``; deterministic in (seed, class, image_index)."""
    rng = seeded_rng(cfg.seed, STREAM_IMAGE, design.class_id, image_index)
    size = cfg.image_size
    parts = bird_parts(
        design,
        *np.deg2rad(
            [
                rng.uniform(*HEAD_ANGLE_DEG),
                rng.uniform(*WING_ANGLE_DEG),
                rng.uniform(*TAIL_ANGLE_DEG),
            ]
        ),
    )
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


def _paint_textured(
    canvas: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    rgb: tuple[int, int, int],
    second: np.ndarray,
) -> None:
    colour = np.array(rgb, np.float32)
    canvas[ys, xs] = colour
    canvas[ys[second], xs[second]] = colour * SHADE


def _paint_part(
    canvas: np.ndarray, where: np.ndarray, part: PartShape, placement: Placement
) -> None:
    """Paint a part's pixels with its colour and texture (which follows the part's pose)."""
    ys, xs = np.nonzero(where)
    if ys.size == 0:
        return
    obj = placement.to_object(np.stack([xs, ys], axis=1))
    local = (obj - np.array(part.frame.origin)) @ rotation(part.frame.angle)
    second = _texture_mask(local[:, 0], local[:, 1], part.texture, TEXTURE_PERIOD)
    _paint_textured(canvas, ys, xs, part.rgb, second)


def _keypoints(
    parts: list[PartShape], placement: Placement, visible_labels: np.ndarray
) -> dict[str, Optional[tuple[float, float]]]:
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
    shades = np.where(rng.random(cells * cells) < 0.5, 1.0, rng.choice([SHADE, 0.7], cells * cells))
    grid = np.stack([_random_palette_colour(rng) * shade for shade in shades])
    blocks = cv2.resize(
        grid.reshape(cells, cells, 3).astype(np.float32),
        (8 * cells, 8 * cells),
        interpolation=cv2.INTER_NEAREST,
    )
    blocks = cv2.GaussianBlur(blocks, (0, 0), 8 / 5)  # blurred at low resolution: cheap
    canvas = cv2.resize(blocks, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(int(rng.integers(3, 9))):
        p, q = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        colour = _random_palette_colour(rng) * rng.uniform(0.45, 1.0)
        thickness = max(1, int(round(size * rng.uniform(0.005, 0.02))))
        cv2.line(
            canvas,
            tuple(int(c) for c in p),
            tuple(int(c) for c in q),
            colour.tolist(),
            thickness,
            cv2.LINE_AA,
        )
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
        shapes.append(
            Distractor(
                polygon,
                tuple(_random_palette_colour(rng).astype(int)),
                texture,
                rng.uniform(0, math.pi),
                size * rng.uniform(0.03, 0.06),
                bool(rng.random() < 0.45),
            )
        )
    return shapes


def _occlusion(
    distractors: list[Distractor], object_mask: np.ndarray, size: int
) -> tuple[np.ndarray, list[Distractor]]:
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
