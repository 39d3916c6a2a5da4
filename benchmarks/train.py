"""Training throughput: end to end from HDF5 crops vs the same model fed tensors in memory.

Run by hand (not a test). Two measurements in one run, same model and batch shape:

1. ``memory``: random view tensors already on the device (the model's ceiling);
2. ``loader`` (with ``--crops-dir``): the train split of the crop shards through
   ``ViewDataset`` (augmentation on) and a DataLoader with ``--workers`` processes.

Prints images/s for each and the loader's overhead (target: at most 15 %). On a GPU:

    python benchmarks/train.py --backbone resnet50 --weights none --views 11 --size 224 \\
        --batch 16 --device cuda --bf16 --channels-last

Here on CPU, against the default run's crops:

    python benchmarks/train.py --crops-dir artifacts/crops --steps 10
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from model.backbones import build_backbone
from model.head import unwrap_model
from model.losses import LossWeights, prototype_loss
from model.protomask import ProtoMask


def build(args: argparse.Namespace, num_classes: int) -> ProtoMask:
    model = ProtoMask(
        build_backbone(args.backbone, args.weights),
        num_classes,
        prototypes_per_class=args.prototypes_per_class,
        prototype_dim=args.prototype_dim,
    ).to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        model.channels_last = True
    return model


def train_steps(model: ProtoMask, batches, args: argparse.Namespace, steps: int) -> float:
    """Images/s over ``steps`` training steps (after 2 warm-up steps)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=args.device.startswith("cuda"))
    weights, head = LossWeights(), unwrap_model(model).head
    cast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if args.bf16
        else torch.autocast("cpu", enabled=False)
    )
    class_weight = torch.ones(head.prototype_class_identity.shape[1], device=args.device)
    seen, start = 0, None
    for i, (views, labels) in enumerate(batches):
        if i == 2:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        views = views.to(args.device, non_blocking=True)
        labels = labels.to(args.device, non_blocking=True)
        with cast:
            out = model(views)
        loss, _ = prototype_loss(out, labels, head, weights, class_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(labels)
        if i + 1 >= steps + 2:
            break
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def memory_batches(args: argparse.Namespace, num_classes: int):
    views = torch.randn(args.batch, args.views, 3, args.size, args.size, device=args.device)
    labels = torch.randint(0, num_classes, (args.batch,), device=args.device)
    while True:
        yield views, labels


def loader_batches(dataset, batch: int, workers: int, device: str):
    """(views, labels) from a shuffling DataLoader over ``dataset``, epoch after epoch."""
    loader = DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=workers > 0,
    )
    while True:
        for views, labels, _ in loader:
            yield views, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--views", type=int, default=None, help="default: the crops' M, or 8")
    parser.add_argument("--size", type=int, default=None, help="default: the crops' size, or 64")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--prototypes-per-class", type=int, default=10)
    parser.add_argument("--prototype-dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--crops-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    dataset = None
    if args.crops_dir is not None:
        from pipeline.params import AugmentParams
        from pipeline.view_datasets import ViewDataset

        dataset = ViewDataset(args.crops_dir, "train", augment=AugmentParams())
        args.views, args.size = dataset.num_views, dataset.size
        args.classes = int(dataset.labels.max()) + 1
    args.views, args.size = args.views or 8, args.size or 64
    torch.manual_seed(0)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"{args.backbone}, {args.batch} images x {args.views} views of {args.size} px, "
        f"bf16 {args.bf16}, channels_last {args.channels_last}"
    )
    model = build(args, args.classes)
    in_memory = train_steps(model, memory_batches(args, args.classes), args, args.steps)
    print(f"memory: {in_memory:.1f} images/s ({in_memory * args.views:.0f} views/s)")
    if args.device.startswith("cuda"):
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if dataset is not None:
        batches = loader_batches(dataset, args.batch, args.workers, args.device)
        through = train_steps(model, batches, args, args.steps)
        print(f"loader ({args.workers} workers): {through:.1f} images/s")
        print(
            f"loader overhead: {100 * (in_memory / through - 1):.1f} % "
            f"(ratio memory/loader {in_memory / through:.2f}x; target <= 1.15x)"
        )


if __name__ == "__main__":
    main()
