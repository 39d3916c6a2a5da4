"""Class designs of the synthetic dataset: the attribute vocabulary and the choice of each
class's attribute values (pipeline/synthetic.py describes the dataset as a whole).

Any two classes differ in at least MIN_ATTRIBUTE_DIFFERENCES attributes, of which at least
MIN_APPEARANCE_DIFFERENCES are colours or textures, and the palette colours are spread
evenly over the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import DatasetError
from pipeline.params import SyntheticParams

# ------------------------------------------------------------------ vocabulary
PALETTE: dict[str, tuple[int, int, int]] = {  # RGB
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
SHADE = 0.45  # the second colour of a texture: the base colour x SHADE

PART_NAMES: tuple[str, ...] = ("head", "body", "wing", "tail", "beak", "eye")
PART_ID = {name: i + 1 for i, name in enumerate(PART_NAMES)}  # 1-based, as in CUB

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
MIN_ATTRIBUTE_DIFFERENCES = 2  # between any two classes, over all attributes
MIN_APPEARANCE_DIFFERENCES = 1  # of which at least this many colours or textures


@dataclass(frozen=True)
class ClassDesign:
    """One class: its 1-based id, CUB folder name and attribute values."""

    class_id: int
    folder: str
    attributes: dict[str, str]


STREAM_DESIGNS, STREAM_SPLIT, STREAM_IMAGE = 1, 2, 3  # keys of the random streams


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
    chosen = np.zeros((0, len(names)), np.int64)  # value indices, one row per class
    for _ in range(cfg.num_classes):
        candidates = np.floor(rng.random((1000, len(names))) * sizes).astype(np.int64)
        valid = _valid_designs(candidates, chosen, names)
        if not valid.any():
            raise DatasetError(f"synthetic: cannot design {cfg.num_classes} distinct classes")
        cost = np.where(valid, _usage_cost(candidates, chosen, names), np.inf)
        chosen = np.vstack([chosen, candidates[np.argmin(cost)]])
    designs = []
    for i, row in enumerate(chosen):
        attributes = {n: ATTRIBUTE_VALUES[n][v] for n, v in zip(names, row, strict=False)}
        designs.append(ClassDesign(i + 1, f"{i + 1:03d}.{_class_name(attributes)}", attributes))
    return designs


def _valid_designs(
    candidates: np.ndarray, chosen: np.ndarray, names: tuple[str, ...]
) -> np.ndarray:
    """Which candidate rows keep the body colour apart and every class distance rule."""
    col = {n: candidates[:, names.index(n)] for n in COLOUR_ATTRIBUTES}
    body = col["body_colour"]
    valid = (
        (body != col["head_colour"]) & (body != col["wing_colour"]) & (body != col["tail_colour"])
    )
    differs = candidates[:, None, :] != chosen[None, :, :]  # (candidates, classes, attrs)
    appearance = [names.index(n) for n in APPEARANCE_ATTRIBUTES]
    valid &= np.all(differs.sum(axis=2) >= MIN_ATTRIBUTE_DIFFERENCES, axis=1)
    valid &= np.all(differs[:, :, appearance].sum(axis=2) >= MIN_APPEARANCE_DIFFERENCES, axis=1)
    return valid


def _usage_cost(candidates: np.ndarray, chosen: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """How much each candidate unbalances the value counts: mostly the use of each palette
    colour over all parts together, then each attribute's values on their own."""
    cost = np.zeros(len(candidates))
    for a, name in enumerate(names):
        counts = np.bincount(chosen[:, a], minlength=len(ATTRIBUTE_VALUES[name]))
        cost += counts[candidates[:, a]]
    colour_columns = [names.index(n) for n in COLOUR_ATTRIBUTES]
    used = np.bincount(chosen[:, colour_columns].ravel(), minlength=len(PALETTE))
    added = np.stack(
        [np.count_nonzero(candidates[:, colour_columns] == c, axis=1) for c in range(len(PALETTE))],
        axis=1,
    )
    squares_increase = (2 * used * added + added * added).sum(axis=1)
    return cost + 10 * squares_increase


def _class_name(a: dict[str, str]) -> str:
    """A readable, unique CUB-style name, e.g. Red_crested_head_Blue_striped_body_..."""
    texture_word = {"solid": "", "stripes": "striped", "dots": "spotted"}
    words = [
        a["head_colour"],
        "crested" if a["head_shape"] == "crested" else "",
        "head",
        a["body_colour"],
        texture_word[a["body_texture"]],
        "body",
        a["wing_colour"],
        texture_word[a["wing_texture"]],
        a["wing_shape"],
        "wing",
        a["tail_colour"],
        {"fan": "fan", "fork": "forked", "pointed": "pointed"}[a["tail_shape"]],
        "tail",
    ]
    name = "_".join(w for w in words if w)
    return name[0].upper() + name[1:]
