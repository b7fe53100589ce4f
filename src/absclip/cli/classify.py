"""``absclip classify``: ranked labels for images."""

from __future__ import annotations

import argparse
import logging

from absclip.cli.options import build_classifier, read_class_inputs, read_images, set_classes
from absclip.io.files import json_text

log = logging.getLogger("absclip")


def cmd_classify(args: argparse.Namespace) -> int:
    """absclip classify: ranked labels for each image."""
    from absclip.methods.base import get_method_class

    get_method_class(args.method)
    items = read_images(args.images, args.max_pixels)  # every user file is read before the model loads
    inputs = read_class_inputs(args)
    clf = build_classifier(args, [args.method])
    set_classes(clf, args, inputs)
    logits = clf.logits(items, args.method)
    ranked = clf.ranked(logits, args.method, top=args.top)
    if args.json:
        out = [{"image": it.source, "method": args.method,
                "predictions": [{"label": r["label"], "score": r["score"]} for r in rows]}
               for it, rows in zip(items, ranked)]
        print(json_text(out, indent=2))
    else:
        for it, rows in zip(items, ranked):
            print(f"{it.source}  ({args.method})")
            for r in rows:
                print(f"  {r['score']:.4f}  {r['label']}")
    return 0
