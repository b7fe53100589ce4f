"""``absclip eval``: metrics per method on a labelled data set, on the local engine or Ray."""

from __future__ import annotations

import argparse
import logging
import math
import os
from typing import Any

from absclip.cli.engine import _announce, ray_options, recipe
from absclip.cli.options import build_classifier
from absclip.io.files import json_text

log = logging.getLogger("absclip")


def cmd_eval(args: argparse.Namespace) -> int:
    """absclip eval: metrics per method, prediction records (JSONL, or Parquet on Ray), results JSON, report."""
    from absclip.cli.options import open_data_inputs
    from absclip.engines.local import evaluate
    from absclip.io.sources import take
    from absclip.methods.base import get_method_class

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method_class(m)
    dset, classes = open_data_inputs(args)
    if getattr(args, "engine", "local") == "ray":  # scale-out engine (absclip.engines.ray): same results document
        doc = eval_on_ray(args, classes, methods)
        if args.report:  # from the Parquet records; thumbnails (the model is not loaded on the driver)
            from absclip.diagnostics.report import write_report

            write_report(doc, args.report, max_images=args.report_max_images, progress=not args.no_progress)
        return print_eval_results(doc, args)
    samples = take(dset.samples(classes), args.limit)
    total = dset.total if args.limit is None or dset.total is None else min(args.limit, dset.total)
    from absclip.text.sources import read_texts

    texts = read_texts(args.descriptions, args.descriptors, args.templates, descriptions_dir=args.descriptions_dir)
    clf = build_classifier(args, methods)  # after every user file was read
    clf.set_classes(classes, texts=texts)
    doc = evaluate(clf, samples, methods, output=args.output, predictions=args.predictions,
                   dataset=dataset_name(args), top=args.top, resume=args.resume, overwrite=args.overwrite,
                   progress=not args.no_progress, max_pixels=args.max_pixels, total=total,
                   extra_config={"data": args.data, "classes_file": args.classes_file,
                                 "descriptions": args.descriptions, "limit": args.limit})
    if args.report:
        from absclip.diagnostics.report import write_report

        write_report(doc, args.report, clf=clf, max_images=args.report_max_images, progress=not args.no_progress)
    return print_eval_results(doc, args)


def dataset_name(args: argparse.Namespace) -> str:
    """Return the data set's name for the results: ``--dataset-name``, else the data folder's name (for shards
    ``DIR/test/{0..N}.tar``, CLIP_benchmark's ``wds_NAME`` folder: ``DIR``)."""
    if args.dataset_name:
        return args.dataset_name
    path = os.path.normpath(str(args.data).split("{", 1)[0])
    if str(args.data).lower().endswith(".tar") or "{" in str(args.data):
        path = os.path.dirname(path) if not path.endswith(os.sep) else path
        if os.path.basename(path) in ("test", "train", "validation", "val"):
            path = os.path.dirname(path)
    return os.path.basename(path)


def print_eval_results(doc: dict[str, Any], args: argparse.Namespace) -> int:
    """Print an eval results document (JSON, or a metrics table with the files written); return 0."""
    if args.json:
        print(json_text(doc, indent=2, default=str))
    else:
        print(f"{'method':<10} {'acc1':>8} {'acc5':>8} {'mpcr':>8}   ({doc['evaluated']} images, "
              f"{len(doc['skipped'])} skipped, {doc['timing']['seconds']:.1f} s)")
        for r in doc["results"]:
            m = r["metrics"]
            fmt = [("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:8.4f}")
                   for v in (m["acc1"], m["acc5"], m["mean_per_class_recall"])]
            print(f"{r['absclip']['method']:<10} {fmt[0]:>8} {fmt[1]:>8} {fmt[2]:>8}")
        print(f"results: {', '.join(doc.get('files', [args.output]))}; predictions: {doc['predictions']}")
        if args.report:
            print(f"report: {args.report}")
    return 0


def eval_on_ray(args: argparse.Namespace, classes: Any, methods: list[str]) -> dict[str, Any]:
    """Run ``absclip eval --engine ray``; return the results document (written to ``--output``)."""
    from absclip.engines.ray import evaluate_ray, import_ray

    import_ray()
    doc = evaluate_ray(recipe(args, classes), args.data, methods, output=args.output, predictions=args.predictions,
                       dataset=dataset_name(args), top=args.top, options=ray_options(args), resume=args.resume,
                       overwrite=args.overwrite, max_pixels=args.max_pixels, limit=args.limit,
                       image_column=args.image_column, label_column=args.label_column, announce=_announce,
                       extra_config={"data": args.data, "classes_file": args.classes_file,
                                     "descriptions": args.descriptions, "limit": args.limit})
    t = doc["timing"]
    _announce(f"ray: {doc['evaluated']} images evaluated ({len(doc['skipped'])} skipped) in "
              f"{doc['config']['seconds_total']:.1f} s; pipeline {t['seconds']:.1f} s"
              + (f", {t['images_per_s']:.2f} images/s" if t.get("images_per_s") and t.get("images_this_run", 1)
                 else " (nothing left to do)"))
    return doc
