"""Metrics and results documents in CLIP_benchmark's shape, written by every engine."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from absclip.io.files import atomic_write_json
from absclip.io.records import record_key, sample_identity

log = logging.getLogger(__name__)

TASK = "zeroshot_classification"


def compute_metrics(
    labels: Sequence[int], topk: Sequence[Sequence[int]], num_classes: int
) -> dict[str, float | None]:
    """Return ``acc1``, ``acc5`` and ``mean_per_class_recall`` as fractions (CLIP_benchmark's definitions).

    An undefined metric is ``None`` (``null`` in the JSON files, which are strict JSON): ``acc5``
    with fewer than five classes, all three with no images. The per-class recall averages over
    the classes that occur in ``labels``.
    """
    n = len(labels)
    if n == 0:
        return {"acc1": None, "acc5": None, "mean_per_class_recall": None}
    top1 = [t[0] == y for y, t in zip(labels, topk)]
    acc5 = sum(y in t[:5] for y, t in zip(labels, topk)) / n if num_classes >= 5 else None
    per_class: dict[int, list[bool]] = {}
    for y, ok in zip(labels, top1):
        per_class.setdefault(y, []).append(ok)
    recall = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    return {"acc1": sum(top1) / n, "acc5": acc5, "mean_per_class_recall": recall}


def run_id_for(spec: dict[str, Any]) -> str:
    """Return a short hash of everything that changes predictions (model, weights, texts, settings, seed)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tally(
    records: Sequence[dict[str, Any]], order: Sequence[str], methods: Sequence[str]
) -> tuple[dict[str, list[tuple[int, list[int]]]], list[dict[str, str]]]:
    """Return ``({method: [(label, topk)]}, [{file, reason}])`` from prediction records, in ``order``.

    The one reading of records into metrics inputs, for every engine. ``records`` hold one record
    per (image, method) (:func:`absclip.io.records.unique_records`); ``order`` lists the data set's
    images (paths or URIs); records of other images are ignored, skipped images are listed once.
    """
    by_key = {record_key(r): r for r in records}
    ids = list(dict.fromkeys(sample_identity(p) for p in order))
    skipped: dict[str, str] = {}
    for r in records:
        if r["skip_reason"]:
            skipped.setdefault(record_key(r)[0], r["skip_reason"])
    per_method = {m: [(by_key[(i, m)]["label"], by_key[(i, m)]["topk"]) for i in ids
                      if (i, m) in by_key and not by_key[(i, m)]["skip_reason"]] for m in methods}
    return per_method, [{"file": i, "reason": skipped[i]} for i in ids if i in skipped]


def run_timing(
    records: Sequence[dict[str, Any]],
    order: Sequence[str],
    *,
    attempt: str,
    seconds: float,
    previous: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the ``timing`` of a run over all its parts, for the results document and ``_summary.json``.

    A resumed run has several parts (invocations, the records' ``attempt``); ``timing.seconds``
    and ``images_per_s`` cover the images of every part, ``parts`` counts them and ``run_parts``
    lists ``{attempt, images, seconds}``. This part's seconds are measured (``seconds``); an
    earlier part's come from ``previous`` (the ``run_parts`` of the document written before) or,
    for a part that wrote no document (interrupted), from the sum of its records' compute
    ``seconds``, marked ``"estimated": true``. A re-run with nothing left to do adds no part.

    Args:
        records: the run's records (one per image and method).
        order: the data set's images; records of other images are ignored.
        attempt / seconds: this invocation's id and wall seconds.
        previous: ``timing.run_parts`` of the document this run replaces (same run id), if any.
    """
    ids = {sample_identity(p) for p in order}
    images: dict[str, set[str]] = {}
    compute: dict[str, float] = {}
    for r in records:
        i = record_key(r)[0]
        if i in ids:
            images.setdefault(r["attempt"], set()).add(i)
            compute[r["attempt"]] = compute.get(r["attempt"], 0.0) + float(r.get("seconds") or 0.0)
    known = {p.get("attempt"): p for p in previous or [] if isinstance(p, dict)
             and isinstance(p.get("seconds"), (int, float))}
    parts = []
    for a in sorted(images, key=lambda a: (len(a), a)):  # hex time stamps: in start order
        part: dict[str, Any] = {"attempt": a, "images": len(images[a])}
        if a == attempt:
            part["seconds"] = round(seconds, 3)
        elif a in known:
            part["seconds"] = float(known[a]["seconds"])
            if known[a].get("estimated"):
                part["estimated"] = True
        else:
            part.update(seconds=round(compute[a], 3), estimated=True)
        parts.append(part)
    total = sum(p["seconds"] for p in parts)
    return {"seconds": round(total, 3),
            "images_per_s": round(sum(p["images"] for p in parts) / total, 4) if total else None,
            "parts": len(parts), "run_parts": parts,
            "seconds_this_run": round(seconds, 3), "images_this_run": len(images.get(attempt, ()))}


def previous_run_parts(paths: Sequence[str | os.PathLike], run_id: str) -> list[dict[str, Any]]:
    """Return ``timing.run_parts`` of the first readable results document or summary in ``paths`` of run ``run_id``.

    Per-method results files keep the timing under ``absclip``. Anything unreadable gives ``[]``.
    """
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        doc = doc["absclip"] if isinstance(doc.get("absclip"), dict) and "run" in doc["absclip"] else doc
        if doc.get("run") == run_id and isinstance(doc.get("timing"), dict):
            parts = doc["timing"].get("run_parts")
            return list(parts) if isinstance(parts, list) else []
    return []


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
    timing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the results document (CLIP_benchmark records per method) that both engines write.

    The document is written as strict JSON: an undefined metric (``acc5`` with fewer than five
    classes) is ``null``, never NaN.

    Args:
        spec: the run spec from :func:`run_spec`.
        records: per method, ``(label, top-k class indices)`` of every predicted image.
        model / pretrained / dataset: recorded as CLIP_benchmark does.
        images: images in the data set; ``skipped``: ``[{file, reason}]``.
        predictions: where the per-image predictions are.
        seconds / images_this_run / method_seconds: timing of this run.
        timing: the timing over all parts of a resumed run (:func:`run_timing`); default: this run's.
    """
    from absclip._version import __version__

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
        "timing": timing or {"seconds": round(seconds, 3),
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
                                                   "predictions": doc["predictions"], "config": doc["config"],
                                                   "timing": doc["timing"]}})
            files.append(f)
        doc["files"] = files
    else:
        atomic_write_json(out_path, doc)
    return doc


def default_predictions(output: str | os.PathLike, suffix: str) -> str:
    """Return where the records of a results file go by default: ``<output stem>.predictions<suffix>``.

    ``{method}`` in ``output`` becomes ``all`` (one records file serves every method). The local
    engine uses ``.jsonl`` (a file), Ray ``""`` (a folder of Parquet shards).
    """
    return str(output).replace("{method}", "all").rsplit(".json", 1)[0] + ".predictions" + suffix
