"""The ``segment.sam2`` section of the param schema: SAM 2 automatic mask generation.

Defaults are the paper's settings (ProtoMask ran SAM 2.1 hiera base+ with 32 points,
points_per_batch 512, pred_iou 0.8, stability 0.9, stability offset 0.5, two crop layers
with overlap 512/1500, min region 10 and box/crop NMS 0.7); every other setting keeps
``sam2.SAM2AutomaticMaskGenerator``'s default. Kept apart from pipeline/params.py, which
imports it, so the SAM 2 keys stay in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pipeline.param_fields import Interval, param

# The config ``segment.sam2.config`` names when it is ``tiny``: pipeline/segmenters/tiny_sam2.py
TINY_SAM2 = "tiny"


@dataclass(frozen=True)
class Sam2Params:
    """SAM 2 automatic mask generation (used when segment.backend is sam2)."""

    config: str = param(
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        "SAM 2 model config: a local YAML file, a config shipped in the sam2 package "
        "(configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml), or tiny (the small test model "
        "of pipeline/segmenters/tiny_sam2.py).",
    )
    checkpoint: Optional[str] = param(
        None,
        "Local SAM 2 checkpoint file (e.g. sam2.1_hiera_base_plus.pt); nothing is ever downloaded.",
    )
    points_per_side: int = param(32, "Point prompts per image side.", interval=Interval(1, 256))
    points_per_batch: int = param(
        512,
        "Prompts decoded in one call, across crops and images (memory and speed only).",
        interval=Interval(1, 65536),
        speed_only=True,
    )
    pred_iou_thresh: float = param(
        0.8, "Keep masks whose predicted IoU exceeds this.", interval=Interval(0, 1)
    )
    stability_score_thresh: float = param(
        0.9, "Keep masks whose stability score reaches this.", interval=Interval(0, 1)
    )
    stability_score_offset: float = param(
        0.5, "Logit offset of the stability score.", interval=Interval(0, 100)
    )
    box_nms_thresh: float = param(
        0.7, "Box IoU of the NMS among one crop's masks.", interval=Interval(0, 1)
    )
    crop_n_layers: int = param(
        2, "Layers of image crops segmented again (0: none).", interval=Interval(0, 4)
    )
    crop_nms_thresh: float = param(0.7, "Box IoU of the NMS across crops.", interval=Interval(0, 1))
    crop_overlap_ratio: float = param(
        512 / 1500, "Overlap of neighbouring crops.", interval=Interval(0, 1, hi_closed=False)
    )
    crop_n_points_downscale_factor: int = param(
        1, "Point grid shrink per crop layer.", interval=Interval(1, 16)
    )
    min_mask_region_area: int = param(
        10,
        "Fill holes and remove islands up to this many px in the low-resolution mask "
        "logits (sam2's own post-processing; it needs sam2's CUDA extension, which "
        "make install does not build: without it sam2 skips this step with a warning).",
        interval=Interval(0, 1_000_000),
    )
    images_per_batch: int = param(
        4,
        "Images whose crops go through the image encoder together.",
        interval=Interval(1, 256),
        speed_only=True,
    )
    encoder_batch_size: int = param(
        8, "Crops per image-encoder call.", interval=Interval(1, 256), speed_only=True
    )
    bf16: bool = param(False, "bf16 autocast on CUDA (fp32 otherwise).")
