"""Image side of ABS: image → attention → views → embeddings.

:class:`BatchContext` computes, lazily and at most once per batch, the things several methods
share (full-image pixels and embedding, the tokens entering the feature-crop block, the
attention map). :func:`abs_views` turns one image's attention and draws into pixel boxes and
token windows (via the pure functions in :mod:`absclip.views`) and embeds them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import views
from .config import ABSConfig
from .data import ImageItem
from .models import AttentionSource, ClipBackbone, ClipSelfAttention
from .sampling import ABSDraws, draw_abs, image_rng


@dataclass
class ABSViews:
    """Everything ABS computed for one image (kept for explanations and tests).

    Attributes:
        attention: ``[A]`` head-averaged attention on the attention grid (row-major).
        topk_idx: ``[k]`` attention-grid indices, descending attention; topk_prob ``[k]``.
        draws: the random draws used.
        boxes: pixel-crop boxes (half-open, original pixels).
        windows: feature windows (half-open, CLIP token grid).
        feat_centres: CLIP-grid indices of the feature-crop centres.
        embeddings: ``[V, D]`` normalised view embeddings, feature crops first, then pixel crops.
        full: ``[D]`` normalised full-image embedding.
    """

    attention: torch.Tensor
    topk_idx: torch.Tensor
    topk_prob: torch.Tensor
    draws: ABSDraws
    boxes: list[views.Box]
    windows: list[views.Window]
    feat_centres: list[int]
    embeddings: torch.Tensor
    full: torch.Tensor


@dataclass
class BatchContext:
    """Lazily computed, shared per-batch state. Nothing is computed twice.

    Args:
        items: the decoded images of the batch.
        backbone: the CLIP adapter.
        attention_source: where attention maps come from (None if no method needs one).
        feature_layer: the block the feature crops enter.
        view_batch: maximum number of views per image-encoder call.
    """

    items: list[ImageItem]
    backbone: ClipBackbone
    attention_source: AttentionSource | None = None
    feature_layer: int = -1
    view_batch: int = 256
    _cache: dict[str, Any] = field(default_factory=dict)
    encoder_calls: int = 0

    def _get(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    @property
    def pixels(self) -> torch.Tensor:
        """Preprocessed full images ``[B, 3, S, S]``."""
        return self._get("pixels", lambda: torch.stack([self.backbone.preprocess(it.image) for it in self.items]))

    @property
    def tokens(self) -> torch.Tensor:
        """Tokens entering the feature-crop block for the full images ``[B, 1 + G*G, width]``."""
        return self._get("tokens", lambda: self.backbone.tokens_before(self.pixels, self.feature_layer))

    @property
    def full(self) -> torch.Tensor:
        """Normalised full-image embeddings ``[B, D]``."""
        def compute() -> torch.Tensor:
            if self.backbone.has_tokens and "tokens" in self._cache:
                return self.backbone.forward_from(self.tokens, self.feature_layer)
            self.encoder_calls += 1
            return self.backbone.encode_images(self.pixels)

        return self._get("full", compute)

    @property
    def attention(self) -> torch.Tensor:
        """Head-averaged CLS→patch attention ``[B, A]`` (fp32, CPU)."""
        src = self.attention_source
        if src is None:
            raise RuntimeError("no attention source configured")

        def compute() -> torch.Tensor:
            if isinstance(src, ClipSelfAttention) and src.backbone.block_index(src.layer) == \
                    self.backbone.block_index(self.feature_layer):
                return src.heads_from_tokens(self.tokens).mean(1)  # reuse the feature-crop tokens
            return src([it.image for it in self.items])

        return self._get("attention", compute)

    def encode_crops(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encode preprocessed crops ``[N, 3, S, S]`` in chunks of ``view_batch``; return ``[N, D]``."""
        if not crops:
            return torch.zeros(0, self.backbone.facts.embed_dim)
        out = []
        for i in range(0, len(crops), self.view_batch):
            self.encoder_calls += 1
            out.append(self.backbone.encode_images(torch.stack(list(crops[i : i + self.view_batch]))).cpu())
        return torch.cat(out)


