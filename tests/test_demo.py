"""The shipped demo model (``absclip-demo``) on generated scenes: ABS does what it is for.

Real weights, trained here (``scripts/demo/train.py``), on a synthetic task: one red or blue shape
on a cluttered grey background. Small objects are hard for the global view and easy in a crop; the
tests check that ABS's attention and crops land on the object and that ABS beats CLIP on small
objects without losing the large ones. Scene sets are fixed (``absclip.demo.scenes.SETS``) and
ABS is seeded per image, so every number here is a fixed function of the shipped weights; the
thresholds leave a margin below the numbers measured in ``docs/demo.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from absclip.demo.scenes import CLASSES, LARGE_SIZES, SETS, SMALL_SIZES, TRAIN_SIZES, make_scene, make_scenes

ROOT = Path(__file__).resolve().parents[1]
#: scenes of the small set generated for the tests
N = 100
#: the issue's setting, 16 pixel and 16 feature crops (fewer pixel crops lose most of the gain:
#: 6 give 0.443 on the small set, 12 give 0.503); 40-65 s for both sets on two cores
CROPS = {"pixel_crops": 16, "feature_crops": 16}
#: measured on the shipped model (docs/demo.md), with a margin
MASS_FACTOR = 4.0  # measured 8.3 (mass 0.147, box share 0.0177)
MASS_MAJORITY = 0.85  # measured 0.97 of the scenes
CENTRE_FACTOR = 10.0  # measured 24 (0.425 of the centres on the object)
ATTENTION_SCENES = 100
#: images per scene set for the accuracy tests (the issue asks for at least 300)
ACC_IMAGES = 300
SMALL_GAIN = 0.10  # ABS over CLIP on small objects; measured 0.553 vs 0.420 (+13.3 points)
SMALL_ABS_FLOOR = 0.50
LARGE_LOSS = 0.05  # ABS under CLIP on large objects at most; measured 0.983 vs 0.970 (ABS ahead)
LARGE_CLIP_FLOOR = 0.90


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


def test_models_lists_the_demo_model_first(capsys):
    from absclip.cli.main import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["model"] == "absclip-demo" and "synthetic" in rows[0]["note"]
    assert sum(r["model"] == "absclip-demo" for r in rows) == 1
    assert main(["models", "absclip*"]) == 0 and "synthetic demonstration" in capsys.readouterr().out


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
        assert SMALL_SIZES[0] * 0.65 <= side <= SMALL_SIZES[1] + 2 / 224  # a polygon's box is within its diameter
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


def test_readme_see_it_work_lines_run_as_written(tmp_path, monkeypatch, capsys):
    """The README's two demo lines (scenes, then eval with the demo model) run without a download."""
    import shlex

    from absclip.cli.main import main as absclip_main
    from absclip.demo.__main__ import main as demo_main

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("See it work on any machine", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [shlex.split(ln) for ln in block.strip().splitlines()]
    assert [ln[:3] for ln in lines] == [["python", "-m", "absclip.demo"], ["absclip", "eval", "--model"]]
    monkeypatch.chdir(tmp_path)
    assert demo_main(lines[0][3:]) == 0
    capsys.readouterr()
    assert absclip_main([*lines[1][1:], "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    acc = {r["absclip"]["method"]: r["metrics"]["acc1"] for r in out["results"]}
    assert out["evaluated"] == 20 and acc["abs"] > acc["clip"], acc  # measured 0.65 vs 0.45 (default 50 + 50 crops)


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
    """ABS's attention (the model's own) and the pixel-crop centres it draws land on the object."""
    from absclip.core import views
    from absclip.core.geometry import abs_geometry
    from absclip.core.sampling import image_rng
    from absclip.io.images import make_item

    scenes = small[:ATTENTION_SCENES]
    att = clf.attention([s.image for s in scenes])
    grid, facts = clf.attention.grid, clf.backbone.facts
    cfg = clf.method("abs").settings
    mass, share, on = [], [], []
    for s, a in zip(scenes, att):
        x0, y0, x1, y1 = s.box
        a = a.double().numpy()
        mass.append(float((a * _grid_coverage(s.box, 224, grid)).sum() / a.sum()))
        share.append((x1 - x0) * (y1 - y0) / 224**2)  # also where a uniformly drawn centre falls
        geo = abs_geometry(torch.as_tensor(a), None, cfg, 224, 224, grid, facts.grid, facts.image_size[0],
                           rng=image_rng(clf.seed, make_item(s.image).key, "abs"))
        cells = geo.topk_idx.numpy()[geo.draws.pix_pos]
        centres = [views.box_centre(views.patch_box(int(c), 224, 224, *grid)) for c in cells]
        on.append(np.mean([x0 <= cx < x1 and y0 <= cy < y1 for cx, cy in centres]))
    # the attention map puts several times the box's share of its mass inside the box
    assert np.mean(mass) > MASS_FACTOR * np.mean(share), (np.mean(mass), np.mean(share))
    assert np.mean(np.array(mass) > np.array(share)) > MASS_MAJORITY
    # ... and the crops are centred on the object far more often than uniform sampling would be
    assert np.mean(on) > CENTRE_FACTOR * np.mean(share), (np.mean(on), np.mean(share))


@pytest.fixture(scope="module")
def accuracy(clf):
    """acc1 of CLIP and ABS (class names in the default template, as the README's example) on both scene sets."""
    from absclip.io.images import make_item

    out = {}
    for name, (seed, sizes) in SETS.items():
        scenes = make_scenes(seed, ACC_IMAGES, sizes=sizes)
        labels = torch.tensor([s.label for s in scenes])
        items = [make_item(s.image) for s in scenes]
        hits = {m: 0 for m in ("clip", "abs")}
        with torch.inference_mode():
            for i in range(0, len(items), 50):
                logits = clf.logits_batch(items[i : i + 50], list(hits))
                for m in hits:
                    hits[m] += int((logits[m].argmax(-1) == labels[i : i + 50]).sum())
        out[name] = {m: h / len(items) for m, h in hits.items()}
    return out


def test_abs_beats_clip_on_small_objects(accuracy):
    """The crops enlarge what the global view misses: ABS gains at least ten points on small objects."""
    small = accuracy["small"]
    assert small["abs"] >= small["clip"] + SMALL_GAIN, accuracy
    assert small["abs"] >= SMALL_ABS_FLOOR, accuracy  # and the model really knows the task


def test_abs_keeps_clip_accuracy_on_large_objects(accuracy):
    """Where the object already fills the view, the crops cost at most five points."""
    large = accuracy["large"]
    assert large["abs"] >= large["clip"] - LARGE_LOSS, accuracy
    assert large["clip"] >= LARGE_CLIP_FLOOR, accuracy


def test_a_short_training_run_lowers_the_loss():
    sys.path.insert(0, str(ROOT / "scripts" / "demo"))
    try:
        import train
    finally:
        sys.path.remove(str(ROOT / "scripts" / "demo"))
    losses = train.main(["--steps", "30", "--batch", "16", "--warmup", "3", "--lr", "2e-3", "--eval-every", "0"])
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1, losses
