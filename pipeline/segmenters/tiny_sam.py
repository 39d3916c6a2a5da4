"""A tiny, randomly initialised Segment Anything model for tests and CPU benchmarks.

It is built from ``segment_anything.modeling`` exactly like the real ViT-B/L/H models
(image encoder with windowed and global attention and relative positions, prompt
encoder, two-way-transformer mask decoder with three multimask outputs), only with
a small input size, a 2-block encoder and narrow widths, so the stock
``SamAutomaticMaskGenerator`` runs on one CPU thread in a fraction of a second per
image. Production loads real checkpoints through ``sam_model_registry`` instead.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import nn


def build_tiny_sam(
    image_size: int = 128,
    seed: int = 0,
    *,
    patch_size: int = 16,
    encoder_dim: int = 32,
    encoder_depth: int = 2,
    encoder_heads: int = 2,
    window_size: int = 4,
    prompt_dim: int = 32,
    decoder_heads: int = 4,
    decoder_mlp_dim: int = 64,
    logit_gain: float = 1000.0,
    mask_quantile: float = 0.75,
    iou_mean: float = 0.5,
    iou_std: float = 0.15,
    pos_std: float = 2.0,
) -> Sam:
    """Return a tiny SAM in eval mode on the CPU, deterministic from ``seed``.

    ``image_size`` is the encoder's square input (``model.image_encoder.img_size``:
    images are resized so their long side is this, then padded). The global torch
    RNG is left untouched. The parameters that the real models initialise to zero get
    random values so the code paths they feed are exercised: relative position
    embeddings small noise, the absolute position embedding a smooth random field of
    amplitude ``pos_std`` (few low spatial frequencies, so masks come out as blobs).
    The decoder's upscaling kernels are made equal at their 2x2 positions (no
    checkerboard), and the hypernetwork output layers are scaled by
    ``logit_gain`` so the random model produces mask logits well beyond +-1 (the
    stability-score offset), i.e. masks that survive the generator's filters. On a
    fixed synthetic calibration image, each mask output is shifted so that on average
    a ``1 - mask_quantile`` share of the pixels is inside the mask, and the IoU head is
    rescaled to predictions of mean ``iou_mean`` and spread ``iou_std`` per output, so
    thresholds in the usual ranges keep some masks and drop others.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    if prompt_dim % 8 or (prompt_dim // 2) % decoder_heads:
        raise ValueError("prompt_dim must be a multiple of 8 and of 2 * decoder_heads")
    grid = image_size // patch_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = _tiny_modules(
            image_size,
            patch_size,
            encoder_dim,
            encoder_depth,
            encoder_heads,
            window_size,
            prompt_dim,
            decoder_heads,
            decoder_mlp_dim,
        )
        with torch.no_grad():
            _randomise_zero_inits(sam, grid, encoder_dim, pos_std)
            const = _blob_masks(sam.mask_decoder, logit_gain)
            _calibrate(sam, const, mask_quantile, iou_mean, iou_std, seed)
    return sam.eval()


def _tiny_modules(
    image_size: int,
    patch_size: int,
    encoder_dim: int,
    encoder_depth: int,
    encoder_heads: int,
    window_size: int,
    prompt_dim: int,
    decoder_heads: int,
    decoder_mlp_dim: int,
) -> Sam:
    """The stock SAM modules at tiny sizes (randomly initialised from the torch RNG)."""
    grid = image_size // patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=encoder_dim,
            depth=encoder_depth,
            num_heads=encoder_heads,
            mlp_ratio=2.0,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=window_size,
            global_attn_indexes=(encoder_depth - 1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, mlp_dim=decoder_mlp_dim, num_heads=decoder_heads
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=prompt_dim,
        ),
    )


