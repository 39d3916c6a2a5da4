"""SAM's image encoder on batches of crops, with a fused-attention fast path.

:func:`encode_crops` stacks resized crops into batches and runs the image encoder on
them. With ``fast=True`` the encoder's blocks run as stock does, except that each
block's attention goes through :func:`fast_attention`, which hands the relative-position
terms to ``scaled_dot_product_attention`` instead of materialising the (N x N) logits.
Same function as ``ImageEncoderViT.forward`` up to float rounding
(tests/test_sam_encoder.py).
"""

from __future__ import annotations

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

__all__ = ["encode_crops", "fast_attention", "run_image_encoder"]


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
