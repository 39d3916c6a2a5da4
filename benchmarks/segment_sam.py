"""Benchmark: stock SamAutomaticMaskGenerator vs BatchedSamGenerator (run by hand).

Times both generators on the same images and the same model in one run, prints
images/s for each and the ratio, and checks that the records agree (mask counts,
IoU of matched masks, score deltas, boxes).

    # here, on CPU, with the tiny random SAM
    python benchmarks/segment_sam.py --model tiny --images 6 --size 64
    # on a GPU, real architecture (random init unless --checkpoint is given)
    python benchmarks/segment_sam.py --model vit_h --device cuda --images 8 --size 512 \\
        --points-per-side 32 --batch 8 [--bf16] [--tf32] [--checkpoint sam_vit_h.pth]

Random weights: speed does not depend on the weight values except through how many
masks pass the filters; lower --pred-iou-thresh / --stability-score-thresh to make
masks pass (the records comparison needs some).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycocotools import mask as mask_utils  # noqa: E402
from segment_anything import SamAutomaticMaskGenerator, sam_model_registry  # noqa: E402

from pipeline.segmenters.sam_batched import BatchedSamGenerator  # noqa: E402
from pipeline.segmenters.tiny_sam import build_tiny_sam  # noqa: E402


def synthetic_images(n: int, long_side: int, seed: int) -> list:
    """Structured RGB images (rectangles, discs, gradients, noise), varied aspect ratios."""
    rng = np.random.default_rng(seed)
    aspects = [1.0, 0.75, 0.66, 0.9, 0.5]
    images = []
    for i in range(n):
        a = aspects[i % len(aspects)]
        h, w = (
            (long_side, max(8, int(long_side * a)))
            if i % 2
            else (max(8, int(long_side * a)), long_side)
        )
        yy, xx = np.mgrid[0:h, 0:w]
        image = np.empty((h, w, 3), np.float32)
        image[:] = rng.uniform(0, 255, 3)
        image += (xx / w)[..., None] * rng.uniform(-60, 60, 3)
        for _ in range(rng.integers(4, 10)):
            color = rng.uniform(0, 255, 3)
            if rng.random() < 0.5:
                y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
                y1, x1 = rng.integers(y0 + 3, h + 1), rng.integers(x0 + 3, w + 1)
                image[y0:y1, x0:x1] = color
            else:
                cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, long_side / 4)
                image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = color
        image += rng.normal(0, 6, image.shape)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def build_model(name: str, checkpoint: str | None, seed: int):
    if name == "tiny":
        model = build_tiny_sam(seed=seed)
        if checkpoint:
            model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        return model
    torch.manual_seed(seed)
    return sam_model_registry[name](checkpoint=checkpoint).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(stock: list, ours) -> dict:
    """Match ours to stock by mask IoU (greedy); return agreement statistics."""
    out = {
        "n_stock": len(stock),
        "n_ours": len(ours),
        "min_iou": 1.0,
        "d_iou": 0.0,
        "d_stab": 0.0,
        "box_equal": 1.0,
        "point_equal": 1.0,
    }
    if not stock or not len(ours):
        out["min_iou"] = 1.0 if len(stock) == len(ours) else 0.0
        return out
    a = (
        mask_utils.decode([r["segmentation"] for r in stock])
        .reshape(-1, len(stock))
        .astype(np.float32)
    )
    b = ours.decode().reshape(len(ours), -1).T.astype(np.float32)
    inter = b.T @ a
    iou = inter / np.maximum(b.sum(0)[:, None] + a.sum(0)[None, :] - inter, 1)
    used, ious, d_iou, d_stab, box_eq, pt_eq = set(), [], [], [], [], []
    for i in np.argsort(-iou.max(1)):
        free = [j for j in range(len(stock)) if j not in used]
        if not free:
            break
        j = max(free, key=lambda j: iou[i, j])
        used.add(j)
        rec = stock[j]
        ious.append(iou[i, j])
        d_iou.append(abs(ours.predicted_iou[i] - rec["predicted_iou"]))
        d_stab.append(abs(ours.stability_score[i] - rec["stability_score"]))
        x, y, w, h = rec["bbox"]
        box_eq.append(ours.boxes[i].tolist() == [x, y, x + w, y + h])
        pt_eq.append(np.allclose(ours.points[i], rec["point_coords"][0], atol=1e-3))
    out.update(
        min_iou=float(min(ious)),
        d_iou=float(max(d_iou)),
        d_stab=float(max(d_stab)),
        box_equal=float(np.mean(box_eq)),
        point_equal=float(np.mean(pt_eq)),
    )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["tiny", "vit_b", "vit_l", "vit_h"], default="tiny")
    p.add_argument(
        "--checkpoint", default=None, help="local SAM checkpoint; random init when absent"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--size", type=int, default=None, help="long side in px (tiny: 64, else 512)")
    p.add_argument("--points-per-side", type=int, default=None, help="tiny: 8, else 32")
    p.add_argument("--crop-n-layers", type=int, default=0)
    p.add_argument("--crop-n-points-downscale-factor", type=int, default=1)
    p.add_argument(
        "--batch", type=int, default=8, help="images per BatchedSamGenerator.generate call"
    )
    p.add_argument("--points-per-batch", type=int, default=None, help="ours (default: auto)")
    p.add_argument("--stock-points-per-batch", type=int, default=64)
    p.add_argument("--encoder-batch-size", type=int, default=8)
    p.add_argument("--pred-iou-thresh", type=float, default=None, help="tiny: 0.45, else 0.88")
    p.add_argument(
        "--stability-score-thresh", type=float, default=None, help="tiny: 0.5, else 0.95"
    )
    p.add_argument("--stability-score-offset", type=float, default=1.0)
    p.add_argument("--box-nms-thresh", type=float, default=0.7)
    p.add_argument("--crop-nms-thresh", type=float, default=0.7)
    p.add_argument("--min-mask-region-area", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="ours under bf16 autocast (CUDA)")
    p.add_argument(
        "--variants",
        default=None,
        help="comma list of ours' precisions to time, from fp32,bf16 (default: "
        "bf16 with --bf16, else fp32)",
    )
    p.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 matmuls and convolutions for both generators (default: "
        "TF32 off for both, strict fp32, so records can be compared at 1e-4; "
        "PyTorch's own default allows TF32 in cuDNN convolutions)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--skip-stock", action="store_true", help="time ours only")
    p.add_argument("--no-fast-encoder", action="store_true", help="ours with the stock encoder")
    p.add_argument("--no-fast-decoder", action="store_true", help="ours with the stock decoder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    tiny = args.model == "tiny"
    size = args.size or (64 if tiny else 512)
    pps = args.points_per_side or (8 if tiny else 32)
    iou_t = args.pred_iou_thresh if args.pred_iou_thresh is not None else (0.45 if tiny else 0.88)
    stab_t = (
        args.stability_score_thresh
        if args.stability_score_thresh is not None
        else (0.5 if tiny else 0.95)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    variants = (args.variants or ("bf16" if args.bf16 else "fp32")).split(",")
    if any(v not in ("fp32", "bf16") for v in variants):
        p.error("--variants takes fp32 and/or bf16")

    model = build_model(args.model, args.checkpoint, args.seed).to(device)
    images = synthetic_images(args.images, size, args.seed)
    params = dict(
        points_per_side=pps,
        pred_iou_thresh=iou_t,
        stability_score_thresh=stab_t,
        stability_score_offset=args.stability_score_offset,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        crop_nms_thresh=args.crop_nms_thresh,
        crop_n_points_downscale_factor=args.crop_n_points_downscale_factor,
        min_mask_region_area=args.min_mask_region_area,
    )
    print(
        f"device: {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"TF32: matmul={torch.backends.cuda.matmul.allow_tf32} "
        f"cudnn={torch.backends.cudnn.allow_tf32}; ours: {', '.join(variants)}"
    )
    print(
        f"model {args.model} (img_size {model.image_encoder.img_size}, "
        f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'random init'}); "
        f"{len(images)} images, long side {size}: {sorted({im.shape[:2] for im in images})}"
    )
    print(f"params: {params}")

    stock = SamAutomaticMaskGenerator(
        model, points_per_batch=args.stock_points_per_batch, output_mode="coco_rle", **params
    )
    n = len(images)
    stock_out, t_stock = None, None
    if not args.skip_stock:
        stock.generate(images[0])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        stock_out = [stock.generate(im) for im in images]
        sync(device)
        t_stock = time.perf_counter() - t0
        print(
            f"\nstock: {n / t_stock:8.2f} images/s ({1000 * t_stock / n:.1f} ms/image; "
            f"points_per_batch {args.stock_points_per_batch})"
        )
        print(f"masks per image, stock: {[len(r) for r in stock_out]}")

    failed = False
    for variant in variants:
        bf16 = variant == "bf16"
        ours = BatchedSamGenerator(
            model,
            **params,
            points_per_batch=args.points_per_batch,
            autocast_bf16=bf16,
            encoder_batch_size=args.encoder_batch_size,
            fast_encoder=not args.no_fast_encoder,
            fast_decoder=not args.no_fast_decoder,
        )
        ours.generate(images[: min(args.batch, n)])  # warm-up
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ours_out = []
        t0 = time.perf_counter()
        for s in range(0, n, args.batch):
            ours_out.extend(ours.generate(images[s : s + args.batch]))
        sync(device)
        t_ours = time.perf_counter() - t0
        peak = (
            f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
            if device.type == "cuda"
            else ""
        )

        # stage breakdown from a separate, synchronised pass
        ours.profile = True
        for s in range(0, n, args.batch):
            ours.generate(images[s : s + args.batch])
        stages = ", ".join(
            f"{k} {1000 * v / n:.1f}" if isinstance(v, float) else f"{k} {v / n:.0f}"
            for k, v in ours.timings.items()
        )

        print(
            f"\nours [{variant}]: {n / t_ours:8.2f} images/s ({1000 * t_ours / n:.1f} ms/image; "
            f"batch {args.batch}, points_per_batch {ours.points_per_batch}{peak})"
        )
        print(f"  per image (synchronised pass): {stages}")
        print(f"  masks per image: {[len(o) for o in ours_out]}")
        if stock_out is None:
            continue
        print(f"  ratio stock/ours: {t_stock / t_ours:.2f}x")
        stats = [compare(s, o) for s, o in zip(stock_out, ours_out, strict=False)]
        counts_equal = all(s["n_stock"] == s["n_ours"] for s in stats)
        min_iou = min(s["min_iou"] for s in stats)
        d_iou = max(s["d_iou"] for s in stats)
        d_stab = max(s["d_stab"] for s in stats)
        box_eq = np.mean([s["box_equal"] for s in stats])
        pt_eq = np.mean([s["point_equal"] for s in stats])
        print(
            f"  matched: counts equal {counts_equal}, min mask IoU {min_iou:.4f}, "
            f"max |d predicted_iou| {d_iou:.2e}, max |d stability| {d_stab:.2e}, "
            f"boxes equal {box_eq:.3f}, points equal {pt_eq:.3f}"
        )
        agree = counts_equal and min_iou >= 0.99 and d_iou <= 1e-4 and d_stab <= 1e-4
        verdict = "AGREE" if agree else "DIFFER"
        if sum(s["n_stock"] for s in stats) == 0:
            verdict += " (vacuous: no masks passed; lower the thresholds)"
        print(f"  records: {verdict}" + (" (bf16: small differences expected)" if bf16 else ""))
        failed |= not agree and not bf16
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