def _randomise_zero_inits(sam: Sam, grid: int, encoder_dim: int, pos_std: float) -> None:
    """Random values for the encoder parameters the real models initialise to zero."""
    enc = sam.image_encoder
    if enc.pos_embed is not None:
        # a smooth random field (few low spatial frequencies per channel), so mask
        # logits vary smoothly over the image and thresholding gives local blobs
        yy, xx = torch.meshgrid(
            torch.arange(grid, dtype=torch.float32) / grid,
            torch.arange(grid, dtype=torch.float32) / grid,
            indexing="ij",
        )
        freq = torch.randint(0, 3, (2, encoder_dim)).float()
        phase = torch.rand(encoder_dim) * 2 * torch.pi
        field = torch.cos(
            2 * torch.pi * (xx[..., None] * freq[0] + yy[..., None] * freq[1]) + phase
        )
        enc.pos_embed.copy_(pos_std * field[None])
    for blk in enc.blocks:
        if blk.attn.use_rel_pos:
            blk.attn.rel_pos_h.normal_(0.0, 0.2)
            blk.attn.rel_pos_w.normal_(0.0, 0.2)


def _blob_masks(dec: MaskDecoder, logit_gain: float) -> float:
    """Blob-like upscaling, mask logits scaled by ``logit_gain``, and a constant channel
    for the calibration's logit shift; returns that channel's value."""
    for mod in dec.output_upscaling:
        if isinstance(mod, nn.ConvTranspose2d):
            # same weights at the 4 kernel positions: blob-like, not checkered, masks
            mean = mod.weight.mean(dim=(2, 3), keepdim=True)
            mod.weight.copy_(mean.expand_as(mod.weight) * 2)
    # channel 0 of the upscaled embedding becomes the constant gelu(1); the
    # hypernetworks give it a negative weight: a bias that shifts mask logits down
    last_up = dec.output_upscaling[3]
    last_up.weight[:, 0] = 0.0
    last_up.bias[0] = 1.0
    const = float(torch.nn.functional.gelu(torch.tensor(1.0)))
    for mlp in dec.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(logit_gain)
        mlp.layers[-1].bias.mul_(logit_gain)
        mlp.layers[-1].weight[0] = 0.0
        mlp.layers[-1].bias[0] = 0.0
    return const


def _calibration_image(seed: int, h: int = 60, w: int = 52) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3)
    for _ in range(8):
        y0, x0 = rng.integers(0, h - 6), rng.integers(0, w - 6)
        y1, x1 = rng.integers(y0 + 4, h + 1), rng.integers(x0 + 4, w + 1)
        image[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    return image


def _calibrate(
    sam: Sam, const: float, mask_quantile: float, iou_mean: float, iou_std: float, seed: int
) -> None:
    """Shift mask outputs and rescale the IoU head using one synthetic image."""
    from segment_anything import SamPredictor
    from segment_anything.utils.amg import build_point_grid

    image = _calibration_image(seed)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    h, w = image.shape[:2]
    points = build_point_grid(8) * np.array([[w, h]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points, (h, w)))
    labels = torch.ones(len(points), 1, dtype=torch.int)
    dec = sam.mask_decoder
    masks, _, _ = predictor.predict_torch(
        coords[:, None], labels, multimask_output=True, return_logits=True
    )
    for i in range(masks.shape[1]):  # multimask output i comes from mask token i + 1
        q = torch.quantile(masks[:, i].flatten(), mask_quantile).item()
        dec.output_hypernetworks_mlps[i + 1].layers[-1].bias[0] = -q / const
    # IoU head: standardise each output over the calibration prompts
    sparse, dense = sam.prompt_encoder(points=(coords[:, None], labels), boxes=None, masks=None)
    _, iou = dec(predictor.features, sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
    captured = {}
    last = dec.iou_prediction_head.layers[-1]
    hook = last.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    dec(predictor.features, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    hook.remove()
    out = captured["out"]
    mean, std = out.mean(0), out.std(0).clamp_min(1e-6)
    k = iou_std / std
    last.weight.mul_(k[:, None])
    last.bias.copy_(k * (last.bias - mean) + iou_mean)
    predictor.reset_image()
