"""Write a synthetic webdataset shard set in CLIP_benchmark's layout (for memory and speed checks).

    python examples/make_shards.py OUT --samples 100000 --per-shard 10000

OUT/test/{0..K}.tar hold tiny JPEGs (16x16, 256 distinct colours) with ``.cls`` labels; OUT/classnames.txt
names 10 classes. ``absclip eval --data 'OUT/test/{0..K}.tar' --methods clip ...`` reads them."""

from __future__ import annotations

import argparse
import io
import os
import tarfile

import numpy as np
from PIL import Image

CLASSES = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "black", "grey", "orange"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--per-shard", type=int, default=10_000)
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "test"), exist_ok=True)
    rng = np.random.default_rng(0)
    jpegs = []
    for _ in range(256):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
        jpegs.append(buf.getvalue())
    with open(os.path.join(a.out, "classnames.txt"), "w") as f:
        f.write("".join(c + "\n" for c in CLASSES))
    for s, start in enumerate(range(0, a.samples, a.per_shard)):
        with tarfile.open(os.path.join(a.out, "test", f"{s}.tar"), "w") as tar:
            for i in range(start, min(start + a.per_shard, a.samples)):
                for ext, data in (("jpg", jpegs[i % 256]), ("cls", str(i % len(CLASSES)).encode())):
                    info = tarfile.TarInfo(f"s{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    print(f"{a.samples} samples in {s + 1} shards: {a.out}/test/{{0..{s}}}.tar")


if __name__ == "__main__":
    main()
