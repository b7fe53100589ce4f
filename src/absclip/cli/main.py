"""The ``absclip`` command line: a thin layer that parses, builds a spec, calls the library, prints.

Bad input ends with exit code 2 and one sentence on stderr (no traceback); ``--debug`` shows it."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence

from absclip.cli.classify import cmd_classify
from absclip.cli.eval import cmd_eval
from absclip.cli.listing import cmd_methods, cmd_models
from absclip.cli.options import DATA_HELP, EPILOG_MODELS, class_options, method_help, model_options, positive_int
from absclip.errors import AbsclipError

log = logging.getLogger("absclip")

# Subcommands living in their own modules: each exposes ``register(subparsers, common_parents)``.
EXTRA_COMMANDS: tuple[str, ...] = ("absclip.cli.describe", "absclip.cli.explain", "absclip.cli.bench",
                                  "absclip.cli.label", "absclip.cli.serve")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``absclip`` argument parser with all subcommands."""
    from absclip.methods import list_methods

    others = [m for m in list_methods() if m != "abs"]
    parser = argparse.ArgumentParser(
        prog="absclip",
        description="Training-free zero-shot image classification with CLIP models: ABS (attention-based "
                    f"selection, ICML 2025) and other methods ({', '.join(others)}).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'absclip COMMAND --help' for the options of a command.\n\n" + EPILOG_MODELS,
    )
    from absclip._version import __version__

    parser.add_argument("--version", action="version", version=f"absclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = model_options()
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("classify", parents=[common], formatter_class=fmt, help="classify images",
                       description="Rank the classes for each image.",
                       epilog="example:\n  absclip classify cat.jpg --classes cat,dog,car --descriptions cupl.json\n\n"
                              + EPILOG_MODELS)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files or directories of images; - reads one image from standard input")
    class_options(p)
    p.add_argument("--method", default="abs", help=method_help("abs"))
    p.add_argument("--top", type=positive_int, default=5, help="how many labels to show (default: 5)")
    p.add_argument("--json", action="store_true", help="print JSON: [{image, method, predictions: [{label, score}]}]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (encoding class texts)")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("eval", parents=[common], formatter_class=fmt, help="evaluate methods on a labelled data set",
                       description="Evaluate methods on labelled images; write per-image predictions (JSONL, as they "
                                   "are produced) and acc1/acc5/mean_per_class_recall (CLIP_benchmark result shape).",
                       epilog="example:\n  absclip eval --data imagenet-sample --classes-file imagenet.json \\\n"
                              "      --descriptions CuPL_prompts_imagenet.json --methods clip,cupl,abs "
                              "--output results.json\n\n"
                              "  absclip eval --data 'wds_imagenet1k/test/{0..63}.tar' --methods clip  "
                              "# CLIP_benchmark shards\n\n"
                              "--data: a folder with labels.csv, an ImageFolder tree, a CSV/TSV/JSONL listing, "
                              "webdataset shards or a HF dataset\n\n"
                              + EPILOG_MODELS)
    p.add_argument("--data", required=True, help=DATA_HELP)
    class_options(p, data_default=True)
    p.add_argument("--methods", default="abs", help=f"comma-separated methods: {method_help('abs')}")
    p.add_argument("--output", default="results.json",
                   help="results JSON; put {method} in the name for one CLIP_benchmark file per method (default: "
                        "results.json in the current folder)")
    p.add_argument("--predictions", help="per-image predictions JSONL (default: next to --output)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--dataset-name", help="dataset name recorded in the results (default: the data folder's name)")
    p.add_argument("--image-column", help="listing column with image paths, or a HF dataset's image column "
                                          "(default: path/file/image...; the Image feature)")
    p.add_argument("--label-column", help="listing or HF dataset column with labels (default: the ClassLabel "
                                          "feature, label/target/...); for shards, the label member (cls/txt/json)")
    p.add_argument("--top", type=positive_int, default=5, help="top-k labels stored per image (default: 5)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an interrupted run with the same settings (default: on)")
    p.add_argument("--overwrite", action="store_true", help="discard existing predictions and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the results JSON")
    p.add_argument("--report", metavar="HTML", help="also write a self-contained HTML report: metrics, per-class "
                                                    "accuracy, confusions, misclassified images with explanations")
    p.add_argument("--report-max-images", type=int, default=24, metavar="N",
                   help="misclassified images in the report's gallery (default: %(default)s)")
    importlib.import_module("absclip.cli.label").add_engine_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list the models: the shipped demo model, open_clip names and their "
                                      "pretrained tags")
    p.add_argument("pattern", nargs="?", help="glob filter, e.g. 'ViT-B*'")
    p.add_argument("--json", action="store_true",
                   help="print JSON: [{model, family, supports: {part: bool}, pretrained: [tags], note?}]")
    p.set_defaults(func=cmd_models, debug=False)

    p = sub.add_parser("methods", help="list the methods")
    p.add_argument("--json", action="store_true",
                   help="print JSON: [{method, description, settings_type, settings: [{name, default, flag, help}]}]")
    p.set_defaults(func=cmd_methods, debug=False)

    for mod in EXTRA_COMMANDS:
        importlib.import_module(mod).register(sub, common)
    return parser


def option_names(parser: argparse.ArgumentParser, command: str | None) -> dict[str, str]:
    """Return ``{parameter name: flag}`` for the options of ``command`` (and every settings field with a flag).

    Library errors name parameters in backquotes (```pretrained```); the CLI shows its flags instead.
    """
    names: dict[str, str] = {}

    def collect(p: argparse.ArgumentParser) -> None:
        for a in p._actions:
            if a.option_strings:  # the positive form of a --x/--no-x pair, else the long flag
                positive = [o for o in a.option_strings if not o.startswith("--no-")] or a.option_strings
                names.setdefault(a.dest, max(positive, key=len))
            if isinstance(a, argparse._SubParsersAction):
                for sub in ([a.choices[command]] if command in a.choices else a.choices.values()):
                    if sub is not p:
                        collect(sub)

    collect(parser)
    try:
        from absclip.cli.options import settings_flags

        for flags in settings_flags().values():
            for name, flag in flags.items():
                names.setdefault(name, flag)
    except ImportError:  # pragma: no cover - torch missing: the parser's own names still apply
        pass
    return names


def cli_message(message: str, names: dict[str, str]) -> str:
    """Return a library message with backquoted parameter names shown as the CLI's flags."""
    return re.sub(r"`([A-Za-z_][A-Za-z0-9_]*)`", lambda m: names.get(m.group(1), m.group(1)), message)


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="absclip: %(message)s")
    if not debug:
        for name in ("huggingface_hub", "transformers", "urllib3", "open_clip", "httpx", "filelock"):
            logging.getLogger(name).setLevel(logging.ERROR)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # the model libraries' Python warnings (deprecations, retries) are not the user's business either
        warnings.filterwarnings("ignore", module=r"(huggingface_hub|transformers|urllib3|open_clip|timm|torchvision)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    _configure_logging(debug)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except AbsclipError as e:
        if debug:
            raise
        print(f"absclip: error: {cli_message(str(e), option_names(parser, getattr(args, 'command', None)))}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("absclip: interrupted; finished predictions are saved (re-run to resume).", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
