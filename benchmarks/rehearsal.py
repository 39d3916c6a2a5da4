"""Paper-scale rehearsal: the real stages on a synthetic set of CUB's image size (run by hand).

A class-folder dataset of ``--images`` synthetic 500 x 375 JPEGs (CUB's size) goes through
the real stage functions: prepare, segment (SAM with random weights, thresholds set so
that about ``--masks-per-image`` masks pass, like the real model), crops (``--views``
views of ``--crop-size`` px), one joint epoch then one last-layer epoch of each model with
``--backbone`` (ResNet-50, bf16 on CUDA), and evaluate on the test split. Prints per
stage: seconds, images/s and the GPU's mean utilisation (nvidia-smi sampled every 0.5 s,
when present); the training loader's overhead (benchmarks/train.py: views from memory vs
from the crop shards); and per model the projected wall time of the paper's CUB schedule
(100 joint + 10 last-layer epochs over CUB's 5,994 training images) at the measured rate.

    # on the GPU (benchmarks/gpu/run.sh does this after installing the wheels)
    python benchmarks/rehearsal.py --device cuda --images 1000
    # here, on CPU, end to end at tiny sizes
    python benchmarks/rehearsal.py --device cpu --sam tiny --images 24 --classes 4 \\
        --views 3 --crop-size 32 --backbone tiny_cnn --points-per-side 8 --models protomask
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from pipeline import layout  # noqa: E402
from pipeline.param_loading import build_section  # noqa: E402
from pipeline.params import Params  # noqa: E402

CUB_SIZE = (375, 500)  # (h, w) of most CUB-200-2011 images
CUB_TRAIN_IMAGES = 5994
PAPER_JOINT_EPOCHS, PAPER_LAST_LAYER_EPOCHS = 100, 10


class GpuSampler:
    """nvidia-smi's GPU utilisation every 0.5 s while a stage runs (None without a GPU)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "500",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def mean(self) -> float | None:
        """Mean utilisation in percent (None when nothing was sampled)."""
        return statistics.fmean(self.samples) if self.samples else None


def timed(name: str, fn: Callable[[], Any], rows: list, images: int) -> Any:
    """Run one stage, append (name, seconds, images/s, GPU %) to ``rows``."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    with GpuSampler() as gpu:
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    rows.append((name, seconds, images / seconds, gpu.mean()))
    util = f", GPU {gpu.mean():.0f} %" if gpu.mean() is not None else ""
    print(f"{name}: {seconds:.1f} s, {images / seconds:.1f} images/s{util}", flush=True)
    return out


def write_dataset(root: Path, images: int, classes: int, seed: int) -> None:
    """``images`` synthetic JPEGs of CUB's size in ``classes`` class folders."""
    from segment_sam import synthetic_images

    h, w = CUB_SIZE
    for i, image in enumerate(synthetic_images(images, w, seed)):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(image).resize((w, h), Image.BILINEAR)
        pil.save(folder / f"img_{i:05d}.jpg", quality=95)


def random_sam(model_type: str, path: Path, seed: int) -> torch.nn.Module:
    """A randomly initialised SAM (tiny: pipeline/segmenters/tiny_sam.py), saved to ``path``."""
    from segment_anything import sam_model_registry

    from pipeline.segmenters.tiny_sam import build_tiny_sam

    torch.manual_seed(seed)
    model = build_tiny_sam(seed=seed) if model_type == "tiny" else sam_model_registry[model_type]()
    torch.save(model.state_dict(), path)
    return model.eval()


def calibrate_iou_threshold(
    model: torch.nn.Module, images: list[np.ndarray], args: argparse.Namespace
) -> float:
    """The predicted-IoU threshold at which about ``--masks-per-image`` of the masks that
    survive NMS pass (random weights give other IoU predictions than the real model)."""
    from pipeline.segmenters.sam_batched import BatchedSamGenerator

    gen = BatchedSamGenerator(
        model.to(args.device),
        points_per_side=args.points_per_side,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=0,
        autocast_bf16=args.device.startswith("cuda"),
    )
    sets = gen.generate(images)
    ious = np.concatenate([s.predicted_iou for s in sets])
    per_image = len(ious) / len(images)
    model.cpu()
    if per_image <= args.masks_per_image:
        print(f"calibration: only {per_image:.0f} masks per image pass NMS; threshold 0")
        return 0.0
    threshold = float(np.quantile(ious, 1 - args.masks_per_image / per_image))
    print(f"calibration: {per_image:.0f} masks per image at threshold 0 -> {threshold:.4f}")
    return threshold


def rehearsal_params(args: argparse.Namespace, checkpoint: Path, iou_thresh: float) -> Params:
    """The project's params for the rehearsal (one joint and one last-layer epoch)."""
    cuda = args.device.startswith("cuda")
    prototype_models = {
        m: {"warmup_epochs": 0, "joint_epochs": 1, "last_layer_epochs": 1}
        for m in ("protomask", "protopnet", "protopool")
    }
    raw = {
        "data": {"source": "folder", "root": "images", "test_fraction": args.test_fraction},
        "segment": {
            "backend": "sam",
            "device": args.device,
            "workers": 1,
            "sam": {
                "model_type": args.sam,
                "checkpoint": str(checkpoint),
                "points_per_side": args.points_per_side,
                "pred_iou_thresh": iou_thresh,
                "stability_score_thresh": 0.0,
                "crop_n_layers": 0,
                "images_per_batch": args.sam_batch,
                "bf16": cuda,
            },
        },
        "crops": {"num_views": args.views, "size": args.crop_size},
        "train": {
            "device": args.device,
            "batch_size": args.batch,
            "model": {
                "backbone": args.backbone,
                "weights": "none",
                "baseline_image_size": args.crop_size,
            },
            **prototype_models,
            "pipnet": {
                "pretrain_epochs": 0,
                "train_epochs": 2,
                "finetune_epochs": 0,
                "freeze_epochs": 0,
            },
        },
        "evaluate": {"device": args.device},
    }
    params = build_section(Params, raw, "")
    params.check()
    return params


