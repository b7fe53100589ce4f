"""ABS geometry from an attention map: top-k sampling distribution, crop boxes, token windows, feature-crop tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from absclip.core import views
from absclip.core.sampling import ABSDraws, draw_abs
from absclip.core.settings import ABSConfig


def topk_distribution(attention: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(topk_idx [k], softmax(topk_val / T) [k])`` for a ``[A]`` attention vector (torch.topk order)."""
    k = min(k, attention.numel())
    val, idx = torch.topk(attention.float(), k)
    return idx, torch.softmax(val / temperature, dim=-1)


@dataclass(frozen=True)
class ABSGeometry:
    """Where ABS looks in one image, before any pixel is cropped or token encoded.

    Attributes:
        topk_idx: ``[k]`` attention-grid indices, descending attention (``torch.topk`` order).
        topk_prob: ``[k]`` the sampling distribution ``softmax(a_topk / T)`` over them.
        draws: the random draws used (positions in the top-k list, crop sizes).
        boxes: pixel-crop boxes, half-open, in original pixels.
        feat_centres: CLIP-grid indices of the feature-crop centres.
        windows: feature windows, half-open ``(row0, row1, col0, col1)`` on the CLIP token grid.
    """

    topk_idx: torch.Tensor
    topk_prob: torch.Tensor
    draws: ABSDraws
    boxes: list[views.Box]
    feat_centres: list[int]
    windows: list[views.Window]


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
    *,
    squash: bool = False,
) -> ABSGeometry:
    """Return the :class:`ABSGeometry` of one image: top-k distribution, draws, boxes, centres, windows.

    Pass ``draws`` to inject centres and sizes (as the golden fixture does); otherwise they are
    drawn from ``rng``. ``squash``: the CLIP preprocessing resizes without a centre crop (SigLIP;
    only the "aligned" mapping reads it).
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
        feat_centres = [views.map_index_aligned(int(i), ah, aw, width, height, clip_input, gh, gw, squash=squash)
                        for i in feat_src]
    else:
        feat_centres = [views.map_index_to_grid(int(i), ah, aw, gh, gw) for i in feat_src]
    windows = views.feature_windows(feat_centres, draws.feat_size, gh, gw) if gh else []
    return ABSGeometry(idx, prob, draws, boxes, feat_centres, windows)


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
