"""Build the segmenter that params name: SAM from a local checkpoint, or the classical one."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from pipeline.devices import resolve_device
from pipeline.errors import ProtomaskError
from pipeline.params import Sam2Params, SamParams, SegmentParams
from pipeline.segmenters.base import MaskSet

Segmenter = Callable[[list[np.ndarray]], list[MaskSet]]


def file_sha256(path: Path) -> str:
    """Hash of a (possibly multi-GB) file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def readable_checkpoint(name: str | None, key: str, missing: str) -> Path:
    """The checkpoint file ``name`` of param ``key``, checked to exist and be readable;
    else one line naming the key and the file (``missing``: what is missing and what to do)."""
    path = Path(name or "")
    if not name or not path.is_file():
        raise ProtomaskError(f"{key}: {missing}")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ProtomaskError(f"{key}: cannot read {path} ({exc.strerror})") from None
    return path


def checkpoint_path(params: SegmentParams) -> Path:
    """The SAM checkpoint file, checked to exist and be readable."""
    return readable_checkpoint(
        params.sam.checkpoint,
        "segment.sam.checkpoint",
        f"SAM checkpoint file {params.sam.checkpoint!r} not found; download the "
        f"{params.sam.model_type} checkpoint yourself (nothing is fetched at run time) and "
        "name its local path there",
    )


def generator_options(s: SamParams | Sam2Params) -> dict[str, object]:
    """The automatic-mask-generator settings that SAM and SAM 2 share, from their params
    section (``segment.sam`` or ``segment.sam2``: the same field names)."""
    return dict(
        points_per_side=s.points_per_side,
        points_per_batch=s.points_per_batch,
        pred_iou_thresh=s.pred_iou_thresh,
        stability_score_thresh=s.stability_score_thresh,
        stability_score_offset=s.stability_score_offset,
        box_nms_thresh=s.box_nms_thresh,
        crop_n_layers=s.crop_n_layers,
        crop_nms_thresh=s.crop_nms_thresh,
        crop_overlap_ratio=s.crop_overlap_ratio,
        crop_n_points_downscale_factor=s.crop_n_points_downscale_factor,
        min_mask_region_area=s.min_mask_region_area,
        autocast_bf16=s.bf16,
        encoder_batch_size=s.encoder_batch_size,
    )


Shapes = dict[str, tuple[int, ...]]
_PATCH_EMBED = "image_encoder.patch_embed.proj.weight"


def _sam_model_types() -> tuple[str, ...]:
    """The architectures segment.sam.model_type may name: segment_anything's registry
    (without its alias ``default``) and ``tiny``."""
    from segment_anything import sam_model_registry

    return tuple(k for k in sam_model_registry if k != "default") + ("tiny",)


@functools.cache
def expected_shapes(model_type: str) -> Shapes:
    """Name -> shape of every tensor of a ``model_type`` SAM's state dict (the vit_*
    models are built on the meta device: no weights, no memory)."""
    import torch
    from segment_anything import sam_model_registry

    from pipeline.segmenters.tiny_sam import build_tiny_sam

    if model_type == "tiny":
        model = build_tiny_sam()
    else:
        with torch.device("meta"):
            model = sam_model_registry[model_type](checkpoint=None)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _checkpoint_shapes(path: Path, model_type: str) -> Shapes:
    """Name -> shape of the tensors of a checkpoint, without reading their data
    (memory-mapped); a one-line error when it is not a state dict of tensors."""
    import torch

    def load(mmap: bool) -> object:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            state = load(mmap=True)
        except RuntimeError as exc:  # a legacy (non-zip) torch.save file cannot be mapped
            if "mmap" not in str(exc):
                raise
            state = load(mmap=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the user's file
        raise ProtomaskError(
            f"segment.sam.checkpoint: {path} is not a {model_type} SAM "
            f"checkpoint ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})"
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ProtomaskError(
            f"segment.sam.checkpoint: {path} is not a {model_type} SAM "
            f"checkpoint (not a state dict of tensors)"
        )
    return {str(k): tuple(v.shape) for k, v in state.items()}


def describe_encoder(shapes: Shapes) -> str:
    """'image encoder width 1280, 32 blocks' from a state dict's shapes."""
    if _PATCH_EMBED not in shapes:
        return f"no {_PATCH_EMBED}"
    blocks = {m.group(1) for k in shapes if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    return f"image encoder width {shapes[_PATCH_EMBED][0]}, {len(blocks)} blocks"


def _first_difference(found: Shapes, expected: Shapes) -> str:
    """The first tensor that is missing, extra or of another shape."""
    for name in sorted(set(found) | set(expected)):
        if found.get(name) != expected.get(name):
            return (
                f"{name}: {found[name] if name in found else 'missing'}, expected "
                f"{expected[name] if name in expected else 'none'}"
            )
    return "none"


def check_checkpoint(params: SegmentParams) -> Path:
    """The SAM checkpoint file, checked to hold a ``segment.sam.model_type`` model by its
    tensors' names and shapes (read memory-mapped: no full read of a multi-GB file);
    else one line naming the checkpoint, the type given and the one its tensors show."""
    path = checkpoint_path(params)
    given = params.sam.model_type
    found = _checkpoint_shapes(path, given)
    expected = expected_shapes(given)
    if found == expected:
        return path
    fits = [t for t in _sam_model_types() if t != given and expected_shapes(t) == found]
    if fits:
        raise ProtomaskError(
            f"segment.sam.checkpoint: {path} holds a {fits[0]} SAM ({describe_encoder(found)}) "
            f"but segment.sam.model_type is {given} ({describe_encoder(expected)}); set "
            f"segment.sam.model_type: {fits[0]}"
        )
    raise ProtomaskError(
        f"segment.sam.checkpoint: {path} is not a {given} SAM checkpoint: its tensors show "
        f"{describe_encoder(found)}, {given} has {describe_encoder(expected)} (first "
        f"difference: {_first_difference(found, expected)}); no model_type of "
        f"{', '.join(_sam_model_types())} fits it: use a SAM v1 checkpoint"
    )


def load_sam(params: SegmentParams, device: str):
    """A SAM model from ``segment.sam.checkpoint`` (loaded with weights_only=True)."""
    import torch
    from segment_anything import sam_model_registry

    from pipeline.segmenters.tiny_sam import build_tiny_sam

    path = checkpoint_path(params)
    model = (
        build_tiny_sam()
        if params.sam.model_type == "tiny"
        else sam_model_registry[params.sam.model_type](checkpoint=None)
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the user's file
        raise ProtomaskError(
            f"segment.sam.checkpoint: {path} is not a {params.sam.model_type} "
            f"SAM checkpoint ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    return model.to(device).eval()


def build_segmenter(params: SegmentParams, worker_index: int = 0) -> Segmenter:
    """A function from a batch of RGB images to their masks."""
    if params.backend == "classical":
        from pipeline.segmenters.classical import segment_classical

        return lambda images: [segment_classical(image, params.classical) for image in images]
    if params.backend == "sam2":
        from pipeline.segmenters.sam2_loading import build_sam2_segmenter

        return build_sam2_segmenter(params, worker_index)
    from pipeline.segmenters.sam_batched import BatchedSamGenerator

    device = resolve_device(params.device, "segment.device", worker_index)
    return BatchedSamGenerator(load_sam(params, device), **generator_options(params.sam)).generate
