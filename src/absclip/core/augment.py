"""Augmented views (random resized crops and horizontal flips) as pure parameter draws.

The training-free test-time peers of ABS (AWT, ZERO, MTA) classify the image together with
torchvision ``RandomResizedCrop`` + ``RandomHorizontalFlip`` views. Here only the *parameters* of
those views are drawn, from a numpy generator given by the caller (the per-image generator of
:func:`absclip.core.sampling.image_rng`), so that views never depend on batch size, order or
workers; cutting the pixels is :meth:`absclip.methods.batch.BatchContext.augmented`.

The crop algorithm is torchvision's ``RandomResizedCrop.get_params`` (10 tries, then the centre
crop fallback) with numpy float64 draws instead of torch float32 ones: the same distribution,
not the same stream of numbers.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from absclip.errors import AbsclipError

if TYPE_CHECKING:  # the CLI imports method settings (and so this module) to build its parser: no numpy there
    import numpy as np

#: torchvision's ``RandomResizedCrop`` defaults: area fraction and aspect-ratio ranges
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: tries before the centre-crop fallback (torchvision's constant)
TRIES = 10

CropBox = tuple[int, int, int, int]  # (left, top, w, h)


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int,
                            scale: tuple[float, float] = DEFAULT_SCALE,
                            ratio: tuple[float, float] = DEFAULT_RATIO) -> CropBox:
    """Return one ``(left, top, w, h)`` crop of a ``width`` × ``height`` image, as torchvision draws it.

    An area fraction ``U(scale)`` and a log-uniform aspect ratio in ``ratio`` are drawn up to 10
    times until the rounded box fits; its position is then uniform. Otherwise the fallback is the
    largest centred box whose aspect ratio is clamped to ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(TRIES):
        target_area = area * float(rng.uniform(scale[0], scale[1]))
        aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop_boxes(rng: np.random.Generator, width: int, height: int, n: int,
                              scale: tuple[float, float] = DEFAULT_SCALE,
                              ratio: tuple[float, float] = DEFAULT_RATIO) -> list[CropBox]:
    """Return ``n`` crops ``(left, top, w, h)`` drawn one after another (:func:`random_resized_crop_box`)."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return [random_resized_crop_box(rng, width, height, scale, ratio) for _ in range(int(n))]


def flips(rng: np.random.Generator, n: int, p: float = 0.5) -> list[bool]:
    """Return ``n`` horizontal-flip decisions, each true with probability ``p`` (``RandomHorizontalFlip``)."""
    return [bool(x) for x in rng.random(int(n)) < p]


def pil_box(crop: CropBox) -> tuple[int, int, int, int]:
    """Return the half-open ``(x0, y0, x1, y1)`` box ``PIL.Image.crop`` takes for a ``(left, top, w, h)`` crop."""
    left, top, w, h = crop
    return left, top, left + w, top + h


def check_view_settings(views: int, scale: tuple[float, float], ratio: tuple[float, float], flip_p: float) -> None:
    """Raise :class:`AbsclipError` for view settings that mean nothing: fewer than one view, empty ranges."""
    if views < 1:
        raise AbsclipError(f"views must be at least 1 (the original image), got {views}.")
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise AbsclipError(f"crop scale must satisfy 0 < lo <= hi <= 1 and ratio 0 < lo <= hi; got {scale} and "
                           f"{ratio}.")
    if not 0 <= flip_p <= 1:
        raise AbsclipError(f"flip_p must be in [0, 1], got {flip_p}.")
