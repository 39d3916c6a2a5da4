"""Benchmark: stock SAM2AutomaticMaskGenerator vs BatchedSam2Generator (run by hand).

The SAM 2 row beside benchmarks/segment_sam.py (SAM v1): both generators on the same
images and model in one run; prints images/s of each, the ratio, the per-step breakdown
of ours and whether the records agree (benchmarks/segment_sam.py's comparison).

    # here, on CPU, with the tiny random SAM 2
    python benchmarks/segment_sam2.py --images 4 --size 64 --points-per-side 8
    # on a GPU: SAM 2.1 hiera base+ (random init unless --checkpoint is given), the
    # paper's settings
    python benchmarks/segment_sam2.py --config configs/sam2.1/sam2.1_hiera_b+.yaml \\
        --device cuda --images 8 --size 500 --points-per-side 32 --crop-n-layers 2 \\
        --points-per-batch 512 --variants fp32,bf16

Random weights: lower --pred-iou-thresh / --stability-score-thresh so masks pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator  # noqa: E402
from segment_sam import compare, sync, synthetic_images  # noqa: E402

from pipeline.params import SegmentParams  # noqa: E402
from pipeline.segmenters.sam2_batched import BatchedSam2Generator, feature_sizes  # noqa: E402
from pipeline.segmenters.sam2_loading import build_model, load_sam2  # noqa: E402


def model_of(args: argparse.Namespace) -> torch.nn.Module:
    """The SAM 2 of --config, with --checkpoint's weights or random ones."""
    base = SegmentParams()
    params = dataclasses.replace(
        base, sam2=dataclasses.replace(base.sam2, config=args.config, checkpoint=args.checkpoint)
    )
    torch.manual_seed(args.seed)
    if args.checkpoint:
        return load_sam2(params, args.device)
    return build_model(params).to(args.device).eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="long side in px")
    p.add_argument("--points-per-side", type=int, default=8)
    p.add_argument("--points-per-batch", type=int, default=512, help="ours")
    p.add_argument("--stock-points-per-batch", type=int, default=64)
    p.add_argument("--encoder-batch-size", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="images per call of ours")
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--pred-iou-thresh", type=float, default=0.3)
    p.add_argument("--stability-score-thresh", type=float, default=0.5)
    p.add_argument("--stability-score-offset", type=float, default=0.5)
    p.add_argument("--variants", default="fp32", help="fp32 and/or bf16 (ours)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit.script in sam2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = model_of(args)
    images = synthetic_images(args.images, args.size, args.seed)
    params = dict(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        stability_score_offset=args.stability_score_offset,
        crop_n_layers=args.crop_n_layers,
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}; SAM 2 {args.config}, {len(images)} images")
    print(f"params: {params}")

    stock = SAM2AutomaticMaskGenerator(
        model, points_per_batch=args.stock_points_per_batch, output_mode="coco_rle", **params
    )
    stock.predictor._bb_feat_sizes = feature_sizes(model)  # sam2 assumes a 1024 px input
    stock.generate(images[0])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    stock_out = [stock.generate(im) for im in images]
    sync(device)
    t_stock = time.perf_counter() - t0
    n = len(images)
    print(f"\nstock: {n / t_stock:.2f} images/s; masks per image {[len(r) for r in stock_out]}")

    failed = False
    for variant in args.variants.split(","):
        ours = BatchedSam2Generator(
            model,
            **params,
            points_per_batch=args.points_per_batch,
            encoder_batch_size=args.encoder_batch_size,
            autocast_bf16=variant == "bf16",
        )
        ours.generate(images[: args.batch])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        ours_out = []
        for s in range(0, n, args.batch):
            ours_out.extend(ours.generate(images[s : s + args.batch]))
        sync(device)
        t_ours = time.perf_counter() - t0
        ours.profile = True
        for s in range(0, n, args.batch):
            ours.generate(images[s : s + args.batch])
        steps = ", ".join(f"{k} {1000 * v / n:.1f}" for k, v in ours.timings.items())
        stats = [compare(s, o) for s, o in zip(stock_out, ours_out, strict=True)]
        counts_equal = all(s["n_stock"] == s["n_ours"] for s in stats)
        min_iou = min(s["min_iou"] for s in stats)
        d_iou = max(s["d_iou"] for s in stats)
        agree = counts_equal and min_iou >= 0.99 and d_iou <= 1e-4
        print(
            f"ours [{variant}]: {n / t_ours:.2f} images/s, ratio stock/ours "
            f"{t_stock / t_ours:.2f}x; ms per image: {steps}\n"
            f"  counts equal {counts_equal}, min mask IoU {min_iou:.4f}, max |d predicted_iou| "
            f"{d_iou:.1e}: {'AGREE' if agree else 'DIFFER'}"
            + (" (vacuous: no masks)" if not any(s["n_stock"] for s in stats) else "")
        )
        failed |= not agree and variant == "fp32"
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
