"""SAM's mask decoder for batches of point prompts that span several crops.

A decoder is built once per batch of images from the crops' embeddings and then called
on batches of prompts; prompts are sorted by crop, ``ids`` names each prompt's crop.
Both decoders return the multimask outputs only: the predicted IoU (P, 3) and a
function from prompt indices to their low-resolution mask logits (len, 3, 4h, 4w), so
the output upscaling runs only for the prompts a caller keeps.

* :class:`StockDecoder` calls ``segment_anything``'s ``MaskDecoder`` once per run of
  prompts on one crop (the reference).
* :class:`FastDecoder` evaluates the same ``TwoWayTransformer`` in a re-associated but
  mathematically identical order (see :meth:`FastDecoder._transformer`): the first
  block's image-side projections are computed once per crop instead of once per prompt,
  and the later projections of the per-prompt image tokens are folded into the few
  prompt tokens. Same outputs up to float rounding (tests/test_sam_decoder.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention
from torch import nn

__all__ = ["FastDecoder", "LowRes", "StockDecoder", "check_fast_decoder", "crop_runs"]

# prompt indices (a tensor on the device) -> their low-resolution logits (n, 3, 4h, 4w)
LowRes = Callable[[torch.Tensor], torch.Tensor]


def crop_runs(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """The runs of equal crop ids in crop-sorted prompts.

    Args:
        ids: crop id of each prompt, sorted.

    Returns:
        (crop id, start, end) per run.
    """
    edges = np.flatnonzero(np.diff(ids)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(ids)]])
    return [(int(ids[s]), int(s), int(e)) for s, e in zip(starts, ends, strict=False)]


def check_fast_decoder(model: Sam) -> None:
    """Raise ValueError when :class:`FastDecoder` cannot evaluate ``model``'s decoder."""
    if not model.mask_decoder.transformer.layers[0].skip_first_layer_pe:
        raise ValueError("fast_decoder expects SAM's TwoWayTransformer layout")


class StockDecoder:
    """Reference path: the stock ``MaskDecoder``, one call per crop's run of prompts."""

    def __init__(self, model: Sam, feats: torch.Tensor) -> None:
        """Args: the model; the crops' embeddings (n_crops, C, h, w)."""
        self.decoder = model.mask_decoder
        self.feats = feats
        self.image_pe = model.prompt_encoder.get_dense_pe()

    def __call__(
        self, ids: np.ndarray, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, LowRes]:
        """Args: crop id per prompt, the prompt encoder's sparse and dense embeddings.

        Returns:
            predicted IoU (P, 3) fp32 and the low-resolution logits' function.
        """
        ious, lows = [], []
        for c, s, e in crop_runs(ids):
            low, iou = self.decoder(
                image_embeddings=self.feats[c : c + 1],
                image_pe=self.image_pe,
                sparse_prompt_embeddings=sparse[s:e],
                dense_prompt_embeddings=dense[s:e],
                multimask_output=True,
            )
            ious.append(iou)
            lows.append(low)
        iou = torch.cat(ious).float()
        low = torch.cat(lows).float()
        return iou, (lambda sel: low[sel])


@dataclass
class _ImageSide:
    """Per-crop decoder work that does not depend on the prompt (first block)."""

    pe: torch.Tensor  # (N, C) dense positional encoding, fp32
    keys0_plus_bias: torch.Tensor  # (n_crops, N, C) image tokens + i2t out_proj bias
    k1: torch.Tensor  # token-to-image keys of the image tokens
    v1: torch.Tensor  # token-to-image values of the image tokens
    q1: torch.Tensor  # image-to-token queries of the image tokens
    hw: tuple[int, int]  # (h, w) of the embedding grid


