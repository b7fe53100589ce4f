"""``python -m absclip.demo OUT [--small N] [--large N]``: write the demo scene sets for ``absclip eval``."""

from __future__ import annotations

import argparse
from pathlib import Path

from absclip.demo.scenes import CLASSES, SETS, write_scenes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m absclip.demo", description=__doc__.split(": ", 1)[1])
    p.add_argument("out", type=Path, help="folder to write OUT/small, OUT/large and OUT/classes.txt into")
    for name, (_, sizes) in SETS.items():
        p.add_argument(f"--{name}", type=int, default=300, metavar="N",
                       help=f"scenes with objects {sizes[0]:.0%}-{sizes[1]:.0%} of the side (default: 300)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name in SETS:
        if getattr(args, name):
            print(write_scenes(args.out, name, getattr(args, name), size=args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
