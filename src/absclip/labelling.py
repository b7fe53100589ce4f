"""Bulk labelling and the per-image prediction row both engines write.

A *prediction row* is one (image, method) pair: where the image is, its label if the data set has
one, the predicted class, the top-k classes with their scores, the method, the seed and, for an
image that could not be read, the reason it was skipped. The local engine writes rows as JSON
lines; the Ray engine (:mod:`absclip.scaleout`) writes the same rows as Parquet shards.

:func:`label_images` is the local engine of ``absclip label``: resumable like ``absclip eval``
(every row is flushed when written; a re-run skips finished images; other settings are refused).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .api import Classifier
from .data import ImageItem, make_item
from .errors import BadImageError
from .evaluate import PredictionLog, _sigterm_as_interrupt, predict_batch, run_id_for, run_spec
from .files import atomic_write_json

log = logging.getLogger(__name__)

#: columns of a prediction row, in order (the Parquet schema of :mod:`absclip.scaleout` has the same names)
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
        key: the image's content key (:func:`absclip.data.image_key`); None when skipped.
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


def label_images(
    clf: Classifier,
    paths: Sequence[str],
    methods: Sequence[str],
    *,
    output: str | os.PathLike,
    top: int = 5,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int | None = None,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Label images without ground truth; write prediction rows to ``output/predictions.jsonl``.

    Returns the summary also written to ``output/_summary.json``: ``images``, ``labelled``,
    ``skipped`` (``[{file, reason}]``), ``run``, ``predictions``, ``config`` and ``timing``.

    Raises:
        AbsclipError: no images, bad settings, an output folder written with other settings.
    """
    from tqdm.auto import tqdm

    from .errors import AbsclipError

    if not paths:
        raise AbsclipError("There are no images to label.")
    methods = list(dict.fromkeys(methods))
    spec = run_spec(clf, methods, top)
    run_id = run_id_for(spec)
    attempt = f"{time.time_ns():x}"
    out = Path(output)
    rows_path = out / LOCAL_ROWS
    if overwrite and rows_path.exists():
        rows_path.unlink()
    rlog = RowLog.open(rows_path, run_id, resume=resume)
    todo = [p for p in dict.fromkeys(paths) if p not in rlog.skipped and not all((p, m) in rlog.done for m in methods)]
    if len(todo) < len(paths):
        log.warning("Resuming: %d of %d images already done in %s.", len(paths) - len(todo), len(paths), rows_path)
    t0 = time.perf_counter()
    bar = tqdm(total=len(paths), initial=len(paths) - len(todo), desc="label", unit="img", disable=not progress,
               dynamic_ncols=True)
    common = {"seed": clf.seed, "run": run_id, "attempt": attempt, "top": top}
    try:
        with _sigterm_as_interrupt():
            for i in range(0, len(todo), clf.batch_size):
                items: list[ImageItem] = []
                for p in todo[i : i + clf.batch_size]:
                    try:
                        items.append(make_item(p, max_pixels=max_pixels) if max_pixels else make_item(p))
                    except BadImageError as e:
                        for row in prediction_rows(p, None, None, None, methods, skip_reason=str(e), **common):
                            rlog.write(row)
                        bar.update(1)
                if not items:
                    continue
                ranked, secs = predict_batch(clf, clf.context(items, methods), methods, top)
                share = {m: s / len(items) for m, s in secs.items()}
                for b, it in enumerate(items):
                    for row in prediction_rows(it.source, None, it.key, {m: ranked[m][b] for m in methods}, methods,
                                               seconds=share, **common):
                        rlog.write(row)
                bar.update(len(items))
    finally:
        bar.close()
        rlog.close()
    elapsed = time.perf_counter() - t0
    skipped = [{"file": f, "reason": r} for f, r in rlog.skipped.items()]
    summary = {
        "run": run_id, "engine": "local", "images": len(paths), "labelled": len(paths) - len(skipped),
        "skipped": skipped, "predictions": str(rows_path), "config": {**spec, **(extra_config or {})},
        "timing": {"seconds": round(elapsed, 3), "images_per_s": round(len(todo) / elapsed, 4) if elapsed else None},
    }
    atomic_write_json(out / SUMMARY, summary)
    return summary
