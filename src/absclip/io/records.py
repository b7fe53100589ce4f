"""The prediction record: one schema for every engine, command and the report; its writer and reader.

One record per (image, method), the same in ``absclip eval`` and ``absclip label``, on the local
engine (JSONL, :class:`JsonlRecordWriter`) and on Ray (Parquet shards with :func:`record_schema`).
An image that could not be read is a record too, with ``skip_reason`` set and no prediction.
The field names, types and meanings are those of :class:`Prediction`, and nothing else: the
Arrow schema is derived from its annotations. :func:`read_records` reads either form back."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from absclip.errors import AbsclipError
from absclip.io.files import atomic_write_text, json_text

log = logging.getLogger(__name__)


def _doc(meaning: str) -> Any:
    return field(metadata={"doc": meaning})


@dataclass(frozen=True)
class Prediction:
    """One prediction record (one image, one method). Records travel as plain dicts with these keys, in this order."""

    path: str = _doc("the image path or URI: the sample's identity (see record_key)")
    label: int | None = _doc("ground-truth class index; None without ground truth (absclip label)")
    method: str = _doc("the method that made the prediction")
    pred: int | None = _doc("predicted class index (topk[0]); None when skipped")
    pred_label: str | None = _doc("predicted class name; None when skipped")
    score: float | None = _doc("softmax probability of pred; None when skipped")
    topk: list[int] = _doc("class indices, best first (empty when skipped)")
    topk_labels: list[str] = _doc("their class names")
    topk_scores: list[float] = _doc("their softmax probabilities")
    topk_logits: list[float] = _doc("their logits")
    seed: int = _doc("the run seed")
    key: str | None = _doc("the image's content key (absclip.io.images.image_key); None when skipped")
    skip_reason: str | None = _doc("why the image could not be read (then no prediction); None otherwise")
    run: str = _doc("the run id: hash of every setting that changes predictions (engines.results.run_id_for)")
    attempt: str = _doc("id of the invocation that wrote the record (a resumed run has several)")
    seconds: float = _doc("this image's share of the batch's compute time for this method")


#: the record's field names, in order
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Prediction))
ROW_FIELDS = FIELDS  # the name before records were unified

LOCAL_ROWS = "predictions.jsonl"
SUMMARY = "_summary.json"

_ARROW = {"str": "string", "int": "int64", "float": "float64"}


def record_schema() -> Any:
    """Return the pyarrow schema of records (Parquet shards), derived from :class:`Prediction`'s annotations."""
    import pyarrow as pa

    fields = []
    for f in dataclasses.fields(Prediction):
        t = str(f.type).replace(" | None", "")
        if t.startswith("list["):
            typ = pa.list_(pa.type_for_alias(_ARROW[t[5:-1]]))
        else:
            typ = pa.type_for_alias(_ARROW[t])
        fields.append(pa.field(f.name, typ, metadata={"doc": f.metadata["doc"]}))
    return pa.schema(fields)


def record_key(rec: dict[str, Any]) -> tuple[str, str]:
    """Return what identifies a record when resuming or de-duplicating: ``(sample identity, method)``."""
    return sample_identity(rec["path"]), rec["method"]


def sample_identity(path: str) -> str:
    """Return a sample's identity (its path or URI today; the one place to change for sample ids)."""
    return path


