"""Build the segmenter that params name: SAM from a local checkpoint, or the classical one."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.devices import resolve_device
from pipeline.errors import ProtomaskError
from pipeline.params import SegmentParams
from pipeline.segmenters.base import MaskSet

Segmenter = Callable[[list[np.ndarray]], list[MaskSet]]


def file_sha256(path: Path) -> str:
    """Hash of a (possibly multi-GB) file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_path(params: SegmentParams) -> Path:
    """The SAM checkpoint file, checked to exist and be readable."""
    path = Path(params.sam.checkpoint or "")
    if not params.sam.checkpoint or not path.is_file():
        raise ProtomaskError(
            f"segment.sam.checkpoint: SAM checkpoint file {params.sam.checkpoint!r} not found; "
            f"download the {params.sam.model_type} checkpoint yourself (nothing is fetched at "
            f"run time) and name its local path there")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ProtomaskError(f"segment.sam.checkpoint: cannot read {path} ({exc.strerror})") from None
    return path


def load_sam(params: SegmentParams, device: str):
    """A SAM model from ``segment.sam.checkpoint`` (loaded with weights_only=True)."""
    import torch
    from segment_anything import sam_model_registry

    from pipeline.segmenters.tiny_sam import build_tiny_sam

    path = checkpoint_path(params)
    model = (build_tiny_sam() if params.sam.model_type == "tiny"
             else sam_model_registry[params.sam.model_type](checkpoint=None))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the user's file
        raise ProtomaskError(f"segment.sam.checkpoint: {path} is not a {params.sam.model_type} "
                             f"SAM checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    return model.to(device).eval()


def build_segmenter(params: SegmentParams, worker_index: int = 0) -> Segmenter:
    """A function from a batch of RGB images to their masks."""
    if params.backend == "classical":
        from pipeline.segmenters.classical import segment_classical

        return lambda images: [segment_classical(image, params.classical) for image in images]
    from pipeline.segmenters.sam_batched import BatchedSamGenerator

    device = resolve_device(params.device, "segment.device", worker_index)
    s = params.sam
    generator = BatchedSamGenerator(
        load_sam(params, device), points_per_side=s.points_per_side,
        points_per_batch=s.points_per_batch, pred_iou_thresh=s.pred_iou_thresh,
        stability_score_thresh=s.stability_score_thresh,
        stability_score_offset=s.stability_score_offset, box_nms_thresh=s.box_nms_thresh,
        crop_n_layers=s.crop_n_layers, crop_nms_thresh=s.crop_nms_thresh,
        crop_overlap_ratio=s.crop_overlap_ratio,
        crop_n_points_downscale_factor=s.crop_n_points_downscale_factor,
        min_mask_region_area=s.min_mask_region_area, autocast_bf16=s.bf16)
    return generator.generate
