"""Image side of ABS: image → attention → views → embeddings.

:class:`BatchContext` computes, lazily and at most once per batch, the things several methods
share (full-image pixels and embedding, the tokens entering the feature-crop block, the
attention map). :func:`abs_views` turns one image's attention and draws into pixel boxes and
token windows (via the pure functions in :mod:`absclip.views`) and embeds them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import views
from .attention import AttentionSource, ClipSelfAttention
from .config import ABSConfig
from .data import ImageItem
from .models import ClipBackbone
from .sampling import ABSDraws, draw_abs, image_rng
from .timing import NULL_TIMER, StageTimer


def default_view_batch(device: torch.device) -> int:
    """Return the default number of views per image-encoder call on ``device``.

    CUDA: 256 (a GPU needs large batches). CPU: two views per torch thread, 4 to 32. A ViT-B/16
    tower ran at the same images/s for 4 to 32 views per call on the project's 2-core CPU
    (docs/benchmarks.md), and small batches keep ABS's peak memory low (~90 MB less at 4 than 8).
    """
    if torch.device(device).type == "cuda":
        return 256
    return max(4, min(32, 2 * torch.get_num_threads()))


def default_crop_workers() -> int:
    """Return the default number of threads cutting pixel crops: one per CPU core, at most 4."""
    return min(4, os.cpu_count() or 1)


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
        crop_workers: threads that cut and preprocess pixel crops (PIL releases the GIL);
            0 = in the calling thread. Never changes results.
        timer: stage timer (the benchmark's); the default records nothing.
    """

    items: list[ImageItem]
    backbone: ClipBackbone
    attention_source: AttentionSource | None = None
    feature_layer: int = -1
    view_batch: int = 256
    _cache: dict[str, Any] = field(default_factory=dict)
    encoder_calls: int = 0
    crop_workers: int = 0
    timer: StageTimer = NULL_TIMER
    feature_crops_encoded: int = 0

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

    def encode_crops(self, crops: Sequence[torch.Tensor], keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode preprocessed crops ``[N, 3, S, S]`` in chunks of ``view_batch``; return ``[N, D]``.

        ``keep`` (``[N, k]`` patch indices) drops all other patch tokens (ABS fast mode only).
        """
        if not crops:
            return torch.zeros(0, self.backbone.facts.embed_dim)
        out = []
        for i in range(0, len(crops), self.view_batch):
            self.encoder_calls += 1
            px = torch.stack(list(crops[i : i + self.view_batch]))
            if keep is None:
                out.append(self.backbone.encode_images(px).cpu())
            else:
                out.append(self.backbone.encode_images_dropped(px, keep[i : i + self.view_batch]).cpu())
        return torch.cat(out)

    def encode_crop_jobs(self, jobs: Sequence[tuple[ImageItem, views.Box]],
                         keep: torch.Tensor | None = None) -> torch.Tensor:
        """Crop, preprocess and encode ``(image, box)`` pairs ``view_batch`` at a time; return ``[N, D]``.

        Only one chunk of crops is held in memory at a time. Crop time is recorded under the timer's
        "crop geometry + resize" stage and encoding under "image encoding"; ``keep`` as in
        :meth:`encode_crops`.
        """
        if not jobs:
            return torch.zeros(0, self.backbone.facts.embed_dim)
        out = []
        for i in range(0, len(jobs), self.view_batch):
            with self.timer("crop geometry + resize"):
                px = self.crop_pixels(jobs[i : i + self.view_batch])
            with self.timer("image encoding"):
                out.append(self.encode_crops(px, None if keep is None else keep[i : i + self.view_batch]))
        return torch.cat(out)

    def crop_pixels(self, jobs: Sequence[tuple[ImageItem, views.Box]]) -> list[torch.Tensor]:
        """Return the preprocessed pixel crops ``[3, S, S]`` for ``(image, box)`` pairs, in order.

        Each crop is ``PIL.Image.crop(box)`` followed by the model's own preprocessing, exactly as
        the reference. When that preprocessing is PIL steps + ``ToTensor`` + ``Normalize`` (open_clip's),
        the PIL steps run per crop (in a thread pool when ``crop_workers > 0``; PIL releases the
        GIL) and the tensor conversion and normalisation run once for all crops: the same
        element-wise arithmetic, so the pixels are bit-identical, without per-crop tensor ops.
        """
        pre = self.backbone.preprocess
        split = split_preprocess(pre)
        first = split[0] if split is not None else pre

        def one(job: tuple[ImageItem, views.Box]) -> Any:
            return first(job[0].image.crop(job[1]))

        if self.crop_workers > 0 and len(jobs) > 1:
            with ThreadPoolExecutor(self.crop_workers) as pool:
                outs = list(pool.map(one, jobs))
        else:
            outs = [one(j) for j in jobs]
        if split is None or not outs:
            return outs
        arrays = [np.asarray(im, dtype=np.uint8) for im in outs]
        if any(a.shape != arrays[0].shape or a.ndim != 3 for a in arrays):
            return [pre(job[0].image.crop(job[1])) for job in jobs]  # unusual transform output: per crop
        _, mean, std = split
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
        return list(x.sub_(mean).div_(std))


def split_preprocess(preprocess: Any) -> tuple[Callable[[Any], Any], torch.Tensor, torch.Tensor] | None:
    """Split a torchvision ``Compose`` ending in ``ToTensor`` + ``Normalize`` into its PIL part and mean/std.

    Returns ``(pil_steps, mean [C,1,1], std [C,1,1])`` or None when the transform has another
    shape (then it is applied as a whole).
    """
    steps = getattr(preprocess, "transforms", None)
    if not isinstance(steps, (list, tuple)) or len(steps) < 2:
        return None
    to_tensor, norm = steps[-2], steps[-1]
    from torchvision.transforms import Compose, Normalize, ToTensor

    if not isinstance(to_tensor, ToTensor) or not isinstance(norm, Normalize):
        return None
    mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.as_tensor(norm.std, dtype=torch.float32).view(-1, 1, 1)
    return Compose(list(steps[:-2])), mean, std


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


def batched_feature_crop_tokens(
    tokens: torch.Tensor,
    crops: Sequence[tuple[int, views.Window]],
    grid: tuple[int, int],
) -> torch.Tensor:
    """Return feature-crop token sequences ``[n, 1 + G*G, width]`` for ``(image, window)`` pairs.

    The same computation as :func:`feature_crop_tokens` (bicubic, ``align_corners=False``, the
    image's unchanged CLS token prepended), with one ``F.interpolate`` call per window shape
    instead of one per window.

    Args:
        tokens: ``[B, 1 + G*G, width]`` tokens entering the crop block.
        crops: ``(b, (row0, row1, col0, col1))`` pairs: image index into ``tokens`` and window.
        grid: (rows, cols) of the token grid.
    """
    gh, gw = grid
    b, _, width = tokens.shape
    out = tokens.new_empty(len(crops), 1 + gh * gw, width)
    if not crops:
        return out
    grid_tokens = tokens[:, 1:].reshape(b, gh, gw, width).permute(0, 3, 1, 2).float()  # [B, width, G, G]
    by_shape: dict[tuple[int, int], list[int]] = {}
    for n, (_, (r0, r1, c0, c1)) in enumerate(crops):
        by_shape.setdefault((r1 - r0, c1 - c0), []).append(n)
    for rows in by_shape.values():
        wins = torch.stack([grid_tokens[crops[n][0], :, crops[n][1][0] : crops[n][1][1],
                                        crops[n][1][2] : crops[n][1][3]] for n in rows])  # [k, width, h, w]
        resized = F.interpolate(wins, size=(gh, gw), mode="bicubic", align_corners=False)
        idx = torch.tensor(rows)
        out[idx, 1:] = resized.permute(0, 2, 3, 1).reshape(len(rows), gh * gw, width).to(tokens.dtype)
        out[idx, 0] = tokens[torch.tensor([crops[n][0] for n in rows]), 0]
    return out


def encode_feature_crops(ctx: BatchContext, windows: Sequence[Sequence[views.Window]]) -> list[torch.Tensor]:
    """Return each image's feature-crop embeddings ``[n_b, D]`` (normalised, fp32, CPU).

    Identical windows of one image give identical views, so each distinct ``(image, window)`` is
    computed once (the sampler draws 50 centres with replacement from 20 cells and 3 odd sizes,
    so many repeat) and shared; the results are the same as computing every view. All images'
    crops run the remaining block(s) together in chunks of ``ctx.view_batch``.

    Args:
        ctx: the batch (its ``tokens`` are used).
        windows: per image, the half-open token windows in view order.
    """
    bb = ctx.backbone
    index: dict[tuple[int, views.Window], int] = {}
    for b, ws in enumerate(windows):
        for w in ws:
            index.setdefault((b, tuple(w)), len(index))
    unique = list(index)
    dim = bb.facts.embed_dim
    if not unique:
        return [torch.zeros(0, dim) for _ in windows]
    tokens = ctx.tokens
    out = []
    for i in range(0, len(unique), ctx.view_batch):
        seqs = batched_feature_crop_tokens(tokens, unique[i : i + ctx.view_batch], bb.facts.grid)
        out.append(bb.forward_from(seqs, ctx.feature_layer).cpu())
    ctx.feature_crops_encoded += len(unique)
    emb = torch.cat(out)
    return [emb[torch.tensor([index[(b, tuple(w))] for w in ws], dtype=torch.long)] if ws else emb[:0]
            for b, ws in enumerate(windows)]


def token_keep_indices(
    attention: torch.Tensor,
    box: views.Box,
    size: tuple[int, int],
    attn_grid: tuple[int, int],
    clip_grid: tuple[int, int],
    keep: float,
) -> torch.Tensor:
    """Return the ``k = max(1, round(keep * G*G))`` patch indices of a pixel crop to keep (ascending).

    Tokens are ranked by the image's attention at their centre (:func:`views.crop_token_cells`);
    ties keep the lower index. ABS fast mode only.
    """
    gh, gw = clip_grid
    cells = views.crop_token_cells(box, size[0], size[1], gh, gw, attn_grid[0], attn_grid[1])
    scores = attention.float()[torch.tensor(cells)]
    k = max(1, round(keep * gh * gw))
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return order.sort().values


def abs_views(
    ctx: BatchContext,
    cfg: ABSConfig,
    seed: int,
    draws: Sequence[ABSDraws | None] | None = None,
) -> list[ABSViews]:
    """Return the ABS views of every image of the batch (spec §1–§4).

    One attention pass per image; pixel crops of all images are encoded together in chunks of
    ``ctx.view_batch``; the distinct feature crops of all images run the remaining block(s)
    together (:func:`encode_feature_crops`); the full-image embedding reuses the feature-crop
    tokens. Stages are timed with ``ctx.timer``.

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
    timer = ctx.timer
    with timer("attention"):
        att = ctx.attention
    with timer("crop geometry + resize"):
        geo = []
        for b, item in enumerate(ctx.items):
            w, h = item.size
            rng = image_rng(seed, item.key, "abs")
            injected = draws[b] if draws is not None else None
            geo.append(abs_geometry(att[b], injected, cfg, w, h, src.grid, bb.facts.grid, bb.facts.image_size[0],
                                    rng))
        # pixel crops: crop the original image, then the model's own preprocessing (resize, centre crop)
        jobs = [(item, box) for item, g in zip(ctx.items, geo) for box in g[3]]
        keep = None
        if cfg.token_keep < 1 and jobs:
            keep = torch.stack([token_keep_indices(att[b], box, item.size, src.grid, bb.facts.grid, cfg.token_keep)
                                for b, (item, g) in enumerate(zip(ctx.items, geo)) for box in g[3]])
    pix_emb = ctx.encode_crop_jobs(jobs, keep)  # crops made and encoded one view batch at a time
    with timer("image encoding"):
        if cfg.feature_crops > 0:
            ctx.tokens  # noqa: B018 - the tokens entering the crop block (shared with the full image)
    feat_emb: list[torch.Tensor] = []
    if cfg.feature_crops > 0:
        with timer("feature crops"):
            feat_emb = encode_feature_crops(ctx, [g[5] for g in geo])
    with timer("image encoding"):
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
