"""Evaluation: predictions streamed to JSONL, metrics in CLIP_benchmark's result shape, resumable.

Each finished prediction is written and flushed at once, so an interrupted run loses nothing;
re-running with the same settings skips finished images and gives the same final results. A
run whose settings differ from the file's is refused rather than mixed."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from absclip.api import Classifier
from absclip.engines.results import results_document, run_id_for, write_results
from absclip.errors import AbsclipError, BadImageError
from absclip.io.files import atomic_write_json
from absclip.io.images import ImageItem, make_item
from absclip.io.records import LOCAL_ROWS, SUMMARY, PredictionLog, RowLog, prediction_rows
from absclip.io.sources import Sample
from absclip.methods.batch import BatchContext

log = logging.getLogger(__name__)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so that files are closed cleanly (main thread only)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_spec(clf: Classifier, methods: Sequence[str], top: int) -> dict[str, Any]:
    """Return everything that changes the predictions of ``methods`` (hashed by :func:`run_id_for`).

    Prepares the methods (encodes their texts) if that has not happened yet.
    """
    prepared = {m: clf.method(m) for m in methods}
    return {
        "backbone": clf.backbone.identity,
        "attention": clf.attention.identity if any(prepared[m].needs_attention for m in methods) else None,
        "methods": {m: {"config": prepared[m].config(), "bank": prepared[m].bank_digest} for m in methods},
        "seed": clf.seed,
        "classes": clf.classes,
        "top": top,
        "dtype": str(clf.backbone.dtype),
    }


def predict_batch(
    clf: Classifier,
    ctx: BatchContext,
    methods: Sequence[str],
    top: int,
) -> tuple[dict[str, list[list[dict[str, Any]]]], dict[str, float]]:
    """Return ``({method: ranked classes per image}, {method: seconds})`` for one batch.

    The one prediction step of every engine: the local loops below and the Ray actors call it.
    Each image's ranking is ``max(top, 5)`` entries of ``{label, score, logit, index}``, best first.

    Args:
        clf: the classifier, classes set.
        ctx: the batch (its items, shared full-image work and attention).
        methods: method names, in the order to run them.
        top: how many classes to keep (at least 5, for ``acc5``).
    """
    ranked: dict[str, list[list[dict[str, Any]]]] = {}
    seconds: dict[str, float] = {}
    for m in methods:
        meth = clf.method(m)
        t = time.perf_counter()
        logits = meth.logits(ctx, clf.seed).float()
        seconds[m] = time.perf_counter() - t
        ranked[m] = clf.ranked(logits, m, top=max(top, 5))
    return ranked, seconds


def evaluate(
    clf: Classifier,
    samples: Sequence[Sample],
    methods: Sequence[str],
    *,
    output: str | os.PathLike,
    predictions: str | os.PathLike | None = None,
    dataset: str = "custom",
    top: int = 5,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int | None = None,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``methods`` on labelled ``samples``; write predictions (JSONL) and results (JSON).

    Returns the results document written to ``output``. If ``output`` contains ``{method}``, one
    CLIP_benchmark-style file per method is written instead (the returned document lists them).

    Raises:
        AbsclipError: bad settings, a predictions file from another run.
    """
    from tqdm.auto import tqdm

    if not samples:
        raise AbsclipError("There are no images to evaluate.")
    methods = list(dict.fromkeys(methods))
    spec = run_spec(clf, methods, top)  # text side once, before any image
    out_path = str(output)
    pred_path = Path(predictions) if predictions else Path(
        out_path.replace("{method}", "all").rsplit(".json", 1)[0] + ".predictions.jsonl")
    run_id = run_id_for(spec)
    if overwrite and pred_path.exists():
        pred_path.unlink()
    plog = PredictionLog.open(pred_path, run_id, resume=resume)
    t0 = time.perf_counter()
    todo = [s for s in samples if s.path not in plog.skipped and not all((s.path, m) in plog.done for m in methods)]
    if len(todo) < len(samples):
        log.warning("Resuming: %d of %d images already done in %s.", len(samples) - len(todo), len(samples), pred_path)
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="eval", unit="img", disable=not progress,
               dynamic_ncols=True)
    method_seconds = dict.fromkeys(methods, 0.0)
    try:
        with sigterm_as_interrupt():
            for i in range(0, len(todo), clf.batch_size):
                chunk = todo[i : i + clf.batch_size]
                items: list[ImageItem] = []
                kept: list[Sample] = []
                for s in chunk:
                    try:
                        items.append(make_item(s.path, max_pixels=max_pixels) if max_pixels else make_item(s.path))
                        kept.append(s)
                    except BadImageError as e:
                        plog.write({"file": s.path, "label": s.label, "skipped": True, "reason": str(e)})
                        bar.update(1)
                if not items:
                    continue
                ranked_by_method, secs = predict_batch(clf, clf.context(items, methods), methods, top)
                for m in methods:
                    method_seconds[m] += secs[m]
                    for s, r in zip(kept, ranked_by_method[m]):
                        if (s.path, m) in plog.done:
                            continue
                        plog.write({
                            "file": s.path, "method": m, "label": s.label, "pred": r[0]["index"],
                            "topk": [x["index"] for x in r], "topk_labels": [x["label"] for x in r],
                            "scores": [round(x["score"], 6) for x in r], "logits": [round(x["logit"], 6) for x in r],
                        })
                bar.update(len(kept))
    finally:
        bar.close()
        plog.close()
    elapsed = time.perf_counter() - t0

    order = [s.path for s in samples]
    records = {m: [(plog.done[(p, m)]["label"], plog.done[(p, m)]["topk"]) for p in order if (p, m) in plog.done]
               for m in methods}
    doc = results_document(
        spec, records, model=clf.backbone.name, pretrained=clf.backbone.pretrained, dataset=dataset,
        images=len(samples), skipped=[{"file": f, "reason": r} for f, r in plog.skipped.items()],
        predictions=str(pred_path), seconds=elapsed, images_this_run=len(todo), method_seconds=method_seconds,
        extra_config=extra_config,
    )
    return write_results(doc, out_path)

log = logging.getLogger(__name__)


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

    from absclip.errors import AbsclipError

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
        with sigterm_as_interrupt():
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
