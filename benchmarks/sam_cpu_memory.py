"""Benchmark: peak memory and time per image of SAM's encoder settings (run by hand).

Each setting segments the same images in its own process (so each peak RSS is its
own), side by side in one run: the stock ``SamAutomaticMaskGenerator``, ours at the
old fixed encoder batch (8 crops per call, fused-attention encoder) and ours at the
default (``encoder_batch_size`` null: 1 crop per call on CPU, stock encoder there).

    python benchmarks/sam_cpu_memory.py --model vit_b --images 1 --crop-n-layers 1

Random weights (no checkpoint needed): memory and time do not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SETTINGS = {
    "stock": {},
    "ours, 8 crops per encoder call (old)": {"encoder_batch_size": 8, "fast_encoder": True},
    "ours, default": {},
}


def run_one(args: argparse.Namespace, name: str) -> dict:
    """Segment the images with one setting in this process; seconds per image, peak RSS."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    from segment_sam import synthetic_images

    from pipeline.segmenters.sam_batched import BatchedSamGenerator

    torch.manual_seed(0)
    model = sam_model_registry[args.model](checkpoint=None).eval()
    images = synthetic_images(args.images, args.size, seed=0)
    common = dict(
        points_per_side=args.points_per_side,
        crop_n_layers=args.crop_n_layers,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    started = time.perf_counter()
    masks = 0
    if name == "stock":
        generator = SamAutomaticMaskGenerator(model, **common)
        with torch.inference_mode():
            for image in images:
                masks += len(generator.generate(image))
    else:
        ours = BatchedSamGenerator(model, **common, **SETTINGS[name])
        masks = sum(len(m.rles) for m in ours.generate(images))
    seconds = (time.perf_counter() - started) / len(images)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds_per_image": seconds, "peak_rss_bytes": peak, "masks": masks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["vit_b", "vit_l", "vit_h"], default="vit_b")
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--size", type=int, default=500, help="long side in px")
    p.add_argument("--points-per-side", type=int, default=8)
    p.add_argument("--crop-n-layers", type=int, default=1)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args, args.one)))
        return
    rows = {}
    for name in SETTINGS:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", name]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[name] = json.loads(out.strip().splitlines()[-1])
        r = rows[name]
        print(
            f"{name:40s} {r['seconds_per_image']:7.1f} s/img  "
            f"peak RSS {r['peak_rss_bytes'] / 2**30:5.2f} GiB  masks {r['masks']}",
            flush=True,
        )
    old, new = rows["ours, 8 crops per encoder call (old)"], rows["ours, default"]
    print(
        f"default vs old: peak RSS x{new['peak_rss_bytes'] / old['peak_rss_bytes']:.2f}, "
        f"time x{new['seconds_per_image'] / old['seconds_per_image']:.2f}; default vs stock: "
        f"peak RSS x{new['peak_rss_bytes'] / rows['stock']['peak_rss_bytes']:.2f}, time "
        f"x{new['seconds_per_image'] / rows['stock']['seconds_per_image']:.2f}"
    )


if __name__ == "__main__":
    main()
