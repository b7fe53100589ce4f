"""The shipped demo model (``absclip-demo``) on generated scenes: ABS does what it is for.

Real weights, trained here (``scripts/demo/train.py``), on a synthetic task: one red or blue shape
on a cluttered grey background. Small objects are hard for the global view and easy in a crop; the
tests check that ABS's attention and crops land on the object and that this pays off in accuracy.
Scene sets are fixed (``absclip.demo.scenes.SETS``); the thresholds leave a margin below the
numbers measured in ``docs/demo.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from absclip.demo.scenes import CLASSES, LARGE_SIZES, SETS, SMALL_SIZES, TRAIN_SIZES, make_scene, make_scenes

ROOT = Path(__file__).resolve().parents[1]
#: images per scene set (the issue asks for at least 300)
N = 300
#: ABS made cheap enough for CI: few pixel crops (the expensive views), more feature crops (cheap)
CROPS = {"pixel_crops": 6, "feature_crops": 16}
#: measured on the shipped model (docs/demo.md), with a margin
MASS_FACTOR = 2.0
CENTRE_FACTOR = 2.0


@pytest.fixture(scope="module")
def clf():
    import absclip
    from absclip.core.settings import ABSConfig

    c = absclip.load("absclip-demo", device="cpu", abs_config=ABSConfig(**CROPS))
    c.set_classes(list(CLASSES))
    return c


@pytest.fixture(scope="module")
def small():
    return make_scenes(SETS["small"][0], N, sizes=SETS["small"][1])


@pytest.fixture(scope="module")
def large():
    return make_scenes(SETS["large"][0], N, sizes=SETS["large"][1])


def _acc(clf, scenes, methods):
    from absclip.io.images import make_item

    items = [make_item(s.image) for s in scenes]
    labels = np.array([s.label for s in scenes])
    hits = {m: 0 for m in methods}
    for i in range(0, len(items), 32):
        out = clf.logits_batch(items[i : i + 32], methods)
        for m in methods:
            hits[m] += int((out[m].argmax(-1).numpy() == labels[i : i + 32]).sum())
    return {m: hits[m] / len(scenes) for m in methods}


# -- the model ships and loads ------------------------------------------------------------------


def test_demo_model_ships_inside_the_package():
    from absclip.backbones.demo import DEMO_DIR, demo_file

    weights = demo_file("absclip-demo.safetensors")
    assert weights.stat().st_size <= 10 * 2**20
    assert demo_file("classes.txt").read_text().split("\n")[:-1] == list(CLASSES)
    desc = json.loads(demo_file("descriptions.json").read_text())
    assert list(desc) == list(CLASSES) and all(len(v) >= 3 for v in desc.values())
    assert DEMO_DIR.parent.parent == Path(__import__("absclip").__file__).parent  # inside the package


def test_demo_model_loads_with_its_own_attention(clf):
    from absclip.attention.sources import ClipSelfAttention

    bb = clf.backbone
    assert bb.name == "absclip-demo" and bb.default_attention == "clip"
    assert sum(p.numel() for p in bb.model.parameters()) == pytest.approx(4.21e6, rel=0.01)
    assert isinstance(clf.attention, ClipSelfAttention)  # no attention model named, none downloaded


def test_demo_model_refuses_other_weights():
    from absclip import load_clip
    from absclip.errors import AbsclipError

    with pytest.raises(AbsclipError, match="carries its own weights"):
        load_clip("absclip-demo", "laion2b_s34b_b88k", device="cpu")


def test_models_lists_the_demo_model_first():
    out = subprocess.run([sys.executable, "-m", "absclip", "models", "--json"], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    rows = json.loads(out)
    assert rows[0]["model"] == "absclip-demo" and "synthetic" in rows[0]["note"]
    assert sum(r["model"] == "absclip-demo" for r in rows) == 1


# -- the scenes ------------------------------------------------------------------------------------


def test_scenes_are_fixed_balanced_and_record_their_box():
    a, b = make_scene(7, 3), make_scene(7, 3)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.box == b.box
    assert not np.array_equal(np.asarray(a.image), np.asarray(make_scene(7, 4).image))
    scenes = make_scenes(5, 40, sizes=SMALL_SIZES)
    assert [s.label for s in scenes[:10]] == list(range(10))
    for s in scenes:  # the box holds the object's colour, the clutter is desaturated
        x0, y0, x1, y1 = s.box
        side = max(x1 - x0, y1 - y0) / 224
        assert SMALL_SIZES[0] * 0.9 <= side <= SMALL_SIZES[1] * 1.1 + 2 / 224
        arr = np.asarray(s.image, dtype=int)
        hsv_s = arr.max(-1) - arr.min(-1)
        inside = np.zeros(arr.shape[:2], bool)
        inside[y0:y1, x0:x1] = True
        assert (hsv_s[~inside] > 120).mean() < 0.002 < (hsv_s[inside] > 120).mean()
        channel = 0 if s.name.startswith("red") else 2
        assert arr[inside][hsv_s[inside] > 120].mean(0).argmax() == channel
    assert TRAIN_SIZES[0] < SMALL_SIZES[1] and LARGE_SIZES[0] < TRAIN_SIZES[1]  # training covers both sets


def test_make_scenes_writes_a_listing_eval_reads(tmp_path):
    from absclip.demo.__main__ import main
    from absclip.io.sources import load_samples
    from absclip.text.classes import load_classes

    assert main([str(tmp_path), "--small", "12", "--large", "0"]) == 0
    classes = load_classes(classes_file=tmp_path / "classes.txt")
    samples = load_samples(tmp_path / "small", classes)
    assert [s.label for s in samples] == [i % 10 for i in range(12)]
    rows = (tmp_path / "small" / "labels.csv").read_text().splitlines()
    assert rows[1].split(",")[2:] == [str(v) for v in make_scene(SETS["small"][0], 0, sizes=SMALL_SIZES).box]


# -- what ABS is for -------------------------------------------------------------------------------


def _grid_coverage(box, size, grid):
    """Fraction of each attention-grid cell covered by ``box`` (row-major)."""
    gh, gw = grid
    x0, y0, x1, y1 = box
    ys, xs = np.arange(gh) * size / gh, np.arange(gw) * size / gw
    cy = np.clip(np.minimum(ys + size / gh, y1) - np.maximum(ys, y0), 0, None) / (size / gh)
    cx = np.clip(np.minimum(xs + size / gw, x1) - np.maximum(xs, x0), 0, None) / (size / gw)
    return (cy[:, None] * cx[None, :]).ravel()


def test_attention_and_crop_centres_fall_on_small_objects(clf, small):
    from absclip.core import views

    scenes = small[:100]
    recs = clf.views([s.image for s in scenes], "abs")
    gh, gw = clf.attention.grid
    mass, share, on, expected = [], [], [], []
    for s, r in zip(scenes, recs):
        x0, y0, x1, y1 = s.box
        att = r.attention.double().numpy()
        mass.append(float((att * _grid_coverage(s.box, 224, (gh, gw))).sum() / att.sum()))
        share.append((x1 - x0) * (y1 - y0) / 224**2)
        cells = r.topk_idx.numpy()[r.draws.pix_pos]
        centres = [views.box_centre(views.patch_box(int(c), 224, 224, gh, gw)) for c in cells]
        on.append(np.mean([x0 <= cx < x1 and y0 <= cy < y1 for cx, cy in centres]))
        expected.append(share[-1])  # a uniformly drawn centre falls in the box with the box's area share
    # the attention map puts several times the box's share of its mass inside the box
    assert np.mean(mass) > MASS_FACTOR * np.mean(share), (np.mean(mass), np.mean(share))
    assert np.mean(np.array(mass) > np.array(share)) > 0.8
    # ... and the crops are centred on the object far more often than uniform sampling would be
    assert np.mean(on) > CENTRE_FACTOR * np.mean(expected), (np.mean(on), np.mean(expected))


def test_abs_beats_clip_on_small_objects(clf, small):
    acc = _acc(clf, small, ["clip", "abs"])
    assert acc["abs"] >= acc["clip"] + 0.10, acc


def test_abs_stays_close_to_clip_on_large_objects(clf, large):
    acc = _acc(clf, large, ["clip", "abs"])
    assert acc["abs"] >= acc["clip"] - 0.05, acc
    assert acc["clip"] > 0.6, acc  # the model really knows the classes (chance is 0.1)


def test_a_short_training_run_lowers_the_loss():
    sys.path.insert(0, str(ROOT / "scripts" / "demo"))
    try:
        import train
    finally:
        sys.path.remove(str(ROOT / "scripts" / "demo"))
    losses = train.main(["--steps", "30", "--batch", "16", "--warmup", "3", "--lr", "2e-3", "--eval-every", "0"])
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
