"""absclip eval --report: the HTML report's content, and a headless Chromium rendering of it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from absclip.cli.main import main
from absclip.diagnostics.report import confused_pairs, load_report_data, per_class_accuracy, worst_classes

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

PHOTOS = {"chelsea.png": "cat", "coffee.png": "coffee", "rocket.jpg": "rocket", "astronaut.png": "astronaut",
          "motorcycle_left.png": "motorcycle", "quokka.jpg": "quokka"}
METHODS = ["clip", "cupl", "abs"]
MAX_IMAGES = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    (d / "labels.csv").write_text("path,label\n" + "".join(f"{DATA / 'photos' / f},{c}\n" for f, c in PHOTOS.items()))
    out = d / "report.html"
    rc = main(["eval", "--data", str(d / "labels.csv"), "--classes", ",".join(PHOTOS.values()),
               "--methods", ",".join(METHODS), "--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS),
               "--attention-model", str(DINO), "--crops", "4", "--feature-crops", "4", "--device", "cpu",
               "--output", str(d / "results.json"), "--no-progress", "--no-cache",
               "--report", str(out), "--report-max-images", str(MAX_IMAGES)])
    assert rc == 0
    return d, json.loads((d / "results.json").read_text()), out.read_text(encoding="utf-8")


def _pct(v: float) -> str:
    return "n/a" if v != v else f"{100 * v:.2f}"


def test_report_contains_every_methods_numbers(run):
    _, doc, text = run
    assert [r["absclip"]["method"] for r in doc["results"]] == METHODS
    for r in doc["results"]:
        m, met = r["absclip"]["method"], r["metrics"]
        row = re.search(rf"<tr data-method='{m}'[^>]*>(.*?)</tr>", text, re.S)
        assert row is not None, m
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
        assert cells[:4] == [m, _pct(met["acc1"]), _pct(met["acc5"]), _pct(met["mean_per_class_recall"])]
        assert f"data-acc1='{met['acc1']}'" in row.group(0)


def test_report_sections_and_gallery(run):
    d, doc, text = run
    for anchor in ("metrics", "classes", "confusions", "gallery"):
        assert f"id='{anchor}'" in text
    class_table = re.search(r"<table id='class-table'>(.*?)</table>", text, re.S).group(1)
    for name in PHOTOS.values():
        assert f"<td class='name'>{name}</td>" in class_table
    # worst first for the gallery's method (abs)
    abs_col = 2 + METHODS.index("abs")
    accs = [float(re.findall(r"<td[^>]*>(.*?)</td>", r)[abs_col])
            for r in re.findall(r"<tr>(<td class='name'>.*?)</tr>", class_table)]
    assert accs == sorted(accs)
    wrong = sum(1 for line in open(doc["predictions"]) if (r := json.loads(line))["method"] == "abs"
                and r["pred"] != r["label"])
    cards = text.count("<div class='card'>")
    assert cards == min(wrong, MAX_IMAGES)
    if wrong:
        assert text.count("alt='explanation of ") == cards  # explain pictures, not just thumbnails
    # self-contained: every image is embedded, nothing is fetched
    srcs = re.findall(r"src='([^']*)'", text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text


def test_tables_pure():
    recs = [{"label": 0, "pred": 0}, {"label": 0, "pred": 1}, {"label": 1, "pred": 2}, {"label": 1, "pred": 2},
            {"label": 2, "pred": 2}]
    assert per_class_accuracy(recs) == {0: (1, 2), 1: (0, 2), 2: (1, 1)}
    assert confused_pairs(recs) == [(1, 2, 2), (0, 1, 1)]


def test_load_report_data_filters_other_runs(run, tmp_path):
    d, doc, _ = run
    data = load_report_data(d / "results.json")
    assert data.methods == METHODS and data.classes == list(PHOTOS.values())
    assert all(len(data.records[m]) == len(PHOTOS) for m in METHODS)
    stale = tmp_path / "p.jsonl"
    lines = open(doc["predictions"]).read().splitlines()
    stale.write_text("\n".join(lines + [json.dumps({**json.loads(lines[0]), "run": "other", "path": "x.jpg"}),
                                        '{"torn']))
    data = load_report_data(doc, predictions=stale)
    assert all(len(data.records[m]) == len(PHOTOS) for m in METHODS)
    rows = worst_classes(data, "abs")
    assert [r[0] for r in rows] and all(0 <= v <= 1 for r in rows for v in r[1].values())


def test_report_renders_in_headless_chromium(run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (.ci/run installs the Debian package)"
    d, _, _ = run
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1200,900", (d / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        px = np.asarray(im.convert("L"), dtype=np.float32)
    assert px.std() > 10  # text, tables and the metrics chart, not a blank page
    assert (px < 128).mean() > 0.01
