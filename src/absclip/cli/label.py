"""``absclip label``: label, score and top-k for every image (no ground truth), locally or on Ray."""

from __future__ import annotations

import argparse

from absclip.cli.engine import _announce, add_engine_options, ray_options, recipe
from absclip.io.files import json_text


def cmd_label(args: argparse.Namespace) -> int:
    """absclip label: label, score and top-k for every image, written to --output."""
    from absclip.cli.options import open_data_inputs
    from absclip.methods.base import get_method_class

    get_method_class(args.method)
    dset, classes = open_data_inputs(args)
    extra = {"data": args.data, "classes_file": args.classes_file, "descriptions": args.descriptions,
             "limit": args.limit}
    if args.engine == "ray":
        from absclip.engines.ray import import_ray, label_ray

        import_ray()
        summary = label_ray(recipe(args, classes), args.data, [args.method], output=args.output, top=args.top,
                            options=ray_options(args), resume=args.resume, overwrite=args.overwrite,
                            max_pixels=args.max_pixels, limit=args.limit, image_column=args.image_column,
                            announce=_announce, extra_config=extra)
    else:
        from absclip.cli.options import build_classifier, set_classes
        from absclip.engines.local import label_images
        from absclip.io.sources import take
        from absclip.text.sources import read_texts

        samples = take(dset.samples(None), args.limit)
        total = dset.total if args.limit is None or dset.total is None else min(args.limit, dset.total)
        texts = read_texts(args.descriptions, args.descriptors, args.templates, descriptions_dir=args.descriptions_dir)
        clf = build_classifier(args, [args.method])  # after every user file was read
        set_classes(clf, args, (classes, texts))
        summary = label_images(clf, samples, [args.method], output=args.output, top=args.top, resume=args.resume,
                               overwrite=args.overwrite, progress=not args.no_progress, max_pixels=args.max_pixels,
                               extra_config=extra, total=total)
    if args.json:
        print(json_text(summary, indent=2, default=str))
    else:
        t = summary["timing"]
        rate = f", {t['images_per_s']:.2f} images/s" if t.get("images_per_s") else ""
        print(f"labelled {summary['labelled']} of {summary['images']} images ({len(summary['skipped'])} skipped) "
              f"with {args.method} in {t['seconds']:.1f} s{rate}; rows: {summary['predictions']}")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``absclip label`` to the ``absclip`` parser (model and ABS options from ``common``)."""
    from absclip.cli.options import EPILOG_MODELS, class_options, method_help, positive_int

    p = sub.add_parser(
        "label", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="label many images (no ground truth): label, score and top-k per image",
        description="Label images without ground truth. Writes one record per image: path, predicted label, score, "
                    "top-k labels and scores, method, seed, skip reason. The local engine writes "
                    "DIR/predictions.jsonl; --engine ray writes Parquet shards into DIR. Both write DIR/_summary.json "
                    "and resume an interrupted run.",
        epilog="examples:\n  absclip label photos/ --classes-file classes.txt --descriptions cupl.json --output out/\n"
               "  absclip label s3://bucket/list.parquet --classes-file classes.txt --output s3://bucket/labels/ \\\n"
               "      --engine ray --address auto --gpus-per-actor 1\n\n"
               "  absclip label 'wds_imagenet1k/test/{0..63}.tar' --output out/   # classes: classnames.txt\n\n"
               "DATA: a folder of images (recursive), a CSV/TSV/JSONL listing with an image column (also Parquet "
               "with --engine ray), one image, webdataset shards or a HF dataset (see `absclip eval --help`)\n\n"
               + EPILOG_MODELS,
    )
    p.add_argument("data", metavar="DATA", help="folder, listing (CSV/TSV/JSONL; Parquet with Ray), image, "
                                                "webdataset shards 'DIR/{0..N}.tar' or HF dataset; local path, or any "
                                                "URI pyarrow reads (s3://, gs://, ...) for shards, Parquet and Ray")
    class_options(p, data_default=True)
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (path, or URI with --engine ray)")
    p.add_argument("--method", default="abs", help=method_help("abs"))
    p.add_argument("--top", type=positive_int, default=5, help="labels and scores kept per image (default: 5)")
    p.add_argument("--limit", type=int, help="label only the first N images")
    p.add_argument("--image-column", help="listing column with image paths, or a HF dataset's image column "
                                          "(default: path/file/image...; the Image feature)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted run with the same settings (default: on)")
    p.add_argument("--overwrite", action="store_true", help="discard existing rows and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_engine_options(p)
    p.set_defaults(func=cmd_label)
