"""CLI command ``absclip label`` (bulk labelling) and the ``--engine ray`` options shared with ``absclip eval``."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any

ENGINES = ("local", "ray")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """Add ``--engine`` and the Ray options (actors, resources, address) to a subcommand's parser."""
    g = p.add_argument_group("engine", "where the work runs; Ray needs the extra: pip install 'absclip[ray]'")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: in this process (default); ray: a Ray Data pipeline on a Ray cluster")
    g.add_argument("--address", help="Ray cluster: auto (a running one) or ray://HOST:PORT (default: $RAY_ADDRESS, "
                                     "else a new local Ray instance)")
    g.add_argument("--actors", type=int, help="encode/score actors (default: one per GPU share, or as many as the "
                                              "cluster's CPUs allow)")
    g.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor; fractions share a GPU "
                                                                     "(default: 0)")
    g.add_argument("--cpus-per-actor", type=float, help="logical CPUs per actor; torch uses ceil(F) threads "
                                                        "(default: 1)")
    g.add_argument("--attention-on", choices=["stage", "actor"],
                   help="stage: attention maps and ABS draws in a separate CPU stage (default without GPUs); actor: "
                        "inside the encode actors, on their device (default with GPUs)")
    g.add_argument("--attention-actors", type=int, help="actors of the CPU attention stage (default: 1)")
    g.add_argument("--decode-batch-size", type=int, help="images per decode/attention batch (default: --batch-size)")


def ray_options(args: argparse.Namespace) -> Any:
    """Return :class:`absclip.scaleout.RayOptions` from parsed options."""
    from .scaleout import RayOptions

    return RayOptions(address=args.address, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                      gpus_per_actor=args.gpus_per_actor, attention=args.attention_on,
                      attention_actors=args.attention_actors, batch_size=args.batch_size,
                      decode_batch_size=args.decode_batch_size, progress=not args.no_progress)


def recipe(args: argparse.Namespace, classes: Any) -> Any:
    """Return the :class:`absclip.scaleout.ClassifierRecipe` of the command line (texts read here)."""
    from .cli import build_classifier
    from .scaleout import ClassifierRecipe

    return ClassifierRecipe.from_sources(functools.partial(build_classifier, args), classes, args.descriptions,
                                         args.descriptors, args.templates)


def _announce(line: str) -> None:
    print(f"absclip: {line}", file=sys.stderr, flush=True)


def eval_on_ray(args: argparse.Namespace, classes: Any, methods: list[str]) -> dict[str, Any]:
    """Run ``absclip eval --engine ray``; return the results document (written to ``--output``)."""
    from .errors import AbsclipError
    from .scaleout import evaluate_ray, import_ray

    import_ray()
    if args.report:
        raise AbsclipError("--report reads the local engine's predictions; run it without --engine ray, or call "
                           "absclip.report.write_report on these results later.")
    dataset = args.dataset_name or os.path.basename(os.path.normpath(args.data))
    doc = evaluate_ray(recipe(args, classes), args.data, methods, output=args.output, predictions=args.predictions,
                       dataset=dataset, top=args.top, options=ray_options(args), resume=args.resume,
                       overwrite=args.overwrite, max_pixels=args.max_pixels, limit=args.limit,
                       image_column=args.image_column, label_column=args.label_column, announce=_announce,
                       extra_config={"data": args.data, "classes_file": args.classes_file,
                                     "descriptions": args.descriptions, "limit": args.limit})
    t = doc["timing"]
    _announce(f"ray: {doc['evaluated']} images evaluated ({len(doc['skipped'])} skipped) in "
              f"{doc['config']['seconds_total']:.1f} s; pipeline {t['seconds']:.1f} s"
              + (f", {t['images_per_s']:.2f} images/s" if t["images_per_s"] else " (nothing left to do)"))
    return doc


def cmd_label(args: argparse.Namespace) -> int:
    """absclip label: label, score and top-k for every image, written to --output."""
    from .methods import get_method_class
    from .text import load_classes

    get_method_class(args.method)
    classes = load_classes(args.classes, args.classes_file)
    extra = {"data": args.data, "classes_file": args.classes_file, "descriptions": args.descriptions,
             "limit": args.limit}
    if args.engine == "ray":
        from .scaleout import import_ray, label_ray

        import_ray()
        summary = label_ray(recipe(args, classes), args.data, [args.method], output=args.output, top=args.top,
                            options=ray_options(args), resume=args.resume, overwrite=args.overwrite,
                            max_pixels=args.max_pixels, limit=args.limit, image_column=args.image_column,
                            announce=_announce, extra_config=extra)
    else:
        from .cli import build_classifier, set_classes
        from .data import load_paths
        from .labelling import label_images

        paths = load_paths(args.data, image_column=args.image_column)
        paths = paths if args.limit is None else paths[: args.limit]
        clf = build_classifier(args)
        set_classes(clf, args)
        summary = label_images(clf, paths, [args.method], output=args.output, top=args.top, resume=args.resume,
                               overwrite=args.overwrite, progress=not args.no_progress, max_pixels=args.max_pixels,
                               extra_config=extra)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        t = summary["timing"]
        rate = f", {t['images_per_s']:.2f} images/s" if t.get("images_per_s") else ""
        print(f"labelled {summary['labelled']} of {summary['images']} images ({len(summary['skipped'])} skipped) "
              f"with {args.method} in {t['seconds']:.1f} s{rate}; rows: {summary['predictions']}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``absclip label`` to the ``absclip`` parser (model and ABS options from ``common``)."""
    from .cli import EPILOG_MODELS, _class_options

    p = sub.add_parser(
        "label", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="label many images (no ground truth): label, score and top-k per image",
        description="Label images without ground truth. Writes one row per image: path, predicted label, score, "
                    "top-k labels and scores, method, seed, skip reason. The local engine writes "
                    "DIR/predictions.jsonl; --engine ray writes Parquet shards into DIR. Both write DIR/_summary.json "
                    "and resume an interrupted run.",
        epilog="examples:\n  absclip label photos/ --classes-file classes.txt --descriptions cupl.json --output out/\n"
               "  absclip label s3://bucket/list.parquet --classes-file classes.txt --output s3://bucket/labels/ \\\n"
               "      --engine ray --address auto --gpus-per-actor 1\n\n"
               "DATA: a folder of images (recursive), a CSV/TSV/JSONL listing with an image column (also Parquet "
               "with --engine ray), or one image\n\n" + EPILOG_MODELS,
    )
    p.add_argument("data", metavar="DATA", help="folder, listing (CSV/TSV/JSONL; Parquet with Ray) or image; local "
                                                "path, or with --engine ray any URI pyarrow reads (s3://, gs://, ...)")
    _class_options(p)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (path, or URI with --engine ray)")
    p.add_argument("--method", default="abs", help="abs (default), clip, clip-e, cupl, dclip, waffle or wca")
    p.add_argument("--top", type=int, default=5, help="labels and scores kept per image (default: 5)")
    p.add_argument("--limit", type=int, help="label only the first N images")
    p.add_argument("--image-column", help="listing column with image paths (default: path/file/image...)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted run with the same settings (default: on)")
    p.add_argument("--overwrite", action="store_true", help="discard existing rows and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_engine_options(p)
    p.set_defaults(func=cmd_label)
