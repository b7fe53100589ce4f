"""Parallel image decoding: a torch ``DataLoader`` whose workers read and decode files into :class:`ImageItem`.

Decoding (file read, JPEG/PNG decode, EXIF rotation, RGB conversion, the content key) runs in
worker processes while the main process runs the models, so it overlaps with inference. Items
come back in input order and each image's crops are seeded from its content, so results never
depend on the number of workers or the batch size."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch.utils.data

from absclip.errors import AbsclipError
from absclip.io.images import DEFAULT_MAX_PIXELS, ImageItem, make_item


def default_workers() -> int:
    """Return the default number of decode workers: one per spare CPU core, at most 4 (0 on a 1-core machine)."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class _DecodeDataset(torch.utils.data.Dataset):
    """Decodes one file per index; errors are returned (not raised) so their one-line message survives."""

    def __init__(self, sources: Sequence[str | os.PathLike], max_pixels: int | None) -> None:
        self.sources = list(sources)
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> ImageItem | AbsclipError:
        try:
            return make_item(self.sources[i], max_pixels=self.max_pixels)
        except AbsclipError as e:
            return e


def _as_list(batch: list) -> list:
    return batch


def iter_image_batches(
    sources: Sequence[str | os.PathLike],
    batch_size: int,
    *,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[list[ImageItem]]:
    """Yield decoded images in input order, ``batch_size`` at a time.

    Args:
        sources: image file paths.
        batch_size: images per yielded list (the last one may be shorter).
        workers: decode worker processes (None: :func:`default_workers`; 0: decode in this process).
        max_pixels: decompression-bomb guard, as :func:`absclip.io.images.load_image`.

    Raises:
        BadImageError: an unreadable image (the first one met, in order).
    """
    if batch_size < 1:
        raise AbsclipError("batch_size must be at least 1.")
    n = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(sources, max_pixels), batch_size=batch_size, shuffle=False, num_workers=n,
        collate_fn=_as_list, prefetch_factor=2 if n > 0 else None,
    )
    for batch in loader:
        for it in batch:
            if isinstance(it, AbsclipError):
                raise it
        yield batch
