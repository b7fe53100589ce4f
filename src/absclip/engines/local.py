"""The local engine: :func:`evaluate` (metrics in CLIP_benchmark's result shape) and :func:`label_images`,
both one resumable loop (:func:`predict_records`) writing prediction records (:mod:`absclip.io.records`).

Each finished record is written and flushed at once, so an interrupted run loses nothing;
re-running with the same settings skips finished images and gives the same final results. A
run whose settings differ from the file's is refused rather than mixed."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import time
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absclip.api import Classifier
from absclip.engines.results import (
    default_predictions,
    previous_run_parts,
    results_document,
    run_id_for,
    run_timing,
    tally,
    write_results,
)
from absclip.errors import AbsclipError, BadImageError
from absclip.io.files import atomic_write_json
from absclip.io.images import DEFAULT_MAX_PIXELS, ImageItem, make_item
from absclip.io.records import LOCAL_ROWS, SUMMARY, JsonlRecordWriter, RecordWriter, make_records, sample_identity
from absclip.io.sources import Sample, iter_batches
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


#: how the local engine orders the stream of a run with a stateful method (recorded in its run spec)
STREAM_ORDER = "images sorted by sha256(seed, image identity)"


def stream_order(samples: Sequence[Sample], seed: int) -> list[Sample]:
    """Return ``samples`` in the one seeded order of an online (stateful) method's stream.

    A shuffle that depends only on the seed and each image's identity (its path or URI), not on the
    listing order, batch size or resumption: the same images and seed give the same stream.
    """
    def rank(s: Sample) -> bytes:
        return hashlib.sha256(f"{int(seed)}\x00{sample_identity(s.path)}".encode()).digest()

    return sorted(samples, key=rank)


def stateful_methods(clf: Classifier, methods: Sequence[str]) -> list[str]:
    """Return the methods among ``methods`` whose predictions depend on the order of the images."""
    return [m for m in methods if clf.method(m).stateful]


def run_spec(clf: Classifier, methods: Sequence[str], top: int) -> dict[str, Any]:
    """Return everything that changes the predictions of ``methods`` (hashed by :func:`run_id_for`).

    Prepares the methods (encodes their texts) if that has not happened yet. A run with a stateful
    method also records the order its stream is processed in (``stream``).
    """
    prepared = {m: clf.method(m) for m in methods}
    spec = {
        "backbone": clf.backbone.identity,
        "attention": clf.attention.identity if any(prepared[m].needs_attention for m in methods) else None,
        "methods": {m: {"config": prepared[m].config(), "bank": prepared[m].bank_digest} for m in methods},
        "seed": clf.seed,
        "classes": clf.classes,
        "top": top,
        "dtype": str(clf.backbone.dtype),
    }
    stateful = stateful_methods(clf, methods)
    if stateful:
        spec["stream"] = {"methods": stateful, "order": STREAM_ORDER, "seed": clf.seed}
    return spec


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


@dataclass
class LoopStats:
    """What one pass of :func:`predict_records` did.

    Attributes:
        todo: images it had to predict (the others were done by an earlier run).
        method_seconds: per method, compute seconds of this pass.
        attempt: this pass's id (the ``attempt`` of the records it wrote).
        order: every sample's identity, once, in source order (the data set, for tallying).
    """

    todo: int
    method_seconds: dict[str, float]
    attempt: str = ""
    order: list[str] = field(default_factory=list)


def sample_item(s: Sample, max_pixels: int | None) -> ImageItem:
    """Return the decoded image of a sample: its bytes (tar member, dataset cell) or its file.

    Raises:
        BadImageError: unreadable, or a sample without an image (its ``error``).
    """
    if s.error is not None:
        raise BadImageError(s.error)
    if s.data is not None:
        return make_item(s.data, max_pixels=max_pixels, name=s.path)
    return make_item(s.path, max_pixels=max_pixels)


def predict_records(
    clf: Classifier,
    samples: Iterable[Sample],
    methods: Sequence[str],
    writer: RecordWriter,
    *,
    run_id: str,
    labelled: bool,
    top: int,
    desc: str,
    progress: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    total: int | None = None,
) -> LoopStats:
    """The local engine's one loop: predict every sample not yet done in ``writer`` and write its records.

    ``samples`` are consumed as a stream (a list, or a reader of shards or dataset files), so
    memory does not hold more than a batch of images. Batches of ``clf.batch_size`` images are
    decoded (an unreadable image becomes records with ``skip_reason``), predicted with
    :func:`predict_batch`, and written one record per (image, method) as soon as known. A sample is
    done when ``writer.done`` holds a record for each method, keyed by
    :func:`absclip.io.records.record_key`. SIGTERM is treated as Ctrl-C. A stateful (online) method
    needs its one seeded stream order, so its samples are gathered first (bytes included).

    Args:
        clf: the classifier, classes set.
        samples: the images (listed twice: predicted once).
        methods: method names.
        writer: where records go; its ``done`` says what an earlier run finished.
        run_id: the settings hash recorded in every record.
        labelled: record each sample's label (eval) or None (label).
        top: classes kept per record.
        desc: the progress bar's name.
        progress: show a progress bar.
        max_pixels: largest image decoded (None: no limit).
        total: the number of samples when ``samples`` has no length but the source knows it (the bar's total).
    """
    from tqdm.auto import tqdm

    methods = list(methods)
    stateful = stateful_methods(clf, methods)
    if stateful:  # one stream in one recorded order, from empty state: the whole listing is needed first
        first: dict[str, Sample] = {}
        for s in samples:
            first.setdefault(sample_identity(s.path), s)
        samples = stream_order(list(first.values()), clf.seed)
    if isinstance(samples, Sized):
        total = len(samples)

    def finished(ident: str) -> bool:
        return all((ident, m) in writer.done for m in methods)

    if stateful and any((sample_identity(s.path), m) in writer.done for s in samples for m in stateful) and not all(
            finished(sample_identity(s.path)) for s in samples):
        raise AbsclipError(f"Method {stateful[0]!r} learns from every earlier image, so an interrupted run cannot "
                           "be resumed: run it again with `overwrite`.")
    for m in stateful:
        clf.method(m).reset()
    already = sum(1 for i in {k[0] for k in writer.done} if finished(i))
    if already:
        log.warning("Resuming: %d%s images already done in %s.", already, f" of {total}" if total else "",
                    getattr(writer, "path", "the output"))
    common = {"seed": clf.seed, "run": run_id, "attempt": f"{time.time_ns():x}", "top": top}

    def write(s: Sample, key: str | None, ranked: dict[str, Any] | None, ms: Sequence[str],
              reason: str | None = None, seconds: dict[str, float] | None = None) -> None:
        label = s.label if labelled else None
        for rec in make_records(s.path, label, key, ranked, ms, skip_reason=reason, seconds=seconds, **common):
            if (sample_identity(s.path), rec["method"]) not in writer.done:
                writer.write(rec)

    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    method_seconds = dict.fromkeys(methods, 0.0)
    seen: set[str] = set()
    order: list[str] = []
    todo = 0

    def fresh(stream: Iterable[Sample]) -> Iterator[Sample]:
        """The samples still to predict (each identity once); the others only advance the bar."""
        for s in stream:
            ident = sample_identity(s.path)
            if ident in seen:
                continue
            seen.add(ident)
            order.append(ident)
            if finished(ident):
                bar.update(1)
                continue
            yield s

    try:
        with sigterm_as_interrupt():
            for batch in iter_batches(fresh(samples), clf.batch_size):
                todo += len(batch)
                items: list[ImageItem] = []
                kept: list[Sample] = []
                for s in batch:
                    try:
                        items.append(sample_item(s, max_pixels))
                        kept.append(s)
                    except BadImageError as e:
                        write(s, None, None, methods, reason=str(e))
                        bar.update(1)
                if not items:
                    continue
                ranked, secs = predict_batch(clf, clf.context(items, methods), methods, top)
                share = {m: t / len(items) for m, t in secs.items()}
                for m in methods:  # method by method, as each method's batch is one computation
                    method_seconds[m] += secs[m]
                    for b, (s, it) in enumerate(zip(kept, items)):
                        write(s, it.key, {m: ranked[m][b]}, [m], seconds=share)
                bar.update(len(items))
    finally:
        bar.close()
        writer.close()
    return LoopStats(todo, method_seconds, common["attempt"], order)


def evaluate(
    clf: Classifier,
    samples: Iterable[Sample],
    methods: Sequence[str],
    *,
    output: str | os.PathLike,
    predictions: str | os.PathLike | None = None,
    dataset: str = "custom",
    top: int = 5,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    extra_config: dict[str, Any] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``methods`` on labelled ``samples``; write prediction records (JSONL) and results (JSON).

    Returns the results document written to ``output``. If ``output`` contains ``{method}``, one
    CLIP_benchmark-style file per method is written instead (the returned document lists them).
    The records (default ``<output stem>.predictions.jsonl``) keep ``max(top, 5)`` classes each.

    Raises:
        AbsclipError: bad settings, a predictions file from another run.
    """
    if isinstance(samples, Sized) and not samples:
        raise AbsclipError("There are no images to evaluate.")
    methods = list(dict.fromkeys(methods))
    spec = run_spec(clf, methods, top)  # text side once, before any image
    out_path = str(output)
    pred_path = Path(predictions or default_predictions(out_path, ".jsonl"))
    run_id = run_id_for(spec)
    if overwrite and pred_path.exists():
        pred_path.unlink()
    writer = JsonlRecordWriter.open(pred_path, run_id, resume=resume, spec=spec)
    t0 = time.perf_counter()
    stats = predict_records(clf, samples, methods, writer, run_id=run_id, labelled=True, top=max(top, 5),
                            desc="eval", progress=progress, max_pixels=max_pixels, total=total)
    elapsed = time.perf_counter() - t0
    records, order = list(writer.done.values()), stats.order
    if not order:
        raise AbsclipError("There are no images to evaluate.")
    per_method, skipped = tally(records, order, methods)
    earlier = [out_path.replace("{method}", m) for m in methods] if "{method}" in out_path else [out_path]
    timing = run_timing(records, order, attempt=stats.attempt, seconds=elapsed,
                        previous=previous_run_parts(earlier, run_id))
    doc = results_document(
        spec, per_method, model=clf.backbone.name, pretrained=clf.backbone.pretrained, dataset=dataset,
        images=len(order), skipped=skipped, predictions=str(pred_path), seconds=elapsed,
        images_this_run=stats.todo, method_seconds=stats.method_seconds, extra_config=extra_config, timing=timing,
    )
    return write_results(doc, out_path)


def label_images(
    clf: Classifier,
    paths: Iterable[str | Sample],
    methods: Sequence[str],
    *,
    output: str | os.PathLike,
    top: int = 5,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    extra_config: dict[str, Any] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Label images without ground truth; write prediction records to ``output/predictions.jsonl``.

    ``paths`` are image paths or :class:`Sample` s (a stream of shard members or dataset rows).

    Returns the summary also written to ``output/_summary.json``: ``images``, ``labelled``,
    ``skipped`` (``[{file, reason}]``), ``run``, ``predictions``, ``config`` and ``timing``.

    Raises:
        AbsclipError: no images, bad settings, an output folder written with other settings.
    """
    if isinstance(paths, Sized) and not paths:
        raise AbsclipError("There are no images to label.")
    methods = list(dict.fromkeys(methods))
    spec = run_spec(clf, methods, top)
    run_id = run_id_for(spec)
    samples = (p if isinstance(p, Sample) else Sample(str(p), -1) for p in paths)
    if isinstance(paths, Sized):
        total = len(paths)
    out = Path(output)
    rows_path = out / LOCAL_ROWS
    if overwrite and rows_path.exists():
        rows_path.unlink()
    writer = JsonlRecordWriter.open(rows_path, run_id, resume=resume, spec=spec)
    t0 = time.perf_counter()
    stats = predict_records(clf, samples, methods, writer, run_id=run_id, labelled=False,
                            top=top, desc="label", progress=progress, max_pixels=max_pixels, total=total)
    elapsed = time.perf_counter() - t0
    records, paths = list(writer.done.values()), stats.order
    if not paths:
        raise AbsclipError("There are no images to label.")
    _, skipped = tally(records, paths, methods)
    summary = {
        "run": run_id, "engine": "local", "images": len(paths), "labelled": len(paths) - len(skipped),
        "skipped": skipped, "predictions": str(rows_path), "config": {**spec, **(extra_config or {})},
        "timing": run_timing(records, paths, attempt=stats.attempt, seconds=elapsed,
                             previous=previous_run_parts([out / SUMMARY], run_id)),
    }
    atomic_write_json(out / SUMMARY, summary)
    return summary
