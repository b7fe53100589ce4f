"""Hugging Face datasets read with pyarrow alone: a ``datasets.save_to_disk`` folder (Arrow stream files,
``state.json``, ``dataset_info.json``; a ``DatasetDict`` folder uses its ``test`` split) or Parquet
files (one, a folder of them, or a brace pattern) whose image column holds ``{bytes, path}`` structs
(or plain bytes).

The image column is ``--image-column``, else the feature typed ``Image``, else ``image``/``img``;
the label column is ``--label-column``, else the ``ClassLabel`` feature, else ``label``/...
(:data:`absclip.io.sources.LABEL_COLUMNS`). The ``ClassLabel`` names (from the features kept in
the files' ``huggingface`` schema metadata or in ``dataset_info.json``) are the default classes,
and an integer label is the name at that index. Rows are read a batch at a time, never all.

A sample's identity is ``<file>#<row>`` (row index inside that file). Work is cut into
:class:`Part` s (row ranges of one file) so that the Ray engine reads the same rows in parallel
tasks with :func:`read_part`, the function the local engine iterates."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from absclip.errors import AbsclipError

if TYPE_CHECKING:  # pragma: no cover
    from absclip.io.sources import Sample
    from absclip.text.classes import ClassList

PART_ROWS = 1024  # rows per part (one Ray task)
IMAGE_NAMES = ("image", "img", "jpg", "png", "webp")


@dataclass(frozen=True)
class Part:
    """Rows ``[start, stop)`` of one Arrow stream or Parquet file."""

    file: str
    start: int
    stop: int


@dataclass
class HFData:
    """An HF data set on disk: its files, format, columns and label names."""

    files: list[str]
    kind: str  # "arrow" or "parquet"
    image_column: str
    label_column: str | None
    label_names: list[str] | None
    parts: list[Part]

    @property
    def total(self) -> int:
        """Number of rows."""
        return sum(p.stop - p.start for p in self.parts)


def is_hf_dataset(data: str) -> bool:
    """Return whether ``data`` is a ``save_to_disk`` folder or Parquet (a file, pattern or folder of them)."""
    from absclip.io.webdataset import expand_braces

    if "://" not in data and os.path.isdir(data):
        names = set(os.listdir(data))
        if {"state.json", "dataset_dict.json"} & names:
            return True
        parquet = sorted(n for n in names if n.endswith(".parquet") and not n.startswith("."))
        return bool(parquet) and not _has_listing_or_images(data, names) and _parquet_has_images(
            os.path.join(data, parquet[0]))  # a labels.parquet listing of paths is not a dataset
    try:
        first = expand_braces(data)[0]
    except AbsclipError:
        return False
    return first.lower().endswith(".parquet") and _parquet_has_images(first)


def _has_listing_or_images(folder: str, names: set[str]) -> bool:
    from absclip.io.images import IMAGE_EXTENSIONS
    from absclip.io.sources import LISTING_NAMES

    return bool(names & set(LISTING_NAMES)) or any(n.lower().endswith(IMAGE_EXTENSIONS) for n in names) or any(
        os.path.isdir(os.path.join(folder, n)) and not n.startswith(".") for n in names)


def _parquet_has_images(path: str) -> bool:
    """Whether a Parquet file holds images (a struct-with-bytes or binary column), not a listing of paths."""
    try:
        schema = _schema(path, "parquet")
    except AbsclipError:
        return False
    return _image_column(schema, None, _features(schema)) is not None


def _fs(path: str) -> tuple[Any, str]:
    from absclip.io.uris import split_uri

    fs, inner, _ = split_uri(path)
    return fs, inner


def _schema(path: str, kind: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, inner = _fs(path)
    try:
        if kind == "parquet":
            with fs.open_input_file(inner) as f:
                return pq.ParquetFile(f).schema_arrow
        with fs.open_input_file(inner) as f:
            return pa.ipc.open_stream(f).schema
    except (OSError, pa.ArrowInvalid) as e:
        raise AbsclipError(f"{path}: not a readable {kind} file ({str(e).splitlines()[0]}).") from e


def _features(schema: Any) -> dict[str, Any]:
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return {}
    try:
        return json.loads(meta).get("info", {}).get("features", {}) or {}
    except (ValueError, AttributeError):
        return {}


def _image_column(schema: Any, given: str | None, features: dict[str, Any]) -> str | None:
    import pyarrow as pa

    if given:
        return given
    typed = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"]
    if typed:
        return typed[0]

    def holds_bytes(t: Any) -> bool:
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or (
            pa.types.is_struct(t) and any(t.field(i).name == "bytes" for i in range(t.num_fields)))

    for name in (*IMAGE_NAMES, *schema.names):
        if name in schema.names and holds_bytes(schema.field(name).type):
            return name
    return None


def _label_column(schema: Any, given: str | None, features: dict[str, Any]) -> str | None:
    from absclip.io.sources import LABEL_COLUMNS

    if given:
        if given not in schema.names:
            raise AbsclipError(f"The data set has no column {given!r} (columns: {', '.join(schema.names)}).")
        return given
    typed = [n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"]
    if typed:
        return typed[0]
    return next((c for c in LABEL_COLUMNS if c in schema.names), None)


def _files(data: str) -> tuple[list[str], str, dict[str, Any]]:
    """Return (files, kind, features from dataset_info.json) of a data set path."""
    from absclip.io.webdataset import expand_braces

    if "://" not in data and os.path.isdir(data):
        if os.path.isfile(os.path.join(data, "dataset_dict.json")):
            with open(os.path.join(data, "dataset_dict.json"), encoding="utf-8") as f:
                splits = json.load(f).get("splits", [])
            split = "test" if "test" in splits else (splits[0] if len(splits) == 1 else None)
            if split is None:
                raise AbsclipError(f"{data} holds the splits {', '.join(splits)}; name one: {data}/SPLIT.")
            return _files(os.path.join(data, split))
        if os.path.isfile(os.path.join(data, "state.json")):
            with open(os.path.join(data, "state.json"), encoding="utf-8") as f:
                state = json.load(f)
            files = [os.path.join(data, d["filename"]) for d in state.get("_data_files", [])]
            info: dict[str, Any] = {}
            if os.path.isfile(os.path.join(data, "dataset_info.json")):
                with open(os.path.join(data, "dataset_info.json"), encoding="utf-8") as f:
                    info = json.load(f).get("features", {}) or {}
            return files, "arrow", info
        files = sorted(os.path.join(data, n) for n in os.listdir(data) if n.endswith(".parquet")
                       and not n.startswith("."))
        return files, "parquet", {}
    files = list(dict.fromkeys(expand_braces(data)))
    missing = [f for f in files if "://" not in f and not os.path.isfile(f)]
    if missing:
        raise AbsclipError(f"The data file {missing[0]} does not exist.")
    return files, "parquet", {}


def _row_counts(path: str, kind: str) -> list[int]:
    """Return the row counts of a file's row groups (Parquet) or record batches (Arrow stream)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, inner = _fs(path)
    if kind == "parquet":
        with fs.open_input_file(inner) as f:
            md = pq.ParquetFile(f).metadata
            return [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    with _open_arrow(path) as src:
        return [b.num_rows for b in pa.ipc.open_stream(src)]


def _open_arrow(path: str) -> Any:
    import pyarrow as pa

    if "://" not in path:
        return pa.memory_map(path)  # batches are views into the mapped file: skipping them costs nothing
    fs, inner = _fs(path)
    return fs.open_input_file(inner)


def open_hf(data: str, *, image_column: str | None = None, label_column: str | None = None) -> HFData:
    """Return the :class:`HFData` of ``data`` (files, columns, label names, parts).

    Raises:
        AbsclipError: no data files, no image column, an unknown column.
    """
    files, kind, info = _files(data)
    if not files:
        raise AbsclipError(f"{data} holds no data files.")
    schema = _schema(files[0], kind)
    features = _features(schema) or info
    icol = _image_column(schema, image_column, features)
    if icol is None or icol not in schema.names:
        raise AbsclipError(f"{data} has no image column (a struct of bytes and path, or bytes); use `image_column` "
                           f"(columns: {', '.join(schema.names)}).")
    lcol = _label_column(schema, label_column, features)
    names = None
    feat = features.get(lcol) if lcol else None
    if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names"):
        from absclip.io.listing import nfc

        names = [nfc(str(n)) for n in feat["names"]]
    parts = []
    for f in files:
        start = 0
        counts = _row_counts(f, kind)
        group: list[int] = []
        for n in counts:  # whole row groups / batches, about PART_ROWS rows a part
            group.append(n)
            if sum(group) >= PART_ROWS:
                parts.append(Part(f, start, start + sum(group)))
                start += sum(group)
                group = []
        if group and sum(group):
            parts.append(Part(f, start, start + sum(group)))
    return HFData(files, kind, icol, lcol, names, parts)


def _batches(part: Part, kind: str, columns: list[str]) -> Iterator[tuple[int, Any]]:
    """Yield ``(first row index, record batch)`` of the batches/row groups that overlap ``part``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if kind == "parquet":
        fs, inner = _fs(part.file)
        with fs.open_input_file(inner) as f:
            pf = pq.ParquetFile(f)
            row = 0
            for i in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                if row < part.stop and row + n > part.start:
                    for b in pf.read_row_group(i, columns=columns).to_batches():
                        yield row, b
                        row += b.num_rows
                else:
                    row += n
        return
    with _open_arrow(part.file) as src:
        row = 0
        for b in pa.ipc.open_stream(src):
            if row < part.stop and row + b.num_rows > part.start:
                yield row, b.select(columns)
            row += b.num_rows


def hf_label(value: Any, names: list[str] | None, classes: ClassList, where: str) -> int:
    """Return the class index of a label cell: an integer is a ``ClassLabel`` index (its name is matched
    to ``classes`` unless they are the same list) or, without names, an index into ``classes``; a string
    is a class name."""
    from absclip.io.sources import label_index

    if value is None:
        raise AbsclipError(f"{where} has no label.")
    if isinstance(value, (int,)) and not isinstance(value, bool) and names is not None:
        if not 0 <= value < len(names):
            raise AbsclipError(f"{where}: label {value} is outside the data set's {len(names)} class names.")
        if list(classes.names) == names:
            return int(value)
        return label_index(names[value], classes, where)
    return label_index(str(value), classes, where)


def read_part(hf: HFData, part: Part, classes: ClassList | None) -> Iterator[Sample]:
    """Yield the samples of one part, in row order (``classes`` None: unlabelled)."""
    from absclip.io.sources import Sample

    columns = [hf.image_column] + ([hf.label_column] if hf.label_column and classes is not None else [])
    for first, batch in _batches(part, hf.kind, columns):
        images = batch.column(0).to_pylist()
        labels = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(images)
        for i, (img, lab) in enumerate(zip(images, labels)):
            if not part.start <= first + i < part.stop:
                continue
            ident = f"{part.file}#{first + i}"
            label = -1
            if classes is not None:
                if hf.label_column is None:
                    raise AbsclipError(f"{part.file} has no label column; use `label_column`.")
                label = hf_label(lab, hf.label_names, classes, ident)
            data = img.get("bytes") if isinstance(img, dict) else img
            if data is None and isinstance(img, dict) and img.get("path"):  # stored by path, not embedded
                data, error = _referenced(part.file, str(img["path"]))
                yield Sample(ident, label, data, error)
            elif data is None:
                yield Sample(ident, label, None, f"{ident}: the image cell is empty.")
            else:
                yield Sample(ident, label, bytes(data))


def _referenced(data_file: str, path: str) -> tuple[bytes | None, str | None]:
    """Return ``(bytes, None)`` of an image a cell names by path (relative to the data file), or ``(None, reason)``."""
    from absclip.errors import BadImageError
    from absclip.io.sources import resolve_listed_path
    from absclip.io.uris import read_bytes

    base = data_file.rsplit("/", 1)[0] if "/" in data_file else "."
    try:
        return read_bytes(resolve_listed_path(base, path)), None
    except BadImageError as e:
        return None, str(e)


def iter_hf_samples(hf: HFData, classes: ClassList | None) -> Iterator[Sample]:
    """Yield every sample of the data set, in file and row order."""
    for part in hf.parts:
        yield from read_part(hf, part, classes)
