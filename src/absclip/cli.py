"""The ``absclip`` command line: a thin layer that parses, builds a spec, calls the library, prints.

Bad input ends with exit code 2 and one sentence on stderr (no traceback); ``--debug`` shows it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .errors import AbsclipError

log = logging.getLogger("absclip")

EPILOG_MODELS = """\
models:
  --model ViT-B-16 --pretrained openai              open_clip name + tag (downloads once, cached)
  --model ViT-B-16 --pretrained /path/ViT-B-16.pt   open_clip name + local checkpoint
  --model hf-hub:timm/ViT-B-16-SigLIP               Hugging Face hub (open_clip format)
  --model local-dir:/path/to/dir                    local open_clip_config.json + weights
  --model my-config.json --pretrained weights.pt    open_clip JSON config + checkpoint
  --model /path/ViT-B-16.pt                         OpenAI-format checkpoint file
  --attention-model facebook/dino-vitb16 | /path/to/dino-dir | clip
"""

# Subcommands living in their own modules: each exposes ``register(subparsers, common_parents)``.
EXTRA_COMMANDS: tuple[str, ...] = ("absclip.commands_describe", "absclip.commands_explain", "absclip.commands_bench",
                                  "absclip.commands_label")


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.6,0.9), got {text!r}") from e
    return lo, hi


def model_options() -> argparse.ArgumentParser:
    """Return a parent parser with the model, device and run options shared by all commands."""
    from .config import DEFAULT_SINK_THRESHOLD

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ViT-B-16",
                   help="open_clip model name, hf-hub:/local-dir: name, JSON config, or OpenAI checkpoint file "
                        "(default: %(default)s)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag or checkpoint file; 'none' for random weights (default: %(default)s)")
    g.add_argument("--attention-model", default="facebook/dino-vitb16",
                   help="HF name or local dir of the attention ViT, or 'clip' for CLIP's own attention "
                        "(default: %(default)s)")
    g.add_argument("--attention-layer", type=int, default=-1, help="attention layer index (default: last)")
    g.add_argument("--attention-rollout", choices=["mean", "max"],
                   help="use attention rollout up to --attention-layer, fusing heads by their mean or max, as the "
                        "attention source (default: off, that layer's CLS attention)")
    g.add_argument("--ignore-sinks", action="store_true",
                   help="suppress attention-sink tokens (abnormally high norm or received attention) in the "
                        "attention source")
    g.add_argument("--sink-threshold", type=float, metavar="K",
                   help="a token is a sink above median + K MAD (robust z-score; implies --ignore-sinks; "
                        f"default: {DEFAULT_SINK_THRESHOLD:g})")
    g.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="force QuickGELU (OpenAI weights need it; default: follow the pretrained tag)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute precision; auto = fp16 on CUDA, fp32 on CPU (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8, help="images per batch; never changes results (default: 8)")
    g.add_argument("--seed", type=int, default=0, help="run seed; crops are drawn per image from (seed, image)")
    g.add_argument("--cache-dir", default=None, help="text-embedding cache (default: $ABSCLIP_CACHE_DIR or "
                                                       "~/.cache/absclip)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the text-embedding cache")
    t = p.add_argument_group("text")
    t.add_argument("--descriptions", help="CuPL-style JSON {class: [sentences]}, a template file, or a public set "
                                          "name such as cupl:imagenet, abs:dtd (see 'absclip descriptions list')")
    t.add_argument("--descriptors", help="DCLIP-style JSON {class: [phrases]} for the dclip method")
    t.add_argument("--descriptions-dir", help="local copy of the public description sets used by names such as "
                                              "cupl:pets (default: $ABSCLIP_DESCRIPTIONS_DIR)")
    t.add_argument("--templates", help="templates with {c} or {} (JSON list, CLIP_benchmark file or .txt) for clip-e "
                                       "and as the fallback descriptions")
    a = p.add_argument_group("ABS")
    a.add_argument("--crops", type=int, help="pixel-space crops per image (default: 50)")
    a.add_argument("--feature-crops", type=int, help="feature-space crops per image (default: 50)")
    a.add_argument("--top-k", type=int, help="attention cells the centres are drawn from (default: 20)")
    a.add_argument("--temperature", type=float, help="sampling temperature of softmax(top-k / T) (default: 0.03)")
    a.add_argument("--score-temperature", type=float, help="soft-matching temperature tau (default: 0.03)")
    a.add_argument("--crop-ratio", type=_pair, help="pixel crop side as LO,HI fraction of W/H (default: 0.6,0.9)")
    a.add_argument("--feature-crop-ratio", type=_pair, help="window side as LO,HI fraction of the grid "
                                                            "(default: 0.6,0.9)")
    a.add_argument("--feature-layer", type=int, help="block the feature crops enter (default: -1, the last)")
    a.add_argument("--max-descriptions", type=int, help="first M descriptions per class (default: 50)")
    a.add_argument("--centres", choices=["independent", "shared"],
                   help="independent draws for pixel/feature crops (reference code, default) or shared (paper)")
    a.add_argument("--feature-mapping", choices=["reference", "aligned"],
                   help="attention→CLIP grid mapping: reference index scaling (default) or aligned via pixels")
    w = p.add_argument_group("WCA")
    w.add_argument("--wca-crops", type=int, help="random square crops for wca (default: 50)")
    w.add_argument("--wca-alpha", type=float, help="smallest crop side ratio for wca (default: 0.5)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images with more pixels than this (default: PIL's bomb limit, ~179M)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def build_classifier(args: argparse.Namespace) -> Any:
    """Return a :class:`absclip.Classifier` from parsed options (classes not set)."""
    from .api import Classifier
    from .config import DEFAULT_SINK_THRESHOLD, ABSConfig, WCAConfig, replace_config
    from .models import load_clip

    abs_cfg = replace_config(
        ABSConfig(), pixel_crops=args.crops, feature_crops=args.feature_crops, top_k=args.top_k,
        sample_temperature=args.temperature, score_temperature=args.score_temperature,
        pixel_crop_ratio=args.crop_ratio, feature_crop_ratio=args.feature_crop_ratio,
        feature_layer=args.feature_layer, max_descriptions=args.max_descriptions, centres=args.centres,
        feature_mapping=args.feature_mapping,
    )
    wca_cfg = replace_config(WCAConfig(), crops=args.wca_crops, min_ratio=args.wca_alpha,
                             max_descriptions=args.max_descriptions)
    backbone = load_clip(args.model, args.pretrained, device=args.device, precision=args.precision,
                         quick_gelu=args.quick_gelu, cache_dir=args.cache_dir)
    return Classifier(backbone, attention_model=args.attention_model, abs_config=abs_cfg, wca_config=wca_cfg,
                      seed=args.seed, batch_size=args.batch_size, attention_layer=args.attention_layer,
                      cache_dir=os.path.join(args.cache_dir, "text") if args.cache_dir else None,
                      use_cache=not args.no_cache, attention_rollout=args.attention_rollout,
                      sink_threshold=args.sink_threshold if args.sink_threshold is not None
                      else DEFAULT_SINK_THRESHOLD if args.ignore_sinks else None)


def set_classes(clf: Any, args: argparse.Namespace) -> None:
    """Load classes and text files named on the command line into ``clf``."""
    from .text import load_classes

    classes = load_classes(args.classes, args.classes_file)
    clf.set_classes(classes, args.descriptions, descriptors=args.descriptors, templates=args.templates)


def _class_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", help="comma-separated class names")
    g.add_argument("--classes-file", help="class names: .txt (one per line), .json list (names or synonym lists), "
                                          ".csv/.tsv with a 'name' column")


def expand_images(paths: Sequence[str]) -> list[str]:
    """Return image files: files as given, directories expanded to the images inside (sorted)."""
    from .data import list_images

    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = [str(f) for f in list_images(p)]
            if not found:
                raise AbsclipError(f"{p}: the directory contains no images.")
            out += found
        else:
            out.append(p)
    return out


def cmd_classify(args: argparse.Namespace) -> int:
    """absclip classify: ranked labels for each image."""
    from .data import make_item
    from .methods import get_method_class

    get_method_class(args.method)
    items = [make_item(p, max_pixels=args.max_pixels) if args.max_pixels else make_item(p)
             for p in expand_images(args.images)]
    clf = build_classifier(args)
    set_classes(clf, args)
    logits = clf.logits(items, args.method)
    ranked = clf.ranked(logits, args.method, top=args.top)
    if args.json:
        out = [{"image": it.source, "method": args.method,
                "predictions": [{"label": r["label"], "score": r["score"]} for r in rows]}
               for it, rows in zip(items, ranked)]
        print(json.dumps(out, indent=2))
    else:
        for it, rows in zip(items, ranked):
            print(f"{it.source}  ({args.method})")
            for r in rows:
                print(f"  {r['score']:.4f}  {r['label']}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """absclip eval: metrics per method, predictions JSONL, results JSON."""
    from .data import load_samples, take
    from .evaluate import evaluate
    from .methods import get_method_class
    from .text import load_classes

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        get_method_class(m)
    classes = load_classes(args.classes, args.classes_file)
    if getattr(args, "engine", "local") == "ray":  # scale-out engine (absclip.scaleout): same results document
        from .commands_label import eval_on_ray

        return print_eval_results(eval_on_ray(args, classes, methods), args)
    samples = take(load_samples(args.data, classes, image_column=args.image_column,
                                label_column=args.label_column), args.limit)
    clf = build_classifier(args)
    clf.set_classes(classes, args.descriptions, descriptors=args.descriptors, templates=args.templates)
    dataset = args.dataset_name or os.path.basename(os.path.normpath(args.data))
    doc = evaluate(clf, samples, methods, output=args.output, predictions=args.predictions, dataset=dataset,
                   top=args.top, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                   max_pixels=args.max_pixels,
                   extra_config={"data": args.data, "classes_file": args.classes_file,
                                 "descriptions": args.descriptions, "limit": args.limit})
    if args.report:
        from .report import write_report

        write_report(doc, args.report, clf=clf, max_images=args.report_max_images)
    return print_eval_results(doc, args)


def print_eval_results(doc: dict[str, Any], args: argparse.Namespace) -> int:
    """Print an eval results document (JSON, or a metrics table with the files written); return 0."""
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(f"{'method':<10} {'acc1':>8} {'acc5':>8} {'mpcr':>8}   ({doc['evaluated']} images, "
              f"{len(doc['skipped'])} skipped, {doc['timing']['seconds']:.1f} s)")
        for r in doc["results"]:
            m = r["metrics"]
            fmt = [("   nan" if isinstance(v, float) and math.isnan(v) else f"{v:8.4f}")
                   for v in (m["acc1"], m["acc5"], m["mean_per_class_recall"])]
            print(f"{r['absclip']['method']:<10} {fmt[0]:>8} {fmt[1]:>8} {fmt[2]:>8}")
        print(f"results: {', '.join(doc.get('files', [args.output]))}; predictions: {doc['predictions']}")
        if args.report:
            print(f"report: {args.report}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """absclip models: open_clip model names and their pretrained tags."""
    import fnmatch

    import open_clip

    names = [n for n in open_clip.list_models() if fnmatch.fnmatch(n.lower(), (args.pattern or "*").lower())]
    rows = [{"model": n, "pretrained": open_clip.list_pretrained_tags_by_model(n)} for n in names]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['model']:<40} {', '.join(r['pretrained'])}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """absclip methods: the registered methods."""
    from .methods import _REGISTRY

    rows = [{"method": n, "description": (c.__doc__ or "").strip().splitlines()[0]} for n, c in _REGISTRY.items()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['method']:<8} {r['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the ``absclip`` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="absclip",
        description="Training-free zero-shot image classification with CLIP models: ABS (attention-based "
                    "selection, ICML 2025) and baselines (clip, clip-e, cupl, dclip, waffle, wca).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'absclip COMMAND --help' for the options of a command.\n\n" + EPILOG_MODELS,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"absclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = model_options()
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("classify", parents=[common], formatter_class=fmt, help="classify images",
                       description="Rank the classes for each image.",
                       epilog="example:\n  absclip classify cat.jpg --classes cat,dog,car --descriptions cupl.json\n\n"
                              + EPILOG_MODELS)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories of images")
    _class_options(p)
    p.add_argument("--method", default="abs", help="abs (default), clip, clip-e, cupl, dclip, waffle or wca")
    p.add_argument("--top", type=int, default=5, help="how many labels to show (default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{image, method, predictions: [{label, score}]}]")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", parents=[common], formatter_class=fmt, help="evaluate methods on a labelled data set",
                       description="Evaluate methods on labelled images; write per-image predictions (JSONL, as they "
                                   "are produced) and acc1/acc5/mean_per_class_recall (CLIP_benchmark result shape).",
                       epilog="example:\n  absclip eval --data imagenet-sample --classes-file imagenet.json \\\n"
                              "      --descriptions CuPL_prompts_imagenet.json --methods clip,cupl,abs "
                              "--output results.json\n\n"
                              "--data: a folder with labels.csv, an ImageFolder tree, or a CSV/TSV/JSONL listing\n\n"
                              + EPILOG_MODELS)
    p.add_argument("--data", required=True, help="folder (labels.csv or class sub-folders) or CSV/TSV/JSONL listing")
    _class_options(p)
    p.add_argument("--methods", default="abs", help="comma-separated methods (default: abs)")
    p.add_argument("--output", default="results.json",
                   help="results JSON; put {method} in the name for one CLIP_benchmark file per method")
    p.add_argument("--predictions", help="per-image predictions JSONL (default: next to --output)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--dataset-name", help="dataset name recorded in the results (default: the data folder's name)")
    p.add_argument("--image-column", help="listing column with image paths (default: path/file/image...)")
    p.add_argument("--label-column", help="listing column with labels (default: label/target/imagenet_index/...)")
    p.add_argument("--top", type=int, default=5, help="top-k labels stored per image (default: 5)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted run with the same settings (default: on)")
    p.add_argument("--overwrite", action="store_true", help="discard existing predictions and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results JSON")
    p.add_argument("--report", metavar="HTML", help="also write a self-contained HTML report: metrics, per-class "
                                                    "accuracy, confusions, misclassified images with explanations")
    p.add_argument("--report-max-images", type=int, default=24, metavar="N",
                   help="misclassified images in the report's gallery (default: %(default)s)")
    importlib.import_module("absclip.commands_label").add_engine_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list open_clip models and pretrained tags")
    p.add_argument("pattern", nargs="?", help="glob filter, e.g. 'ViT-B*'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models, debug=False)

    p = sub.add_parser("methods", help="list the methods")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods, debug=False)

    for mod in EXTRA_COMMANDS:
        importlib.import_module(mod).register(sub, common)
    return parser


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="absclip: %(message)s")
    if not debug:
        for name in ("huggingface_hub", "transformers", "urllib3", "open_clip", "httpx", "filelock"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    _configure_logging(debug)
    if getattr(args, "descriptions_dir", None):  # read by absclip.description_sets when a set name is resolved
        os.environ["ABSCLIP_DESCRIPTIONS_DIR"] = args.descriptions_dir
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except AbsclipError as e:
        if debug:
            raise
        print(f"absclip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("absclip: interrupted; finished predictions are saved (re-run to resume).", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
