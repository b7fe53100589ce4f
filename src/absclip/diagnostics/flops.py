"""Multiply-add FLOP estimates of the image encoders, as ``absclip bench`` reports them.

Estimates count the matrix products of a ViT (:func:`absclip.backbones.fused_vit.vit_flops`); norms,
activations and softmax are ignored (<2%). They describe the work, not the speed: use them to
compare pipelines (naive vs faithful vs fast mode), not to predict seconds."""

from __future__ import annotations

from typing import Any

from absclip.attention.sources import AttentionSource, ClipSelfAttention, HFAttention
from absclip.backbones.fused_vit import vit_flops
from absclip.backbones.open_clip import ClipBackbone
from absclip.core.settings import ABSConfig


def _mlp_width(module: Any, width: int) -> int:
    fc = getattr(getattr(module, "mlp", None), "c_fc", None)
    return int(fc.out_features) if fc is not None else 4 * width


def clip_tower_flops(bb: ClipBackbone) -> dict[str, float]:
    """Return FLOP building blocks of the CLIP image tower (see :func:`absclip.backbones.fused_vit.vit_flops`).

    Keys: ``full`` (one plain forward), ``full_cls`` (last block CLS-only), ``embed``, ``block``
    (one full block on all tokens), ``block_cls``, ``proj``; plus ``tokens``, ``width``, ``mlp``.
    """
    f = bb.facts
    t = 1 + f.grid[0] * f.grid[1]
    blocks = getattr(getattr(bb.model.visual, "transformer", None), "resblocks", None)
    mlp = _mlp_width(blocks[0], f.width) if blocks is not None and len(blocks) else 4 * f.width
    pd = 3 * f.patch_size[0] * f.patch_size[1]
    npatch = f.grid[0] * f.grid[1]
    out = {
        "tokens": t, "width": f.width, "mlp": mlp, "blocks": f.num_blocks, "patch_dim": pd, "patches": npatch,
        "embed": vit_flops(t, f.width, 0, mlp, patch_dim=pd, patches=npatch),
        "block": vit_flops(t, f.width, 1, mlp),
        "block_cls": vit_flops(t, f.width, 1, mlp, cls_last=True),
        "proj": vit_flops(t, f.width, 0, mlp, out_dim=f.embed_dim),
    }
    out["full"] = out["embed"] + f.num_blocks * out["block"] + out["proj"]
    out["full_cls"] = out["full"] - out["block"] + out["block_cls"]
    return out


def attention_pass_flops(src: AttentionSource, bb: ClipBackbone) -> float:
    """Return the FLOPs of one attention-model pass on one image (0 when it reuses CLIP's tokens)."""
    if isinstance(src, HFAttention):
        c = src.model.config
        t = 1 + src.grid[0] * src.grid[1]
        return vit_flops(t, int(c.hidden_size), int(c.num_hidden_layers), int(c.intermediate_size),
                         patch_dim=3 * int(c.patch_size) ** 2, patches=t - 1)
    if isinstance(src, ClipSelfAttention):
        cf = clip_tower_flops(bb)
        return cf["embed"] + bb.block_index(src.layer) * cf["block"]
    return 0.0


def abs_image_flops(bb: ClipBackbone, cfg: ABSConfig, feature_views: float, *, fused: bool) -> float:
    """Return the CLIP image-tower FLOPs per image of the optimised ABS pipeline.

    Args:
        cfg: ABS settings (pixel crops, token keep).
        feature_views: feature crops actually encoded per image (distinct windows).
        fused: whether the fused path (CLS-only last block) runs.
    """
    cf = clip_tower_flops(bb)
    idx = bb.block_index(cfg.feature_layer) if cfg.feature_crops > 0 else cf["blocks"] - 1
    tail_blocks = cf["blocks"] - idx
    last = cf["block_cls"] if fused else cf["block"]
    g = cf["patches"]
    k = max(1, round(cfg.token_keep * g)) if cfg.token_keep < 1 else g
    crop_tail = vit_flops(1 + k, cf["width"], cf["blocks"], cf["mlp"], cls_last=fused, out_dim=bb.facts.embed_dim)
    pixel = cfg.pixel_crops * (cf["embed"] + crop_tail)
    if cfg.feature_crops == 0:  # the full image is one plain forward
        return pixel + (cf["full_cls"] if fused else cf["full"])
    full = cf["embed"] + idx * cf["block"] + (tail_blocks - 1) * cf["block"] + last + cf["proj"]
    feat = feature_views * ((tail_blocks - 1) * cf["block"] + last + cf["proj"])
    return pixel + full + feat


def naive_image_flops(bb: ClipBackbone, cfg: ABSConfig) -> float:
    """Return the CLIP image-tower FLOPs per image of the naive pipeline (all tokens in every block)."""
    cf = clip_tower_flops(bb)
    if cfg.feature_crops == 0:
        return (cfg.pixel_crops + 1) * cf["full"]
    idx = bb.block_index(cfg.feature_layer)
    tail = (cf["blocks"] - idx) * cf["block"] + cf["proj"]
    return (cfg.pixel_crops + 1) * cf["full"] + cf["embed"] + idx * cf["block"] + cfg.feature_crops * tail
