"""Multiply-add FLOP estimates of the image encoders, as ``absclip bench`` reports them.

Estimates count the matrix products of a ViT (:func:`absclip.backbones.base.vit_flops`); norms,
activations and softmax are ignored (<2%). They describe the work, not the speed: use them to
compare pipelines (naive vs faithful vs fast mode), not to predict seconds."""

from __future__ import annotations

from absclip.attention.sources import AttentionSource, ClipSelfAttention, HFAttention
from absclip.backbones.base import Backbone, vit_flops
from absclip.core.settings import ABSConfig


def clip_tower_flops(bb: Backbone) -> dict[str, float]:
    """Return FLOP building blocks of the CLIP image tower (:meth:`absclip.backbones.base.Backbone.tower_flops`).

    Keys: ``full`` (one plain forward), ``full_cls`` (last block CLS-only), ``embed``, ``block``
    (one full block on all tokens), ``block_cls``, ``proj``; plus ``tokens``, ``width``, ``mlp``.
    """
    return bb.tower_flops()


def attention_pass_flops(src: AttentionSource, bb: Backbone) -> float:
    """Return the FLOPs of one attention-model pass on one image (0 when it reuses CLIP's tokens)."""
    if isinstance(src, HFAttention):
        return src.pass_flops()
    if isinstance(src, ClipSelfAttention):
        cf = clip_tower_flops(bb)
        return cf["embed"] + bb.block_index(src.layer) * cf["block"]
    return 0.0


def abs_image_flops(bb: Backbone, cfg: ABSConfig, feature_views: float, *, fused: bool) -> float:
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


def views_image_flops(bb: Backbone, views: float, *, fused: bool) -> float:
    """Return the CLIP image-tower FLOPs per image of a method that encodes ``views`` whole images per image.

    ``views`` is :meth:`absclip.methods.base.Method.image_views` (the full image included); each is one
    forward of the tower, CLS-only in the last block when the fused path runs.
    """
    cf = clip_tower_flops(bb)
    return views * (cf["full_cls"] if fused else cf["full"])


def naive_image_flops(bb: Backbone, cfg: ABSConfig) -> float:
    """Return the CLIP image-tower FLOPs per image of the naive pipeline (all tokens in every block)."""
    cf = clip_tower_flops(bb)
    if cfg.feature_crops == 0:
        return (cfg.pixel_crops + 1) * cf["full"]
    idx = bb.block_index(cfg.feature_layer)
    tail = (cf["blocks"] - idx) * cf["block"] + cf["proj"]
    return (cfg.pixel_crops + 1) * cf["full"] + cf["embed"] + idx * cf["block"] + cfg.feature_crops * tail
