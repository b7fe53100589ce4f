"""The two commands on Ray: :func:`evaluate_ray` (the same results JSON as the local engine) and
:func:`label_ray` (Parquet prediction records plus ``_summary.json``), both reading back one :func:`run_pipeline`."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from absclip.engines.ray.driver import RayRun, run_pipeline
from absclip.engines.ray.options import ClassifierRecipe
from absclip.io.shards import OutputDir

log = logging.getLogger(__package__)  # "absclip.engines.ray", the logger of the module before the split


def _records(run: RayRun) -> list[dict[str, Any]]:
    """Return the run's records (one per image and method: the first) as dicts."""
    from absclip.io.records import unique_records

    return unique_records(run.rows.to_pylist())


def evaluate_ray(
    recipe: ClassifierRecipe,
    data: str,
    methods: Sequence[str],
    *,
    output: str | os.PathLike,
    predictions: str | None = None,
    dataset: str = "custom",
    top: int = 5,
    extra_config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate on Ray; write Parquet predictions and the same results JSON as :func:`absclip.engines.local.evaluate`.

    Returns the results document. ``predictions`` is the Parquet folder (default: next to
    ``output``, ``<name>.predictions``); other keyword arguments go to :func:`run_pipeline`.
    """
    from absclip.engines.results import (
        default_predictions,
        previous_run_parts,
        results_document,
        run_timing,
        tally,
        write_results,
    )

    out_path = str(output)
    pred_dir = predictions or default_predictions(out_path, "")
    t0 = time.perf_counter()
    run = run_pipeline(recipe, data, methods, output=pred_dir, labelled=True, top=top, keep=max(top, 5), **kwargs)
    methods = list(dict.fromkeys(methods))
    rows = _records(run)
    order = list(dict.fromkeys(run.paths))
    per_method, skipped = tally(rows, order, methods)
    mine = [r for r in rows if r["attempt"] == run.attempt]
    method_seconds = {m: sum(r["seconds"] for r in mine if r["method"] == m) for m in methods}
    earlier = [out_path.replace("{method}", m) for m in methods] if "{method}" in out_path else [out_path]
    timing = run_timing(rows, order, attempt=run.attempt, seconds=run.seconds,
                        previous=previous_run_parts(earlier, run.run_id))
    doc = results_document(
        run.meta["spec"], per_method, model=run.meta["model"], pretrained=run.meta["pretrained"], dataset=dataset,
        images=len(order), skipped=skipped, predictions=pred_dir, seconds=run.seconds,
        images_this_run=len({r["path"] for r in mine}), method_seconds=method_seconds,
        extra_config={**(extra_config or {}), "engine": "ray", "ray": dataclasses.asdict(run.plan),
                      "seconds_total": round(time.perf_counter() - t0, 3)},
        timing=timing,
    )
    return write_results(doc, out_path)


def label_ray(
    recipe: ClassifierRecipe,
    data: str,
    methods: Sequence[str],
    *,
    output: str,
    top: int = 5,
    extra_config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Label images on Ray: Parquet prediction records in ``output`` plus ``output/_summary.json``.

    Returns the summary (the same keys as :func:`absclip.engines.local.label_images`).
    """
    from absclip.engines.results import previous_run_parts, run_timing, tally
    from absclip.io.records import SUMMARY

    t0 = time.perf_counter()
    run = run_pipeline(recipe, data, methods, output=output, labelled=False, top=top, **kwargs)
    rows = _records(run)
    order = list(dict.fromkeys(run.paths))
    _, skipped = tally(rows, order, list(dict.fromkeys(methods)))
    earlier = previous_run_parts([os.path.join(output, SUMMARY)], run.run_id)  # a local folder's; else estimated
    summary = {
        "run": run.run_id, "engine": "ray", "images": len(order), "labelled": len(order) - len(skipped),
        "skipped": skipped, "predictions": output,
        "config": {**run.meta["spec"], **(extra_config or {}), "ray": dataclasses.asdict(run.plan)},
        "timing": {**run_timing(rows, order, attempt=run.attempt, seconds=run.seconds, previous=earlier),
                   "seconds_total": round(time.perf_counter() - t0, 3)},
    }
    OutputDir(output).write_json(SUMMARY, summary)
    return summary
