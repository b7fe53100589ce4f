"""Shared per-batch state (:class:`BatchContext`): pixels, tokens, full-image embeddings, attention, crops.

:class:`BatchContext` computes, lazily and at most once per batch, the things several methods
share (full-image pixels and embedding, the tokens entering the feature-crop block, the
attention map). :func:`abs_views` turns one image's attention and draws into pixel boxes and
token windows (via the pure functions in :mod:`absclip.core.views`) and embeds them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from absclip.attention.sources import AttentionSource, ClipSelfAttention
from absclip.backbones.base import Backbone
from absclip.core import augment, views
from absclip.core.timer import NULL_TIMER, StageTimer
from absclip.io.images import ImageItem


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
    backbone: Backbone
    attention_source: AttentionSource | None = None
    feature_layer: int = -1
    view_batch: int = 256
    _cache: dict[str, Any] = field(default_factory=dict)
    encoder_calls: int = 0
    crop_workers: int = 0
    timer: StageTimer = NULL_TIMER
    feature_crops_encoded: int = 0
    #: per-image random draws computed by an earlier stage, by method (``{"abs": [ABSDraws | None, ...]}``)
    draws: dict[str, Sequence[Any]] = field(default_factory=dict)

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

    def augmented(self, seed: int, views_per_image: int, scale: tuple[float, float] = augment.DEFAULT_SCALE,
                  ratio: tuple[float, float] = augment.DEFAULT_RATIO, flip_p: float = 0.5) -> list[torch.Tensor]:
        """Return each image's view embeddings ``[1 + n, D]``: the full image, then ``n`` augmented views.

        The views are torchvision ``RandomResizedCrop(S, scale, ratio)`` + ``RandomHorizontalFlip(flip_p)``
        of the original image (``S`` the encoder's input side), drawn from the image's own generator
        ``image_rng(seed, key, "augment")`` (:mod:`absclip.core.augment`), so methods asking for the
        same views (ZERO and MTA: 63) share one encoding per batch.
        """
        key = f"augmented:{seed}:{views_per_image}:{tuple(scale)}:{tuple(ratio)}:{flip_p}"

        def compute() -> list[torch.Tensor]:
            from absclip.core.sampling import image_rng

            jobs, counts = [], []
            for item in self.items:
                rng = image_rng(seed, item.key, "augment")
                crops = augment.random_resized_crop_boxes(rng, *item.size, views_per_image, scale, ratio)
                flipped = augment.flips(rng, views_per_image, flip_p)
                jobs += [(item, c, f) for c, f in zip(crops, flipped, strict=True)]
                counts.append(len(crops))
            emb = torch.zeros(0, self.backbone.facts.embed_dim)
            chunks = []
            for i in range(0, len(jobs), self.view_batch):
                with self.timer("crop geometry + resize"):
                    px = self.augmented_pixels(jobs[i : i + self.view_batch])
                with self.timer("image encoding"):
                    chunks.append(self.encode_crops(px))
            if chunks:
                emb = torch.cat(chunks)
            full = self.full.cpu()
            out, off = [], 0
            for b, n in enumerate(counts):  # fp32 on the CPU: the methods' maths (voting, MeanShift) is not fp16's
                out.append(torch.cat([full[b : b + 1].float(), emb[off : off + n].float()]))
                off += n
            return out

        return self._get(key, compute)

    def augmented_pixels(self, jobs: Sequence[tuple[ImageItem, augment.CropBox, bool]]) -> list[torch.Tensor]:
        """Return preprocessed augmented views ``[3, S, S]`` for ``(image, (left, top, w, h), flip)`` jobs.

        As torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip`` on a PIL image: crop, bilinear
        resize to ``S`` × ``S``, flip; then the model's tensor conversion and normalisation (its resize
        and centre crop are no-ops on an ``S`` × ``S`` image and are skipped when they can be split off).
        """
        from PIL import Image

        h, w = self.backbone.facts.image_size
        pre = self.backbone.preprocess
        split = split_preprocess(pre)

        def one(job: tuple[ImageItem, augment.CropBox, bool]) -> Any:
            im = job[0].image.crop(augment.pil_box(job[1])).resize((w, h), Image.BILINEAR)
            return im.transpose(Image.FLIP_LEFT_RIGHT) if job[2] else im

        if self.crop_workers > 0 and len(jobs) > 1:
            with ThreadPoolExecutor(self.crop_workers) as pool:
                outs = list(pool.map(one, jobs))
        else:
            outs = [one(j) for j in jobs]
        if split is None:
            return [pre(im) for im in outs]
        _, mean, std = split
        x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in outs])).permute(0, 3, 1, 2)
        return list(x.contiguous().to(torch.float32).div(255).sub_(mean).div_(std))

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