def make_records(
    path: str,
    label: int | None,
    key: str | None,
    ranked: dict[str, list[dict[str, Any]]] | None,
    methods: Sequence[str],
    *,
    seed: int,
    run: str,
    attempt: str,
    top: int,
    skip_reason: str | None = None,
    seconds: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Return one record per method for one image (see :class:`Prediction`).

    Args:
        path: the image path or URI.
        label: ground-truth class index, or None when the data set has no labels.
        key: the image's content key (:func:`absclip.io.images.image_key`); None when skipped.
        ranked: ``{method: [{label, score, logit, index}, ...]}`` best first (None when skipped).
        methods: the methods, in order.
        seed / run / attempt: the run seed, run id (settings hash) and this invocation's id.
        top: how many classes to keep per record.
        skip_reason: why the image was skipped (then the prediction fields are None/empty).
        seconds: per method, this image's share of the batch's compute time.
    """
    out = []
    for m in methods:
        r = ((ranked or {}).get(m) or [])[:top]
        rec = Prediction(
            path=path, label=label, method=m,
            pred=r[0]["index"] if r else None, pred_label=r[0]["label"] if r else None,
            score=round(r[0]["score"], 6) if r else None,
            topk=[x["index"] for x in r], topk_labels=[x["label"] for x in r],
            topk_scores=[round(x["score"], 6) for x in r], topk_logits=[round(x["logit"], 6) for x in r],
            seed=seed, key=key, skip_reason=skip_reason, run=run, attempt=attempt,
            seconds=round((seconds or {}).get(m, 0.0), 6),
        )
        out.append(dataclasses.asdict(rec))
    return out


def records_table(records: Sequence[dict[str, Any]]) -> Any:
    """Return records as a pyarrow table with :func:`record_schema` (what a Parquet shard holds)."""
    import pyarrow as pa

    return pa.Table.from_pylist(list(records), schema=record_schema())


def _check_fields(rec: dict[str, Any], where: object) -> None:
    if tuple(rec) != FIELDS:
        raise AbsclipError(f"{where} holds records of another format (fields {sorted(rec)}); it was written by "
                           "another absclip version. Use another `output` or `overwrite`.")


class RecordWriter(Protocol):
    """Where an engine's loop writes records: what is already done (for resuming), then each new record."""

    done: dict[tuple[str, str], dict[str, Any]]

    def write(self, rec: dict[str, Any]) -> None:
        """Write one record (durably enough that an interrupted run keeps it)."""

    def close(self) -> None:
        """Flush and close."""


@dataclass
class JsonlRecordWriter:
    """The JSONL form: one record per line, each flushed when written; resumable.

    :meth:`open` reads the records of a previous run, drops a line torn by a kill, and refuses a
    file written with other settings (another run id) or in another format.

    Attributes:
        done: ``{record_key: record}`` of every record in the file (skipped images included).
    """

    path: Path
    run_id: str
    done: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike, run_id: str, *, resume: bool,
             spec: dict[str, Any] | None = None) -> JsonlRecordWriter:
        """Open ``path`` for appending, first reading the finished records of a previous run when ``resume``.

        ``spec`` (the run's settings, hashed into ``run_id``) is kept next to the records
        (:func:`run_spec_path`), so that a later run with other settings is told which differ.
        """
        p = Path(path)
        w = cls(p, run_id)
        if p.exists() and p.stat().st_size > 0:
            if not resume:
                raise AbsclipError(f"{p} already exists; pass `resume` to continue it or `overwrite` to start over.")
            good: list[str] = []
            for line, rec in _jsonl_lines(p):
                _check_fields(rec, p)
                if rec["run"] != run_id:
                    changed = settings_differences(read_run_spec(run_spec_path(p)), spec) \
                        or f"run {rec['run']} vs {run_id}"
                    raise AbsclipError(
                        f"{p} was written with different settings ({changed}); "
                        "use another `output` or `overwrite` instead of mixing results."
                    )
                good.append(line)
                w.done.setdefault(record_key(rec), rec)
            atomic_write_text(p, "".join(g + "\n" for g in good))  # without the torn last line
        p.parent.mkdir(parents=True, exist_ok=True)
        if spec is not None:
            atomic_write_text(run_spec_path(p), json.dumps({"run": run_id, "spec": spec}, indent=1, default=str))
        w._fh = open(p, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return w

    @property
    def skipped(self) -> dict[str, str]:
        """``{sample identity: skip reason}`` of the images that could not be read."""
        return {k[0]: r["skip_reason"] for k, r in self.done.items() if r["skip_reason"]}

    def write(self, rec: dict[str, Any]) -> None:
        """Append one record and flush it to the OS at once."""
        _check_fields(rec, self.path)
        if rec["run"] != self.run_id:
            raise ValueError(f"record of run {rec['run']} written to a file of run {self.run_id}")
        self._fh.write(json_text(rec) + "\n")
        self._fh.flush()
        self.done.setdefault(record_key(rec), rec)

    def close(self) -> None:
        """Flush to disk and close."""
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()


def _jsonl_lines(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill: its record is computed again
        if isinstance(rec, dict):
            yield line, rec


def read_records(source: str | os.PathLike, *, run: str | None = None) -> list[dict[str, Any]]:
    """Return the records of a JSONL file or a folder of Parquet shards (local path or URI), in stored order.

    A torn JSONL line is ignored. With ``run``, records of other runs are left out.

    Raises:
        AbsclipError: no such file or folder, unreadable shards, records of another format.
    """
    src = str(source)
    if "://" not in src and Path(src).is_file():
        recs = [rec for _, rec in _jsonl_lines(Path(src))]
        for rec in recs[:1]:
            _check_fields(rec, src)
    elif "://" in src or Path(src).is_dir():
        from absclip.io.shards import OutputDir  # pyarrow only; no Ray needed

        out = OutputDir(src)
        if not out.shards():
            raise AbsclipError(f"{src} holds no Parquet prediction shards.")
        recs = out.read().to_pylist()
    else:
        raise AbsclipError(f"The predictions file {src} does not exist.")
    return [r for r in recs if run is None or r["run"] == run]


def unique_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``records`` with one per :func:`record_key` (the first), warning if there were duplicates."""
    seen: set[tuple[str, str]] = set()
    out = []
    n = 0
    for r in records:
        n += 1
        k = record_key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    if len(out) < n:
        log.warning("%d duplicate prediction records ignored (each (image, method) counted once).", n - len(out))
    return out


def run_spec_path(records: str | os.PathLike) -> Path:
    """Return the file next to a JSONL records file that holds its run's settings: ``<name>.run.json``."""
    p = Path(records)
    return p.with_name(p.name + ".run.json")


def read_run_spec(path: str | os.PathLike) -> dict[str, Any] | None:
    """Return the ``spec`` of a run-settings file (``{"run", "spec"}``), or None when absent or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("spec")
    except (OSError, ValueError, AttributeError):
        return None


def settings_differences(old: Any, new: Any, *, limit: int = 3) -> str:
    """Return the first settings that differ between two run specs, as ``seed 0 vs 1, methods.abs.config.top_k 20
    vs 5`` (dotted keys; long values shortened); empty when either is unknown or they are equal."""
    if old is None or new is None:
        return ""
    out: list[str] = []

    def short(v: Any) -> str:
        text = json.dumps(v, default=str)
        return text if len(text) <= 40 else text[:37] + "..."

    def walk(a: Any, b: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(dict.fromkeys([*a, *b])):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{key}[{i}]")
        elif json.dumps(a, default=str) != json.dumps(b, default=str):
            out.append(f"{key or 'settings'} {short(a)} vs {short(b)}")

    walk(json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str)), "")
    return ", ".join(out)
