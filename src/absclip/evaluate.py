"""Evaluation: predictions streamed to JSONL, metrics in CLIP_benchmark's result shape, resumable.

Each finished prediction is written and flushed at once, so an interrupted run loses nothing;
re-running with the same settings skips finished images and gives the same final results. A
run whose settings differ from the file's is refused rather than mixed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import Classifier
from .data import ImageItem, Sample, make_item
from .errors import AbsclipError, BadImageError
from .files import atomic_write_json
from .methods import ABSMethod
from .pipeline import BatchContext
from .sampling import ABSDraws

log = logging.getLogger(__name__)

TASK = "zeroshot_classification"


def compute_metrics(labels: Sequence[int], topk: Sequence[Sequence[int]], num_classes: int) -> dict[str, float]:
    """Return ``acc1``, ``acc5`` and ``mean_per_class_recall`` as fractions (CLIP_benchmark's definitions).

    ``acc5`` is NaN with fewer than five classes; the per-class recall averages over the classes
    that occur in ``labels``.
    """
    n = len(labels)
    if n == 0:
        return {"acc1": math.nan, "acc5": math.nan, "mean_per_class_recall": math.nan}
    top1 = [t[0] == y for y, t in zip(labels, topk)]
    acc5 = sum(y in t[:5] for y, t in zip(labels, topk)) / n if num_classes >= 5 else math.nan
    per_class: dict[int, list[bool]] = {}
    for y, ok in zip(labels, top1):
        per_class.setdefault(y, []).append(ok)
    recall = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    return {"acc1": sum(top1) / n, "acc5": acc5, "mean_per_class_recall": recall}


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
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


def run_id_for(spec: dict[str, Any]) -> str:
    """Return a short hash of everything that changes predictions (model, weights, texts, settings, seed)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    *,
    draws: dict[str, Sequence[ABSDraws | None]] | None = None,
) -> tuple[dict[str, list[list[dict[str, Any]]]], dict[str, float]]:
    """Return ``({method: ranked classes per image}, {method: seconds})`` for one batch.

    The one prediction step of every engine: the local loops below and the Ray actors call it.
    Each image's ranking is ``max(top, 5)`` entries of ``{label, score, logit, index}``, best first.

    Args:
        clf: the classifier, classes set.
        ctx: the batch (its items, shared full-image work and attention).
        methods: method names, in the order to run them.
        top: how many classes to keep (at least 5, for ``acc5``).
        draws: ``{ABS method: draws per image}`` computed elsewhere (a scale-out stage); methods not in
            it, and None entries, draw from each image's own generator here (the same values).
    """
    ranked: dict[str, list[list[dict[str, Any]]]] = {}
    seconds: dict[str, float] = {}
    for m in methods:
        meth = clf.method(m)
        t = time.perf_counter()
        if draws and m in draws and isinstance(meth, ABSMethod):
            logits = meth.logits(ctx, clf.seed, draws=draws[m]).float()
        else:
            logits = meth.logits(ctx, clf.seed).float()
        seconds[m] = time.perf_counter() - t
        ranked[m] = clf.ranked(logits, m, top=max(top, 5))
    return ranked, seconds


def results_document(
    spec: dict[str, Any],
    records: dict[str, Sequence[tuple[int, Sequence[int]]]],
    *,
    model: str,
    pretrained: str | None,
    dataset: str,
    images: int,
    skipped: list[dict[str, str]],
    predictions: str,
    seconds: float,
    images_this_run: int,
    method_seconds: dict[str, float],
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the results document (CLIP_benchmark records per method) that both engines write.

    Args:
        spec: the run spec from :func:`run_spec`.
        records: per method, ``(label, top-k class indices)`` of every predicted image.
        model / pretrained / dataset: recorded as CLIP_benchmark does.
        images: images in the data set; ``skipped``: ``[{file, reason}]``.
        predictions: where the per-image predictions are.
        seconds / images_this_run / method_seconds: timing of this run.
    """
    from . import __version__

    methods = list(spec["methods"])
    run_id = run_id_for(spec)
    results = []
    for m in methods:
        recs = records.get(m, [])
        metrics = compute_metrics([y for y, _ in recs], [t for _, t in recs], len(spec["classes"]))
        results.append({
            "dataset": dataset, "model": model, "pretrained": pretrained,
            "task": TASK, "language": "en", "metrics": metrics,
            "absclip": {
                "version": __version__, "method": m, "method_config": spec["methods"][m]["config"],
                "bank_hash": spec["methods"][m]["bank"], "seed": spec["seed"], "images": len(recs),
                "seconds_this_run": round(method_seconds.get(m, 0.0), 3),
            },
        })
    return {
        "dataset": dataset, "model": model, "pretrained": pretrained, "task": TASK,
        "language": "en", "seed": spec["seed"], "absclip_version": __version__, "run": run_id,
        "images": images, "evaluated": images - len(skipped), "skipped": skipped,
        "predictions": predictions,
        "config": {**spec, **(extra_config or {})},
        "timing": {"seconds": round(seconds, 3),
                   "images_per_s": round(images_this_run / seconds, 4) if seconds else None},
        "results": results,
    }


def write_results(doc: dict[str, Any], output: str | os.PathLike) -> dict[str, Any]:
    """Write ``doc`` to ``output`` atomically and return it.

    If ``output`` contains ``{method}``, one CLIP_benchmark-style file per method is written
    instead and the returned document lists them under ``files``.
    """
    out_path = str(output)
    if "{method}" in out_path:
        files = []
        for r in doc["results"]:
            f = out_path.replace("{method}", r["absclip"]["method"])
            atomic_write_json(f, {**r, "absclip": {**r["absclip"], "run": doc["run"], "skipped": doc["skipped"],
                                                   "predictions": doc["predictions"], "config": doc["config"]}})
            files.append(f)
        doc["files"] = files
    else:
        atomic_write_json(out_path, doc)
    return doc


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
        with _sigterm_as_interrupt():
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
