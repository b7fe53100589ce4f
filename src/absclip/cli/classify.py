"""``absclip classify``: ranked labels for images."""

from __future__ import annotations

import argparse
import logging

from absclip.cli.options import build_classifier, expand_images, set_classes
from absclip.io.files import json_text

log = logging.getLogger("absclip")


def cmd_classify(args: argparse.Namespace) -> int:
    """absclip classify: ranked labels for each image."""
    from absclip.io.images import make_item
    from absclip.methods.base import get_method_class

    get_method_class(args.method)
    items = [make_item(p, max_pixels=args.max_pixels)
             for p in expand_images(args.images)]
    clf = build_classifier(args)
    set_classes(clf, args)
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
