"""Batched Segment Anything automatic mask generation.

:class:`BatchedSamGenerator` produces the same masks as the stock
``segment_anything.SamAutomaticMaskGenerator`` (same model, same parameters), but for a
batch of images at once and without the stock generator's per-batch and per-mask host
work:

* every crop of every image in the batch is resized (``ResizeLongestSide``, exactly the
  stock transform), normalised and zero-padded to ``img_size x img_size``, so all crops
  stack into one tensor and the image encoder runs on them in batches of
  ``encoder_batch_size``;
* point prompts of all crops are concatenated and decoded ``points_per_batch`` at a time
  (a batch may span several crops and images; by default the whole 32x32 grid in one
  call on CUDA);
* the mask decoder is evaluated in a re-associated but mathematically identical form
  (see :meth:`BatchedSamGenerator._transformer`): the first block's image-side
  projections are computed once per crop instead of once per prompt, the later
  projections of the per-prompt image tokens are folded into the few prompt tokens, and
  the output upscaling runs only for prompts with at least one mask above
  ``pred_iou_thresh``;
* predicted-IoU filtering, upscaling to crop size, stability score, binarisation, boxes,
  crop-edge filtering, box NMS within a crop and across crops stay on the model's device
  as tensors, using the stock helpers of ``segment_anything.utils.amg``;
* all masks of an image are moved to the host once, as one Fortran-ordered uint8 array,
  and COCO-RLE-encoded by one ``pycocotools.mask.encode`` call.

What is kept exactly as stock does it: the point grids per crop layer
(``build_all_layer_point_grids``), crop boxes (``generate_crop_boxes``), the point
transform (float64, as stock), ``mask_threshold``, the strict ``>`` on predicted IoU, the
stability score on the logits upscaled to the crop's size (``Sam.postprocess_masks``,
``calculate_stability_score``), ``batched_mask_to_box``, ``is_box_near_crop_edge``, box
NMS per crop scored by predicted IoU, NMS across crops scored by ``1 / crop area``
(preferring masks from smaller crops), and ``min_mask_region_area`` post-processing
(``remove_small_regions`` for holes then islands, unchanged masks preferred by an NMS at
``max(box_nms_thresh, crop_nms_thresh)``). In fp32 the records match the stock ones up to
float rounding (tests/test_sam_batched.py); ``autocast_bf16`` trades that for speed on
CUDA.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.ops.boxes import batched_nms, box_area

from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import (
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
    uncrop_boxes_xyxy,
    uncrop_points,
)
from segment_anything.utils.transforms import ResizeLongestSide

from pipeline.segmenters.base import MaskSet

__all__ = ["BatchedSamGenerator"]


@dataclass
class _Crop:
    image: int                 # index of the image in the batch
    box: list                  # [x0, y0, x1, y1], exclusive end, as generate_crop_boxes
    layer: int                 # crop layer (0 = whole image)
    size: tuple                # (h, w) of the crop
    input_size: tuple          # (h, w) after ResizeLongestSide, before padding


@dataclass
class _Candidates:
    """Masks of one crop that passed the per-batch filters (tensors on the device)."""

    masks: list = field(default_factory=list)       # bool (n, h, w) at crop size
    boxes: list = field(default_factory=list)       # int64 (n, 4) crop frame, inclusive
    iou: list = field(default_factory=list)         # float32 (n,)
    stability: list = field(default_factory=list)   # float32 (n,)
    points: list = field(default_factory=list)      # float64 (n, 2) crop frame


class BatchedSamGenerator:
    """Automatic mask generation for batches of images; stock-equivalent records.

    The parameters are those of ``SamAutomaticMaskGenerator`` with the same defaults,
    except:

    * ``points_per_batch``: prompts decoded per mask-decoder call, across crops and
      images. It changes speed and memory only, never the result (stock's 64 is slow
      here); ``None`` picks 1024 on CUDA and 256 otherwise.
    * ``encoder_batch_size``: crops per image-encoder call.
    * ``autocast_bf16``: run encoder and decoder under bf16 autocast (CUDA only; ignored
      with a warning elsewhere). Default fp32, which matches stock.
    * ``upscale_batch_size``: prompts per call of the decoder's output upscaling and
      masks per call of the upscaling to crop size (memory bound; None = auto).
    * ``fast_decoder``: use the re-associated decoder (default). ``False`` calls the
      stock ``MaskDecoder`` once per crop group; both give the same masks.
    * ``fast_encoder``: run the image encoder's attention through
      ``scaled_dot_product_attention`` (fused kernels), with the decomposed relative
      position terms folded into the queries and keys (see :func:`_encoder_attention`);
      ``False`` calls the stock ``ImageEncoderViT``. Same function, up to rounding.
    * ``profile``: synchronise the device after each stage and add the stage's seconds
      to ``self.timings`` (for benchmarks; slows things down slightly).

    The device is the model's device.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int = 32,
        points_per_batch: Optional[int] = None,
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
        encoder_batch_size: int = 8,
        upscale_batch_size: Optional[int] = None,
        fast_decoder: bool = True,
        fast_encoder: bool = True,
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
        self.encoder_batch_size = max(1, int(encoder_batch_size))
        self.fast_decoder = bool(fast_decoder)
        self.fast_encoder = bool(fast_encoder)
        self.profile = bool(profile)
        self.host_threads = max(1, min(8, os.cpu_count() or 1))
        self.timings: dict = {}
        self.transform = ResizeLongestSide(model.image_encoder.img_size)

        on_cuda = self.device.type == "cuda"
        if points_per_batch is None:
            points_per_batch = 1024 if on_cuda else 256
        self.points_per_batch = max(1, int(points_per_batch))
        if upscale_batch_size is None:
            upscale_batch_size = 256 if on_cuda else 64
        self.upscale_batch_size = max(1, int(upscale_batch_size))
        if autocast_bf16 and not on_cuda:
            warnings.warn("autocast_bf16 applies on CUDA only; running in fp32", stacklevel=2)
        self.autocast_bf16 = bool(autocast_bf16) and on_cuda
        self._dtype = torch.bfloat16 if self.autocast_bf16 else torch.float32

        dec = model.mask_decoder
        if dec.num_multimask_outputs < 1:
            raise ValueError("the mask decoder has no multimask outputs")
        if self.fast_decoder and not dec.transformer.layers[0].skip_first_layer_pe:
            raise ValueError("fast_decoder expects SAM's TwoWayTransformer layout")

    # ------------------------------------------------------------------ public API
    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def generate(self, images: Sequence[np.ndarray]) -> list:
        """Masks for each image (HxWx3 RGB uint8, sizes may differ): one MaskSet each."""
        images = [self._check_image(im, i) for i, im in enumerate(images)]
        if not images:
            return []
        self._image_hw = [im.shape[:2] for im in images]
        self._tick()
        crops = self._make_crops(images)
        feats = self._encode(images, crops)
        self._tick("encode")
        cache = self._image_side(feats) if self.fast_decoder else None
        cands = self._decode_all(crops, feats, cache)
        del feats, cache
        out = [self._finish_image(images[i], i, crops, cands) for i in range(len(images))]
        self._tick("nms+rle")
        return out

    def _count(self, what: str, n: int) -> None:
        if self.profile:
            self.timings[what] = self.timings.get(what, 0) + int(n)

    def _tick(self, stage: Optional[str] = None) -> None:
        if not self.profile:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        if stage is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self._t_last
        self._t_last = now

    # ------------------------------------------------------------------ stages
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

    def _make_crops(self, images: list) -> list:
        crops = []
        for i, image in enumerate(images):
            boxes, layers = generate_crop_boxes(
                image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio
            )
            for box, layer in zip(boxes, layers):
                x0, y0, x1, y1 = box
                size = (y1 - y0, x1 - x0)
                input_size = ResizeLongestSide.get_preprocess_shape(
                    size[0], size[1], self.transform.target_length
                )
                crops.append(_Crop(i, list(box), layer, size, tuple(input_size)))
        return crops

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast_bf16)

    def _encode(self, images: list, crops: list) -> torch.Tensor:
        """Image embeddings (n_crops, C, h, w), fp32, on the model's device."""
        model = self.model

        def resize(crop: _Crop) -> np.ndarray:  # the stock transform (PIL), host side
            x0, y0, x1, y1 = crop.box
            return self.transform.apply_image(images[crop.image][y0:y1, x0:x1, :])

        out = []
        workers = min(len(crops), self.host_threads)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            resized = pool.map(resize, crops)  # resizing overlaps the encoder
            for start in range(0, len(crops), self.encoder_batch_size):
                batch = []
                for _ in crops[start : start + self.encoder_batch_size]:
                    t = torch.as_tensor(next(resized), device=self.device)
                    batch.append(model.preprocess(t.permute(2, 0, 1).contiguous()[None]))
                with self._autocast():
                    emb = self._run_encoder(torch.cat(batch, dim=0))
                out.append(emb.float())
        return torch.cat(out, dim=0)

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """``model.image_encoder(x)``; with ``fast_encoder`` the same blocks, attention
        through :func:`_encoder_attention`."""
        enc = self.model.image_encoder
        if not self.fast_encoder:
            return enc(x)
        x = enc.patch_embed(x)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for blk in enc.blocks:
            shortcut = x
            x = blk.norm1(x)
            if blk.window_size > 0:
                h, w = x.shape[1], x.shape[2]
                x, pad_hw = window_partition(x, blk.window_size)
            x = _encoder_attention(blk.attn, x)
            if blk.window_size > 0:
                x = window_unpartition(x, blk.window_size, pad_hw, (h, w))
            x = shortcut + x
            x = x + blk.mlp(blk.norm2(x))
        return enc.neck(x.permute(0, 3, 1, 2))

    def _prompts(self, crops: list):
        """Per prompt: model-input coords (float64), crop-frame points (float64), crop id."""
        coords, points, crop_ids = [], [], []
        for c, crop in enumerate(crops):
            h, w = crop.size
            pts = self.point_grids[crop.layer] * np.array([[w, h]], dtype=np.float64)
            points.append(pts)
            coords.append(self.transform.apply_coords(pts, crop.size))
            crop_ids.append(np.full(len(pts), c, dtype=np.int64))
        return np.concatenate(coords), np.concatenate(points), np.concatenate(crop_ids)

    def _decode_all(self, crops: list, feats: torch.Tensor, cache: Optional[dict]) -> list:
        model = self.model
        coords, points, crop_ids = self._prompts(crops)
        cands = [_Candidates() for _ in crops]
        image_pe = model.prompt_encoder.get_dense_pe()
        for start in range(0, len(coords), self.points_per_batch):
            sl = slice(start, start + self.points_per_batch)
            ids = crop_ids[sl]
            in_points = torch.as_tensor(coords[sl], device=self.device)  # float64, as stock
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=self.device)
            # prompt encoding stays fp32 (sin/cos of point coordinates)
            sparse, dense = model.prompt_encoder(
                points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None
            )
            with self._autocast():
                if self.fast_decoder:
                    iou, low_res = self._decode_fast(cache, ids, sparse)
                else:
                    iou, low_res = self._decode_stock(feats, image_pe, ids, sparse, dense)
            self._tick("decode")
            self._filter_batch(crops, cands, ids, points[sl], iou, low_res)
            self._tick("upscale+filter")
        return cands

    # ------------------------------------------------------------------ decoders
    @staticmethod
    def _groups(ids: np.ndarray):
        """(crop id, start, end) of the runs of equal crop ids (prompts are crop-sorted)."""
        edges = np.flatnonzero(np.diff(ids)) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [len(ids)]])
        return [(int(ids[s]), int(s), int(e)) for s, e in zip(starts, ends)]

    def _decode_stock(self, feats, image_pe, ids, sparse, dense):
        """Reference path: the stock MaskDecoder, one call per crop group."""
        dec = self.model.mask_decoder
        ious, lows = [], []
        for c, s, e in self._groups(ids):
            low, iou = dec(
                image_embeddings=feats[c : c + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse[s:e],
                dense_prompt_embeddings=dense[s:e],
                multimask_output=True,
            )
            ious.append(iou)
            lows.append(low)
        iou = torch.cat(ious).float()
        low = torch.cat(lows).float()
        return iou, (lambda sel: low[sel])

    def _image_side(self, feats: torch.Tensor) -> dict:
        """Per-crop decoder work that does not depend on the prompt (first block)."""
        model = self.model
        dec = model.mask_decoder
        layer0 = dec.transformer.layers[0]
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        pe = model.prompt_encoder.get_dense_pe().flatten(2)[0].t().contiguous()  # (N, C), fp32
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        with self._autocast():
            keys0 = (feats + dense).flatten(2).transpose(1, 2)  # (n_crops, N, C) = stock src
            keys_pe = keys0 + pe
            cache = {
                "pe": pe,
                "keys0_plus_bias": (keys0 + i2t.out_proj.bias).to(self._dtype),
                "k1": t2i.k_proj(keys_pe),
                "v1": t2i.v_proj(keys0),
                "q1": i2t.q_proj(keys_pe),
                "hw": tuple(feats.shape[-2:]),
            }
        return cache

    def _decode_fast(self, cache, ids, sparse):
        dec = self.model.mask_decoder
        n = sparse.shape[0]
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(n, -1, -1).to(sparse.dtype), sparse], dim=1)
        queries, keys = self._transformer(cache, ids, tokens)
        iou = dec.iou_prediction_head(queries[:, 0, :])[:, 1:].float()
        hyper = torch.stack(
            [
                dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :])
                for i in range(1, dec.num_mask_tokens)
            ],
            dim=1,
        )  # (P, 3, C/8): multimask outputs only
        h, w = cache["hw"]

        def low_res(prompts: torch.Tensor) -> torch.Tensor:
            """Low-resolution logits (len(prompts), 3, 4h, 4w) for the given prompts."""
            outs = []
            for s in range(0, len(prompts), self.upscale_batch_size):
                p = prompts[s : s + self.upscale_batch_size]
                with self._autocast():
                    src = keys[p].transpose(1, 2).reshape(len(p), -1, h, w)
                    up = dec.output_upscaling(src)
                    b, c, uh, uw = up.shape
                    outs.append((hyper[p] @ up.reshape(b, c, uh * uw)).reshape(b, -1, uh, uw))
            return torch.cat(outs).float()

        return iou, low_res

    def _transformer(self, cache, ids, tokens):
        """SAM's TwoWayTransformer for a batch of prompts on several crops.

        Same function as ``dec.transformer(src, pe, tokens)`` with ``src`` the crop's
        embedding plus the no-mask embedding, evaluated in an equivalent order:

        * block 1 sees the same image tokens for every prompt of a crop, so its
          image-side projections (``k_proj``/``v_proj`` of token-to-image, ``q_proj`` of
          image-to-token) come precomputed per crop, and token-to-image attention runs
          once per crop with all prompts' queries stacked;
        * attention of the (few) prompt tokens to the per-prompt image tokens folds the
          key and value projections into the queries (``q W_k . x`` instead of
          ``q . W_k x``; the key bias only shifts a softmax row and drops out; the value
          bias passes through because attention rows sum to one);
        * attention of the image tokens to the prompt tokens folds ``q_proj`` into the
          keys and ``out_proj`` into the values, so no per-prompt (N x C) projection is
          ever materialised.

        Returns (queries (P, T, C), keys (P, N, C)).
        """
        tr = self.model.mask_decoder.transformer
        pe = cache["pe"]
        layer0 = tr.layers[0]
        queries = layer0.norm1(layer0.self_attn(q=tokens, k=tokens, v=tokens))
        t2i = layer0.cross_attn_token_to_image
        i2t = layer0.cross_attn_image_to_token
        heads = t2i.num_heads

        groups = self._groups(ids)
        q_all = t2i.q_proj(queries + tokens)
        att = _cat(
            [self._attend_shared(q_all[s:e], cache["k1"][c], cache["v1"][c], heads)
             for c, s, e in groups]
        )
        queries = layer0.norm2(queries + t2i.out_proj(att))
        queries = layer0.norm3(queries + layer0.mlp(queries))

        k_tok = i2t.k_proj(queries + tokens)
        v_tok = i2t.v_proj(queries)
        keys = _cat(
            [self._image_to_tokens_shared(
                cache["q1"][c], k_tok[s:e], v_tok[s:e], cache["keys0_plus_bias"][c], i2t)
             for c, s, e in groups]
        )
        keys = _layer_norm(layer0.norm4, keys)

        for layer in tr.layers[1:]:
            q = queries + tokens
            queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
            attn = self._tokens_to_image(
                layer.cross_attn_token_to_image, queries + tokens, keys, pe
            )
            queries = layer.norm2(queries + attn)
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = _layer_norm(
                layer.norm4,
                self._image_to_tokens(layer.cross_attn_image_to_token, queries, tokens, keys, pe),
            )

        attn = self._tokens_to_image(tr.final_attn_token_to_image, queries + tokens, keys, pe)
        queries = tr.norm_final_attn(queries + attn)
        return queries, keys

    @staticmethod
    def _attend_shared(q, k, v, heads):
        """Prompt tokens (P, T, Ci) of one crop attending to its shared keys/values (N, Ci)."""
        p, t, ci = q.shape
        dh = ci // heads
        qh = q.reshape(p * t, heads, dh).transpose(0, 1)[None]         # (1, H, P*T, dh)
        kh = k.reshape(-1, heads, dh).transpose(0, 1)[None]            # (1, H, N, dh)
        vh = v.reshape(-1, heads, dh).transpose(0, 1)[None].to(qh.dtype)
        o = F.scaled_dot_product_attention(qh, kh.to(qh.dtype), vh)    # scale 1/sqrt(dh)
        return o[0].transpose(0, 1).reshape(p, t, ci)

    @staticmethod
    def _fold_values(attn_mod, v_tok, add_bias: bool = True):
        """(P, H*T, C): each head's values times its slice of out_proj (+ bias / H)."""
        p, t, ci = v_tok.shape
        heads = attn_mod.num_heads
        dh = ci // heads
        c = attn_mod.out_proj.weight.shape[0]
        w_o = attn_mod.out_proj.weight.reshape(c, heads, dh)
        vw = torch.einsum("pthd,chd->phtc", v_tok.reshape(p, t, heads, dh), w_o.to(v_tok.dtype))
        if add_bias:
            # attention rows of each head sum to one: spreading the bias over heads adds it once
            vw = vw + (attn_mod.out_proj.bias / heads).to(vw.dtype)
        return vw.reshape(p, heads * t, c)

    def _image_to_tokens_shared(self, q_img, k_tok, v_tok, keys_plus_bias, attn_mod):
        """Block 1: the crop's image tokens (projected queries q_img (N, Ci), shared by all
        its prompts) attend to each prompt's tokens; returns keys + out_proj(attention)
        as (P, N, C)."""
        p, t, ci = k_tok.shape
        heads = attn_mod.num_heads
        dh = ci // heads
        n = q_img.shape[0]
        # block-diagonal keys (Ci, P*H*T): one GEMM gives every head's logits for all
        # prompts, laid out (N, P, H, T)
        eye = torch.eye(heads, dtype=q_img.dtype, device=q_img.device)
        k_scaled = k_tok.reshape(p, t, heads, dh) * (1.0 / math.sqrt(dh))  # softmax scale
        kbd = torch.einsum("pthd,hg->hdpgt", k_scaled.to(q_img.dtype), eye)
        logits = (q_img @ kbd.reshape(ci, p * heads * t)).reshape(n, p, heads, t)
        a = logits.softmax(dim=-1).to(q_img.dtype)
        a = a.reshape(n, p, heads * t).transpose(0, 1)                      # (P, N, H*T) view
        vw = self._fold_values(attn_mod, v_tok, add_bias=False)  # bias is in keys_plus_bias
        return torch.baddbmm(keys_plus_bias.to(a.dtype)[None], a, vw.to(a.dtype))

    @staticmethod
    def _tokens_to_image(attn_mod, q_in, keys, pe):
        """attn_mod(q=q_in, k=keys + pe, v=keys) for per-prompt keys (P, N, C) -> (P, T, C)."""
        p, t, _ = q_in.shape
        heads = attn_mod.num_heads
        q = attn_mod.q_proj(q_in)
        ci = q.shape[-1]
        dh = ci // heads
        c = keys.shape[-1]
        w_k = attn_mod.k_proj.weight.reshape(heads, dh, c)
        # logits_j = q . (W_k x_j + b_k) = (q W_k) . x_j + const; const drops out of softmax
        q = q * (1.0 / math.sqrt(dh))  # softmax scale, folded into the queries
        qk = torch.einsum("pthd,hdc->phtc", q.reshape(p, t, heads, dh), w_k.to(q.dtype))
        qk = qk.reshape(p, heads * t, c)
        keys = keys.to(qk.dtype)
        pe_term = (qk.reshape(p * heads * t, c) @ pe.to(qk.dtype).t()).reshape(p, heads * t, -1)
        logits = torch.baddbmm(pe_term, qk, keys.transpose(1, 2))
        a = logits.softmax(dim=-1).to(keys.dtype)  # (P, H*T, N)
        ak = torch.bmm(a, keys).reshape(p, heads, t, c)
        # attention rows sum to one: a @ (x W_v^T + b_v) = (a @ x) W_v^T + b_v
        w_v = attn_mod.v_proj.weight.reshape(heads, dh, c)
        o = torch.einsum("phtc,hdc->pthd", ak, w_v.to(ak.dtype))
        o = o + attn_mod.v_proj.bias.reshape(heads, dh).to(o.dtype)
        return attn_mod.out_proj(o.reshape(p, t, ci))

    def _image_to_tokens(self, attn_mod, queries, tokens, keys, pe):
        """keys + attn_mod(q=keys + pe, k=queries + tokens, v=queries), keys (P, N, C)."""
        k_tok = attn_mod.k_proj(queries + tokens)
        v_tok = attn_mod.v_proj(queries)
        p, t, ci = k_tok.shape
        heads = attn_mod.num_heads
        dh = ci // heads
        n, c = keys.shape[1:]
        kh = k_tok.reshape(p, t, heads, dh) * (1.0 / math.sqrt(dh))  # softmax scale
        w_q = attn_mod.q_proj.weight.reshape(heads, dh, c)
        # logits_nj = (W_q x_n + b_q) . k_j = x_n . (W_q^T k_j) + b_q . k_j
        kq = torch.einsum("pthd,hdc->phtc", kh, w_q.to(kh.dtype)).reshape(p, heads * t, c)
        kq = kq.to(keys.dtype)
        b_q = attn_mod.q_proj.bias.reshape(heads, dh).to(kh.dtype)
        bias = torch.einsum("pthd,hd->pht", kh, b_q)
        # the positional part is shared by all prompts: one GEMM, laid out (N, P, H*T)
        pe_b = pe.to(kq.dtype) @ kq.reshape(p * heads * t, c).t() + bias.reshape(1, -1).to(kq.dtype)
        logits = torch.bmm(keys, kq.transpose(1, 2))                          # (P, N, H*T)
        logits += pe_b.reshape(n, p, heads * t).transpose(0, 1)
        a = logits.reshape(p, n, heads, t).softmax(dim=-1)
        a = a.reshape(p, n, heads * t).to(keys.dtype)
        vw = self._fold_values(attn_mod, v_tok).to(keys.dtype)
        return torch.baddbmm(keys, a, vw)

    # ------------------------------------------------------------------ filtering
    def _filter_batch(self, crops, cands, ids, points, iou, low_res) -> None:
        """Stock ``_process_batch`` for a decoded batch spanning several crops."""
        model = self.model
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
        prompts = torch.as_tensor(prompts_np, device=self.device)
        low = low_res(prompts)                                   # (n_prompts, 3, 4h, 4w)
        row = torch.as_tensor(np.searchsorted(prompts_np, prompt_np), device=self.device)
        col = torch.as_tensor(keep_np % n_masks, device=self.device)
        crop_of = ids[prompt_np]
        step = self.upscale_batch_size
        for c in np.unique(crop_of):
            crop = crops[int(c)]
            h_img, w_img = self._image_hw[crop.image]
            cd = cands[int(c)]
            sel_all = np.flatnonzero(crop_of == c)
            for s in range(0, len(sel_all), step):  # bounded memory at crop size
                sel = sel_all[s : s + step]
                sel_t = torch.as_tensor(sel, device=self.device)
                ious = flat_iou[keep[sel_t]]
                pts = torch.as_tensor(points[prompt_np[sel]], device=self.device)
                logits = model.postprocess_masks(
                    low[row[sel_t], col[sel_t]][:, None], crop.input_size, crop.size
                )[:, 0]
                stab = calculate_stability_score(
                    logits, model.mask_threshold, self.stability_score_offset
                )
                if self.stability_score_thresh > 0.0:
                    ok = stab >= self.stability_score_thresh
                    logits, ious, stab, pts = logits[ok], ious[ok], stab[ok], pts[ok]
                masks = logits > model.mask_threshold
                del logits
                boxes = batched_mask_to_box(masks)
                ok = ~is_box_near_crop_edge(boxes, crop.box, [0, 0, w_img, h_img])
                if not torch.all(ok):
                    masks, boxes, ious = masks[ok], boxes[ok], ious[ok]
                    stab, pts = stab[ok], pts[ok]
                self._count("stability+edge passed", masks.shape[0])
                if masks.shape[0] == 0:
                    continue
                cd.masks.append(masks)
                cd.boxes.append(boxes)
                cd.iou.append(ious)
                cd.stability.append(stab)
                cd.points.append(pts)



    # ------------------------------------------------------------------ per image
    def _finish_image(self, image: np.ndarray, index: int, crops: list, cands: list) -> MaskSet:
        """Stock per-crop NMS, uncropping, cross-crop NMS, small regions, RLE."""
        h_img, w_img = image.shape[:2]
        image_crops = [c for c, crop in enumerate(crops) if crop.image == index]
        parts = []  # per crop with masks: (crop, masks at crop size, order of kept masks)
        boxes, iou, stab, points, crop_boxes, part_of, local = [], [], [], [], [], [], []
        for c in image_crops:
            cd, crop = cands[c], crops[c]
            if not cd.masks:
                continue
            b = torch.cat(cd.boxes)
            s_iou = torch.cat(cd.iou)
            keep = batched_nms(b.float(), s_iou, torch.zeros_like(s_iou), self.box_nms_thresh)
            n = keep.numel()
            parts.append((crop, torch.cat(cd.masks)))
            boxes.append(uncrop_boxes_xyxy(b[keep], crop.box))
            iou.append(s_iou[keep])
            stab.append(torch.cat(cd.stability)[keep])
            points.append(uncrop_points(torch.cat(cd.points)[keep], crop.box))
            crop_boxes.append(torch.tensor([crop.box] * n, dtype=torch.int64))
            part_of.append(torch.full((n,), len(parts) - 1, dtype=torch.int64))
            local.append(keep.cpu())
            cands[c] = _Candidates()  # free device memory early
        if not parts:
            return MaskSet.empty(h_img, w_img)
        boxes, iou, stab, points = map(torch.cat, (boxes, iou, stab, points))
        crop_boxes, part_of, local = map(torch.cat, (crop_boxes, part_of, local))
        if len(image_crops) > 1:
            scores = (1 / box_area(crop_boxes)).to(boxes.device)  # prefer smaller crops
            keep = batched_nms(
                boxes.float(), scores, torch.zeros_like(scores), self.crop_nms_thresh
            )
            boxes, iou, stab, points = boxes[keep], iou[keep], stab[keep], points[keep]
            keep = keep.cpu()
            crop_boxes, part_of, local = crop_boxes[keep], part_of[keep], local[keep]

        # paste the kept masks into image-sized masks
        n = boxes.shape[0]
        full = torch.zeros((n, h_img, w_img), dtype=torch.bool, device=self.device)
        for p, (crop, masks) in enumerate(parts):
            rows = torch.nonzero(part_of == p).flatten()
            if rows.numel() == 0:
                continue
            x0, y0, x1, y1 = crop.box
            full[rows.to(self.device), y0:y1, x0:x1] = masks[local[rows].to(masks.device)]
        del parts

        if self.min_mask_region_area > 0:
            masks_np, boxes, keep = self._small_regions(full, boxes)
            iou, stab, points = iou[keep], stab[keep], points[keep]
            crop_boxes = crop_boxes[keep.cpu()]
            rles = _encode_host(masks_np)
            areas = masks_np.reshape(masks_np.shape[0], -1).sum(1, dtype=np.int64)
        else:
            rles = _encode_device(full)
            areas = full.flatten(1).sum(1).cpu().numpy().astype(np.int64)

        xywh = crop_boxes.clone()
        xywh[:, 2:] -= xywh[:, :2]
        return MaskSet(
            height=h_img,
            width=w_img,
            rles=[r["counts"] for r in rles],
            boxes=boxes.cpu().numpy().astype(np.int32),
            areas=areas,
            predicted_iou=iou.float().cpu().numpy(),
            stability_score=stab.float().cpu().numpy(),
            points=points.cpu().numpy().astype(np.float32),
            crop_boxes=xywh.numpy().astype(np.int32),
        )

    def _small_regions(self, full: torch.Tensor, boxes: torch.Tensor):
        """Stock ``postprocess_small_regions`` on image-sized masks (host, per mask)."""
        masks_np = full.cpu().numpy()
        if masks_np.shape[0] == 0:
            return masks_np, boxes, torch.arange(0)
        new_masks, scores = [], []
        for mask in masks_np:
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, mode="holes")
            unchanged = not changed
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, mode="islands")
            unchanged = unchanged and not changed
            new_masks.append(mask)
            scores.append(float(unchanged))
        new_masks_t = torch.as_tensor(np.stack(new_masks))
        new_boxes = batched_mask_to_box(new_masks_t)
        scores_t = torch.as_tensor(scores)
        keep = batched_nms(
            new_boxes.float(),
            scores_t,
            torch.zeros(len(new_boxes)),
            max(self.box_nms_thresh, self.crop_nms_thresh),
        )
        boxes = boxes.cpu().clone()
        out = masks_np.copy()
        changed = scores_t[keep] == 0.0
        for i in keep[changed].tolist():  # only masks that were modified and kept
            out[i] = new_masks[i]
            boxes[i] = new_boxes[i]
        return out[keep.numpy()], boxes[keep], keep


