"""Data sources: folders, ImageFolder trees, CSV/TSV/JSONL listings, webdataset shards and Hugging Face
datasets, behind one dispatch (:func:`open_data`) that every engine and command uses.

Folders are walked by :mod:`absclip.io.listing` (its rules for symlinks, hidden names, unreadable
entries and Unicode apply everywhere); shards by :mod:`absclip.io.webdataset`; HF datasets by
:mod:`absclip.io.hfdata`. A :class:`Sample`'s ``path`` is its identity (records and resume key on
it): the file path, ``<shard>#<key>`` or ``<file>#<row>``."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from absclip.errors import AbsclipError
from absclip.io.images import IMAGE_EXTENSIONS


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Return the image files under ``directory`` (recursive, in :func:`absclip.io.listing.list_folder` order)."""
    from absclip.io.listing import list_folder

    return [Path(p) for p in list_folder(directory).files]


@dataclass(frozen=True)
class Sample:
    """One sample: its identity, label index (``-1`` when unlabelled) and, for sources that are not
    files (tar members, dataset cells), its encoded bytes or why there are none.

    Attributes:
        path: the identity: a file path or URI (read from there when ``data`` is None and no ``error``),
            ``<shard>#<key>`` or ``<file>#<row>``.
        label: the class index, ``-1`` without ground truth.
        data: the encoded image, for sources that are not files.
        error: why the sample has no image (it becomes a skipped record).
    """

    path: str
    label: int
    data: bytes | None = None
    error: str | None = None


if TYPE_CHECKING:  # pragma: no cover - a class list is any object with len() and index(name)
    from absclip.io.hfdata import HFData
    from absclip.text.classes import ClassList

LISTING_NAMES = ("labels.csv", "labels.tsv", "labels.jsonl")  # a folder's own listing
IMAGE_COLUMNS = ("path", "file", "filepath", "filename", "image", "image_path")
LABEL_COLUMNS = ("label", "target", "class_index", "label_index", "imagenet_index", "class", "classname",
                 "class_name", "clip_name")


def _label_of(value: str, classes: ClassList, where: str) -> int:
    from absclip.io.listing import nfc

    value = nfc(str(value).strip())
    if value.lstrip("-").isdigit():
        i = int(value)
        if not 0 <= i < len(classes):
            raise AbsclipError(f"{where}: label index {i} is outside 0..{len(classes) - 1}.")
        return i
    try:
        return classes.index(value)
    except AbsclipError as e:
        names = [nfc(n) for n in classes.names]  # a class file written in NFD matches NFC labels
        if names.count(value) == 1:
            return names.index(value)
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
        return folder_samples(str(data), classes)
    return _load_listing(p, classes, image_column, label_column)


def folder_samples(root: str, classes: ClassList | None) -> list[Sample]:
    """Return the samples of a folder (:func:`absclip.io.listing.list_folder`): with ``classes``, an
    ImageFolder tree ``ROOT/<class>/...`` (the class folder's NFC name is the label; files directly in
    ROOT are left out); without, every image, unlabelled.

    Raises:
        AbsclipError: no images (no class sub-folders), an unknown class folder.
    """
    from absclip.io.listing import class_folders, list_folder

    listing = list_folder(root if "://" in root else os.path.abspath(root))  # identities independent of the cwd
    if classes is None:
        out = [Sample(f, -1) for f in listing.files]
        if not out:
            raise AbsclipError(f"No images found under {root}.")
        return out
    labels: dict[str, int] = {}
    out = []
    for path, name in class_folders(listing):
        if name not in labels:
            labels[name] = _label_of(name, classes, f"folder {name}")
        out.append(Sample(path, labels[name]))
    if not out:
        raise AbsclipError(f"{root} has no labels.csv and no class sub-folders with images; cannot tell the labels.")
    return out


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
    base = os.path.abspath(path.parent)  # as the Ray engine resolves them: identities independent of the cwd
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
            return [s.path for s in folder_samples(str(data), None)]
        p = listing
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        return [str(p)]
    rows = _read_rows(p)
    icol, _ = listing_columns(list(rows[0].keys()), str(p), image_column, labelled=False)
    return [resolve_listed_path(os.path.abspath(p.parent), r[icol]) for r in rows]


def take(samples: Iterable[Sample], limit: int | None) -> Iterable[Sample]:
    """Return the first ``limit`` samples (all when None): a list for a list, else a lazy iterator."""
    if limit is None:
        return samples
    if isinstance(samples, Sequence):
        return list(samples[:limit])
    return itertools.islice(samples, limit)


