"""Batched Segment Anything automatic mask generation.

:class:`BatchedSamGenerator` produces the same masks as the stock
``segment_anything.SamAutomaticMaskGenerator`` (same model, same parameters), but for a
batch of images at once and without the stock generator's per-batch and per-mask host
work. It follows the stock ``automatic_mask_generator.py`` step by step:

* all crops of all images are resized exactly as stock, stacked and encoded in batches
  (:mod:`pipeline.segmenters.sam_encoder`);
* the point prompts of all crops are decoded ``points_per_batch`` at a time, across crops
  and images (:mod:`pipeline.segmenters.sam_decoder`); the output upscaling runs only
  for prompts with a mask above ``pred_iou_thresh``;
* ``_process_batch`` (IoU, stability, crop-edge filters), ``_process_crop`` (per-crop
  NMS by predicted IoU) and ``_cross_crop_nms`` (NMS by ``1 / crop area``) are stock's,
  on the device, with the helpers of ``segment_anything.utils.amg``;
* ``_to_mask_set``: the kept masks are pasted into image-sized masks, post-processed
  (``min_mask_region_area``, as stock) and COCO-RLE-encoded in one host transfer
  (:mod:`pipeline.segmenters.sam_postprocess`).

In fp32 the records match the stock ones up to float rounding
(tests/test_sam_batched.py); ``autocast_bf16`` trades that for speed on CUDA.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    MaskData,
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops.boxes import batched_nms, box_area

from pipeline.segmenters.base import MaskSet
from pipeline.segmenters.sam_decoder import (
    FastDecoder,
    LowRes,
    StockDecoder,
    check_fast_decoder,
)
from pipeline.segmenters.sam_encoder import encode_crops, encoder_batch_limit
from pipeline.segmenters.sam_postprocess import (
    paste_masks,
    to_mask_set,
)

__all__ = ["BatchedSamGenerator"]

Size = tuple[int, int]  # (h, w)


@dataclass
class _Crop:
    image: int  # index of the image in the batch
    image_size: Size  # (h, w) of that image
    box: list[int]  # [x0, y0, x1, y1], exclusive end, as generate_crop_boxes
    layer: int  # crop layer (0 = whole image)
    size: Size  # (h, w) of the crop
    input_size: Size  # (h, w) after ResizeLongestSide, before padding


@dataclass
class _Candidates:
    """Masks of one crop that passed the per-batch filters: one ``MaskData`` per chunk
    (tensors on the device; masks bool at crop size, boxes in the crop frame)."""

    chunks: list[MaskData] = field(default_factory=list)

    def cat(self) -> MaskData:
        """All chunks in one ``MaskData`` (one ``torch.cat`` per key)."""
        keys = [k for k, _ in self.chunks[0].items()]
        return MaskData(**{k: torch.cat([d[k] for d in self.chunks]) for k in keys})


class BatchedSamGenerator:
    """Automatic mask generation for batches of images; stock-equivalent records.

    The parameters are those of ``SamAutomaticMaskGenerator`` with the same defaults,
    except:

    * ``points_per_batch``: prompts decoded per mask-decoder call, across crops and
      images. It changes speed and memory only, never the result (stock's 64 is slow
      here); ``None`` picks 1024 on CUDA and 256 otherwise.
    * ``encoder_batch_size``: crops per image-encoder call (memory only, never the
      result); ``None`` picks 8 on CUDA and 1 elsewhere, and any value is lowered to
      what memory allows (``sam_encoder.encoder_batch_limit``).
    * ``autocast_bf16``: run encoder and decoder under bf16 autocast (CUDA only; ignored
      with a warning elsewhere). Default fp32, which matches stock.
    * ``upscale_batch_size``: prompts per call of the decoder's output upscaling and
      masks per call of the upscaling to crop size (memory bound; None = auto).
    * ``fast_decoder``: use the re-associated decoder (default, ``sam_decoder.FastDecoder``).
      ``False`` calls the stock ``MaskDecoder`` once per crop group; both give the same
      masks.
    * ``fast_encoder``: run the image encoder's attention through
      ``scaled_dot_product_attention`` (fused kernels), with the decomposed relative
      position terms folded into the queries and keys (``sam_encoder.fast_attention``);
      ``False`` calls the stock ``ImageEncoderViT``. Same function, up to rounding.
      ``None`` (default) uses it on CUDA only: on CPU the fused kernels do not take its
      wider queries and keys, so attention falls back to the plain path anyway.
    * ``profile``: synchronise the device after each stage and add the stage's seconds
      to ``self.timings`` (for benchmarks; slows things down slightly).

    The device is the model's device.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int = 32,
        points_per_batch: int | None = None,
        pred_iou_thresh: float = 0.88,
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
        encoder_batch_size: int | None = None,
        upscale_batch_size: int | None = None,
        fast_decoder: bool = True,
        fast_encoder: bool | None = None,
        profile: bool = False,
    ) -> None:
        if points_per_side < 1:
            raise ValueError("points_per_side must be >= 1")
        if crop_n_layers < 0:
            raise ValueError("crop_n_layers must be >= 0")
        self.model = model
        self.points_per_side = int(points_per_side)
        self.point_grids = build_all_layer_point_grids(
            self.points_per_side, crop_n_layers, crop_n_points_downscale_factor
        )
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = float(crop_nms_thresh)
        self.crop_overlap_ratio = float(crop_overlap_ratio)
        self.crop_n_points_downscale_factor = int(crop_n_points_downscale_factor)
        self.min_mask_region_area = int(min_mask_region_area)
        if self.min_mask_region_area > 0:
            import cv2  # noqa: F401  (remove_small_regions needs it; fail early)
        self.fast_decoder = bool(fast_decoder)
        self.profile = bool(profile)
        self.host_threads = max(1, min(8, os.cpu_count() or 1))
        self.timings: dict[str, int | float] = {}
        self._t_last = 0.0
        self.transform = ResizeLongestSide(model.image_encoder.img_size)

        self._set_device_options(points_per_batch, upscale_batch_size, autocast_bf16)
        on_cuda = self.device.type == "cuda"
        self.fast_encoder = on_cuda if fast_encoder is None else bool(fast_encoder)
        self.encoder_batch_size = encoder_batch_limit(
            model.image_encoder, self.device, encoder_batch_size
        )
        if model.mask_decoder.num_multimask_outputs < 1:
            raise ValueError("the mask decoder has no multimask outputs")
        if self.fast_decoder:
            check_fast_decoder(model)

    def _set_device_options(
        self, points_per_batch: int | None, upscale_batch_size: int | None, autocast_bf16: bool
    ) -> None:
        """Batch sizes (None: larger on CUDA) and bf16 autocast (CUDA only)."""
        on_cuda = self.device.type == "cuda"
        if points_per_batch is None:
            points_per_batch = 1024 if on_cuda else 256
        self.points_per_batch = max(1, int(points_per_batch))
        if upscale_batch_size is None:
            upscale_batch_size = 256 if on_cuda else 64
        self.upscale_batch_size = max(1, int(upscale_batch_size))
        if autocast_bf16 and not on_cuda:
            warnings.warn("autocast_bf16 applies on CUDA only; running in fp32", stacklevel=3)
        self.autocast_bf16 = bool(autocast_bf16) and on_cuda

    # ------------------------------------------------------------------ public API
    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self.model.device

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray]) -> list[MaskSet]:
        """Masks of a batch of images.

        Args:
            images: HxWx3 RGB uint8 arrays; sizes may differ.

        Returns:
            one MaskSet per image, in order.
        """
        images = [self._check_image(im, i) for i, im in enumerate(images)]
        if not images:
            return []
        self._tick()
        crops = self._make_crops(images)
        feats = self._encode(images, crops)
        self._tick("encode")
        decoder = self._decoder(feats)
        cands = self._decode_all(crops, decoder)
        del feats, decoder
        out = []
        for i, image in enumerate(images):
            own = [c for c, crop in enumerate(crops) if crop.image == i]
            out.append(self._generate_masks(image.shape[:2], own, crops, cands))
        self._tick("nms+rle")
        return out

    def _count(self, what: str, n: int) -> None:
        if self.profile:
            self.timings[what] = self.timings.get(what, 0) + int(n)

    def _tick(self, stage: str | None = None) -> None:
        if not self.profile:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if stage is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self._t_last
        self._t_last = now

    # ------------------------------------------------------------------ crops, encoder
    @staticmethod
    def _check_image(image: np.ndarray, index: int) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image {index}: expected an HxWx3 uint8 RGB array, got {image.dtype} {image.shape}"
            )
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image {index}: empty image {image.shape}")
        return image

    def _make_crops(self, images: list[np.ndarray]) -> list[_Crop]:
        crops = []
        for i, image in enumerate(images):
            image_size = image.shape[:2]
            boxes, layers = generate_crop_boxes(
                image_size, self.crop_n_layers, self.crop_overlap_ratio
            )
            for box, layer in zip(boxes, layers, strict=False):
                x0, y0, x1, y1 = box
                size = (y1 - y0, x1 - x0)
                input_size = ResizeLongestSide.get_preprocess_shape(
                    size[0], size[1], self.transform.target_length
                )
                crops.append(_Crop(i, image_size, list(box), layer, size, tuple(input_size)))
        return crops

    def _encode(self, images: list[np.ndarray], crops: list[_Crop]) -> torch.Tensor:
        """Image embeddings (n_crops, C, h, w), fp32, on the model's device."""

        def resize(crop: _Crop) -> np.ndarray:  # the stock transform (PIL), host side
            x0, y0, x1, y1 = crop.box
            return self.transform.apply_image(images[crop.image][y0:y1, x0:x1, :])

        workers = min(len(crops), self.host_threads)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            resized = pool.map(resize, crops)  # resizing overlaps the encoder
            return encode_crops(
                self.model,
                resized,
                len(crops),
                self.encoder_batch_size,
                fast=self.fast_encoder,
                bf16=self.autocast_bf16,
            )

    # ------------------------------------------------------------------ decoding
    def _decoder(self, feats: torch.Tensor) -> FastDecoder | StockDecoder:
        if not self.fast_decoder:
            return StockDecoder(self.model, feats)
        return FastDecoder(
            self.model, feats, bf16=self.autocast_bf16, upscale_batch_size=self.upscale_batch_size
        )

    def _prompts(self, crops: list[_Crop]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per prompt: model-input coords (float64), crop-frame points (float64), crop id."""
        coords, points, crop_ids = [], [], []
        for c, crop in enumerate(crops):
            h, w = crop.size
            pts = self.point_grids[crop.layer] * np.array([[w, h]], dtype=np.float64)
            points.append(pts)
            coords.append(self.transform.apply_coords(pts, crop.size))
            crop_ids.append(np.full(len(pts), c, dtype=np.int64))
        return np.concatenate(coords), np.concatenate(points), np.concatenate(crop_ids)

    def _decode_all(
        self, crops: list[_Crop], decoder: FastDecoder | StockDecoder
    ) -> list[_Candidates]:
        """Decode every crop's point grid, ``points_per_batch`` prompts a call."""
        coords, points, crop_ids = self._prompts(crops)
        cands = [_Candidates() for _ in crops]
        for start in range(0, len(coords), self.points_per_batch):
            sl = slice(start, start + self.points_per_batch)
            ids = crop_ids[sl]
            in_points = torch.as_tensor(coords[sl], device=self.device)  # float64, as stock
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=self.device)
            # prompt encoding stays fp32 (sin/cos of point coordinates)
            sparse, dense = self.model.prompt_encoder(
                points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None
            )
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast_bf16):
                iou, low_res = decoder(ids, sparse, dense)
            self._tick("decode")
            self._process_batch(crops, cands, ids, points[sl], iou, low_res)
            self._tick("upscale+filter")
        return cands

    # ------------------------------------------------------------------ filtering
    def _process_batch(
        self,
        crops: list[_Crop],
        cands: list[_Candidates],
        ids: np.ndarray,
        points: np.ndarray,
        iou: torch.Tensor,
        low_res: LowRes,
    ) -> None:
        """Stock ``_process_batch`` for a decoded batch spanning several crops.

        Keeps the masks above ``pred_iou_thresh``, upscales only those prompts' logits,
        and hands them, crop by crop in chunks of ``upscale_batch_size``, to
        :meth:`_filter_masks`.
        """
        n_masks = iou.shape[1]
        flat_iou = iou.reshape(-1)
        if self.pred_iou_thresh > 0.0:
            keep = torch.nonzero(flat_iou > self.pred_iou_thresh).flatten()
        else:
            keep = torch.arange(flat_iou.shape[0], device=flat_iou.device)
        self._count("candidates", flat_iou.numel())
        self._count("iou passed", keep.numel())
        if keep.numel() == 0:
            return
        keep_np = keep.cpu().numpy()
        prompt_np = keep_np // n_masks
        # low-resolution logits of the surviving prompts only
        prompts_np = np.unique(prompt_np)
        low = low_res(torch.as_tensor(prompts_np, device=self.device))  # (n, 3, 4h, 4w)
        row = torch.as_tensor(np.searchsorted(prompts_np, prompt_np), device=self.device)
        col = torch.as_tensor(keep_np % n_masks, device=self.device)
        crop_of = ids[prompt_np]
        step = self.upscale_batch_size
        for c in np.unique(crop_of):
            crop = crops[int(c)]
            sel_all = np.flatnonzero(crop_of == c)
            for s in range(0, len(sel_all), step):  # bounded memory at crop size
                sel = sel_all[s : s + step]
                sel_t = torch.as_tensor(sel, device=self.device)
                data = MaskData(
                    masks=self.model.postprocess_masks(
                        low[row[sel_t], col[sel_t]][:, None], crop.input_size, crop.size
                    )[:, 0],
                    iou_preds=flat_iou[keep[sel_t]],
                    points=torch.as_tensor(points[prompt_np[sel]], device=self.device),
                )
                self._filter_masks(crop, data, cands[int(c)])

    def _filter_masks(self, crop: _Crop, data: MaskData, cands: _Candidates) -> None:
        """Stability score, binarisation, boxes and crop-edge filter of one crop's masks.

        Args:
            crop: the crop the masks belong to.
            data: ``masks`` (logits at crop size), ``iou_preds``, ``points`` (crop frame).
            cands: the crop's candidates; the surviving masks are appended.
        """
        data["stability_score"] = calculate_stability_score(
            data["masks"], self.model.mask_threshold, self.stability_score_offset
        )
        if self.stability_score_thresh > 0.0:
            data.filter(data["stability_score"] >= self.stability_score_thresh)
        data["masks"] = data["masks"] > self.model.mask_threshold
        data["boxes"] = batched_mask_to_box(data["masks"])
        h_img, w_img = crop.image_size
        keep = ~is_box_near_crop_edge(data["boxes"], crop.box, [0, 0, w_img, h_img])
        if not torch.all(keep):
            data.filter(keep)
        n = data["masks"].shape[0]
        self._count("stability+edge passed", n)
        if n:
            cands.chunks.append(data)

    # ------------------------------------------------------------------ per image
    def _generate_masks(
        self, image_size: Size, own: list[int], crops: list[_Crop], cands: list[_Candidates]
    ) -> MaskSet:
        """Stock ``_generate_masks`` after decoding: per-crop NMS, cross-crop NMS, then
        paste, small-region post-processing and RLE.

        Args:
            image_size: (h, w) of the image.
            own: indices of the image's crops in ``crops`` and ``cands``.
            crops: all crops of the batch.
            cands: all crops' candidates; the image's are freed.

        Returns:
            the image's MaskSet.
        """
        data, parts = MaskData(), []
        for c in own:
            if not cands[c].chunks:
                continue
            crop_data, masks = self._process_crop(crops[c], cands[c].cat(), len(parts))
            data.cat(crop_data)
            parts.append((crops[c].box, masks))
            cands[c] = _Candidates()  # free device memory early
        if not parts:
            return MaskSet.empty(*image_size)
        if len(own) > 1:
            self._cross_crop_nms(data)
        full = paste_masks(parts, data["part"], data["local"], image_size, self.device)
        del parts
        return to_mask_set(
            full,
            data,
            image_size,
            self.min_mask_region_area,
            max(self.box_nms_thresh, self.crop_nms_thresh),
        )

    def _process_crop(
        self, crop: _Crop, data: MaskData, part: int
    ) -> tuple[MaskData, torch.Tensor]:
        """Stock ``_process_crop`` after decoding: box NMS by predicted IoU within the
        crop, then boxes and points back to the image frame.

        Args:
            crop: the crop.
            data: its candidates (see :class:`_Candidates`).
            part: index the crop's masks get in the image's list of parts.

        Returns:
            the kept records (``part`` and ``local``: where each one's mask is) and the
            crop's masks (all candidates, bool at crop size).
        """
        iou = data["iou_preds"]
        keep = batched_nms(data["boxes"].float(), iou, torch.zeros_like(iou), self.box_nms_thresh)
        masks = data["masks"]
        del data["masks"]
        data.filter(keep)
        data["boxes"] = uncrop_boxes_xyxy(data["boxes"], crop.box)
        data["points"] = uncrop_points(data["points"], crop.box)
        n = keep.numel()
        data["crop_boxes"] = torch.tensor([crop.box] * n, dtype=torch.int64)
        data["part"] = torch.full((n,), part, dtype=torch.int64)
        data["local"] = keep.cpu()
        return data, masks

    def _cross_crop_nms(self, data: MaskData) -> None:
        """Remove duplicates between crops, preferring masks from smaller crops."""
        scores = (1 / box_area(data["crop_boxes"])).to(data["boxes"].device)
        keep = batched_nms(
            data["boxes"].float(), scores, torch.zeros_like(scores), self.crop_nms_thresh
        )
        data.filter(keep)
