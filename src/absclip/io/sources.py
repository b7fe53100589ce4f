"""Labelled data sets and image lists: folders, ImageFolder trees and CSV/TSV/JSONL listings."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from absclip.errors import AbsclipError
from absclip.io.images import IMAGE_EXTENSIONS


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Return the image files under ``directory`` (recursive, sorted)."""
    d = Path(directory)
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@dataclass(frozen=True)
class Sample:
    """One evaluation sample: image path and label index (``-1`` when unlabelled)."""

    path: str
    label: int


if TYPE_CHECKING:  # pragma: no cover - a class list is any object with len() and index(name)
    from absclip.text.classes import ClassList

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
        raise AbsclipError(f"{where} has no image column (looked for {', '.join(IMAGE_COLUMNS)}); use `image_column`.")
    if labelled and (lcol is None or lcol not in cols):
        raise AbsclipError(f"{where} has no label column (looked for {', '.join(LABEL_COLUMNS)}); use `label_column`.")
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
