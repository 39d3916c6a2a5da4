"""Static PNG plots of a training run's curves, drawn with OpenCV into the run's folder
(``curves/loss.png``, ``curves/l1.png``, ``curves/accuracy.png``), to read without a
browser or a network. The same series are dvc.yaml's ``plots`` (from the dvclive TSVs).

A step's record holds ``train_<term>`` (the mean loss terms; ``train_total`` their
weighted sum), ``train_accuracy`` and ``val_accuracy`` (plain top-1 %, not class-balanced);
a push step has only ``val_accuracy``. The curves are split by scale: the loss terms, the
last layer's L1 norm (``train_l1``: hundreds, against loss terms of a few units) and the
accuracies (0-100). The PNG bytes depend only on the records: no timestamp or text chunk.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.atomic import atomic_file

WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 80  # plot margins (px); the legend sits below
FONT = cv2.FONT_HERSHEY_SIMPLEX
TITLES = {"loss": "loss terms", "l1": "last-layer L1", "accuracy": "top-1 accuracy (%)"}
COLOURS = (  # BGR, Tableau's 10
    (180, 119, 31),
    (14, 127, 255),
    (44, 160, 44),
    (40, 39, 214),
    (189, 103, 148),
    (75, 86, 140),
    (194, 119, 227),
    (127, 127, 127),
    (34, 189, 188),
    (207, 190, 23),
)


def curve_groups(keys: list[str]) -> dict[str, list[str]]:
    """Plot name -> the record keys it shows (sorted; ``train_total`` first): ``loss`` (the
    ``train_`` loss terms but L1), ``l1`` (``train_l1``), ``accuracy`` (``*_accuracy``);
    a plot without keys is left out."""
    accuracy = sorted(k for k in keys if k.endswith("_accuracy"))
    l1 = [k for k in keys if k == "train_l1"]
    loss = sorted(
        (k for k in keys if k.startswith("train_") and k not in accuracy and k not in l1),
        key=lambda k: (k != "train_total", k),
    )
    groups = {"loss": loss, "l1": l1, "accuracy": accuracy}
    return {name: ks for name, ks in groups.items() if ks}


def write_curves(history: list[dict], out_dir: Path, title: str) -> list[Path]:
    """``out_dir/<plot>.png`` for each plot of :func:`curve_groups` over the records
    (x: the step), in place of the PNGs there; returns the paths written."""
    keys = sorted({k for r in history for k, v in r.items() if isinstance(v, float)})
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    written = []
    for name, series in curve_groups(keys).items():
        points = {k: [(r["step"], r[k]) for r in history if _finite(r.get(k))] for k in series}
        ok, data = cv2.imencode(".png", draw_plot(points, f"{title}: {TITLES[name]}"))
        if not ok:
            raise RuntimeError(f"could not encode the {name} plot")
        path = out_dir / f"{name}.png"
        with atomic_file(path) as tmp:
            tmp.write_bytes(data.tobytes())
        written.append(path)
    return written


def draw_plot(series: dict[str, list[tuple[int, float]]], title: str) -> np.ndarray:
    """A white HEIGHT x WIDTH BGR image: the series as lines with markers over shared
    axes (ticks at the steps' and values' range), the title above, a legend below."""
    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    xs = [x for pts in series.values() for x, _ in pts] or [0]
    ys = [y for pts in series.values() for _, y in pts] or [0.0]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = _padded(min(ys), max(ys))
    left, right, top, bottom = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM

    def at(x: float, y: float) -> tuple[int, int]:
        px = left + (x - x0) / (x1 - x0) * (right - left)
        py = bottom - (y - y0) / (y1 - y0) * (bottom - top)
        return int(round(px)), int(round(py))

    cv2.putText(img, title, (left, 25), FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(5):  # value ticks and grid
        y = y0 + (y1 - y0) * i / 4
        _, py = at(x0, y)
        cv2.line(img, (left, py), (right, py), (225, 225, 225), 1)
        cv2.putText(img, f"{y:.3g}", (5, py + 4), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    for x in _step_ticks(x0, x1):
        px, _ = at(x, y0)
        cv2.line(img, (px, bottom), (px, bottom + 4), (0, 0, 0), 1)
        cv2.putText(img, str(x), (px - 4, bottom + 18), FONT, 0.4, (60, 60, 60), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (right, bottom), (0, 0, 0), 1)
    cv2.putText(img, "step", (right - 30, bottom + 34), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pixels = np.array([at(x, y) for x, y in pts], np.int32)
        if len(pixels) > 1:
            cv2.polylines(img, [pixels], False, colour, 2, cv2.LINE_AA)
        for p in pixels:
            cv2.circle(img, (int(p[0]), int(p[1])), 3, colour, -1, cv2.LINE_AA)
        lx, ly = left + (i % 3) * 190, HEIGHT - 30 + (i // 3) * 16
        cv2.line(img, (lx, ly - 4), (lx + 20, ly - 4), colour, 2)
        cv2.putText(img, name, (lx + 26, ly), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def _finite(value: object) -> bool:
    return isinstance(value, float) and bool(np.isfinite(value))


def _padded(low: float, high: float) -> tuple[float, float]:
    if high <= low:
        return low - 1.0, high + 1.0
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def _step_ticks(x0: int, x1: int) -> list[int]:
    every = max(1, int(np.ceil((x1 - x0) / 10)))
    return list(range(x0, x1 + 1, every))
