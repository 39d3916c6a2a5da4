"""The fast image-encoder path (pipeline/segmenters/sam_encoder.py) equals the stock one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from segment_anything.modeling.image_encoder import Attention  # noqa: E402
from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from pipeline.segmenters.sam_encoder import (  # noqa: E402
    attention_bytes_per_crop,
    encode_crops,
    encoder_batch_limit,
    fast_attention,
    run_image_encoder,
)
from pipeline.segmenters.tiny_sam import build_tiny_sam  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return build_tiny_sam(seed=0)


@pytest.mark.parametrize("use_rel_pos", [True, False])
@pytest.mark.parametrize("hw", [(4, 4), (5, 6), (3, 7)])  # (5, 6): padded to 8 dims
def test_fast_attention_equals_stock_attention(use_rel_pos, hw):
    torch.manual_seed(0)
    attn = Attention(24, num_heads=2, qkv_bias=True, use_rel_pos=use_rel_pos, input_size=hw)
    if use_rel_pos:
        with torch.no_grad():
            attn.rel_pos_h.normal_(0.0, 0.5)
            attn.rel_pos_w.normal_(0.0, 0.5)
    x = torch.randn(3, *hw, 24)
    with torch.inference_mode():
        torch.testing.assert_close(fast_attention(attn, x), attn(x), rtol=1e-5, atol=1e-5)


def test_fast_encoder_equals_the_stock_image_encoder(model):
    """Windowed and global blocks with relative positions (the tiny SAM has both)."""
    enc = model.image_encoder
    assert {blk.window_size > 0 for blk in enc.blocks} == {True, False}
    x = torch.randn(2, 3, enc.img_size, enc.img_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        stock = enc(x)
        torch.testing.assert_close(run_image_encoder(enc, x, fast=False), stock, rtol=0, atol=0)
        torch.testing.assert_close(
            run_image_encoder(enc, x, fast=True), stock, rtol=1e-4, atol=1e-4
        )


def test_encode_crops_batches_like_one_call_per_crop(model):
    transform = ResizeLongestSide(model.image_encoder.img_size)
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 56), (64, 48), (50, 50)]
    ]
    resized = [transform.apply_image(im) for im in images]
    with torch.inference_mode():
        batched = encode_crops(model, iter(resized), len(resized), 2, fast=True, bf16=False)
        for i, image in enumerate(resized):
            t = torch.as_tensor(image).permute(2, 0, 1).contiguous()[None]
            alone = model.image_encoder(model.preprocess(t))
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-4)
    assert batched.dtype == torch.float32 and batched.shape[0] == len(images)


def test_encoder_batch_defaults_to_one_crop_on_cpu_and_eight_on_cuda(model):
    enc = model.image_encoder
    assert encoder_batch_limit(enc, torch.device("cpu"), None) == 1
    assert encoder_batch_limit(enc, torch.device("cuda"), None) == 8
    assert encoder_batch_limit(enc, torch.device("cuda"), 3) == 3


def test_encoder_batch_is_lowered_to_what_memory_holds(model):
    """A CPU batch whose attention would not fit in half the available memory is lowered,
    with a warning naming the param; one that fits is kept; never below one crop."""
    enc = model.image_encoder
    per_crop = attention_bytes_per_crop(enc)
    cpu = torch.device("cpu")
    assert encoder_batch_limit(enc, cpu, 4, available=8 * per_crop) == 4
    with pytest.warns(UserWarning, match="encoder_batch_size 8 lowered to 3"):
        assert encoder_batch_limit(enc, cpu, 8, available=7 * per_crop) == 3
    with pytest.warns(UserWarning):
        assert encoder_batch_limit(enc, cpu, 8, available=per_crop) == 1
    with pytest.raises(ValueError, match="encoder_batch_size"):
        encoder_batch_limit(enc, cpu, 0)


def test_attention_bytes_follow_the_token_count_and_heads():
    """vit_b at 1024 px: 12 heads, 64 x 64 tokens, three fp32 N x N matrices (2.4 GB)."""
    from segment_anything.modeling import ImageEncoderViT

    enc = ImageEncoderViT(img_size=1024, depth=1, embed_dim=24, num_heads=12, patch_size=16)
    assert attention_bytes_per_crop(enc) == 3 * 4 * 12 * 4096**2
