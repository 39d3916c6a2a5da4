"""SAM's image encoder on batches of crops, with a fused-attention fast path.

:func:`encode_crops` stacks resized crops into batches and runs the image encoder on
them. With ``fast=True`` the encoder's blocks run as stock does, except that each
block's attention goes through :func:`fast_attention`, which hands the relative-position
terms to ``scaled_dot_product_attention`` instead of materialising the (N x N) logits.
Same function as ``ImageEncoderViT.forward`` up to float rounding
(tests/test_sam_encoder.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import (
    Attention,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)

__all__ = [
    "attention_bytes_per_crop",
    "encode_crops",
    "encoder_batch_limit",
    "fast_attention",
    "run_image_encoder",
]

# Crops per encoder call on CUDA when nothing is asked: the fused attention keeps the
# per-crop working set small there, and batching feeds the GPU.
CUDA_ENCODER_BATCH = 8


def attention_bytes_per_crop(enc: ImageEncoderViT) -> int:
    """Bytes of one crop's attention matrices in a global-attention block on the plain
    (non-fused) path: fp32 logits, the relative-position sum and the softmax, each
    ``heads x N x N`` for N tokens (vit_b: 12 x 4096^2 -> 2.4 GB; vit_h: 3.2 GB)."""
    stride = enc.patch_embed.proj.stride[0]
    tokens = (enc.img_size // stride) ** 2
    heads = max(blk.attn.num_heads for blk in enc.blocks)
    return 3 * 4 * heads * tokens * tokens


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def encoder_batch_limit(
    enc: ImageEncoderViT,
    device: torch.device,
    requested: int | None,
    available: int | None = None,
) -> int:
    """Crops per image-encoder call.

    ``requested`` None picks 8 on CUDA and 1 elsewhere: on CPU a batch was no faster
    (20.2 vs 20.3 s per block of 5 vit_b crops) while each crop adds its whole attention
    working set (:func:`attention_bytes_per_crop`), which got a worker killed at the old
    fixed 8. Off CUDA any value is lowered so that the batch's attention fits in half of
    the memory available now (``available``: bytes, default MemAvailable), with a warning;
    never below 1.
    """
    if requested is not None and int(requested) < 1:
        raise ValueError(f"encoder_batch_size must be >= 1, got {requested}")
    if device.type == "cuda":
        return CUDA_ENCODER_BATCH if requested is None else int(requested)
    if requested is None:
        return 1
    available = available_memory_bytes() if available is None else available
    if available is None:
        return int(requested)
    fits = max(1, available // 2 // attention_bytes_per_crop(enc))
    if int(requested) > fits:
        warnings.warn(
            f"segment.sam.encoder_batch_size {requested} lowered to {fits}: each crop's "
            f"encoder attention takes {attention_bytes_per_crop(enc) / 2**30:.1f} GiB on "
            f"{device.type} and {available / 2**30:.1f} GiB are available",
            stacklevel=3,
        )
        return int(fits)
    return int(requested)


def encode_crops(
    model: Sam,
    resized: Iterator[np.ndarray],
    n_crops: int,
    batch_size: int,
    *,
    fast: bool,
    bf16: bool,
) -> torch.Tensor:
    """Image embeddings of crops already resized by ``ResizeLongestSide``.

    Args:
        model: the SAM model; its device is used.
        resized: the ``n_crops`` resized crops (HxWx3 uint8), e.g. a lazy ``map`` so
            resizing overlaps the encoder.
        n_crops: how many crops ``resized`` yields.
        batch_size: crops per image-encoder call.
        fast: run attention through :func:`fast_attention`.
        bf16: run the encoder under CUDA bf16 autocast.

    Returns:
        fp32 embeddings (n_crops, C, h, w) on the model's device.
    """
    out = []
    for start in range(0, n_crops, batch_size):
        batch = []
        for _ in range(start, min(start + batch_size, n_crops)):
            t = torch.as_tensor(next(resized), device=model.device)
            batch.append(model.preprocess(t.permute(2, 0, 1).contiguous()[None]))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            emb = run_image_encoder(model.image_encoder, torch.cat(batch, dim=0), fast)
        out.append(emb.float())
    return torch.cat(out, dim=0)


def run_image_encoder(enc: ImageEncoderViT, x: torch.Tensor, fast: bool) -> torch.Tensor:
    """``enc(x)``; with ``fast`` the same blocks, attention through :func:`fast_attention`.

    Args:
        enc: SAM's ViT image encoder.
        x: preprocessed images (B, 3, img_size, img_size).
        fast: use the fused attention.

    Returns:
        the embeddings (B, C, h, w).
    """
    if not fast:
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
        x = fast_attention(blk.attn, x)
        if blk.window_size > 0:
            x = window_unpartition(x, blk.window_size, pad_hw, (h, w))
        x = shortcut + x
        x = x + blk.mlp(blk.norm2(x))
    return enc.neck(x.permute(0, 3, 1, 2))


def fast_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """``attn(x)`` for SAM's ``image_encoder.Attention`` via scaled_dot_product_attention.

    Stock computes ``softmax(scale * q.k + rel_h[q, row(k)] + rel_w[q, col(k)]) v`` with
    ``rel_h = q . Rh``, ``rel_w = q . Rw`` and materialises the (N x N) logits. Here the
    relative terms become extra dimensions of the dot product: queries
    ``[scale * q, rel_h, rel_w]`` and keys ``[k, onehot(row), onehot(col)]`` give exactly
    those logits, so a fused attention kernel (scale 1) does the rest.

    Args:
        attn: the block's attention module.
        x: tokens (B, h, w, C).

    Returns:
        the attention output (B, h, w, C).
    """
    b, h, w, _ = x.shape
    n = h * w
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, N, dh)
    dh = q.shape[-1]
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        rh = get_rel_pos(h, h, attn.rel_pos_h).to(q.dtype)  # (h, h, dh)
        rw = get_rel_pos(w, w, attn.rel_pos_w).to(q.dtype)
        r_q = q.reshape(b, heads, h, w, dh)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh).reshape(b, heads, n, h)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw).reshape(b, heads, n, w)
        idx = torch.arange(n, device=x.device)
        onehot = torch.cat([F.one_hot(idx // w, h), F.one_hot(idx % w, w)], dim=-1).to(
            q.dtype
        )  # (N, h + w)
        pad = (-(dh + h + w)) % 8  # kernels want multiples of 8
        q2 = [q * attn.scale, rel_h, rel_w]
        k2 = [k, onehot.expand(b, heads, n, h + w)]
        if pad:
            q2.append(q.new_zeros(b, heads, n, pad))
            k2.append(k.new_zeros(b, heads, n, pad))
        out = F.scaled_dot_product_attention(torch.cat(q2, -1), torch.cat(k2, -1), v, scale=1.0)
    out = out.reshape(b, heads, h, w, dh).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)
