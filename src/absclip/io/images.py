"""Images: decoding to RGB with one-sentence errors, content keys, :class:`ImageItem`."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from absclip.core.settings import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS  # torch- and PIL-free home
from absclip.errors import BadImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def to_rgb(im: Image.Image) -> Image.Image:
    """Return an RGB copy of ``im``: first frame, EXIF orientation applied, 16-bit scaled, alpha dropped.

    Alpha is dropped as ``convert("RGB")`` does (what CLIP's reference preprocessing does), so
    results match the reference on RGBA files.
    """
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        im = Image.fromarray(((arr - lo) / (hi - lo or 1) * 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def load_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return the image at ``path`` as RGB; raise :class:`BadImageError` with one sentence if it can't be read.

    Args:
        path: an image file.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard); None = no limit.
    """
    return decode_image(read_image_bytes(path), path, max_pixels=max_pixels)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """Return the bytes of the local file ``path``; raise :class:`BadImageError` (one sentence) if unreadable."""
    p = Path(path)
    if not p.exists():
        if "#" in str(path):  # a shard member or dataset row (absclip.io.sources), shown again by a report
            from absclip.io.sources import stored_sample_bytes

            try:
                data = stored_sample_bytes(str(path))
            except Exception:  # noqa: BLE001 - any failure here is just "no such image"
                data = None
            if data is not None:
                return data
        raise BadImageError(f"{p}: no such file.")
    if p.is_dir():
        raise BadImageError(f"{p}: is a directory, not an image.")
    try:
        with open(p, "rb") as f:
            return f.read()
    except PermissionError as e:
        raise BadImageError(f"{p}: permission denied.") from e
    except OSError as e:
        raise BadImageError(f"{p}: cannot be read ({e.strerror}).") from e


def decode_image(data: bytes, name: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return the encoded image ``data`` decoded to RGB (see :func:`to_rgb`).

    Args:
        data: the file's bytes.
        name: the file's name or URI, used in error messages.
        max_pixels: refuse images with more pixels than this; None = no limit.

    Raises:
        BadImageError: empty, unrecognised, corrupt or too large, in one sentence naming ``name``.
    """
    p = Path(name) if "://" not in str(name) else name
    if not data:
        raise BadImageError(f"{p}: the file is empty (0 bytes).")
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise BadImageError(
                    f"{p}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (raise it with `max_pixels`)."
                )
            im.load()
            return to_rgb(im)
    except BadImageError:
        raise
    except UnidentifiedImageError as e:
        raise BadImageError(f"{p}: not a recognised image file.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(f"{p}: the image data is corrupt or truncated ({str(e).splitlines()[0]}).") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old


def image_key(im: Image.Image) -> str:
    """Return the identity of an image's content: sha256 of its size and RGB pixels (first 32 hex digits).

    Seeding randomness from content (not from the path, the batch or the position) makes
    predictions independent of batch size, order, worker count and file names.
    """
    h = hashlib.sha256(f"{im.width}x{im.height}:{im.mode}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()[:32]


@dataclass
class ImageItem:
    """One decoded image: RGB pixels, content key and where it came from."""

    image: Image.Image
    key: str
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) in pixels."""
        return self.image.size


def array_image(arr: np.ndarray) -> Image.Image:
    """Return a PIL image of a numpy array: ``[H, W, 3]`` RGB, ``[H, W, 4]`` RGBA, ``[H, W]`` or ``[H, W, 1]`` gray.

    Raises:
        BadImageError: another shape, or values that are not uint8 (0..255).
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype != np.uint8:
        raise BadImageError(f"a numpy image must be uint8 (0..255), got dtype {a.dtype}.")
    if a.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(a), "L")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA")
    raise BadImageError(f"a numpy image must be [H, W, 3] (RGB), [H, W, 4] (RGBA) or [H, W] (gray), got shape "
                        f"{list(a.shape)}.")


def make_item(src: str | os.PathLike | Image.Image | np.ndarray | bytes, *,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> ImageItem:
    """Return an :class:`ImageItem` from a path, a PIL image, a numpy array (HWC uint8, RGB or gray) or encoded bytes.

    The content key depends on the pixels only: a file, its PIL image and its numpy array give the
    same item. ``name`` is the source shown for images that are not files (default ``<PIL.Image>``,
    ``<numpy.ndarray>``, ``<bytes>``).
    """
    if isinstance(src, Image.Image):
        im = to_rgb(src)
        return ImageItem(im, image_key(im), name or "<PIL.Image>")
    if isinstance(src, np.ndarray):
        im = to_rgb(array_image(src))
        return ImageItem(im, image_key(im), name or "<numpy.ndarray>")
    if isinstance(src, (bytes, bytearray, memoryview)):
        im = decode_image(bytes(src), name or "<bytes>", max_pixels=max_pixels)
        return ImageItem(im, image_key(im), name or "<bytes>")
    im = load_image(src, max_pixels=max_pixels)
    return ImageItem(im, image_key(im), str(src))
