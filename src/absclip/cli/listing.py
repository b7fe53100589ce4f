"""``absclip models`` and ``absclip methods``: what can be loaded and run."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger("absclip")


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
    from absclip.methods import get_method_class, list_methods

    rows = [{"method": n, "description": (get_method_class(n).__doc__ or "").strip().splitlines()[0]}
            for n in list_methods()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['method']:<8} {r['description']}")
    return 0
