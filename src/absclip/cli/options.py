"""Options shared by the commands (model, attention, method settings, classes) and building a classifier spec from
them. The method option groups come from the registered methods' settings dataclasses (their fields' metadata)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import typing
from collections.abc import Sequence
from typing import Any

from absclip.errors import AbsclipError

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


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.6,0.9), got {text!r}") from e
    return lo, hi


def model_options() -> argparse.ArgumentParser:
    """Return a parent parser with the model, device and run options shared by all commands."""
    from absclip.core.settings import DEFAULT_DEVICE, DEFAULT_MAX_PIXELS, DEFAULT_PRECISION, DEFAULT_SINK_THRESHOLD

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ViT-B-16",
                   help="open_clip model name, hf-hub:/local-dir: name, JSON config, or OpenAI checkpoint file "
                        "(default: %(default)s)")
    g.add_argument("--pretrained", default="openai",
                   help="open_clip pretrained tag or checkpoint file; 'none' for random weights (default: %(default)s)")
    g.add_argument("--attention-model", default=None,
                   help="HF name or local dir of the attention ViT, or 'clip' for CLIP's own attention "
                        "(default: the model's own default, clip for absclip-demo, else facebook/dino-vitb16)")
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
    g.add_argument("--device", default=DEFAULT_DEVICE, help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    g.add_argument("--precision", default=DEFAULT_PRECISION, choices=["auto", "fp32", "bf16", "fp16"],
                   help="compute precision; auto = fp16 on CUDA, fp32 on CPU (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8, help="images per batch; never changes results (default: 8)")
    g.add_argument("--seed", type=int, default=0, help="run seed; crops are drawn per image from (seed, image)")
    g.add_argument("--cache-dir", default=None, help="absclip's cache; text embeddings go to DIR/text (default: "
                                                       "$ABSCLIP_CACHE_DIR or ~/.cache/absclip)")
    g.add_argument("--weights-dir", default=None, help="where downloaded model weights are cached (default: "
                                                         "open_clip's and Hugging Face's own caches)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the text-embedding cache")
    t = p.add_argument_group("text")
    t.add_argument("--descriptions", help="CuPL-style JSON {class: [sentences]}, a template file, or a public set "
                                          "name such as cupl:imagenet, abs:dtd (see 'absclip descriptions list')")
    t.add_argument("--descriptors", help="DCLIP-style JSON {class: [phrases]} for the dclip method")
    t.add_argument("--descriptions-dir", help="local copy of the public description sets used by names such as "
                                              "cupl:pets (default: $ABSCLIP_DESCRIPTIONS_DIR)")
    t.add_argument("--templates", help="templates with {c} or {} (JSON list, CLIP_benchmark file or .txt) for clip-e "
                                       "and as the fallback descriptions")
    add_settings_options(p)
    p.add_argument("--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse images with more pixels than this; 0 = no limit (default: %(default)s, PIL's "
                        "decompression-bomb limit)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def _max_pixels(text: str) -> int | None:
    """``--max-pixels N``: a pixel count, 0 for no limit (the library's None)."""
    try:
        n = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from e
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected 0 (no limit) or a positive number, got {n}")
    return n or None


def _flag_dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def settings_flags() -> dict[type, dict[str, str]]:
    """Return ``{settings type: {field name: flag}}`` for the registered methods' settings with a flag."""
    from absclip.methods import settings_types  # the package: every built-in method registered

    return {tp: {f.name: f.metadata["flag"] for f in dataclasses.fields(tp) if f.metadata.get("flag")}
            for tp in settings_types()}


def _option_kwargs(tp: type, f: dataclasses.Field) -> dict[str, Any]:
    """Return ``add_argument`` keywords for settings field ``f`` of ``tp`` (type from its annotation)."""
    hint = typing.get_type_hints(tp).get(f.name, str)
    kw: dict[str, Any] = {"help": f.metadata.get("help")}
    if "metavar" in f.metadata:
        kw["metavar"] = f.metadata["metavar"]
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        kw["choices"] = list(params)
    elif hint is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif origin is tuple and params == (float, float):
        kw["type"] = _pair
    elif hint in (int, float, str):
        kw["type"] = hint
    else:
        raise TypeError(f"{tp.__name__}.{f.name}: no command-line type for {hint!r}")
    return kw


def add_settings_options(p: argparse.ArgumentParser, skip: Sequence[type] = ()) -> None:
    """Add one option group per settings type of the registered methods, from the fields' metadata.

    A flag declared by several types (``--max-descriptions``) is added once and sets all of them.
    Options default to None ("keep the setting's default"). Types in ``skip`` get no options (a
    command with its own options for them: ``absclip bench`` and ABS).
    """
    seen: set[str] = set()
    for tp in settings_flags():
        if tp in skip:
            continue
        group = None
        for f in dataclasses.fields(tp):
            flag = f.metadata.get("flag")
            if not flag or flag in seen:
                continue
            seen.add(flag)
            if group is None:
                group = p.add_argument_group(getattr(tp, "cli_title", tp.__name__))
            group.add_argument(flag, dest=_flag_dest(flag), default=None, **_option_kwargs(tp, f))


def settings_from_args(args: argparse.Namespace) -> list[Any]:
    """Return one instance per settings type of the registered methods, with the options given in ``args``.

    Errors name the option (``--top-k must be at least 1``) rather than the setting (``top_k``).
    """
    from absclip.core.settings import replace_config

    out = []
    for tp, flags in settings_flags().items():
        overrides = {name: getattr(args, _flag_dest(flag), None) for name, flag in flags.items()}
        try:
            out.append(replace_config(tp(), **overrides))
        except AbsclipError as e:
            msg = str(e)
            for name, flag in flags.items():
                msg = re.sub(rf"\b{name}\b", flag, msg)
            raise AbsclipError(msg) from e
    return out


def classifier_spec(args: argparse.Namespace) -> Any:
    """Return the :class:`absclip.api.ClassifierSpec` of parsed options."""
    from absclip.api import ClassifierSpec
    from absclip.core.settings import DEFAULT_SINK_THRESHOLD

    return ClassifierSpec(
        model=args.model, pretrained=args.pretrained, device=args.device, precision=args.precision,
        quick_gelu=args.quick_gelu, weights_dir=args.weights_dir, attention_model=args.attention_model,
        attention_layer=args.attention_layer, attention_rollout=args.attention_rollout,
        sink_threshold=args.sink_threshold if args.sink_threshold is not None
        else DEFAULT_SINK_THRESHOLD if args.ignore_sinks else None,
        settings=tuple(settings_from_args(args)), seed=args.seed, batch_size=args.batch_size,
        cache_dir=args.cache_dir, use_cache=not args.no_cache)


def build_classifier(args: argparse.Namespace, methods: Sequence[str] = ()) -> Any:
    """Return a :class:`absclip.Classifier` from parsed options (classes not set).

    First, before torch and the model libraries are imported: when the hub is unreachable, weights
    that are not cached fail at once (the attention model's too when one of ``methods`` needs it).
    """
    from absclip.backbones.network import check_attention_weights, check_model_weights
    from absclip.core.settings import DEFAULT_ATTENTION_MODEL
    from absclip.methods import get_method_class

    pretrained = None if args.pretrained in (None, "none") else args.pretrained
    at_hand = check_model_weights(args.model, pretrained, weights_dir=args.weights_dir, tag_repo=_tag_repo)
    if at_hand and any(get_method_class(m).needs_attention for m in methods):  # else the model's error comes first
        check_attention_weights(args.attention_model or DEFAULT_ATTENTION_MODEL, weights_dir=args.weights_dir)
    clf = classifier_spec(args).build()
    clf.encoder.progress = not getattr(args, "no_progress", False)  # a bar on a terminal (stderr) only
    return clf


def _tag_repo(model: str, tag: str) -> str | None:
    from absclip.backbones.open_clip_loaders import pretrained_hub_repo

    return pretrained_hub_repo(model, tag)


def method_help(default: str | None = "abs") -> str:
    """Return the registered method names for help texts: ``abs (default), clip, ... or wca``."""
    from absclip.methods import list_methods

    names = [f"{n} (default)" if n == default else n for n in list_methods()]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def read_class_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """Return the classes and texts named on the command line, read and checked (before any model is loaded)."""
    from absclip.text.classes import load_classes
    from absclip.text.sources import read_texts

    classes = load_classes(args.classes, args.classes_file)
    texts = read_texts(args.descriptions, args.descriptors, args.templates, descriptions_dir=args.descriptions_dir)
    return classes, texts


def set_classes(clf: Any, args: argparse.Namespace, inputs: tuple[Any, Any] | None = None) -> None:
    """Give ``clf`` the classes and texts of the command line (``inputs``: from :func:`read_class_inputs`)."""
    classes, texts = inputs or read_class_inputs(args)
    clf.set_classes(classes, texts=texts)


def positive_int(text: str) -> int:
    """An option's value that must be a whole number of at least 1 (``--top``)."""
    try:
        n = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from e
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def class_options(p: argparse.ArgumentParser, *, data_default: bool = False) -> None:
    """Add ``--classes``/``--classes-file``; required unless ``data_default`` (the data set may name its classes)."""
    g = p.add_mutually_exclusive_group(required=not data_default)
    g.add_argument("--classes", help="comma-separated class names")
    g.add_argument("--classes-file", help="class names: .txt (one per line), .json list (names or synonym lists), "
                                          ".csv/.tsv with a 'name' column"
                                          + ("; default: the data's own (classnames.txt beside webdataset shards, a "
                                             "HF dataset's ClassLabel names)" if data_default else ""))


DATA_HELP = ("a folder (labels.csv or class sub-folders), a CSV/TSV/JSONL listing, webdataset shards "
             "('DIR/test/{0..N}.tar'), a HF datasets save_to_disk folder or Parquet files with an image column; "
             "local path, or any URI pyarrow reads for shards, Parquet and --engine ray")


def open_data_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """Open ``--data`` and return ``(DataSet, classes)``: the classes of ``--classes``/``--classes-file``, else the
    data set's own; CLIP_benchmark's templates file beside shards becomes ``--templates`` when none is given.

    Sets ``args.classes_file``/``args.templates`` to the defaults it used, so that the run records them.

    Raises:
        AbsclipError: no classes given and the data set names none.
    """
    from absclip.io.sources import open_data
    from absclip.text.classes import load_classes

    dset = open_data(args.data, image_column=getattr(args, "image_column", None),
                     label_column=getattr(args, "label_column", None))
    local = "://" not in str(dset.default_classes_file() or "")
    if getattr(args, "templates", None) is None and dset.default_templates() and "://" not in dset.default_templates():
        args.templates = dset.default_templates()
    if args.classes is None and args.classes_file is None:
        if dset.default_classes_file() and local:
            args.classes_file = dset.default_classes_file()
        else:
            from absclip.text.classes import ClassList

            names = dset.default_class_names()
            if names is None:
                raise AbsclipError(f"{args.data} does not name its classes (no classnames.txt beside the shards, no "
                                   "ClassLabel feature); give `classes` or `classes_file`.")
            return dset, ClassList.from_names(names)
    return dset, load_classes(args.classes, args.classes_file)


def expand_images(paths: Sequence[str]) -> list[str]:
    """Return image files: files as given, directories expanded to the images inside (sorted); ``-`` kept."""
    from absclip.io.sources import list_images

    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
        elif os.path.isdir(p):
            found = [str(f) for f in list_images(p)]
            if not found:
                raise AbsclipError(f"{p}: the directory contains no images.")
            out += found
        else:
            out.append(p)
    return out


def read_images(paths: Sequence[str], max_pixels: int | None) -> list[Any]:
    """Return decoded :class:`absclip.io.images.ImageItem` of image arguments; ``-`` reads an image from stdin."""
    import sys

    from absclip.io.images import make_item

    items = []
    for p in expand_images(paths):
        if p == "-":
            if sys.stdin.isatty():
                raise AbsclipError("'-' reads an image from standard input, but nothing is piped in "
                                   "(e.g. cat photo.jpg | absclip classify - --classes cat,dog).")
            items.append(make_item(sys.stdin.buffer.read(), max_pixels=max_pixels, name="<stdin>"))
        else:
            items.append(make_item(p, max_pixels=max_pixels))
    return items
