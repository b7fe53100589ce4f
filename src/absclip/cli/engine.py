"""``--engine`` and the Ray options shared by ``absclip eval`` and ``absclip label``."""

from __future__ import annotations

import argparse
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
    """Return :class:`absclip.engines.ray.RayOptions` from parsed options."""
    from absclip.engines.ray import RayOptions

    return RayOptions(address=args.address, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                      gpus_per_actor=args.gpus_per_actor, attention=args.attention_on,
                      attention_actors=args.attention_actors, batch_size=args.batch_size,
                      decode_batch_size=args.decode_batch_size, progress=not args.no_progress)


def recipe(args: argparse.Namespace, classes: Any) -> Any:
    """Return the :class:`absclip.engines.ray.ClassifierRecipe` of the command line (texts read here)."""
    from absclip.cli.options import classifier_spec
    from absclip.engines.ray import ClassifierRecipe

    return ClassifierRecipe.from_sources(classifier_spec(args), classes, args.descriptions, args.descriptors,
                                         args.templates, descriptions_dir=args.descriptions_dir)


def _announce(line: str) -> None:
    print(f"absclip: {line}", file=sys.stderr, flush=True)