class FastDecoder:
    """The re-associated mask decoder; same function as :class:`StockDecoder`."""

    def __init__(
        self, model: Sam, feats: torch.Tensor, *, bf16: bool, upscale_batch_size: int
    ) -> None:
        """Precompute the prompt-independent first-block work of every crop.

        Args:
            model: the SAM model (see :func:`check_fast_decoder`).
            feats: the crops' embeddings (n_crops, C, h, w), fp32.
            bf16: run under CUDA bf16 autocast.
            upscale_batch_size: prompts per call of the output upscaling.
        """
        self.decoder = model.mask_decoder
        self.bf16 = bf16
        self.upscale_batch_size = upscale_batch_size
        self.side = self._image_side(model, feats)

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16)

    def _image_side(self, model: Sam, feats: torch.Tensor) -> _ImageSide:
        layer0 = self.decoder.transformer.layers[0]
        t2i, i2t = layer0.cross_attn_token_to_image, layer0.cross_attn_image_to_token
        pe = model.prompt_encoder.get_dense_pe().flatten(2)[0].t().contiguous()  # (N, C), fp32
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        with self._autocast():
            keys0 = (feats + dense).flatten(2).transpose(1, 2)  # (n_crops, N, C) = stock src
            keys_pe = keys0 + pe
            return _ImageSide(
                pe=pe,
                keys0_plus_bias=(keys0 + i2t.out_proj.bias).to(dtype),
                k1=t2i.k_proj(keys_pe),
                v1=t2i.v_proj(keys0),
                q1=i2t.q_proj(keys_pe),
                hw=tuple(feats.shape[-2:]),
            )

    def __call__(
        self, ids: np.ndarray, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, LowRes]:
        """Args: crop id per prompt, the sparse embeddings; ``dense`` is the no-mask
        embedding, already in the image side.

        Returns:
            predicted IoU (P, 3) fp32 and the low-resolution logits' function.
        """
        dec = self.decoder
        n = sparse.shape[0]
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(n, -1, -1).to(sparse.dtype), sparse], dim=1)
        queries, keys = self._transformer(ids, tokens)
        iou = dec.iou_prediction_head(queries[:, 0, :])[:, 1:].float()
        hyper = torch.stack(
            [
                dec.output_hypernetworks_mlps[i](queries[:, 1 + i, :])
                for i in range(1, dec.num_mask_tokens)
            ],
            dim=1,
        )  # (P, 3, C/8): multimask outputs only
        return iou, partial(self._low_res, keys, hyper)

    def _low_res(
        self, keys: torch.Tensor, hyper: torch.Tensor, prompts: torch.Tensor
    ) -> torch.Tensor:
        """Low-resolution logits (len(prompts), 3, 4h, 4w) for the given prompts."""
        h, w = self.side.hw
        outs = []
        for s in range(0, len(prompts), self.upscale_batch_size):
            p = prompts[s : s + self.upscale_batch_size]
            with self._autocast():
                src = keys[p].transpose(1, 2).reshape(len(p), -1, h, w)
                up = self.decoder.output_upscaling(src)
                b, c, uh, uw = up.shape
                outs.append((hyper[p] @ up.reshape(b, c, uh * uw)).reshape(b, -1, uh, uw))
        return torch.cat(outs).float()

    def _transformer(
        self, ids: np.ndarray, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's TwoWayTransformer for a batch of prompts on several crops.

        Same function as ``dec.transformer(src, pe, tokens)`` with ``src`` the crop's
        embedding plus the no-mask embedding, evaluated in an equivalent order:

        * block 1 sees the same image tokens for every prompt of a crop, so its
          image-side projections come precomputed per crop (:meth:`_first_block`);
        * attention of the (few) prompt tokens to the per-prompt image tokens folds the
          key and value projections into the queries (:func:`tokens_to_image`);
        * attention of the image tokens to the prompt tokens folds ``q_proj`` into the
          keys and ``out_proj`` into the values, so no per-prompt (N x C) projection is
          ever materialised (:func:`image_to_tokens`).

        Returns:
            queries (P, T, C) and keys (P, N, C).
        """
        tr = self.decoder.transformer
        pe = self.side.pe
        queries, keys = self._first_block(ids, tokens)
        for layer in tr.layers[1:]:
            q = queries + tokens
            queries = layer.norm1(queries + layer.self_attn(q=q, k=q, v=queries))
            attn = tokens_to_image(layer.cross_attn_token_to_image, queries + tokens, keys, pe)
            queries = layer.norm2(queries + attn)
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = _layer_norm(
                layer.norm4,
                image_to_tokens(layer.cross_attn_image_to_token, queries, tokens, keys, pe),
            )
        attn = tokens_to_image(tr.final_attn_token_to_image, queries + tokens, keys, pe)
        queries = tr.norm_final_attn(queries + attn)
        return queries, keys

    def _first_block(
        self, ids: np.ndarray, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Block 1 on the shared image side: token-to-image attention runs once per crop
        with all its prompts' queries stacked (:func:`attend_shared`), image-to-token
        attention uses the crop's precomputed queries (:func:`image_to_tokens_shared`).

        Returns:
            queries (P, T, C) and per-prompt keys (P, N, C).
        """
        side = self.side
        layer0 = self.decoder.transformer.layers[0]
        queries = layer0.norm1(layer0.self_attn(q=tokens, k=tokens, v=tokens))
        t2i = layer0.cross_attn_token_to_image
        i2t = layer0.cross_attn_image_to_token
        runs = crop_runs(ids)
        q_all = t2i.q_proj(queries + tokens)
        att = _cat(
            [attend_shared(q_all[s:e], side.k1[c], side.v1[c], t2i.num_heads) for c, s, e in runs]
        )
        queries = layer0.norm2(queries + t2i.out_proj(att))
        queries = layer0.norm3(queries + layer0.mlp(queries))

        k_tok = i2t.k_proj(queries + tokens)
        v_tok = i2t.v_proj(queries)
        keys = _cat(
            [
                image_to_tokens_shared(
                    side.q1[c], k_tok[s:e], v_tok[s:e], side.keys0_plus_bias[c], i2t
                )
                for c, s, e in runs
            ]
        )
        return queries, _layer_norm(layer0.norm4, keys)


def attend_shared(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Prompt tokens of one crop attending to its shared keys and values.

    Args:
        q: projected queries (P, T, Ci).
        k: projected keys (N, Ci) of the crop's image tokens.
        v: projected values (N, Ci).
        heads: number of attention heads.

    Returns:
        the attention output before ``out_proj``, (P, T, Ci).
    """
    p, t, ci = q.shape
    dh = ci // heads
    qh = q.reshape(p * t, heads, dh).transpose(0, 1)[None]  # (1, H, P*T, dh)
    kh = k.reshape(-1, heads, dh).transpose(0, 1)[None]  # (1, H, N, dh)
    vh = v.reshape(-1, heads, dh).transpose(0, 1)[None].to(qh.dtype)
    o = F.scaled_dot_product_attention(qh, kh.to(qh.dtype), vh)  # scale 1/sqrt(dh)
    return o[0].transpose(0, 1).reshape(p, t, ci)


def fold_values(attn_mod: Attention, v_tok: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
    """Each head's values times its slice of ``out_proj`` (+ bias / heads).

    Args:
        attn_mod: the attention module.
        v_tok: projected values (P, T, Ci).
        add_bias: spread ``out_proj``'s bias over the heads (attention rows of each head
            sum to one, so it is added once).

    Returns:
        (P, H*T, C).
    """
    p, t, ci = v_tok.shape
    heads = attn_mod.num_heads
    dh = ci // heads
    c = attn_mod.out_proj.weight.shape[0]
    w_o = attn_mod.out_proj.weight.reshape(c, heads, dh)
    vw = torch.einsum("pthd,chd->phtc", v_tok.reshape(p, t, heads, dh), w_o.to(v_tok.dtype))
    if add_bias:
        vw = vw + (attn_mod.out_proj.bias / heads).to(vw.dtype)
    return vw.reshape(p, heads * t, c)


def image_to_tokens_shared(
    q_img: torch.Tensor,
    k_tok: torch.Tensor,
    v_tok: torch.Tensor,
    keys_plus_bias: torch.Tensor,
    attn_mod: Attention,
) -> torch.Tensor:
    """Block 1: one crop's image tokens attend to each of its prompts' tokens.

    Args:
        q_img: projected queries (N, Ci) of the crop's image tokens, shared by its prompts.
        k_tok: projected keys (P, T, Ci) of the prompt tokens.
        v_tok: projected values (P, T, Ci) of the prompt tokens.
        keys_plus_bias: the crop's image tokens plus ``out_proj``'s bias (N, C).
        attn_mod: the image-to-token attention module.

    Returns:
        keys + out_proj(attention), (P, N, C).
    """
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
    a = a.reshape(n, p, heads * t).transpose(0, 1)  # (P, N, H*T) view
    vw = fold_values(attn_mod, v_tok, add_bias=False)  # the bias is in keys_plus_bias
    return torch.baddbmm(keys_plus_bias.to(a.dtype)[None], a, vw.to(a.dtype))


def tokens_to_image(
    attn_mod: Attention, q_in: torch.Tensor, keys: torch.Tensor, pe: torch.Tensor
) -> torch.Tensor:
    """``attn_mod(q=q_in, k=keys + pe, v=keys)`` for per-prompt image tokens.

    Args:
        attn_mod: the token-to-image attention module.
        q_in: prompt tokens plus their positional part (P, T, C).
        keys: per-prompt image tokens (P, N, C).
        pe: the image tokens' positional encoding (N, C), shared by all prompts.

    Returns:
        (P, T, C).
    """
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


def image_to_tokens(
    attn_mod: Attention,
    queries: torch.Tensor,
    tokens: torch.Tensor,
    keys: torch.Tensor,
    pe: torch.Tensor,
) -> torch.Tensor:
    """``keys + attn_mod(q=keys + pe, k=queries + tokens, v=queries)``.

    Args:
        attn_mod: the image-to-token attention module.
        queries: prompt tokens (P, T, C).
        tokens: their positional part (P, T, C).
        keys: per-prompt image tokens (P, N, C).
        pe: the image tokens' positional encoding (N, C).

    Returns:
        (P, N, C).
    """
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
    logits = torch.bmm(keys, kq.transpose(1, 2))  # (P, N, H*T)
    logits += pe_b.reshape(n, p, heads * t).transpose(0, 1)
    a = logits.reshape(p, n, heads, t).softmax(dim=-1)
    a = a.reshape(p, n, heads * t).to(keys.dtype)
    vw = fold_values(attn_mod, v_tok).to(keys.dtype)
    return torch.baddbmm(keys, a, vw)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _layer_norm(mod: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``mod(x)``; for a bf16 ``x`` the output stays bf16 (autocast would make it fp32)."""
    if x.dtype == torch.float32:
        return mod(x)
    with torch.autocast(x.device.type, enabled=False):
        w = mod.weight.to(x.dtype) if mod.weight is not None else None
        b = mod.bias.to(x.dtype) if mod.bias is not None else None
        return F.layer_norm(x, mod.normalized_shape, w, b, mod.eps)
