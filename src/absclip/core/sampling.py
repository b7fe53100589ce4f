"""The one source of randomness: a generator per image, seeded from (seed, image identity, purpose).

Because every image gets its own generator, predictions do not depend on batch size, input
order or worker count. The draws are returned as plain integer arrays so the geometry in
:mod:`absclip.core.views` stays pure and can be fed injected values (as the golden fixture does)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from absclip.core import views
from absclip.core.settings import ABSConfig, WCAConfig


def image_rng(seed: int, image_key: str, purpose: str) -> np.random.Generator:
    """Return a numpy generator seeded from ``(seed, image_key, purpose)`` (stable across runs and platforms)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{image_key}\x00{purpose}".encode()).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32).tolist())


@dataclass(frozen=True)
class ABSDraws:
    """Random draws of ABS for one image, as positions into the top-k list and integer sizes.

    Attributes:
        pix_pos: ``[Np]`` positions (0..k-1) into the top-k attention cells, one per pixel crop.
        pix_w: ``[Np]`` crop widths in pixels; ``pix_h``: ``[Np]`` crop heights.
        feat_pos: ``[Nf]`` positions into the top-k cells, one per feature crop.
        feat_size: ``[Nf]`` window sides (before the odd-size rounding of :func:`views.feature_window`).
    """

    pix_pos: np.ndarray
    pix_w: np.ndarray
    pix_h: np.ndarray
    feat_pos: np.ndarray
    feat_size: np.ndarray


def draw_abs(
    rng: np.random.Generator,
    topk_prob: np.ndarray,
    cfg: ABSConfig,
    width: int,
    height: int,
    clip_grid: int,
) -> ABSDraws:
    """Draw ABS centres (with replacement, from ``topk_prob``) and crop sizes for one image.

    ``centres="independent"`` draws pixel and feature centres separately (reference code);
    ``"shared"`` reuses the pixel centres for the feature crops (cycled if the counts differ) and
    derives each window side from the matching pixel crop's width ratio (paper Algorithm 1).
    """
    p = np.asarray(topk_prob, dtype=np.float64)
    p = p / p.sum()
    k = len(p)
    wlo, whi = views.ratio_bounds(width, *cfg.pixel_crop_ratio)
    hlo, hhi = views.ratio_bounds(height, *cfg.pixel_crop_ratio)
    clo, chi = views.window_bounds(clip_grid, *cfg.feature_crop_ratio)
    npix, nfeat = cfg.pixel_crops, cfg.feature_crops
    pix_pos = rng.choice(k, size=npix, p=p)
    pix_w = rng.integers(wlo, whi + 1, size=npix)
    pix_h = rng.integers(hlo, hhi + 1, size=npix)
    if cfg.centres == "shared" and npix > 0:
        idx = np.arange(nfeat) % npix
        feat_pos = pix_pos[idx]
        ratio = pix_w[idx] / width
        feat_size = np.clip((ratio * clip_grid).astype(np.int64), clo, chi)
    else:
        feat_pos = rng.choice(k, size=nfeat, p=p)
        feat_size = rng.integers(clo, chi + 1, size=nfeat)
    return ABSDraws(pix_pos.astype(np.int64), pix_w.astype(np.int64), pix_h.astype(np.int64),
                    feat_pos.astype(np.int64), feat_size.astype(np.int64))


def draw_wca_boxes(rng: np.random.Generator, cfg: WCAConfig, width: int, height: int) -> list[views.Box]:
    """Return WCA's random square crops: side ``U(min_ratio, max_ratio) * min(W, H)``, uniform position."""
    short = min(width, height)
    boxes = []
    for _ in range(cfg.crops):
        side = max(1, int(rng.uniform(cfg.min_ratio, cfg.max_ratio) * short))
        x0 = int(rng.integers(0, width - min(side, width) + 1))
        y0 = int(rng.integers(0, height - min(side, height) + 1))
        boxes.append(views.square_crop_box(x0, y0, side, width, height))
    return boxes