@dataclass
class DataSet:
    """What ``--data`` names: a folder or listing of files, webdataset shards or a Hugging Face dataset.

    Attributes:
        data: ``--data`` as given.
        kind: ``files``, ``webdataset`` or ``hf``.
        image_column / label_column: ``--image-column`` / ``--label-column`` (for shards, the label
            column is the label member's extension).
        shards: the expanded shards (webdataset).
        hf: the dataset's files, columns and parts (hf).
    """

    data: str
    kind: str
    image_column: str | None = None
    label_column: str | None = None
    shards: list[str] | None = None
    hf: HFData | None = None

    @property
    def total(self) -> int | None:
        """How many samples there are when the source knows without reading them (shards do not)."""
        return self.hf.total if self.hf is not None else None

    def default_class_names(self) -> list[str] | None:
        """Return the class names the data set names itself: the HF ``ClassLabel`` names, or CLIP_benchmark's
        ``classnames.txt`` beside the shards (one name a line); None when it names none."""
        if self.hf is not None and self.hf.label_names:
            return list(self.hf.label_names)
        path = self.default_classes_file()
        if not path:
            return None
        from absclip.io.uris import read_bytes

        return [n.strip() for n in read_bytes(path).decode("utf-8-sig").splitlines() if n.strip()]

    def default_classes_file(self) -> str | None:
        """Return CLIP_benchmark's ``classnames.txt`` beside the shards (None when absent or not shards)."""
        from absclip.io.webdataset import CLASSNAMES_FILE, beside_shards

        return beside_shards(self.shards, CLASSNAMES_FILE) if self.shards else None

    def default_templates(self) -> str | None:
        """Return CLIP_benchmark's ``zeroshot_classification_templates.txt`` beside the shards, or None."""
        from absclip.io.webdataset import TEMPLATES_FILE, beside_shards

        return beside_shards(self.shards, TEMPLATES_FILE) if self.shards else None

    def samples(self, classes: ClassList | None) -> Iterable[Sample]:
        """Return the samples (labelled with ``classes``; unlabelled when None): a list for files, a
        stream read as it is consumed for shards and datasets."""
        if self.kind == "webdataset":
            from absclip.io.webdataset import iter_wds_samples

            return iter_wds_samples(self.shards or [], classes, self.label_column)
        if self.kind == "hf":
            from absclip.io.hfdata import iter_hf_samples

            return iter_hf_samples(self.hf, classes)
        if classes is None:
            return [Sample(p, -1) for p in load_paths(self.data, image_column=self.image_column)]
        return load_samples(self.data, classes, image_column=self.image_column, label_column=self.label_column)


def open_data(data: str | os.PathLike, *, image_column: str | None = None,
              label_column: str | None = None) -> DataSet:
    """Return the :class:`DataSet` ``data`` names: webdataset shards (``.tar`` or a brace pattern of them),
    a HF dataset (a ``save_to_disk`` folder, Parquet with an image column), else files (folder, listing,
    image).

    Raises:
        AbsclipError: missing shards or data files, a dataset without an image column.
    """
    from absclip.io.hfdata import is_hf_dataset, open_hf
    from absclip.io.webdataset import is_webdataset, shard_list

    text = str(data)
    if is_webdataset(text):
        return DataSet(text, "webdataset", image_column, label_column, shards=shard_list(text))
    if is_hf_dataset(text):
        return DataSet(text, "hf", image_column, label_column,
                       hf=open_hf(text, image_column=image_column, label_column=label_column))
    return DataSet(text, "files", image_column, label_column)


def iter_batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    """Yield lists of ``size`` samples (the last may be shorter), consuming ``samples`` lazily."""
    it = iter(samples)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def stored_sample_bytes(identity: str) -> bytes | None:
    """Return the image bytes of a sample stored inside a shard (``SHARD#KEY``) or a dataset file (``FILE#ROW``),
    for the few images a report or an explanation shows again; None when ``identity`` names no such sample.

    A shard is read up to the member (stream order), a dataset file one batch.
    """
    head, sep, tail = identity.rpartition("#")
    if not sep or not tail:
        return None
    if head.lower().endswith(".tar"):
        from absclip.io.webdataset import iter_shard, wds_sample

        for key, members in iter_shard(head):
            if key == tail:
                return wds_sample(head, key, members, None).data
        return None
    if head.lower().endswith((".parquet", ".arrow")) and tail.isdigit():
        from absclip.io.hfdata import Part, open_hf, read_part

        row = int(tail)
        hf = open_hf(os.path.dirname(head) if head.lower().endswith(".arrow") else head)
        part = next((p for p in hf.parts if p.file == head and p.start <= row < p.stop), None)
        if part is None:
            return None
        return next((s.data for s in read_part(hf, Part(head, row, row + 1), None) if s.path == identity), None)
    return None
