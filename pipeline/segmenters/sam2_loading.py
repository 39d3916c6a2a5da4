"""Build the SAM 2 segmenter (segment.backend sam2) from a local config and checkpoint.

The config is a local YAML file, one shipped inside the sam2 package, or ``tiny``
(pipeline/segmenters/tiny_sam2.py); the model is instantiated from it as
``sam2.build_sam.build_sam2`` does (hydra ``instantiate``, the same post-processing
options), and the checkpoint (sam2's ``{"model": state_dict}``, or a bare state dict)
is read with ``weights_only=True``. Nothing is downloaded; a missing or mismatched file is
one line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pipeline.devices import resolve_device
from pipeline.errors import ProtomaskError
from pipeline.params import SegmentParams
from pipeline.sam2_params import TINY_SAM2
from pipeline.segmenters.loading import (
    Segmenter,
    file_sha256,
    generator_options,
    readable_checkpoint,
)

# what sam2.build_sam.build_sam2 sets on top of the config (apply_postprocessing=True)
_BUILD_SAM2_OPTIONS = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}


def _shipped_configs() -> list[str]:
    import sam2

    root = Path(sam2.__file__).parent
    return sorted(str(p.relative_to(root)) for p in (root / "configs").rglob("*.yaml"))


def config_path(params: SegmentParams) -> Path | None:
    """The config file of ``segment.sam2.config`` (None for ``tiny``): a local file, else
    one shipped in the sam2 package; else one line naming it and the shipped ones."""
    name = params.sam2.config
    if name == TINY_SAM2:
        return None
    if Path(name).is_file():
        return Path(name)
    import sam2

    shipped = Path(sam2.__file__).parent / name
    if shipped.is_file():
        return shipped
    raise ProtomaskError(
        f"segment.sam2.config: {name!r} is neither a local file nor a config shipped with "
        f"sam2 ({', '.join(_shipped_configs())}), nor {TINY_SAM2}"
    )


def checkpoint_path(params: SegmentParams) -> Path:
    """The SAM 2 checkpoint file, checked to exist and be readable."""
    name = params.sam2.checkpoint
    return readable_checkpoint(
        name,
        "segment.sam2.checkpoint",
        f"SAM 2 checkpoint file {name!r} not found; download the checkpoint of "
        "segment.sam2.config yourself (nothing is fetched at run time) and name its local "
        "path there",
    )


def build_model(params: SegmentParams):
    """The untrained SAM 2 of ``segment.sam2.config``, on the CPU."""
    from pipeline.segmenters.tiny_sam2 import build_tiny_sam2

    path = config_path(params)
    if path is None:
        return build_tiny_sam2()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
        for key, value in _BUILD_SAM2_OPTIONS.items():
            OmegaConf.update(cfg, key, value, force_add=True)
        return instantiate(cfg.model, _recursive_=True)
    except Exception as exc:  # noqa: BLE001 - any failure is the user's config
        raise ProtomaskError(
            f"segment.sam2.config: {path} is not a SAM 2 model config "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None


def _read_state(path: Path, mmap: bool) -> dict:
    """The checkpoint's state dict (sam2's ``{"model": ...}`` or a bare one)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the user's file
        raise ProtomaskError(
            f"segment.sam2.checkpoint: {path} is not a SAM 2 checkpoint "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ProtomaskError(
            f"segment.sam2.checkpoint: {path} is not a SAM 2 checkpoint (no state dict of tensors)"
        )
    return dict(state)


def _check_fits(path: Path, state: Mapping, model, config: str) -> None:
    """One line naming the checkpoint, the config and the first differing tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found == expected:
        return
    name = next(n for n in sorted(set(found) | set(expected)) if found.get(n) != expected.get(n))
    raise ProtomaskError(
        f"segment.sam2.checkpoint: {path} does not hold the model of segment.sam2.config "
        f"{config!r}: first difference {name}: {found.get(name, 'missing')}, expected "
        f"{expected.get(name, 'none')}"
    )


def check_sam2(params: SegmentParams) -> str:
    """Check config and checkpoint before any worker starts (tensor names and shapes, the
    checkpoint memory-mapped; sam2's Hiera cannot be built on the meta device, so the
    model is built on the CPU, untrained); returns the hash that stands for the model in the mask
    shards' fingerprints: the checkpoint's and the config file's."""
    path = checkpoint_path(params)
    _check_fits(path, _read_state(path, mmap=True), build_model(params), params.sam2.config)
    config = config_path(params)
    config_sha = file_sha256(config) if config is not None else TINY_SAM2
    return file_sha256(path) + config_sha


def load_sam2(params: SegmentParams, device: str):
    """The SAM 2 model of ``segment.sam2`` with its checkpoint's weights, in eval mode."""
    path = checkpoint_path(params)
    model = build_model(params)
    state = _read_state(path, mmap=False)
    _check_fits(path, state, model, params.sam2.config)
    model.load_state_dict(state)
    return model.to(device).eval()


def build_sam2_segmenter(params: SegmentParams, worker_index: int = 0) -> Segmenter:
    """A function from a batch of RGB images to their masks, with SAM 2."""
    from pipeline.segmenters.sam2_batched import BatchedSam2Generator

    model = load_sam2(params, resolve_device(params.device, "segment.device", worker_index))
    return BatchedSam2Generator(model, **generator_options(params.sam2)).generate
