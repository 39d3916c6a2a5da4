"""Batched SAM 2 automatic mask generation.

:class:`BatchedSam2Generator` produces the masks of ``sam2.SAM2AutomaticMaskGenerator``
(same model, same parameters) for a batch of images at once. It follows the stock
``automatic_mask_generator.py`` step by step, with sam2's own pieces:

* the crops of all images (``generate_crop_boxes``) go through the image encoder
  ``encoder_batch_size`` at a time (``SAM2ImagePredictor.set_image_batch``: sam2's
  transform, ``forward_image`` and feature preparation);
* the point prompts of all crops are decoded ``points_per_batch`` at a time across crops
  and images: each prompt gets its crop's image embedding and high-resolution features
  (one ``sam_mask_decoder`` call per batch, instead of one per crop and batch);
* only the masks above ``pred_iou_thresh`` are upscaled to their crop
  (``SAM2Transforms.postprocess_masks``: the same per mask, hole and sprinkle filling
  included), then stock ``_process_batch`` (stability, binarisation, crop-edge filter),
  ``_process_crop`` (per-crop NMS by predicted IoU) and the cross-crop NMS by
  ``1 / crop area``, with the helpers of ``sam2.utils.amg``;
* masks stay at crop size until the kept ones are pasted into the image and COCO-RLE
  encoded in one host transfer (:mod:`pipeline.segmenters.sam_postprocess`; stock uncrops
  every candidate to image size).

In fp32 the records equal the stock ones up to float rounding (tests/test_sam2_backend.py).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.amg import (
    MaskData,
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from torchvision.ops.boxes import batched_nms, box_area

from pipeline.segmenters.base import MaskSet
from pipeline.segmenters.sam_batched import BatchedSamGenerator
from pipeline.segmenters.sam_postprocess import paste_masks, to_mask_set

__all__ = ["BatchedSam2Generator", "feature_sizes"]

Size = tuple[int, int]  # (h, w)


def feature_sizes(model: torch.nn.Module) -> list[Size]:
    """(h, w) of the three feature levels SAM 2's image predictor reads: strides 4, 8 and
    16 of the square input (``SAM2ImagePredictor`` assumes a 1024 px input)."""
    side = model.image_size
    return [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]


@dataclass
class _Crop:
    image: int  # index of the image in the batch
    image_size: Size  # (h, w) of that image
    box: list[int]  # [x0, y0, x1, y1], exclusive end, as generate_crop_boxes
    layer: int  # crop layer (0 = whole image)
    size: Size  # (h, w) of the crop
    chunks: list[MaskData] = field(default_factory=list)  # surviving candidates


@dataclass
class _Features:
    """Image-encoder outputs of all crops (batch = crop index), as SAM2ImagePredictor keeps them."""

    image_embed: torch.Tensor
    high_res: list[torch.Tensor]


class BatchedSam2Generator:
    """Automatic mask generation with SAM 2 for batches of images; stock-equivalent records.

    The parameters are those of ``SAM2AutomaticMaskGenerator`` with the same defaults
    (``multimask_output`` on, ``use_m2m`` off, ``mask_threshold`` 0), except:

    * ``points_per_batch``: prompts decoded per mask-decoder call, across crops and
      images; speed and memory only.
    * ``encoder_batch_size``: crops per image-encoder call.
    * ``autocast_bf16``: encoder and decoder under bf16 autocast (CUDA only; ignored with
      a warning elsewhere). Default fp32, which matches stock.
    * ``profile``: synchronise after each step and add its seconds to ``self.timings``.

    The device is the model's device.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        autocast_bf16: bool = False,
        *,
        encoder_batch_size: int = 8,
        profile: bool = False,
    ) -> None:
        if points_per_side < 1:
            raise ValueError("points_per_side must be >= 1")
        if crop_n_layers < 0:
            raise ValueError("crop_n_layers must be >= 0")
        self.model = model
        self.predictor = SAM2ImagePredictor(
            model, max_hole_area=min_mask_region_area, max_sprinkle_area=min_mask_region_area
        )
        self.predictor._bb_feat_sizes = feature_sizes(model)
        self.point_grids = build_all_layer_point_grids(
            points_per_side, crop_n_layers, crop_n_points_downscale_factor
        )
        self.points_per_batch = max(1, int(points_per_batch))
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.mask_threshold = 0.0
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.encoder_batch_size = max(1, int(encoder_batch_size))
        on_cuda = self.device.type == "cuda"
        if autocast_bf16 and not on_cuda:
            warnings.warn("autocast_bf16 applies on CUDA only; running in fp32", stacklevel=2)
        self.autocast_bf16 = bool(autocast_bf16) and on_cuda
        self.profile = bool(profile)
        self.timings: dict[str, float] = {}
        self._t_last = 0.0

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self.predictor.device

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast_bf16)

    def _tick(self, step: str | None = None) -> None:
        if not self.profile:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if step is not None:
            self.timings[step] = self.timings.get(step, 0.0) + now - self._t_last
        self._t_last = now

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray]) -> list[MaskSet]:
        """One MaskSet per HxWx3 uint8 RGB image, in order (sizes may differ)."""
        images = [BatchedSamGenerator._check_image(im, i) for i, im in enumerate(images)]
        if not images:
            return []
        self._tick()
        crops = self._make_crops(images)
        feats = self._encode(images, crops)
        self._tick("encode")
        self._decode_all(crops, feats)
        del feats
        out = []
        for i, image in enumerate(images):
            out.append(self._image_masks(image.shape[:2], [c for c in crops if c.image == i]))
        self._tick("nms+rle")
        return out

    def _make_crops(self, images: list[np.ndarray]) -> list[_Crop]:
        crops = []
        for i, image in enumerate(images):
            size = image.shape[:2]
            boxes, layers = generate_crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)
            for box, layer in zip(boxes, layers, strict=True):
                x0, y0, x1, y1 = box
                crops.append(_Crop(i, size, list(box), layer, (y1 - y0, x1 - x0)))
        return crops

    def _encode(self, images: list[np.ndarray], crops: list[_Crop]) -> _Features:
        """sam2's image features of every crop, ``encoder_batch_size`` crops a call."""
        embeds, high_res = [], []
        for start in range(0, len(crops), self.encoder_batch_size):
            pixels = []
            for crop in crops[start : start + self.encoder_batch_size]:
                x0, y0, x1, y1 = crop.box
                # sam2's ToTensor wants a writable array (decoded images are read-only)
                crop_pixels = images[crop.image][y0:y1, x0:x1, :]
                pixels.append(np.require(crop_pixels, requirements=["WRITEABLE"]))
            with self._autocast():
                self.predictor.set_image_batch(pixels)
            embeds.append(self.predictor._features["image_embed"])
            high_res.append(self.predictor._features["high_res_feats"])
        self.predictor.reset_predictor()
        levels = [torch.cat([h[k] for h in high_res]) for k in range(len(high_res[0]))]
        return _Features(torch.cat(embeds), levels)

    def _prompts(self, crops: list[_Crop]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per prompt: crop-frame point (float64, as stock), crop (w, h), crop index."""
        points, sizes, crop_ids = [], [], []
        for c, crop in enumerate(crops):
            h, w = crop.size
            grid = self.point_grids[crop.layer] * np.array([[w, h]])
            points.append(grid)
            sizes.append(np.tile([w, h], (len(grid), 1)))
            crop_ids.append(np.full(len(grid), c, dtype=np.int64))
        return np.concatenate(points), np.concatenate(sizes), np.concatenate(crop_ids)

    def _decode_all(self, crops: list[_Crop], feats: _Features) -> None:
        """Decode every crop's point grid, ``points_per_batch`` prompts a decoder call."""
        model, resolution = self.model, self.predictor._transforms.resolution
        points, sizes, crop_ids = self._prompts(crops)
        image_pe = model.sam_prompt_encoder.get_dense_pe()
        for start in range(0, len(points), self.points_per_batch):
            sl = slice(start, start + self.points_per_batch)
            pts = torch.as_tensor(points[sl], dtype=torch.float32, device=self.device)
            wh = torch.as_tensor(sizes[sl], dtype=torch.float32, device=self.device)
            in_points = pts / wh * resolution  # SAM2Transforms.transform_coords, per crop
            labels = torch.ones(len(pts), dtype=torch.int, device=self.device)
            ids = torch.as_tensor(crop_ids[sl], device=self.device)
            with self._autocast():
                sparse, dense = model.sam_prompt_encoder(
                    points=(in_points[:, None, :], labels[:, None]), boxes=None, masks=None
                )
                low_res, iou, _, _ = model.sam_mask_decoder(
                    image_embeddings=feats.image_embed[ids],
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                    repeat_image=False,
                    high_res_features=[f[ids] for f in feats.high_res],
                )
            self._tick("decode")
            self._filter_batch(crops, crop_ids[sl], pts, iou.float(), low_res.float())
            self._tick("upscale+filter")

    def _filter_batch(
        self,
        crops: list[_Crop],
        crop_ids: np.ndarray,
        points: torch.Tensor,
        iou: torch.Tensor,
        low_res: torch.Tensor,
    ) -> None:
        """Stock ``_process_batch`` for a decoded batch spanning several crops: predicted
        IoU filter, then upscaling of the survivors only, stability, binarisation, boxes
        and crop-edge filter; the survivors go to their crop's ``chunks``."""
        n_masks = iou.shape[1]
        flat_iou = iou.flatten()
        keep = torch.arange(flat_iou.numel(), device=flat_iou.device)
        if self.pred_iou_thresh > 0.0:
            keep = torch.nonzero(flat_iou > self.pred_iou_thresh).flatten()
        if keep.numel() == 0:
            return
        prompt = (keep // n_masks).cpu().numpy()
        low = low_res.flatten(0, 1)[keep]
        for c in np.unique(crop_ids[prompt]):
            crop = crops[int(c)]
            rows = torch.as_tensor(np.flatnonzero(crop_ids[prompt] == c), device=keep.device)
            masks = self.predictor._transforms.postprocess_masks(low[rows][:, None], crop.size)
            data = MaskData(
                masks=masks[:, 0],
                iou_preds=flat_iou[keep[rows]],
                points=points[keep[rows] // n_masks],
            )
            data["stability_score"] = calculate_stability_score(
                data["masks"], self.mask_threshold, self.stability_score_offset
            )
            if self.stability_score_thresh > 0.0:
                data.filter(data["stability_score"] >= self.stability_score_thresh)
            data["masks"] = data["masks"] > self.mask_threshold
            data["boxes"] = batched_mask_to_box(data["masks"])
            h, w = crop.image_size
            near_edge = is_box_near_crop_edge(data["boxes"], crop.box, [0, 0, w, h])
            if not torch.all(~near_edge):
                data.filter(~near_edge)
            if data["masks"].shape[0]:
                crop.chunks.append(data)

    def _image_masks(self, image_size: Size, crops: list[_Crop]) -> MaskSet:
        """Stock ``_process_crop`` NMS per crop, the cross-crop NMS, paste and RLE."""
        data, parts = MaskData(), []
        for crop in crops:
            if not crop.chunks:
                continue
            cands = crop.chunks[0]
            for more in crop.chunks[1:]:
                cands.cat(more)
            crop.chunks = []
            iou = cands["iou_preds"]
            keep = batched_nms(
                cands["boxes"].float(), iou, torch.zeros_like(iou), self.box_nms_thresh
            )
            masks = cands["masks"]
            del cands["masks"]
            cands.filter(keep)
            cands["boxes"] = uncrop_boxes_xyxy(cands["boxes"], crop.box)
            cands["points"] = uncrop_points(cands["points"], crop.box)
            n = keep.numel()
            cands["crop_boxes"] = torch.tensor([crop.box] * n, dtype=torch.int64)
            cands["part"] = torch.full((n,), len(parts), dtype=torch.int64)
            cands["local"] = keep.cpu()
            data.cat(cands)
            parts.append((crop.box, masks))
        if not parts:
            return MaskSet.empty(*image_size)
        if len(crops) > 1:
            scores = (1 / box_area(data["crop_boxes"])).to(data["boxes"].device)
            keep = batched_nms(
                data["boxes"].float(), scores, torch.zeros_like(scores), self.crop_nms_thresh
            )
            data.filter(keep)
        full = paste_masks(parts, data["part"], data["local"], image_size, self.device)
        return to_mask_set(full, data, image_size, 0, self.crop_nms_thresh)
