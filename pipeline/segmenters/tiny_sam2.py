"""A tiny, randomly initialised SAM 2 image model for tests and CPU benchmarks.

Built from ``sam2.modeling`` like the released SAM 2.1 models (a Hiera trunk with
windowed and global attention over four stages, the FPN neck, SAM 2's prompt encoder
and its mask decoder with high-resolution features and three multimask outputs), only
with a 128 px input, five blocks and narrow widths, so the stock
``SAM2AutomaticMaskGenerator`` runs in a fraction of a second per image on one CPU
thread. The video memory modules are not built (``nn.Identity``): automatic mask
generation on images never calls them. Production loads real checkpoints instead
(pipeline/segmenters/sam2_loading.py).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def build_tiny_sam2(
    seed: int = 0,
    *,
    image_size: int = 128,
    embed_dim: int = 8,
    d_model: int = 32,
    logit_gain: float = 300.0,
    pe_gain: float = 4.0,
    mask_quantile: float = 0.6,
) -> nn.Module:
    """A tiny ``SAM2Base`` in eval mode on the CPU, deterministic from ``seed`` (the global
    torch RNG is left untouched). The mask hypernetworks' output layers are scaled by
    ``logit_gain`` so the random model's mask logits reach well beyond the stability
    offset and thresholding gives masks of varied size."""
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam2_base import SAM2Base

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trunk = Hiera(
            embed_dim=embed_dim,
            num_heads=1,
            stages=(1, 2, 1, 1),
            global_att_blocks=(2,),
            window_spec=(8, 4, 4, 2),
            window_pos_embed_bkg_spatial_size=(4, 4),
        )
        neck = FpnNeck(
            position_encoding=PositionEmbeddingSine(num_pos_feats=d_model, normalize=True),
            d_model=d_model,
            backbone_channel_list=[embed_dim * 8, embed_dim * 4, embed_dim * 2, embed_dim],
            fpn_top_down_levels=[2, 3],
            fpn_interp_model="nearest",
        )
        model = SAM2Base(
            image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
            memory_attention=nn.Identity(),
            memory_encoder=nn.Identity(),
            image_size=image_size,
            directly_add_no_mem_embed=True,
            use_high_res_features_in_sam=True,
            multimask_output_in_sam=True,
            iou_prediction_use_sigmoid=True,
            pred_obj_scores=True,
            pred_obj_scores_mlp=True,
            use_multimask_token_for_obj_ptr=True,
        )
        model.eval()
        with torch.no_grad():
            model.no_mem_embed.normal_(0.0, 0.02)
            # sharper point/pixel position codes: each prompt's mask becomes local
            model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(pe_gain)
            const = _blob_masks(model.sam_mask_decoder, logit_gain)
            _calibrate(model, const, mask_quantile)
    return model


def _blob_masks(decoder: nn.Module, logit_gain: float) -> float:
    """Blob-like upscaling, mask logits scaled by ``logit_gain`` and a constant channel of
    the upscaled embedding (its value is returned) through which the hypernetworks'
    bias shifts each output's logits."""
    for conv in (decoder.output_upscaling[0], decoder.output_upscaling[3]):
        mean = conv.weight.mean(dim=(2, 3), keepdim=True)  # same at the 2x2 positions
        conv.weight.copy_(mean.expand_as(conv.weight) * 2)
    last_up = decoder.output_upscaling[3]
    last_up.weight[:, 0] = 0.0
    last_up.bias[0] = 1.0
    decoder.conv_s0.weight[0] = 0.0
    decoder.conv_s0.bias[0] = 0.0
    for mlp in decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(logit_gain)
        mlp.layers[-1].bias.mul_(logit_gain)
        mlp.layers[-1].weight[0] = 0.0
        mlp.layers[-1].bias[0] = 0.0
    return float(torch.nn.functional.gelu(torch.tensor(1.0)))


def _calibrate(model: nn.Module, const: float, mask_quantile: float) -> None:
    """On two synthetic images (those of tiny_sam.py's calibration): shift each multimask output so that a
    ``1 - mask_quantile`` share of the pixels is inside its masks on average, and
    standardise the IoU head's logits (sigmoid: predictions spread around 0.5)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from sam2.utils.amg import build_point_grid

    from pipeline.segmenters.sam2_batched import feature_sizes
    from pipeline.segmenters.tiny_sam import _calibration_image

    predictor = SAM2ImagePredictor(model)
    predictor._bb_feat_sizes = feature_sizes(model)
    decoder = model.sam_mask_decoder
    head = decoder.iou_prediction_head.layers[-1]
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, i, o: captured.append(o))
    logits = []
    for image in (_calibration_image(seed) for seed in range(2)):
        predictor.set_image(image)
        h, w = image.shape[:2]
        points = torch.as_tensor(build_point_grid(8) * np.array([[w, h]]), dtype=torch.float32)
        coords = predictor._transforms.transform_coords(points, normalize=True, orig_hw=(h, w))
        labels = torch.ones(len(points), 1, dtype=torch.int)
        out, _, _ = predictor._predict(coords[:, None], labels, return_logits=True)
        logits.append(out.transpose(0, 1).flatten(1))  # (3, prompts * pixels)
    hook.remove()
    per_output = torch.cat(logits, dim=1)
    for i in range(per_output.shape[0]):  # multimask output i comes from mask token i + 1
        q = torch.quantile(per_output[i], mask_quantile).item()
        decoder.output_hypernetworks_mlps[i + 1].layers[-1].bias[0] = -q / const
    iou = torch.cat(captured)
    mean, std = iou.mean(0), iou.std(0).clamp_min(1e-6)
    head.weight.div_(std[:, None])
    head.bias.copy_((head.bias - mean) / std)
