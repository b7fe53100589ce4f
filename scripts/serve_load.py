"""Load test of ``absclip serve``: requests/s and p50/p95 latency at several numbers of concurrent clients.

Starts ``python -m absclip serve`` with the options after ``--`` on a free port, sends ``--requests``
classify requests per level from N client threads (photos from ../shared/data/imagenet-sample, in a
fixed order), and prints a Markdown table; the in-process batch throughput of the same classifier
(``Classifier.logits`` at ``--batch-size``) is the last row, for comparison. Measure with the machine
to yourself (``flock -x /tmp/absclip.lock``).

Example:
    flock -x /tmp/absclip.lock python scripts/serve_load.py --concurrency 1,4,16 --requests 64 -- \\
        --model ../shared/golden/clip-tiny.open_clip.json --pretrained ../shared/golden/clip-tiny.pt \\
        --attention-model ../shared/golden/dino-tiny --classes-file ../shared/data/classnames/imagenet.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from absclip.serve.client import post_form  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"


def classify(url: str, image: bytes, method: str) -> float:
    t = time.perf_counter()
    status, body, _ = post_form(url + "/v1/classify", {"method": method}, {"image": ("x.jpg", image)}, timeout=600)
    if status != 200:
        sys.exit(f"request failed: {status} {body[:300]!r}")
    return time.perf_counter() - t


def level(url: str, images: list[bytes], clients: int, requests: int, method: str) -> dict[str, float]:
    before = json.loads(urllib.request.urlopen(url + "/healthz").read())
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = list(pool.map(lambda i: classify(url, images[i % len(images)], method), range(requests)))
    wall = time.perf_counter() - t
    after = json.loads(urllib.request.urlopen(url + "/healthz").read())
    batches = after["batches"] - before["batches"]
    return {"clients": clients, "rps": requests / wall, "p50": float(np.percentile(lat, 50)) * 1000,
            "p95": float(np.percentile(lat, 95)) * 1000, "batch": (after["images"] - before["images"]) / batches}


def batch_throughput(serve_args: list[str], images: list[Path], method: str) -> float:
    """Images/s of the same classifier in this process, batches of --batch-size (what eval runs)."""
    from absclip.cli.main import build_parser
    from absclip.cli.options import build_classifier, read_class_inputs, read_images, set_classes

    args = build_parser().parse_args(["classify", *map(str, images), *serve_args, "--method", method])
    clf = build_classifier(args, [method])
    set_classes(clf, args, read_class_inputs(args))
    items = read_images(args.images, args.max_pixels)
    clf.logits(items[: clf.batch_size], method)  # warm up
    t = time.perf_counter()
    clf.logits(items, method)
    return len(items) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,4,16", help="client counts (default: %(default)s)")
    p.add_argument("--requests", type=int, default=64, help="requests per level (default: %(default)s)")
    p.add_argument("--photos", type=int, default=32, help="distinct photos sent (default: %(default)s)")
    p.add_argument("--method", default="abs")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- then the options of absclip serve")
    a = p.parse_args()
    serve_args = [x for x in a.serve_args if x != "--"]
    paths = sorted(SAMPLE.glob("*.JPEG"))[: a.photos]
    images = [f.read_bytes() for f in paths]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "absclip", "serve", *serve_args, "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                sys.exit("the server exited")
            try:
                urllib.request.urlopen(url + "/healthz")
                break
            except OSError:
                time.sleep(0.5)
        for im in images[:2]:
            classify(url, im, a.method)  # warm up
        rows = [level(url, images, int(c), a.requests, a.method) for c in a.concurrency.split(",")]
    finally:
        proc.terminate()
        proc.wait()
    base = batch_throughput(serve_args, paths, a.method)
    print(f"\n{a.requests} requests per level, method {a.method}, {len(images)} photos\n")
    print("| concurrent clients | requests/s | p50 latency (ms) | p95 latency (ms) | mean batch |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['batch']:.1f} |")
    print(f"| in-process batches (eval's loop) | {base:.1f} images/s | | | |")


if __name__ == "__main__":
    main()
