"""Images and labelled data sets: decoding, image identity, folders and CSV/JSONL listings."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import AbsclipError, BadImageError
from .text import ClassList

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit


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
                    f"{p}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (raise it with --max-pixels)."
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


def make_item(src: str | os.PathLike | Image.Image, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageItem:
    """Return an :class:`ImageItem` from a path or a PIL image."""
    if isinstance(src, Image.Image):
        im = to_rgb(src)
        return ImageItem(im, image_key(im), "<PIL.Image>")
    im = load_image(src, max_pixels=max_pixels)
    return ImageItem(im, image_key(im), str(src))


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Return the image files under ``directory`` (recursive, sorted)."""
    d = Path(directory)
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class Sample:
    """One evaluation sample: image path and label index (``-1`` when unlabelled)."""

    path: str
    label: int


LISTING_NAMES = ("labels.csv", "labels.tsv", "labels.jsonl")  # a folder's own listing
IMAGE_COLUMNS = ("path", "file", "filepath", "filename", "image", "image_path")
LABEL_COLUMNS = ("label", "target", "class_index", "label_index", "imagenet_index", "class", "classname",
                 "class_name", "clip_name")


def _label_of(value: str, classes: ClassList, where: str) -> int:
    value = str(value).strip()
    if value.lstrip("-").isdigit():
        i = int(value)
        if not 0 <= i < len(classes):
            raise AbsclipError(f"{where}: label index {i} is outside 0..{len(classes) - 1}.")
        return i
    try:
        return classes.index(value)
    except AbsclipError as e:
        raise AbsclipError(f"{where}: {e}") from e


def load_samples(data: str | os.PathLike, classes: ClassList, *, image_column: str | None = None,
                 label_column: str | None = None) -> list[Sample]:
    """Return the labelled samples of a data set.

    ``data`` is one of:

    * a CSV/TSV/JSONL listing with an image column (``path``/``file``/...; relative paths are
      resolved against the listing's folder) and a label column (an index into ``classes`` or a
      class name): ``label``/``target``/``imagenet_index``/``class``/...;
    * a folder holding ``labels.csv`` (such a listing);
    * an ImageFolder-style folder ``DIR/<class name>/*.jpg``.

    Raises:
        AbsclipError: unreadable listing, unknown labels, no images.
    """
    p = Path(data)
    if not p.exists():
        raise AbsclipError(f"Data path {p} does not exist.")
    if p.is_dir():
        listing = next((p / n for n in LISTING_NAMES if (p / n).is_file()), None)
        if listing is not None:
            return _load_listing(listing, classes, image_column, label_column)
        subdirs = sorted(d for d in p.iterdir() if d.is_dir())
        if not subdirs:
            raise AbsclipError(f"{p} has no labels.csv and no class sub-folders; cannot tell the labels.")
        out = []
        for d in subdirs:
            label = _label_of(d.name, classes, f"folder {d.name}")
            out += [Sample(str(f), label) for f in list_images(d)]
        if not out:
            raise AbsclipError(f"No images found under {p}.")
        return out
    return _load_listing(p, classes, image_column, label_column)


def _read_rows(path: Path) -> list[dict]:
    """Return the rows of a CSV/TSV/JSONL listing as dicts (raises :class:`AbsclipError` when unreadable or empty)."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise AbsclipError(f"{path}:{n} is not valid JSON ({e.msg}).") from e
    else:
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    if not rows:
        raise AbsclipError(f"The listing {path} has no rows.")
    return rows


def listing_columns(cols: Sequence[str], where: str, image_column: str | None = None,
                    label_column: str | None = None, *, labelled: bool = True) -> tuple[str, str | None]:
    """Return ``(image column, label column)`` of a listing with columns ``cols`` (label None when unlabelled).

    Raises:
        AbsclipError: no image column, or no label column when ``labelled``.
    """
    icol = image_column or next((c for c in IMAGE_COLUMNS if c in cols), None)
    lcol = label_column or next((c for c in LABEL_COLUMNS if c in cols), None)
    if icol is None or icol not in cols:
        raise AbsclipError(f"{where} has no image column (looked for {', '.join(IMAGE_COLUMNS)}); use --image-column.")
    if labelled and (lcol is None or lcol not in cols):
        raise AbsclipError(f"{where} has no label column (looked for {', '.join(LABEL_COLUMNS)}); use --label-column.")
    return icol, (lcol if labelled else None)


def resolve_listed_path(base: str, value: str) -> str:
    """Return a listed image path: absolute paths and URIs as they are, others relative to ``base`` (a folder)."""
    value = str(value)
    if os.path.isabs(value) or "://" in value:
        return value
    return f"{base.rstrip('/')}/{value}" if "://" in base else str(Path(base) / value)


def label_index(value: object, classes: ClassList, where: str) -> int:
    """Return the class index of a listing's label: an index into ``classes`` or a class name (or synonym)."""
    return _label_of(str(value), classes, where)


def _load_listing(path: Path, classes: ClassList, image_column: str | None, label_column: str | None) -> list[Sample]:
    rows = _read_rows(path)
    icol, lcol = listing_columns(list(rows[0].keys()), str(path), image_column, label_column)
    base = str(path.parent)
    return [Sample(resolve_listed_path(base, r[icol]), _label_of(r[lcol], classes, f"{path.name} row {n}"))
            for n, r in enumerate(rows, 2)]



def load_paths(data: str | os.PathLike, *, image_column: str | None = None) -> list[str]:
    """Return the image paths of an unlabelled data set (for bulk labelling).

    ``data`` is a folder (its ``labels.csv``/``.tsv``/``.jsonl`` listing if it has one, else every
    image below it, sorted), a CSV/TSV/JSONL listing with an image column, or one image file.

    Raises:
        AbsclipError: a missing path, a listing without an image column, no images.
    """
    p = Path(data)
    if not p.exists():
        raise AbsclipError(f"Data path {p} does not exist.")
    if p.is_dir():
        listing = next((p / n for n in LISTING_NAMES if (p / n).is_file()), None)
        if listing is None:
            found = [str(f) for f in list_images(p)]
            if not found:
                raise AbsclipError(f"No images found under {p}.")
            return found
        p = listing
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        return [str(p)]
    rows = _read_rows(p)
    icol, _ = listing_columns(list(rows[0].keys()), str(p), image_column, labelled=False)
    return [resolve_listed_path(str(p.parent), r[icol]) for r in rows]


def take(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """Return the first ``limit`` samples (all when None)."""
    return list(samples if limit is None else samples[:limit])
