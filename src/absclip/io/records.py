"""The prediction record: one schema for every engine, command and the report; JSONL writer/reader."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absclip.errors import AbsclipError

log = logging.getLogger(__name__)


@dataclass
class PredictionLog:
    """The JSONL predictions file: one line per (image, method), each flushed when written."""

    path: Path
    run_id: str
    done: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | os.PathLike, run_id: str, *, resume: bool) -> PredictionLog:
        """Read finished lines of a previous run (when resuming) and drop a torn last line."""
        p = Path(path)
        log_ = cls(p, run_id)
        if p.exists() and p.stat().st_size > 0:
            if not resume:
                raise AbsclipError(f"{p} already exists; pass --resume to continue it or --overwrite to start over.")
            good: list[str] = []
            for line in p.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill: recomputed
                if rec.get("run") != run_id:
                    raise AbsclipError(
                        f"{p} was written with different settings (run {rec.get('run')} vs {run_id}); use another "
                        "--output or --overwrite instead of mixing results."
                    )
                good.append(line)
                log_._remember(rec)
            tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
            tmp.write_text("".join(g + "\n" for g in good), encoding="utf-8")
            os.replace(tmp, p)
        p.parent.mkdir(parents=True, exist_ok=True)
        log_._fh = open(p, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return log_

    def write(self, rec: dict[str, Any]) -> None:
        """Append one record and flush it to the OS at once."""
        rec = {"run": self.run_id, **rec}
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        self._remember(rec)

    def _remember(self, rec: dict[str, Any]) -> None:
        """Note a record as done (``done[(file, method)]``) or skipped (``skipped[file] = reason``)."""
        if rec.get("skipped"):
            self.skipped[rec["file"]] = rec["reason"]
        else:
            self.done[(rec["file"], rec["method"])] = rec

    def close(self) -> None:
        """Flush to disk and close."""
        fh = getattr(self, "_fh", None)
        if fh is not None and not fh.closed:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()

log = logging.getLogger(__name__)

#: columns of a prediction row, in order (the Parquet schema of :mod:`absclip.engines.ray` has the same names)
ROW_FIELDS = ("path", "label", "method", "pred", "pred_label", "score", "topk", "topk_labels", "topk_scores",
              "topk_logits", "seed", "key", "skip_reason", "run", "attempt", "seconds")

LOCAL_ROWS = "predictions.jsonl"
SUMMARY = "_summary.json"


def prediction_rows(
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
    """Return one row per method for one image (see :data:`ROW_FIELDS`).

    Args:
        path: the image path or URI.
        label: ground-truth class index, or None when the data set has no labels.
        key: the image's content key (:func:`absclip.io.images.image_key`); None when skipped.
        ranked: ``{method: [{label, score, logit, index}, ...]}`` best first (None when skipped).
        methods: the methods, in order.
        seed / run / attempt: the run seed, run id (settings hash) and this invocation's id.
        top: how many classes to keep per row.
        skip_reason: why the image was skipped (then the prediction fields are None/empty).
        seconds: per method, this image's share of the batch's compute time.
    """
    rows = []
    for m in methods:
        r = (ranked or {}).get(m) or []
        r = r[:top]
        rows.append({
            "path": path, "label": label, "method": m,
            "pred": r[0]["index"] if r else None, "pred_label": r[0]["label"] if r else None,
            "score": round(r[0]["score"], 6) if r else None,
            "topk": [x["index"] for x in r], "topk_labels": [x["label"] for x in r],
            "topk_scores": [round(x["score"], 6) for x in r], "topk_logits": [round(x["logit"], 6) for x in r],
            "seed": seed, "key": key, "skip_reason": skip_reason, "run": run, "attempt": attempt,
            "seconds": round((seconds or {}).get(m, 0.0), 6),
        })
    return rows


class RowLog(PredictionLog):
    """A JSONL file of prediction rows, resumable like the evaluation log (keyed by path and method)."""

    def _remember(self, rec: dict[str, Any]) -> None:
        if rec.get("skip_reason"):
            self.skipped[rec["path"]] = rec["skip_reason"]
        else:
            self.done[(rec["path"], rec["method"])] = rec