def _encode_device(full: torch.Tensor, max_bytes: int = 1 << 28) -> list:
    """COCO RLE of image-sized bool masks (N, H, W) on any device: one transfer and one
    ``pycocotools.mask.encode`` call per chunk of at most ``max_bytes``."""
    n, h, w = full.shape
    if n == 0:
        return []
    per_chunk = max(1, max_bytes // max(1, h * w))
    rles = []
    for s in range(0, n, per_chunk):
        # (n, W, H) C-order is the (H, W, n) Fortran-order layout pycocotools wants
        chunk = full[s : s + per_chunk].transpose(1, 2).contiguous().view(torch.uint8).cpu().numpy()
        rles.extend(mask_utils.encode(chunk.transpose(2, 1, 0)))
    return rles


def _encode_host(masks: np.ndarray) -> list:
    if masks.shape[0] == 0:
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def _cat(parts: list) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _layer_norm(mod: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``mod(x)``; for a bf16 ``x`` the output stays bf16 (autocast would make it fp32)."""
    if x.dtype == torch.float32:
        return mod(x)
    with torch.autocast(x.device.type, enabled=False):
        w = mod.weight.to(x.dtype) if mod.weight is not None else None
        b = mod.bias.to(x.dtype) if mod.bias is not None else None
        return F.layer_norm(x, mod.normalized_shape, w, b, mod.eps)


def _encoder_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """``attn(x)`` for SAM's ``image_encoder.Attention`` via scaled_dot_product_attention.

    Stock computes ``softmax(scale * q.k + rel_h[q, row(k)] + rel_w[q, col(k)]) v`` with
    ``rel_h = q . Rh``, ``rel_w = q . Rw`` and materialises the (N x N) logits. Here the
    relative terms become extra dimensions of the dot product: queries
    ``[scale * q, rel_h, rel_w]`` and keys ``[k, onehot(row), onehot(col)]`` give exactly
    those logits, so a fused attention kernel (scale 1) does the rest.
    """
    b, h, w, _ = x.shape
    n = h * w
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)                                   # (B, heads, N, dh)
    dh = q.shape[-1]
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        rh = get_rel_pos(h, h, attn.rel_pos_h).to(q.dtype)   # (h, h, dh)
        rw = get_rel_pos(w, w, attn.rel_pos_w).to(q.dtype)
        r_q = q.reshape(b, heads, h, w, dh)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(b, heads, n, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(b, heads, n, w)
        idx = torch.arange(n, device=x.device)
        onehot = torch.cat(
            [F.one_hot(idx // w, h), F.one_hot(idx % w, w)], dim=-1
        ).to(q.dtype)                                          # (N, h + w)
        pad = (-(dh + h + w)) % 8                              # kernels want multiples of 8
        q2 = [q * attn.scale, rel_h, rel_w]
        k2 = [k, onehot.expand(b, heads, n, h + w)]
        if pad:
            q2.append(q.new_zeros(b, heads, n, pad))
            k2.append(k.new_zeros(b, heads, n, pad))
        out = F.scaled_dot_product_attention(torch.cat(q2, -1), torch.cat(k2, -1), v, scale=1.0)
    out = out.reshape(b, heads, h, w, dh).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)
