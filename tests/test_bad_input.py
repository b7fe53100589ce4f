"""Messy inputs: every case is a one-line error with exit code 2, or a reported skip; never a traceback.

The corpus is generated here from the real photos in ../shared (no binary junk in the repo).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from absclip.errors import AbsclipError, BadImageError
from absclip.io.images import load_image
from absclip.text.banks import match_bank
from absclip.text.classes import ClassList, load_classes
from absclip.text.sources import read_text_source

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO, GOLDEN

MODEL = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", str(DINO),
         "--crops", "4", "--feature-crops", "4", "--wca-crops", "4"]
PHOTO = DATA / "photos" / "chelsea.png"
JPEG = DATA / "photos" / "rocket.jpg"


def cli(*args, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "absclip", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


class Proc:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli_inprocess(capsys, *args):
    """Run the CLI in this process (faster than a subprocess); any uncaught exception fails the test."""
    from absclip.cli.main import main

    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return Proc(rc, out.out, out.err)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errs = [line for line in proc.stderr.splitlines() if line.startswith("absclip: error:")]
    assert len(errs) == 1, proc.stderr
    for n in needles:
        assert n in errs[0], errs[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Return {case: (path, expect)} with expect "ok" or the error fragment."""
    d = tmp_path_factory.mktemp("corpus")
    src = Image.open(PHOTO).convert("RGB")
    jpeg_bytes = JPEG.read_bytes()
    png_bytes = PHOTO.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}

    def add(name, data_or_image, expect, **save):
        p = d / name
        if isinstance(data_or_image, bytes):
            p.write_bytes(data_or_image)
        else:
            data_or_image.save(p, **save)
        cases[name] = (p, expect)

    add("truncated.jpg", jpeg_bytes[: len(jpeg_bytes) // 2], "corrupt or truncated")
    broken_png = bytearray(png_bytes)
    broken_png[len(broken_png) // 2 : len(broken_png) // 2 + 64] = b"\x00" * 64
    add("corrupt.png", bytes(broken_png), "corrupt or truncated")
    add("empty.jpg", b"", "empty (0 bytes)")
    add("text.jpg", b"this is not an image, just text\n" * 10, "not a recognised image")
    add("cmyk.jpg", src.convert("CMYK"), "ok")
    gray16 = Image.fromarray(np.asarray(src.convert("L"), dtype=np.uint16) * 257)
    assert gray16.mode == "I;16"
    add("gray16.png", gray16, "ok")
    pal = src.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("palette_transparent.png", pal, "ok", transparency=0)
    add("rgba.png", src.convert("RGBA"), "ok")
    add("la.png", src.convert("LA"), "ok")
    add("one_pixel.png", src.resize((1, 1)), "ok")
    add("three_by_five.png", src.resize((3, 5)), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    add("exif_rotated.jpg", src.resize((40, 20)), "ok", exif=exif.tobytes())
    frames = [src.resize((32, 32)), src.resize((32, 32)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    add("animated.gif", buf.getvalue(), "ok")
    add("huge.png", src.resize((1000, 800)), "exceeds the limit")  # run with --max-pixels 500000
    unreadable = d / "unreadable.png"
    src.resize((20, 20)).save(unreadable)
    os.chmod(unreadable, 0)
    cases["unreadable.png"] = (unreadable, "permission denied")
    return d, cases


def test_decoding_modes(corpus):
    _, cases = corpus
    assert load_image(cases["exif_rotated.jpg"][0]).size == (20, 40)  # orientation respected
    g16 = load_image(cases["gray16.png"][0])
    assert g16.mode == "RGB" and 0 < np.asarray(g16).mean() < 255  # scaled, not clipped to white
    assert load_image(cases["animated.gif"][0]).size == (32, 32)
    assert load_image(cases["one_pixel.png"][0]).size == (1, 1)
    with pytest.raises(BadImageError, match="exceeds the limit"):
        load_image(cases["huge.png"][0], max_pixels=500_000)


def test_classify_every_case(corpus, capsys):
    """Through the CLI: good files classify, bad files give exit 2 and one sentence naming the file."""
    _, cases = corpus
    for name, (path, expect) in cases.items():
        if name == "unreadable.png":
            continue  # needs another user, see below
        extra = ["--max-pixels", "500000"] if name == "huge.png" else []
        proc = cli_inprocess(capsys, "classify", path, "--classes", "cat,coffee,rocket", "--method", "abs", "--json",
                             *MODEL, *extra)
        if expect == "ok":
            assert proc.returncode == 0, (name, proc.stderr)
            out = json.loads(proc.stdout)
            assert len(out) == 1 and len(out[0]["predictions"]) == 3, name
        else:
            assert_one_line_error(proc, name, expect)


def test_unreadable_file(corpus):
    _, cases = corpus
    path = cases["unreadable.png"][0]
    # root reads anything: drop the capabilities that bypass file permissions (uid stays 0)
    prefix = ("setpriv", "--inh-caps=-dac_override,-dac_read_search",
              "--bounding-set=-dac_override,-dac_read_search") if os.geteuid() == 0 else ()
    assert_one_line_error(cli("classify", path, "--classes", "a,b", *MODEL, prefix=prefix),
                          "unreadable.png", "permission denied")


def test_tiny_images_give_valid_views(corpus, backbone, dino):
    from absclip import ABSConfig, Classifier

    _, cases = corpus
    clf = Classifier(backbone, attention_model=dino, abs_config=ABSConfig(pixel_crops=8, feature_crops=8),
                     use_cache=False).set_classes(["a", "b"])
    for name in ("one_pixel.png", "three_by_five.png"):
        logits = clf.logits(cases[name][0], "abs")
        assert torch.isfinite(logits).all()
        for v in clf.views(cases[name][0], "abs"):
            w, h = (1, 1) if name == "one_pixel.png" else (3, 5)
            assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in v.boxes)
            assert all(0 <= r0 < r1 <= 14 and 0 <= c0 < c1 <= 14 for r0, r1, c0, c1 in v.windows)


def test_eval_skips_and_reports_bad_images(corpus, tmp_path):
    d, cases = corpus
    listing = tmp_path / "data.csv"
    rows = ["path,label"] + [f"{p},{i % 3}" for i, (name, (p, _)) in enumerate(sorted(cases.items()))
                             if name != "unreadable.png"]
    rows.append(f"{d / 'missing.jpg'},0")
    listing.write_text("\n".join(rows) + "\n")
    out = tmp_path / "r.json"
    proc = cli("eval", "--data", listing, "--classes", "cat,coffee,rocket", "--methods", "clip,abs", "--output", out,
               "--no-progress", "--max-pixels", "500000", *MODEL)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(out.read_text())
    bad = {n for n, (_, e) in cases.items() if e != "ok" and n != "unreadable.png"} | {"missing.jpg"}
    assert {Path(s["file"]).name for s in doc["skipped"]} == bad
    assert all(s["reason"] for s in doc["skipped"])
    good = len(rows) - 1 - len(bad)
    assert doc["evaluated"] == good and all(r["absclip"]["images"] == good for r in doc["results"])


def test_empty_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("classify", tmp_path / "empty", "--classes", "a,b", *MODEL), "contains no images")
    assert_one_line_error(cli("eval", "--data", tmp_path / "empty", "--classes", "a,b", *MODEL),
                          "no labels.csv and no class sub-folders")


# -- text inputs -------------------------------------------------------------------------------------


def test_description_file_errors(tmp_path):
    classes = ClassList.from_names(["cat", "dog"])
    with pytest.raises(AbsclipError, match="does not exist"):
        read_text_source(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(AbsclipError, match="not valid JSON"):
        read_text_source(tmp_path / "bad.json")
    (tmp_path / "latin1.json").write_bytes('{"caf\xe9": ["x"]}'.encode("latin-1"))
    with pytest.raises(AbsclipError, match="not UTF-8"):
        read_text_source(tmp_path / "latin1.json")
    (tmp_path / "list.json").write_text('["a cat", "a dog"]')
    with pytest.raises(AbsclipError, match="must be a JSON object"):
        read_text_source(tmp_path / "list.json")
    (tmp_path / "num.json").write_text('{"cat": 3}')
    with pytest.raises(AbsclipError, match="must be a list of strings"):
        read_text_source(tmp_path / "num.json")
    with pytest.raises(AbsclipError, match="zero descriptions"):
        match_bank(classes, {"cat": ["a cat"], "dog": []})
    with pytest.raises(AbsclipError, match="1 of 2 classes have no entry.*'dog'"):
        match_bank(classes, {"cat": ["a cat"]})


def test_extra_keys_are_logged(caplog):
    import logging

    caplog.set_level(logging.INFO)
    out = match_bank(ClassList.from_names(["Cat", "dog_breed"]), {"cat": ["c"], "dog breed": ["d"], "fish": ["f"]})
    assert out == [["c"], ["d"]]
    assert "1 descriptions entries match no class" in caplog.text
    with pytest.raises(AbsclipError, match="Duplicate class names: 'cat' \\(2x\\)"):
        ClassList.from_names(["cat", "cat"])


def test_class_list_errors(tmp_path):
    with pytest.raises(AbsclipError, match="empty"):
        load_classes(classes=" , ")
    (tmp_path / "c.txt").write_text("\n\n")
    with pytest.raises(AbsclipError, match="empty"):
        load_classes(classes_file=tmp_path / "c.txt")
    with pytest.raises(AbsclipError, match="does not exist"):
        load_classes(classes_file=tmp_path / "missing.txt")
    with pytest.raises(AbsclipError, match="exactly one"):
        load_classes()


def test_single_class_works(caplog):
    proc = cli("classify", PHOTO, "--classes", "cat", "--json", *MODEL)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["predictions"] == [{"label": "cat", "score": 1.0}]
    assert "Only one class" in proc.stderr


def test_cli_text_errors_are_one_line(tmp_path):
    (tmp_path / "list.json").write_text('["a cat"]')
    assert_one_line_error(cli("classify", PHOTO, "--classes", "cat,dog", "--descriptions", tmp_path / "list.json",
                              *MODEL), "must be a JSON object")
    assert_one_line_error(cli("classify", PHOTO, "--classes", "cat,dog", "--descriptions",
                              GOLDEN / "descriptions.json", *MODEL), "have no entry", "'dog'")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2), "payload": _RunsCode()}, evil)
    assert_one_line_error(cli("classify", PHOTO, "--classes", "a,b", "--model", str(CLIP_CFG), "--pretrained", evil,
                              "--attention-model", "clip"), "Refusing to load")