def loader_overhead(project: Path, args: argparse.Namespace) -> None:
    """benchmarks/train.py's two measurements: views from memory vs from the crop shards."""
    import train as train_bench

    from pipeline.params import AugmentParams, TrainParams
    from pipeline.view_datasets import ViewDataset

    dataset = ViewDataset(project / layout.CROPS_DIR, "train", augment=AugmentParams())
    classes = int(dataset.labels.max()) + 1
    ns = argparse.Namespace(
        backbone=args.backbone,
        weights="none",
        prototypes_per_class=10,
        prototype_dim=128,
        device=args.device,
        bf16=args.device.startswith("cuda"),
        channels_last=TrainParams().channels_last,  # as train: on CPU too
        batch=args.batch,
        views=args.views,
        size=args.crop_size,
    )
    model = train_bench.build(ns, classes)
    in_memory = train_bench.train_steps(model, train_bench.memory_batches(ns, classes), ns, 10)
    batches = train_bench.loader_batches(dataset, args.batch, args.loader_workers, args.device)
    through = train_bench.train_steps(model, batches, ns, 10)
    print(
        f"training images/s ({args.backbone}, {args.views} views x {args.crop_size} px): "
        f"{in_memory:.1f} from memory, {through:.1f} through the loader "
        f"({args.loader_workers} workers): overhead {100 * (in_memory / through - 1):.1f} % "
        "(goal <= 15 %)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/protomask-rehearsal"))
    p.add_argument("--images", type=int, default=1000, help="CUB: 11788")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--test-fraction", type=float, default=0.3)
    p.add_argument("--sam", default="vit_h", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    p.add_argument("--points-per-side", type=int, default=32)
    p.add_argument("--sam-batch", type=int, default=8, help="images per SAM batch")
    p.add_argument("--masks-per-image", type=float, default=75)
    p.add_argument("--views", type=int, default=11)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=64, help="training images per step")
    p.add_argument("--loader-workers", type=int, default=8)
    p.add_argument(
        "--models", default="protomask,protopnet,protopool,pipnet", help="comma-separated"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from pipeline.crops import run_crops
    from pipeline.prepare import run_prepare
    from pipeline.segment import run_segment
    from pipeline.tables import read_table

    project = args.workdir
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device {name}, torch {torch.__version__}; {args.images} images of {CUB_SIZE}")
    write_dataset(project / "images", args.images, args.classes, args.seed)
    checkpoint = project / f"sam_{args.sam}_random.pth"
    sam = random_sam(args.sam, checkpoint, args.seed)
    sample = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(project.glob("images/*/*"))]
    iou_thresh = calibrate_iou_threshold(sam, sample[:2], args)
    del sam
    params = rehearsal_params(args, checkpoint, iou_thresh)

    rows: list = []
    timed("prepare", lambda: run_prepare(params.data, project), rows, args.images)
    seg = timed("segment", lambda: run_segment(params, project), rows, args.images)
    print(f"  masks per image: {seg['masks'] / max(1, args.images):.1f}")
    timed("crops", lambda: run_crops(params, project), rows, args.images)
    index = read_table(project / layout.IMAGES_INDEX, "images")[0].to_pandas()
    n_train = int((index["split"] == "train").sum())
    n_test = int((index["split"] == "test").sum())
    loader_overhead(project, args)

    from model.evaluation import run_evaluation
    from model.training import run_training

    projected, failed = {}, 0
    for kind in args.models.split(","):
        try:
            # two epochs of training images: one joint, one last-layer (PIP-Net: two training)
            metrics = timed(
                f"train {kind}",
                lambda kind=kind: run_training(params, kind, project),
                rows,
                2 * n_train,
            )
            rate = metrics.get("train_images_per_second") or 2 * n_train / rows[-1][1]
            projected[kind] = projected_seconds(rate)
            timed(
                f"evaluate {kind}",
                lambda kind=kind: run_evaluation(params, kind, project),
                rows,
                n_test,
            )
        except Exception as exc:  # noqa: BLE001 - one model's failure: report, go on
            print(f"{kind} failed: {type(exc).__name__}: {exc}", flush=True)
            failed += 1
    print_summary(rows, projected)
    return 1 if failed else 0


def projected_seconds(train_images_per_second: float) -> float:
    """The paper's CUB schedule at this training rate (last-layer epochs counted as
    joint ones: an upper bound)."""
    epochs = PAPER_JOINT_EPOCHS + PAPER_LAST_LAYER_EPOCHS
    return epochs * CUB_TRAIN_IMAGES / train_images_per_second


def print_summary(rows: list, projected: dict[str, float]) -> None:
    """The per-stage table and the projected CUB schedule per model."""
    print(f"\n{'stage':<22}{'seconds':>10}{'images/s':>12}{'GPU %':>8}")
    for stage, seconds, rate, util in rows:
        util_text = f"{util:.0f}" if util is not None else "-"
        print(f"{stage:<22}{seconds:>10.1f}{rate:>12.1f}{util_text:>8}")
    print(
        f"\nprojected CUB schedule ({PAPER_JOINT_EPOCHS} joint + {PAPER_LAST_LAYER_EPOCHS} "
        f"last-layer epochs x {CUB_TRAIN_IMAGES} images at the measured training rate; "
        "last-layer epochs counted as joint ones, an upper bound):"
    )
    for kind, seconds in projected.items():
        print(f"  {kind:<10} {seconds / 3600:.2f} h")


if __name__ == "__main__":
    raise SystemExit(main())
