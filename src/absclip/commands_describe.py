"""CLI commands for class descriptions: ``absclip descriptions`` (named public sets)."""

from __future__ import annotations

import argparse
import json

from .errors import AbsclipError

EPILOG_SETS = """\
names: <source>:<dataset>[/<variant>], e.g. cupl:pets, cupl:pets/base, dclip:imagenet, waffle:cub,
       abs:dtd (the ABS paper's cupl.json), abs:dtd/clip-d, abs:dtd/clip-e, susx:imagenet
use:   absclip classify img.jpg --classes-file dtd.json --descriptions abs:dtd
files are downloaded once from the pinned upstream commit into the cache and checksum-verified;
offline: export ABSCLIP_DESCRIPTIONS_DIR=/path/to/copy  (laid out as <folder>/<path>, see 'list')
"""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``descriptions {list,fetch}`` to the ``absclip`` parser (``common`` is not used)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("descriptions", formatter_class=fmt, help="public description sets (CuPL, DCLIP, ABS, ...)",
                       description="Named public description sets: list them, or fetch them into the cache.",
                       epilog=EPILOG_SETS)
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = acts.add_parser("list", help="show the known sets and whether each is available locally",
                        formatter_class=fmt, epilog=EPILOG_SETS)
    q.add_argument("source", nargs="?", help="only this source (cupl, dclip, waffle, abs, susx)")
    q.add_argument("--descriptions-dir", help="local copy (default: $ABSCLIP_DESCRIPTIONS_DIR)")
    q.add_argument("--json", action="store_true", help="print JSON rows")
    q.set_defaults(func=cmd_descriptions_list, debug=False)
    q = acts.add_parser("fetch", help="download sets into the cache (checksum-verified); print their paths",
                        formatter_class=fmt, epilog=EPILOG_SETS)
    q.add_argument("names", nargs="+", metavar="NAME", help="set names, e.g. cupl:pets abs:dtd")
    q.add_argument("--descriptions-dir", help="local copy (default: $ABSCLIP_DESCRIPTIONS_DIR)")
    q.set_defaults(func=cmd_descriptions_fetch, debug=False)


def cmd_descriptions_list(args: argparse.Namespace) -> int:
    """absclip descriptions list: the known sets, their source and whether they are local, cached or missing."""
    from .description_sets import SOURCES, default_cache_dir, list_sets, local_dir, status

    if args.source and args.source not in SOURCES:
        raise AbsclipError(f"Unknown source {args.source!r}; known: {', '.join(SOURCES)}.")
    base = local_dir(args.descriptions_dir)
    rows = []
    for s in list_sets(args.source):
        state, path = status(s, args.descriptions_dir)
        rows.append({"name": s.name, "kind": s.kind, "status": state, "path": str(path) if path else None,
                     "file": s.local_path, "repo": s.source.repo, "commit": s.source.commit, "url": s.url,
                     "sha256": s.sha256})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['name']:<26} {r['kind']:<13} {r['status']:<15} {r['repo']}@{r['commit'][:7]}")
    print(f"\nlocal copy: {base or '(none; set ABSCLIP_DESCRIPTIONS_DIR)'}\ncache:      {default_cache_dir()}")
    return 0


def cmd_descriptions_fetch(args: argparse.Namespace) -> int:
    """absclip descriptions fetch: resolve (download if needed) each named set and print its path."""
    from .description_sets import resolve

    for name in args.names:
        print(f"{name}\t{resolve(name, descriptions_dir=args.descriptions_dir)}")
    return 0
