"""Listing the input: a folder (its ``labels.*`` listing, an ImageFolder tree or plain images) or a
CSV/TSV/JSONL/Parquet listing, local or URI, read with Ray Data's readers into a ``(path, label)`` table."""

from __future__ import annotations

import os
from typing import Any

from absclip.engines.ray.session import _unwrapped, import_ray
from absclip.errors import AbsclipError
from absclip.io.images import IMAGE_EXTENSIONS
from absclip.io.sources import LISTING_NAMES, listing_columns
from absclip.io.uris import split_uri
from absclip.text.classes import ClassList

LISTING_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")


def resolve_labels(batch: Any, image_column: str, label_column: str | None, base: str,
                   classes: ClassList | None, where: str) -> Any:
    """Map a listing table to ``(path, label)``: paths resolved against ``base``, labels to class indices."""
    from absclip.io.sources import label_index, resolve_listed_path

    paths = [resolve_listed_path(base, str(v)) for v in batch.column(image_column).to_pylist()]
    if label_column is None or classes is None:
        labels: list[int | None] = [None] * len(paths)
    else:
        labels = [label_index(v, classes, f"{where} ({p})")
                  for v, p in zip(batch.column(label_column).to_pylist(), paths)]
    return _path_label_table(paths, labels)


def _csv_header(fs: Any, path: str, delimiter: str) -> list[str]:
    import csv
    import io

    with fs.open_input_stream(path) as f:
        head = f.read(1 << 16).decode("utf-8-sig", errors="replace")
    return next(csv.reader(io.StringIO(head.splitlines()[0] if head else ""), delimiter=delimiter), [])


def read_listing(data: str, *, classes: ClassList | None, image_column: str | None = None,
                 label_column: str | None = None, limit: int | None = None) -> Any:
    """Return the images to process as a pyarrow table ``(path, label)``, in listing order.

    ``data`` is a folder (its ``labels.*`` listing, else its images: for eval an ImageFolder tree
    ``DIR/<class>/...``) or a CSV/TSV/JSONL/Parquet listing; local path or URI. Listings are read
    with Ray Data's readers; paths and labels are resolved here (a listing is small next to its
    images). ``classes`` None means unlabelled (``label`` null). ``limit`` keeps the first N rows.

    Raises:
        AbsclipError: a missing path, unknown columns or labels, no images.
    """
    ray = import_ray()
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs

    from absclip.io.sources import label_index

    fs, root, prefix = split_uri(data)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise AbsclipError(f"Data path {data} does not exist.")
    listing = None
    if info.type == pafs.FileType.Directory:
        for name in (*LISTING_NAMES, "labels.parquet"):
            if fs.get_file_info(f"{root.rstrip('/')}/{name}").type == pafs.FileType.File:
                listing = f"{root.rstrip('/')}/{name}"
                break
    elif root.lower().endswith(LISTING_SUFFIXES):
        listing = root
    elif classes is None and root.lower().endswith(IMAGE_EXTENSIONS):
        return _path_label_table([prefix + root], [None])
    else:
        raise AbsclipError(f"{data}: expected a folder or a {'/'.join(LISTING_SUFFIXES)} listing.")

    if listing is None:  # a folder of images
        files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        paths, labels = [], []
        for p in sorted(f.path for f in files if f.type == pafs.FileType.File
                        and f.path.lower().endswith(IMAGE_EXTENSIONS)):
            rel = p[len(root.rstrip("/")) + 1:]
            if classes is None:
                paths.append(prefix + p)
                labels.append(None)
            elif "/" in rel:  # ImageFolder: the first folder below DATA names the class
                cls_name = rel.split("/", 1)[0]
                paths.append(prefix + p)
                labels.append(label_index(cls_name, classes, f"folder {cls_name}"))
        if not paths:
            hint = "" if classes is None else " in class sub-folders, and it has no labels.csv"
            raise AbsclipError(f"No images found under {data}{hint}.")
        table = _path_label_table(paths, labels)
        return table if limit is None else table.slice(0, limit)

    uri = prefix + listing
    low = listing.lower()
    ctx = ray.data.DataContext.get_current()
    old_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # rows in file order (--limit keeps the first N)
    try:
        if low.endswith((".csv", ".tsv")):
            delim = "\t" if low.endswith(".tsv") else ","
            # every column as text, as Python's csv module reads it for the local engine
            types = dict.fromkeys(_csv_header(fs, listing, delim), "string")
            ds = ray.data.read_csv(uri, parse_options=pacsv.ParseOptions(delimiter=delim),
                                   convert_options=pacsv.ConvertOptions(column_types=types))
        elif low.endswith((".jsonl", ".json")):
            ds = ray.data.read_json(uri, lines=low.endswith(".jsonl"))
        else:
            ds = ray.data.read_parquet(uri)
        blocks = [b for b in _unwrapped(lambda: ray.get(ds.to_arrow_refs())) if b.num_rows]
    finally:
        ctx.execution_options.preserve_order = old_order
    if not blocks:
        raise AbsclipError(f"The listing {uri} has no rows.")
    raw = pa.concat_tables(blocks, promote_options="permissive")
    if limit is not None:
        raw = raw.slice(0, limit)
    icol, lcol = listing_columns(raw.column_names, uri, image_column, label_column, labelled=classes is not None)
    return resolve_labels(raw, icol, lcol, uri.rsplit("/", 1)[0] if "/" in uri else ".", classes,
                          os.path.basename(listing))


def _path_label_table(paths: list[str], labels: list[int | None]) -> Any:
    import pyarrow as pa

    return pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.int64())})
