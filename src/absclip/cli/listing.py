"""``absclip models`` and ``absclip methods``: what can be loaded and run."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
from typing import Any

from absclip.errors import AbsclipError
from absclip.io.files import json_text

log = logging.getLogger("absclip")


def cmd_models(args: argparse.Namespace) -> int:
    """absclip models: open_clip model names, their encoder family, the ABS parts it supports, pretrained tags."""
    import fnmatch

    import open_clip

    from absclip.backbones.demo import DEMO_MODEL, DEMO_SUMMARY
    from absclip.backbones.families import FAMILIES, PARTS, config_family

    def match(n: str) -> bool:
        return fnmatch.fnmatch(n.lower(), (args.pattern or "*").lower())

    names = [n for n in open_clip.list_models() if match(n) and n != DEMO_MODEL]
    # the shipped demo model first: it needs no download (open_clip knows its name once it was loaded)
    rows = [{"model": DEMO_MODEL, "family": "open_clip ViT", "supports": FAMILIES["open_clip ViT"],
             "pretrained": [], "note": DEMO_SUMMARY}] if match(DEMO_MODEL) else []
    for n in names:
        family = config_family(open_clip.get_model_config(n) or {})
        rows.append({"model": n, "family": family, "supports": FAMILIES[family],
                     "pretrained": open_clip.list_pretrained_tags_by_model(n)})
    if not rows:
        raise AbsclipError(f"No open_clip model matches {args.pattern!r}; run 'absclip models' for the names "
                           "(patterns are globs, e.g. 'ViT-B*').")
    if args.json:
        print(json_text(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['model']:<40} {r['family']:<24} {r.get('note') or ', '.join(r['pretrained'])}")
        print("\nABS parts per family (pixel crops, feature crops, CLIP attention, rollout/sinks, text maps):")
        for family in dict.fromkeys(r["family"] for r in rows):
            parts = [p.replace("_", " ") for p in PARTS if FAMILIES[family][p]]
            print(f"  {family:<24} {', '.join(parts)}")
    return 0


def plain(text: str) -> str:
    """Return docstring text without reStructuredText markup or spec references (for terminal output)."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)  # :func:`x` -> x
    text = text.replace("``", "")
    text = re.sub(r"\s*\(spec[^)]*\)", "", text)  # (spec §1–§6)
    return text.strip()


def method_rows() -> list[dict[str, Any]]:
    """Return one row per registered method: name, one-line description, settings type and settings.

    Each setting has its name, the method's default, and the command-line flag and help when it has one.
    """
    from absclip.methods import create_method, get_method_class, list_methods

    rows = []
    for name in list_methods():
        cls = get_method_class(name)
        defaults = create_method(name).settings  # the method's own defaults (abs-fast derives its own)
        settings = []
        if defaults is not None:
            for f in dataclasses.fields(defaults):
                value = getattr(defaults, f.name)
                settings.append({"name": f.name, "default": list(value) if isinstance(value, tuple) else value,
                                 "flag": f.metadata.get("flag"), "help": f.metadata.get("help")})
        rows.append({"method": name, "description": plain(cls.summary()),
                     "settings_type": cls.settings_type.__name__ if cls.settings_type else None,
                     "settings": settings})
    return rows


def cmd_methods(args: argparse.Namespace) -> int:
    """absclip methods: the registered methods, their settings and options."""
    rows = method_rows()
    if args.json:
        print(json_text(rows, indent=2))
        return 0
    width = max(len(r["method"]) for r in rows)
    for r in rows:
        print(f"{r['method']:<{width}}  {r['description']}")
        for st in r["settings"]:
            default = st["default"]
            if isinstance(default, list):  # a LO,HI pair as its flag takes it; other lists (templates) as JSON
                default = ",".join(f"{x:g}" for x in default) if all(isinstance(x, float) for x in default) \
                    else json_text(default)
            flag = f"  ({st['flag']})" if st["flag"] else ""
            print(f"{'':<{width}}    {st['name']} = {default}{flag}")
    return 0
