"""Options shared by the commands (model, attention, ABS, WCA, classes) and building a classifier from them."""

from __future__ import annotations

import argparse
import logging
import os
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
    from absclip.core.settings import DEFAULT_SINK_THRESHOLD

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
    from absclip.api import Classifier
    from absclip.backbones.registry import load_clip
    from absclip.core.settings import DEFAULT_SINK_THRESHOLD, ABSConfig, WCAConfig, replace_config

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
    from absclip.text.classes import load_classes

    classes = load_classes(args.classes, args.classes_file)
    clf.set_classes(classes, args.descriptions, descriptors=args.descriptors, templates=args.templates)


def class_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--classes", help="comma-separated class names")
    g.add_argument("--classes-file", help="class names: .txt (one per line), .json list (names or synonym lists), "
                                          ".csv/.tsv with a 'name' column")


def expand_images(paths: Sequence[str]) -> list[str]:
    """Return image files: files as given, directories expanded to the images inside (sorted)."""
    from absclip.io.sources import list_images

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
