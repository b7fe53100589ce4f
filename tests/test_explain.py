"""absclip explain: the picture, the boxes it draws, and the attention maps behind it (tiny golden models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from absclip import ABSConfig, Classifier, load_attention
from absclip.attention.layered import ClipLayeredAttention, HFLayeredAttention
from absclip.attention.maps import robust_outliers, rollout, sink_tokens, suppress_sinks, text_similarity_map
from absclip.attention.sources import HFAttention
from absclip.cli.main import main
from absclip.core import scoring
from absclip.diagnostics.explain import clip_input_region, explain
from absclip.diagnostics.explain_figure import heatmap_overlay

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO, GOLDEN

PHOTO = DATA / "photos" / "chelsea.png"
CLASSES = ["cat", "coffee", "rocket"]
SMALL = ABSConfig(pixel_crops=6, feature_crops=6)


@pytest.fixture(scope="module")
def clf(backbone, dino):
    # view_batch: all of SMALL's crops fit one encoder call, so the call counts below are exact
    c = Classifier(backbone, attention_model=dino, abs_config=SMALL, use_cache=False, view_batch=64)
    return c.set_classes(CLASSES, descriptions=GOLDEN / "descriptions.json")


@pytest.fixture(scope="module")
def picture(clf, tmp_path_factory):
    ex = explain(clf, PHOTO, top=3)
    used = clf.views(str(PHOTO), "abs")[0]
    path = tmp_path_factory.mktemp("explain") / "explain.png"
    drawn = ex.save(path)
    ranked = clf.classify(str(PHOTO), top=3)  # the plain API on the same image, after the picture
    again = clf.views(str(PHOTO), "abs")[0]
    return ex, used, drawn, path, ranked, again


# -- the picture --------------------------------------------------------------------------------


def test_png_size(picture, clf, tmp_path):
    ex, _, drawn, path, _, _ = picture
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == drawn.size == (1600, 1000)
    assert path.stat().st_size > 50_000  # four panels, not an empty canvas
    small = ex.save(tmp_path / "small.png", dpi=50)
    with Image.open(tmp_path / "small.png") as im:
        assert im.size == small.size == (800, 500)


def test_boxes_drawn_are_the_boxes_used(picture, clf):
    ex, used, drawn, _, _, again = picture
    assert len(drawn.boxes) == SMALL.pixel_crops and len(drawn.windows) == SMALL.feature_crops
    assert drawn.boxes == [tuple(b) for b in used.boxes]
    assert drawn.windows == [tuple(w) for w in used.windows]
    # and classify draws the very same views for this image (same seed, same content)
    assert drawn.boxes == [tuple(b) for b in again.boxes]
    assert drawn.windows == [tuple(w) for w in again.windows]
    # the map shown is the attention the prediction used
    np.testing.assert_array_equal(ex.map.ravel(), used.attention.numpy())


def test_overlay_differs_from_raw_image_where_attention_is_high(picture):
    ex, _, drawn, path, _, _ = picture
    x0, y0, x1, y1 = drawn.overlay_box
    with Image.open(path) as im:
        shown = np.asarray(im.convert("RGB").crop((x0, y0, x1, y1)), dtype=np.float32)
    raw = np.asarray(ex.image.resize((x1 - x0, y1 - y0), Image.BICUBIC), dtype=np.float32)
    rows, cols = ex.map.shape
    ch, cw = shown.shape[0] / rows, shown.shape[1] / cols

    def cell_diff(index: int) -> float:
        r, c = divmod(int(index), cols)
        ys = slice(int((r + 0.3) * ch), max(int((r + 0.7) * ch), int((r + 0.3) * ch) + 1))
        xs = slice(int((c + 0.3) * cw), max(int((c + 0.7) * cw), int((c + 0.3) * cw) + 1))
        return float(np.abs(shown[ys, xs] - raw[ys, xs]).mean())

    order = np.argsort(ex.map.ravel())
    high = cell_diff(order[-1])
    low = np.mean([cell_diff(i) for i in order[:10]])
    assert high > 25, high
    assert high > low + 20, (high, low)


def test_heatmap_overlay_is_exact_where_attention_is_lowest():
    img = np.full((40, 60, 3), 128, dtype=np.uint8)
    grid = np.zeros((4, 6), dtype=np.float32)
    grid[1, 2] = 1.0
    out = heatmap_overlay(img, grid, (0, 0, 60, 40))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out[15, 25].astype(int) - 128).max() > 40  # centre of the hot cell
    np.testing.assert_array_equal(out[35, 55], img[35, 55])  # far from it: untouched


def test_descriptions_and_scores(picture, clf):
    ex, _, _, _, ranked, _ = picture
    assert [c.label for c in ex.top] == [r["label"] for r in ranked]
    assert [c.score for c in ex.top] == pytest.approx([r["score"] for r in ranked], abs=1e-6)
    assert sum(c.mass for c in ex.top) == pytest.approx(1.0, abs=1e-5)  # all three classes shown
    bank = clf.method("abs").bank
    for c in ex.top:
        assert 1 <= len(c.descriptions) <= 3
        shares = [s for _, s in c.descriptions]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
        assert all(t in bank.texts[c.index] for t, _ in c.descriptions)


@pytest.mark.parametrize("kind", ["attention", "text"])
def test_explain_encodes_each_image_once(clf, backbone, dino, monkeypatch, kind):
    calls = {"encode_images": 0, "attention": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(backbone, "encode_images", counted("encode_images", backbone.encode_images))
    monkeypatch.setattr(dino, "heads", counted("attention", dino.heads))
    explain(clf, PHOTO, map=kind)
    # one attention pass; the crops in one encoder call; the full image and the text map reuse the tokens
    assert calls == {"encode_images": 1, "attention": 1}


def test_description_mass_matches_soft_matching():
    g = torch.Generator().manual_seed(0)
    views = torch.nn.functional.normalize(torch.randn(2, 5, 8, generator=g), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    mass = scoring.soft_match_description_mass(views, text, mask, 0.1, chunk=2)
    assert mass.shape == (2, 3, 4)
    torch.testing.assert_close(mass.sum(dim=(1, 2)), torch.full((2,), 5.0))
    assert (mass[:, ~mask] == 0).all()
    s = torch.einsum("bvd,cmd->bvcm", views, text) / 0.1
    p = torch.softmax(s.masked_fill(~mask, float("-inf")).reshape(2, 5, -1), -1).reshape(2, 5, 3, 4)
    torch.testing.assert_close(mass, p.sum(1))
    torch.testing.assert_close((p * s.masked_fill(~mask, 0)).sum(-1), scoring.soft_match_view_scores(views, text,
                                                                                                      mask, 0.1))


# -- maps and attention sources ------------------------------------------------------------------


def test_rollout_and_text_maps(clf, backbone):
    ex = explain(clf, PHOTO, map="rollout")
    assert ex.map.shape == clf.attention.grid and "rollout" in ex.map_label
    assert (ex.map >= 0).all() and ex.map.sum() <= 1 + 1e-5
    ex = explain(clf, PHOTO, map="text", map_class="coffee")
    assert ex.map.shape == backbone.facts.grid and "coffee" in ex.map_label
    w, h = ex.image.size
    assert ex.map_region == clip_input_region(backbone, w, h)
    x0, y0, x1, y1 = ex.map_region
    assert x1 - x0 == y1 - y0 == min(w, h)  # open_clip: shorter side resized, then centre crop
    assert np.abs(ex.map).max() <= 1


def test_rollout_pure():
    a = torch.softmax(torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1)), dim=-1)
    one = rollout([a], "mean")
    expect = 0.5 * a.mean(1) + 0.5 * torch.eye(5)
    torch.testing.assert_close(one, expect / expect.sum(-1, keepdim=True))
    two = rollout([a, a], "max")
    torch.testing.assert_close(two.sum(-1), torch.ones(2, 5))
    assert (two >= 0).all()


def test_sink_suppression_pure():
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(1, 20, 8, generator=g)
    hidden[0, 7] *= 50  # one token with an abnormal norm
    sinks = sink_tokens(hidden, None, 5.0)
    assert sinks.tolist() == [[i == 7 for i in range(20)]]
    att = torch.softmax(torch.randn(1, 2, 20, generator=g), -1) * 0.9
    out = suppress_sinks(att, sinks)
    assert (out[..., 7] == 0).all()
    torch.testing.assert_close(out.sum(-1), att.sum(-1))  # mass kept
    assert not robust_outliers(torch.ones(1, 6), 5.0).any()


def test_text_similarity_map_pure():
    patches = torch.nn.functional.normalize(torch.eye(4, 3)[None], dim=-1)  # [1, 4, 3]
    text = torch.eye(3)[:2]
    sim = text_similarity_map(patches, text, torch.tensor([True, False]))
    torch.testing.assert_close(sim, patches[..., 0])


def test_layered_sources_agree_with_the_default_sources(backbone, dino, golden_items):
    images = [it.image for it in golden_items[:2]]
    plain = HFLayeredAttention(dino)
    torch.testing.assert_close(plain.heads(images), dino.heads(images))
    px = torch.stack([backbone.preprocess(im) for im in images])
    tokens = backbone.tokens_before(px, -1)
    full = backbone.block_attentions(px, -1)[0][-1]
    torch.testing.assert_close(full[:, :, 0, 1:], backbone.cls_attention(tokens, -1).float())
    torch.testing.assert_close(full.sum(-1), torch.ones(full.shape[:-1]))
    clip = ClipLayeredAttention(backbone, rollout="max", sink_threshold=3.0)
    m = clip(images)
    assert m.shape == (2, backbone.facts.grid[0] * backbone.facts.grid[1]) and (m >= 0).all()
    assert clip.last_sinks is not None and clip.last_sinks.shape == m.shape


def test_default_attention_source_is_unchanged(backbone):
    src = load_attention(str(DINO), backbone)
    assert type(src) is HFAttention
    roll = load_attention(str(DINO), backbone, rollout="mean", sink_threshold=5.0)
    assert isinstance(roll, HFLayeredAttention) and roll.identity != src.identity
    assert "rollout=mean" in roll.identity and "sinks=5.0" in roll.identity


def test_abs_runs_on_rollout_and_sink_sources(backbone, golden_items):
    clf = Classifier(backbone, attention_model=str(DINO), abs_config=SMALL, use_cache=False,
                     attention_rollout="max", sink_threshold=5.0)
    clf.set_classes(CLASSES, descriptions=GOLDEN / "descriptions.json")
    logits = clf.logits(golden_items[0].image)
    assert logits.shape == (1, 3) and torch.isfinite(logits).all()
    ex = explain(clf, golden_items[0])
    assert "rollout" in ex.map_label and "sinks" in ex.map_label


# -- command line -------------------------------------------------------------------------------


def test_cli_explain(tmp_path, capsys):
    out = tmp_path / "cli.png"
    rc = main(["explain", str(PHOTO), "--classes", ",".join(CLASSES),
               "--descriptions", str(GOLDEN / "descriptions.json"),
               "--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", "clip",
               "--attention-rollout", "mean", "--ignore-sinks", "--crops", "4", "--feature-crops", "4",
               "--device", "cpu", "--no-cache", "--map", "text", "--dpi", "40", "--out", str(out), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["map"] == "text" and doc["pixel_crops"] == 4 and doc["size"] == [640, 400]
    assert "rollout" in doc["attention"] and "sinks" in doc["attention"]
    with Image.open(out) as im:
        assert im.size == (640, 400)


def test_cli_explain_bad_map(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["explain", str(PHOTO), "--classes", "cat", "--map", "nope", "--out", str(tmp_path / "x.png")])


# -- 1 to 1000 classes: distinct labels, scores and panel letters ------------------------------


@pytest.mark.parametrize("n", [1, 3, 1000])
def test_picture_reads_for_1_to_1000_classes(backbone, dino, tmp_path, n):
    from absclip.diagnostics.explain_figure import MAX_BARS, format_distinct, shorten_distinct
    from absclip.text.classes import load_classes

    imagenet = load_classes(classes_file=DATA / "imagenet-meta" / "imagenet_classes.tsv")
    classes = imagenet if n == 1000 else CLASSES[:n]
    c = Classifier(backbone, attention_model=dino, abs_config=SMALL, use_cache=False).set_classes(classes)
    # long descriptions that differ only at the end: shortened, they must stay apart
    ex = explain(c, PHOTO, top=min(n, 1000))
    for cl in ex.top[:3]:
        cl.descriptions = [("a photo of something that has a very long description which only differs at " + e, s)
                           for e, s in (("the very end: red", 0.5), ("the very end: blue", 0.3),
                                        ("the very end: green", 0.2))]
    drawn = ex.save(tmp_path / f"explain{n}.png")
    letters = [t.split(" ", 1)[0] for t in drawn.titles]
    assert letters == ["(a)", "(b)", "(c)", "(d)", "(e)"]
    shown = min(n, MAX_BARS)
    assert len(drawn.class_labels) == shown == len(set(drawn.class_labels))
    assert drawn.class_labels == shorten_distinct([cl.label for cl in ex.top[:shown]], 28)
    assert len(drawn.score_labels) == shown
    scores = [cl.score for cl in ex.top[:shown]]
    for i in range(shown - 1):
        if scores[i] != scores[i + 1]:
            assert drawn.score_labels[i] != drawn.score_labels[i + 1], drawn.score_labels
    if n == 1000:
        assert f"+ {1000 - MAX_BARS} more not shown" in drawn.titles[3]
        assert len(set(imagenet.labels)) == 1000
    assert len(drawn.description_labels) == 3 * min(n, 3)
    assert len(set(drawn.description_labels)) == 3
    assert all(s.endswith("%") and s != "0%" for s in drawn.share_labels)
    assert format_distinct([0.0010123, 0.0010119, 0.001], percent=True) == ["0.10123%", "0.10119%", "0.10000%"]


def test_explain_text_output_ranks_1000_classes(capsys, tmp_path):
    from .test_cli import MODEL
    from .test_cli import SMALL as SMALL_ARGS

    assert main(["explain", str(PHOTO), "--classes-file", str(DATA / "imagenet-meta" / "imagenet_classes.tsv"),
                 "--top", "5", "--out", str(tmp_path / "e.png"), *MODEL, *SMALL_ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "top 5 of 1000 classes" in lines[0]
    scores = [ln.split()[0] for ln in lines[1:] if ln.startswith("  ") and not ln.startswith("          ")]
    assert len(scores) == 5 and len(set(scores)) == 5, scores
