"""CLI command ``absclip explain``: one picture of what ABS looked at for one image."""

from __future__ import annotations

import argparse

from absclip.io.files import json_text


def cmd_explain(args: argparse.Namespace) -> int:
    """absclip explain: write the explanation PNG of one image and print its top classes."""
    from absclip.cli.options import build_classifier, read_class_inputs, set_classes
    from absclip.diagnostics.explain import explain
    from absclip.diagnostics.explain_figure import format_distinct
    from absclip.io.images import make_item

    item = make_item(args.image, max_pixels=args.max_pixels)
    inputs = read_class_inputs(args)  # every user file is read before the model loads
    clf = build_classifier(args, ["abs"])
    set_classes(clf, args, inputs)
    ex = explain(clf, item, top=args.top, map=args.map, map_class=args.map_class,
                 classes_shown=args.show_classes, descriptions_shown=args.show_descriptions)
    drawn = ex.save(args.out, dpi=args.dpi)
    if args.json:
        print(json_text({**ex.summary(), "out": args.out, "size": list(drawn.size)}, indent=2))
    else:
        print(f"{ex.source}  (abs; map: {ex.map_kind}; top {len(ex.top)} of {ex.num_classes} classes)")
        scores = format_distinct([c.score for c in ex.top], decimals=4)  # enough digits to rank them
        for c, score in zip(ex.top, scores):
            print(f"  {score}  {c.label}")
            for text, share in zip((t for t, _ in c.descriptions),
                                   format_distinct([s for _, s in c.descriptions], percent=True)):
                print(f"          {share:>6}  {text}")
        print(f"picture: {args.out} ({drawn.size[0]}x{drawn.size[1]})")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``absclip explain`` to the ``absclip`` parser (model and ABS options from ``common``)."""
    from absclip.cli.options import EPILOG_MODELS, class_options, positive_int
    from absclip.core.settings import MAP_KINDS

    p = sub.add_parser(
        "explain", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="picture of what ABS looked at for one image",
        description="Classify one image with ABS and draw why: (a) the attention map as a heat map, (b) the pixel "
                    "crops and (c) the feature-crop windows used for the prediction, (d) the top class scores (at "
                    "most 10 bars), (e) the descriptions that received the most soft-matching mass.",
        epilog="example:\n  absclip explain cat.jpg --classes cat,dog,car --descriptions cupl.json --out explain.png\n"
               "  absclip explain cat.jpg --classes cat,dog --map text --map-class dog --out dog-map.png\n\n"
               + EPILOG_MODELS,
    )
    p.add_argument("image", metavar="IMAGE", help="image file")
    class_options(p)
    p.add_argument("--out", default="explain.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--map", choices=MAP_KINDS, default="attention",
                   help="map shown in panel (a): the attention ABS used, attention rollout of the same attention "
                        "model, or text (patch-description similarity) (default: %(default)s)")
    p.add_argument("--map-class", help="class of the text map (default: the predicted class)")
    p.add_argument("--top", type=positive_int, default=5, help="classes in the score chart (default: 5)")
    p.add_argument("--show-classes", type=int, default=3,
                   help="top classes whose descriptions are listed (default: 3)")
    p.add_argument("--show-descriptions", type=int, default=3, help="descriptions listed per class (default: 3)")
    p.add_argument("--dpi", type=int, default=100, help="picture resolution; 100 gives 1600x1000 (default: 100)")
    p.add_argument("--json", action="store_true", help="print the explanation summary as JSON")
    p.set_defaults(func=cmd_explain)
