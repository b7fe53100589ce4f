"""A folder of Parquet prediction shards, a local path or any URI pyarrow reads (pyarrow only, no Ray).

:class:`OutputDir` lists, reads and clears the shards, deletes a shard torn by a kill on resume,
and writes ``_run.json`` and ``_summary.json``; the shards hold prediction records
(:func:`absclip.io.records.record_schema`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from absclip.errors import AbsclipError
from absclip.io.uris import split_uri

log = logging.getLogger(__name__)


def row_schema() -> Any:
    """Return the Parquet schema of the shards: the prediction record's (:func:`absclip.io.records.record_schema`)."""
    from absclip.io.records import record_schema

    return record_schema()


@dataclass
class OutputDir:
    """A folder of Parquet prediction shards (local path or URI) plus ``_run.json``."""

    uri: str

    def __post_init__(self) -> None:
        self.fs, self.root, self.prefix = split_uri(self.uri)

    def shards(self) -> list[str]:
        """Return the Parquet files in the folder (paths inside its filesystem), sorted."""
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        files = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(f.path for f in files if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                      and not os.path.basename(f.path).startswith((".", "_")))

    def read(self, columns: Sequence[str] | None = None, *, drop_broken: bool = False) -> Any:
        """Return all rows as one pyarrow table (``columns`` only). A shard that cannot be read (torn by a
        kill) is deleted when ``drop_broken`` (its images are then predicted again), else raises."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for f in self.shards():
            try:
                tables.append(pq.read_table(f, filesystem=self.fs, columns=list(columns) if columns else None))
            except Exception as e:
                if not drop_broken:
                    raise AbsclipError(f"{self.prefix + f} is not a readable Parquet file ({e}).") from e
                log.warning("Deleting the unreadable shard %s (%s); its images are predicted again.",
                            self.prefix + f, str(e).splitlines()[0])
                self.fs.delete_file(f)
        schema = row_schema()
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()

    def clear(self) -> None:
        """Delete the shards and ``_run.json`` (only files absclip writes)."""
        for f in self.shards():
            self.fs.delete_file(f)
        self._delete_if_exists("_run.json")
        self._delete_if_exists("_summary.json")

    def _delete_if_exists(self, name: str) -> None:
        import pyarrow.fs as pafs

        p = f"{self.root.rstrip('/')}/{name}"
        if self.fs.get_file_info(p).type == pafs.FileType.File:
            self.fs.delete_file(p)

    def read_run_spec(self) -> dict[str, Any] | None:
        """Return the run settings kept in ``_run.json`` (None when absent or unreadable)."""
        import json

        try:
            with self.fs.open_input_stream(f"{self.root.rstrip('/')}/_run.json") as f:
                return json.loads(f.read().decode("utf-8")).get("spec")
        except (OSError, ValueError, AttributeError):
            return None

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``name`` in the folder (atomically for local folders)."""
        from absclip.io.files import atomic_write_json, json_text

        if not self.prefix:
            atomic_write_json(os.path.join(self.root, name), obj)
            return
        self.fs.create_dir(self.root, recursive=True)
        with self.fs.open_output_stream(f"{self.root.rstrip('/')}/{name}") as f:
            f.write((json_text(obj, indent=2) + "\n").encode())
