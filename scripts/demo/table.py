"""Measure the accuracy table of ``docs/demo.md``: every method on the small and large scene sets.

    PYTHONPATH=src flock -x /tmp/absclip.lock python scripts/demo/table.py --images 300

One process (no per-run start-up): the scene sets of ``absclip.demo.scenes.SETS`` in memory, one
classifier per row, acc1 per set and images/s (wall time of the row's classification of both sets on
this machine, text embeddings excluded). Prints the Markdown table; ``--json`` the raw numbers. Each
row equals an ``absclip eval --model absclip-demo ...`` command (``docs/demo.md``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import absclip
from absclip.backbones.demo import demo_file
from absclip.core.settings import DEFAULT_SINK_THRESHOLD, ABSConfig, WCAConfig
from absclip.demo.scenes import CLASSES, SETS, make_scenes
from absclip.io.images import make_item

DESC = str(demo_file("descriptions.json"))
#: the issue's setting: 16 pixel crops (and 16 feature crops) with the model's own attention
ABS = ABSConfig(pixel_crops=16, feature_crops=16)
ROWS = [  # (row, method, descriptions, classifier options)
    ("clip", "clip", None, {}),
    ("clip-e (default templates)", "clip-e", None, {}),
    ("cupl (shipped descriptions)", "cupl", DESC, {}),
    ("wca (16 crops, shipped descriptions)", "wca", DESC, {"wca_config": WCAConfig(crops=16)}),
    ("abs (templates)", "abs", None, {"abs_config": ABS}),
    ("abs (shipped descriptions)", "abs", DESC, {"abs_config": ABS}),
    ("abs-fast (shipped descriptions)", "abs-fast", DESC, {"abs_config": ABS}),
    ("abs + attention rollout (mean)", "abs", DESC, {"abs_config": ABS, "attention_rollout": "mean"}),
    ("abs + sink suppression", "abs", DESC, {"abs_config": ABS, "sink_threshold": DEFAULT_SINK_THRESHOLD}),
    ("abs + shared centres (paper)", "abs", DESC,
     {"abs_config": ABSConfig(pixel_crops=16, feature_crops=16, centres="shared")}),
    ("abs (6 + 16 crops: fewer pixel crops)", "abs", DESC,
     {"abs_config": ABSConfig(pixel_crops=6, feature_crops=16)}),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    sets = {name: make_scenes(seed, args.images, sizes=sizes) for name, (seed, sizes) in SETS.items()}
    items = {name: [make_item(s.image) for s in sc] for name, sc in sets.items()}
    labels = {name: np.array([s.label for s in sc]) for name, sc in sets.items()}
    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    out = []
    for name, method, desc, options in rows:
        clf = absclip.load("absclip-demo", device="cpu", batch_size=32, use_cache=False, **options)
        clf.set_classes(list(CLASSES), descriptions=desc)
        clf.method(method)  # text side first: not timed
        row = {"row": name, "method": method}
        for set_name in sets:
            t = time.perf_counter()
            with torch.inference_mode():
                logits = clf.logits(items[set_name], method)
            seconds = time.perf_counter() - t
            row[set_name] = {"acc1": float((logits.argmax(-1).numpy() == labels[set_name]).mean()),
                             "images": len(items[set_name]), "images_per_s": len(items[set_name]) / seconds}
        out.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        print(json.dumps(out, indent=2))
    print("\n| method | small objects (8-20% of the side): acc1 | large objects (40-80%): acc1 | images/s |")
    print("|---|---|---|---|")
    for r in out:
        s, g = r["small"], r["large"]
        ips = (s["images"] + g["images"]) / (s["images"] / s["images_per_s"] + g["images"] / g["images_per_s"])
        print(f"| {r['row']} | {s['acc1']:.3f} ({s['images']}) | {g['acc1']:.3f} ({g['images']}) | {ips:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
