"""The re-associated mask decoder (pipeline/segmenters/sam_decoder.py) equals the stock one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from pipeline.segmenters.sam_batched import BatchedSamGenerator  # noqa: E402
from pipeline.segmenters.sam_decoder import (  # noqa: E402
    FastDecoder,
    StockDecoder,
    crop_runs,
)
from pipeline.segmenters.sam_encoder import encode_crops  # noqa: E402
from pipeline.segmenters.tiny_sam import build_tiny_sam  # noqa: E402

CROP_PROMPTS = [5, 1, 7, 3]  # prompts per crop: runs of several lengths
CROP_SIZES = [(40, 56), (64, 48), (30, 40), (40, 36)]  # (h, w)


@pytest.fixture(scope="module")
def model():
    return build_tiny_sam(seed=0)


def decoder_inputs(model):
    """Embeddings of four crops and crop-sorted point prompts on them."""
    transform = ResizeLongestSide(model.image_encoder.img_size)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in CROP_SIZES]
    resized = [transform.apply_image(c) for c in crops]
    feats = encode_crops(model, iter(resized), len(resized), 4, fast=False, bf16=False)
    ids = np.repeat(np.arange(len(crops)), CROP_PROMPTS)
    coords = np.concatenate(
        [
            transform.apply_coords(
                rng.uniform(0, 1, (n, 2)) * [c.shape[1], c.shape[0]], c.shape[:2]
            )
            for c, n in zip(crops, CROP_PROMPTS, strict=False)
        ]
    )
    points = torch.as_tensor(coords)[:, None, :]
    labels = torch.ones(len(coords), 1, dtype=torch.int)
    sparse, dense = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    return feats, ids, sparse, dense


def test_crop_runs():
    assert crop_runs(np.array([0, 0, 2, 2, 2, 3])) == [(0, 0, 2), (2, 2, 5), (3, 5, 6)]
    assert crop_runs(np.array([4])) == [(4, 0, 1)]


def test_stock_decoder_is_the_mask_decoder_per_prompt(model):
    with torch.inference_mode():
        feats, ids, sparse, dense = decoder_inputs(model)
        iou, low_res = StockDecoder(model, feats)(ids, sparse, dense)
        low = low_res(torch.arange(len(ids)))
        pe = model.prompt_encoder.get_dense_pe()
        for p in [0, 5, 12, len(ids) - 1]:
            c = int(ids[p])
            m, q = model.mask_decoder(
                feats[c : c + 1], pe, sparse[p : p + 1], dense[p : p + 1], multimask_output=True
            )
            torch.testing.assert_close(iou[p : p + 1], q, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(low[p : p + 1], m, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("upscale_batch_size", [1, 3, 64])
def test_fast_decoder_equals_the_stock_decoder(model, upscale_batch_size):
    with torch.inference_mode():
        feats, ids, sparse, dense = decoder_inputs(model)
        iou_s, low_s = StockDecoder(model, feats)(ids, sparse, dense)
        fast = FastDecoder(model, feats, bf16=False, upscale_batch_size=upscale_batch_size)
        iou_f, low_f = fast(ids, sparse, dense)
        torch.testing.assert_close(iou_f, iou_s, rtol=1e-5, atol=1e-5)
        assert iou_f.shape == (len(ids), 3) and iou_f.dtype == torch.float32
        # the logits are large (the tiny SAM's hypernetworks have a gain of 1000)
        every = torch.arange(len(ids))
        scale = float(low_s(every).abs().max())
        torch.testing.assert_close(low_f(every), low_s(every), rtol=1e-4, atol=1e-5 * scale)
        some = torch.tensor([11, 0, 6])  # any subset, any order
        torch.testing.assert_close(low_f(some), low_f(every)[some], rtol=0, atol=0)


def test_fast_decoder_needs_the_two_way_transformer_layout():
    odd = build_tiny_sam(seed=0)
    odd.mask_decoder.transformer.layers[0].skip_first_layer_pe = False
    with pytest.raises(ValueError, match="TwoWayTransformer"):
        BatchedSamGenerator(odd)
    BatchedSamGenerator(odd, fast_decoder=False)  # the stock decoder takes any layout
