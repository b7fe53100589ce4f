"""Augmentation parameters of the test-time view methods (AWT, ZERO, MTA): pure numpy, no torch.

The draws follow torchvision's ``RandomResizedCrop.get_params`` and ``RandomHorizontalFlip``
(the transforms the authors' code uses), but take a numpy generator from
:func:`absclip.core.sampling.image_rng`, so every image's views depend only on (seed, image, purpose).
Producing the pixels from these parameters is :meth:`absclip.methods.batch.BatchContext.crop_pixels`."""

from __future__ import annotations

import math

import numpy as np


def random_resized_crop_boxes(
    rng: np.random.Generator,
    width: int,
    height: int,
    n: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> list[tuple[int, int, int, int]]:
    """Return ``n`` random resized crops ``(left, top, w, h)`` of a ``width`` x ``height`` image.

    torchvision's algorithm: up to 10 tries of an area fraction ``U(scale)`` and a log-uniform
    aspect ratio ``w/h`` in ``ratio``, rounded to integers (Python's ``round``); the first that fits
    is placed uniformly; when none fits, the centre crop of the largest box within ``ratio``.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    out = []
    for _ in range(n):
        for _ in range(10):
            target = area * float(rng.uniform(scale[0], scale[1]))
            aspect = math.exp(float(rng.uniform(log_lo, log_hi)))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                out.append((left, top, w, h))
                break
        else:  # torchvision's fallback: centre crop, clamped to the ratio range
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                w, h = int(round(height * max(ratio))), height
            else:
                w, h = width, height
            out.append(((width - w) // 2, (height - h) // 2, w, h))
    return out


def flips(rng: np.random.Generator, n: int, p: float = 0.5) -> list[bool]:
    """Return ``n`` horizontal-flip decisions, each true with probability ``p`` (``RandomHorizontalFlip``)."""
    return [bool(x) for x in rng.random(n) < p]
