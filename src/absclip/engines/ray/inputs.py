"""Listing the input: a folder (its ``labels.*`` listing, an ImageFolder tree or plain images) or a
CSV/TSV/JSONL/Parquet listing, local or URI, read with Ray Data's readers into a ``(path, label)`` table."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from absclip.engines.ray.session import _unwrapped, import_ray
from absclip.errors import AbsclipError
from absclip.io.images import IMAGE_EXTENSIONS
from absclip.io.sources import LISTING_NAMES, listing_columns
from absclip.io.uris import split_uri
from absclip.text.classes import ClassList

if TYPE_CHECKING:  # pragma: no cover
    from absclip.io.hfdata import HFData
    from absclip.io.sources import DataSet, Sample

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

    if listing is None:  # a folder of images: the one listing both engines use (absclip.io.listing)
        from absclip.io.sources import folder_samples

        samples = folder_samples(prefix + root if prefix else root, classes)
        table = _path_label_table([s.path for s in samples], [None if classes is None else s.label for s in samples])
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


# -- streamed sources: webdataset shards and HF datasets ---------------------------------------------


def samples_table(samples: Iterable[Sample], labelled: bool) -> Any:
    """Return samples as the pipeline's input table ``(path, label, data, error)`` (``label`` null when unlabelled)."""
    import pyarrow as pa

    rows = list(samples)
    return pa.table({
        "path": pa.array([s.path for s in rows], pa.string()),
        "label": pa.array([s.label if labelled else None for s in rows], pa.int64()),
        "data": pa.array([s.data for s in rows], pa.binary()),
        "error": pa.array([s.error for s in rows], pa.string()),
    })


def wds_batch(batch: Any, shards: dict[str, str], classes: ClassList | None, label_member: str | None) -> Any:
    """Turn rows of Ray Data's webdataset reader (``__key__``, ``__url__``, one column per member extension)
    into samples with :func:`absclip.io.webdataset.wds_sample`: the same identities and labels as the local reader.

    ``shards`` maps a shard's path inside its filesystem (what the reader reports) to the shard as
    expanded from ``--data``.
    """
    from absclip.io.webdataset import wds_sample

    out = []
    for row in batch.to_dict("records"):  # pandas: a member a sample lacks is NaN
        url = str(row.pop("__url__"))
        shard = shards.get(url) or shards.get(url.split("://", 1)[-1]) or url
        key = str(row.pop("__key__"))
        members = {k.lower(): v for k, v in row.items() if isinstance(v, (bytes, bytearray, str))}
        out.append(wds_sample(shard, key, members, classes, label_member))
    return samples_table(out, classes is not None)


def hf_batch(batch: Any, hf: HFData, classes: ClassList | None) -> Any:
    """Read the parts ``(file, start, stop)`` of a batch with :func:`absclip.io.hfdata.read_part` into samples."""
    from absclip.io.hfdata import Part, read_part

    out = []
    for f, a, b in zip(batch.column("file").to_pylist(), batch.column("start").to_pylist(),
                       batch.column("stop").to_pylist()):
        out += read_part(hf, Part(f, a, b), classes)
    return samples_table(out, classes is not None)


def drop_done(batch: Any, done: frozenset[str]) -> Any:
    """Leave out the samples whose identity is already done (resume)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not done:
        return batch
    return batch.filter(pc.invert(pc.is_in(batch.column("path"), value_set=pa.array(sorted(done), pa.string()))))


def stream_dataset(ray: Any, dset: DataSet, classes: ClassList | None, *, limit: int | None,
                   done: frozenset[str]) -> Any:
    """Return the Ray dataset ``(path, label, data, error)`` of shards (Ray Data's ``read_webdataset``) or of an
    HF dataset (its Parquet/Arrow parts read in tasks), first ``limit`` samples, without those ``done``."""
    from absclip.io.uris import split_uri

    if dset.kind == "webdataset":
        shards = dset.shards or []
        inner = {split_uri(s)[1]: s for s in shards}
        ds = ray.data.read_webdataset(shards, decoder=None, suffixes=None)
        ds = ds.map_batches(wds_batch, batch_format="pandas",
                            fn_kwargs={"shards": inner, "classes": classes, "label_member": dset.label_column})
    else:
        import pyarrow as pa

        hf = dset.hf
        parts = pa.table({"file": [p.file for p in hf.parts], "start": [p.start for p in hf.parts],
                          "stop": [p.stop for p in hf.parts]})
        ds = ray.data.from_arrow([parts.slice(i, 1) for i in range(parts.num_rows)])
        ds = ds.map_batches(hf_batch, batch_format="pyarrow", batch_size=1, fn_kwargs={"hf": hf, "classes": classes})
    if limit is not None:
        ds = ds.limit(limit)
    return ds.map_batches(drop_done, batch_format="pyarrow", fn_kwargs={"done": done}) if done else ds


def streamed_order(paths: Iterable[str], dset: DataSet) -> list[str]:
    """Return the identities among ``paths`` that belong to ``dset``'s shards or files, in source order
    (shard or file order, then member key or row index): what the local reader yields for sorted tars."""
    heads = dset.shards or (dset.hf.files if dset.hf else [])
    rank = {h: i for i, h in enumerate(heads)}
    mine = []
    for p in dict.fromkeys(paths):
        head, _, tail = p.rpartition("#")
        if head in rank:
            mine.append((rank[head], int(tail) if dset.kind == "hf" and tail.isdigit() else 0, tail, p))
    return [x[-1] for x in sorted(mine)]