def topk_distribution(attention: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(topk_idx [k], softmax(topk_val / T) [k])`` for a ``[A]`` attention vector (torch.topk order)."""
    k = min(k, attention.numel())
    val, idx = torch.topk(attention.float(), k)
    return idx, torch.softmax(val / temperature, dim=-1)


def abs_geometry(
    attention: torch.Tensor,
    draws: ABSDraws | None,
    cfg: ABSConfig,
    width: int,
    height: int,
    attn_grid: tuple[int, int],
    clip_grid: tuple[int, int],
    clip_input: int,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, ABSDraws, list[views.Box], list[int], list[views.Window]]:
    """Return ``(topk_idx, topk_prob, draws, boxes, feature_centres, windows)`` for one image.

    Pass ``draws`` to inject centres and sizes (as the golden fixture does); otherwise they are
    drawn from ``rng``.
    """
    ah, aw = attn_grid
    gh, gw = clip_grid
    idx, prob = topk_distribution(attention, cfg.top_k, cfg.sample_temperature)
    if draws is None:
        if rng is None:
            raise ValueError("either draws or rng is required")
        draws = draw_abs(rng, prob.double().numpy(), cfg, width, height, gh)
    idx_np = idx.numpy()
    pix_centres = idx_np[draws.pix_pos]
    boxes = views.pixel_crop_boxes(pix_centres, draws.pix_w, draws.pix_h, width, height, ah, aw)
    feat_src = idx_np[draws.feat_pos]
    if cfg.feature_mapping == "aligned":
        feat_centres = [views.map_index_aligned(int(i), ah, aw, width, height, clip_input, gh, gw) for i in feat_src]
    else:
        feat_centres = [views.map_index_to_grid(int(i), ah, aw, gh, gw) for i in feat_src]
    windows = views.feature_windows(feat_centres, draws.feat_size, gh, gw) if gh else []
    return idx, prob, draws, boxes, feat_centres, windows


def feature_crop_tokens(tokens: torch.Tensor, windows: Sequence[views.Window], grid: tuple[int, int]) -> torch.Tensor:
    """Return the feature-crop token sequences ``[n, 1 + G*G, width]`` for one image.

    Each window of the patch grid is resized to the full grid with bicubic interpolation
    (``align_corners=False``, no antialias) and the image's unchanged CLS token is prepended;
    positional embeddings are not re-added (as the reference).

    Args:
        tokens: ``[1 + G*G, width]`` tokens entering the crop block.
        windows: half-open ``(row0, row1, col0, col1)`` windows.
        grid: (rows, cols) of the token grid.
    """
    gh, gw = grid
    cls, patches = tokens[:1], tokens[1:]
    width = tokens.shape[-1]
    grid_tokens = patches.reshape(gh, gw, width).permute(2, 0, 1).float()  # [width, G, G]
    out = []
    for r0, r1, c0, c1 in windows:
        win = grid_tokens[:, r0:r1, c0:c1].unsqueeze(0)  # [1, width, h, w]
        resized = F.interpolate(win, size=(gh, gw), mode="bicubic", align_corners=False)
        seq = resized[0].permute(1, 2, 0).reshape(gh * gw, width).to(tokens.dtype)
        out.append(torch.cat([cls, seq], dim=0))
    if not out:
        return tokens.new_zeros(0, 1 + gh * gw, width)
    return torch.stack(out)


def abs_views(
    ctx: BatchContext,
    cfg: ABSConfig,
    seed: int,
    draws: Sequence[ABSDraws | None] | None = None,
) -> list[ABSViews]:
    """Return the ABS views of every image of the batch (spec §1–§4).

    Pixel crops of all images are encoded together in chunks; feature crops run the remaining
    block(s) in one batch per image.

    Args:
        ctx: the batch.
        cfg: ABS settings.
        seed: the run seed; each image draws from ``image_rng(seed, image.key, "abs")``.
        draws: optional injected draws per image (None entries are drawn).
    """
    bb = ctx.backbone
    src = ctx.attention_source
    if src is None:
        raise RuntimeError("ABS needs an attention source")
    att = ctx.attention
    geo = []
    for b, item in enumerate(ctx.items):
        w, h = item.size
        rng = image_rng(seed, item.key, "abs")
        injected = draws[b] if draws is not None else None
        geo.append(abs_geometry(att[b], injected, cfg, w, h, src.grid, bb.facts.grid, bb.facts.image_size[0], rng))
    # pixel crops: crop the original image, then the model's own preprocessing (resize, centre crop)
    crops = [bb.preprocess(item.image.crop(box)) for item, g in zip(ctx.items, geo) for box in g[3]]
    pix_emb = ctx.encode_crops(crops)
    feat_emb: list[torch.Tensor] = []
    if cfg.feature_crops > 0:
        tokens = ctx.tokens
        for b, g in enumerate(geo):
            seqs = feature_crop_tokens(tokens[b], g[5], bb.facts.grid)
            feat_emb.append(bb.forward_from(seqs, ctx.feature_layer).cpu())
    full = ctx.full.cpu()
    out, offset = [], 0
    for b, (idx, prob, d, boxes, centres, windows) in enumerate(geo):
        parts = []
        if cfg.feature_crops > 0:
            parts.append(feat_emb[b])
        parts.append(pix_emb[offset : offset + len(boxes)])
        offset += len(boxes)
        out.append(ABSViews(att[b], idx, prob, d, boxes, windows, centres, torch.cat(parts), full[b]))
    return out
