"""How well the classical segmenter recovers the synthetic set's ground-truth parts.

For each visible part of each image: the best IoU with any mask. Prints the mean per
part and overall, and the seconds per image. Run by hand:

    python benchmarks/classical_parts.py --images-per-class 4 [--method slic] [--scale 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from pipeline.params import ClassicalParams, SyntheticParams
from pipeline.segmenters.classical import segment_classical
from pipeline.synthetic import PART_NAMES, class_designs, render_image


def best_part_ious(part_labels: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """Best IoU of each visible ground-truth part with any of the (N, H, W) masks."""
    flat = masks.reshape(len(masks), -1)
    out = {}
    for part_id, name in enumerate(PART_NAMES, start=1):
        gt = (part_labels == part_id).ravel()
        if gt.sum() == 0:
            continue
        inter = (flat & gt).sum(axis=1)
        union = flat.sum(axis=1) + gt.sum() - inter
        out[name] = float((inter / np.maximum(union, 1)).max()) if len(flat) else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-class", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=SyntheticParams().image_size)
    for f in dataclasses.fields(ClassicalParams):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    args = parser.parse_args()
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ClassicalParams)
        if getattr(args, f.name) is not None
    }
    cfg = dataclasses.replace(ClassicalParams(), **overrides)
    synth = SyntheticParams(image_size=args.image_size)
    per_part: dict[str, list[float]] = {name: [] for name in PART_NAMES}
    masks_per_image, seconds = [], 0.0
    for design in class_designs(synth):
        for index in range(args.images_per_class):
            rendered = render_image(design, synth, index)
            start = time.perf_counter()
            result = segment_classical(rendered.rgb, cfg)
            seconds += time.perf_counter() - start
            masks_per_image.append(len(result))
            for name, iou in best_part_ious(rendered.part_labels, result.decode()).items():
                per_part[name].append(iou)
    n = len(masks_per_image)
    print(f"classical {cfg}")
    print(
        f"{n} images, {np.mean(masks_per_image):.1f} masks/image, {seconds / n * 1000:.0f} ms/image"
    )
    for name, values in per_part.items():
        if values:
            print(f"  {name:5s} best IoU mean {np.mean(values):.3f}  (n={len(values)})")
    every = [v for values in per_part.values() for v in values]
    print(f"mean best IoU over all ground-truth parts: {np.mean(every):.3f}")


if __name__ == "__main__":
    main()
