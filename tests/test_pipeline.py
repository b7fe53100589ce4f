"""Behaviour of the ABS pipeline and the methods: determinism, settings that matter, text banks."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from absclip import ABSConfig, Classifier, list_methods
from absclip.attention.sources import ClipSelfAttention
from absclip.core.sampling import draw_abs, image_rng
from absclip.io.images import make_item
from absclip.text.banks import match_bank
from absclip.text.classes import ClassList
from absclip.text.encoder import TextEncoder

from .conftest import DATA, GOLDEN

PHOTOS = sorted((DATA / "photos").iterdir())
SMALL = ABSConfig(pixel_crops=8, feature_crops=8)


@pytest.fixture(scope="module")
def items():
    return [make_item(p) for p in PHOTOS[:9]]


def make_clf(backbone, dino, **kw):
    kw.setdefault("abs_config", SMALL)
    clf = Classifier(backbone, attention_model=dino, use_cache=False, **kw)
    return clf.set_classes(["cat", "coffee", "rocket"], descriptions=GOLDEN / "descriptions.json")


def test_registry_lists_all_methods():
    assert set(list_methods()) >= {"clip", "clip-e", "cupl", "dclip", "waffle", "wca", "abs"}


@pytest.mark.parametrize("method", ["abs", "wca"])
def test_predictions_independent_of_batch_size_and_order(backbone, dino, items, method):
    ref = make_clf(backbone, dino, batch_size=1).logits(items, method)
    big = make_clf(backbone, dino, batch_size=8).logits(items, method)
    order = list(range(len(items)))
    random.Random(3).shuffle(order)
    shuf = make_clf(backbone, dino, batch_size=4).logits([items[i] for i in order], method)
    unshuf = torch.empty_like(shuf)
    unshuf[order] = shuf
    assert torch.equal(ref.argmax(1), big.argmax(1)) and torch.equal(ref.argmax(1), unshuf.argmax(1))
    assert (ref - big).abs().max() < 1e-4 and (ref - unshuf).abs().max() < 1e-4


def test_seed_changes_draws_but_is_reproducible(backbone, dino, items):
    a = make_clf(backbone, dino, seed=1).logits(items[:2], "abs")
    b = make_clf(backbone, dino, seed=1).logits(items[:2], "abs")
    c = make_clf(backbone, dino, seed=2).logits(items[:2], "abs")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sampler_is_per_image_and_bounded():
    prob = np.full(20, 1 / 20)
    d1 = draw_abs(image_rng(0, "img-a", "abs"), prob, ABSConfig(), 451, 300, 14)
    d2 = draw_abs(image_rng(0, "img-a", "abs"), prob, ABSConfig(), 451, 300, 14)
    d3 = draw_abs(image_rng(0, "img-b", "abs"), prob, ABSConfig(), 451, 300, 14)
    assert all(np.array_equal(getattr(d1, f), getattr(d2, f)) for f in ("pix_pos", "pix_w", "feat_pos", "feat_size"))
    assert not np.array_equal(d1.pix_pos, d3.pix_pos)
    assert d1.pix_w.min() >= 270 and d1.pix_w.max() <= 405 and d1.pix_h.min() >= 180 and d1.pix_h.max() <= 270
    assert d1.feat_size.min() >= 8 and d1.feat_size.max() <= 12
    shared = draw_abs(image_rng(0, "img-a", "abs"), prob, dataclasses.replace(ABSConfig(), centres="shared"),
                      451, 300, 14)
    assert np.array_equal(shared.feat_pos, shared.pix_pos)


@pytest.mark.parametrize(
    "change",
    [
        {"pixel_crops": 4}, {"feature_crops": 4}, {"top_k": 5}, {"sample_temperature": 1.0},
        {"score_temperature": 0.1}, {"pixel_crop_ratio": (0.3, 0.5)}, {"feature_crop_ratio": (0.3, 0.5)},
        {"feature_layer": 1}, {"max_descriptions": 2}, {"centres": "shared"}, {"feature_mapping": "aligned"},
    ],
)
def test_every_abs_setting_changes_the_output(backbone, dino, items, change):
    base = make_clf(backbone, dino).logits(items[:3], "abs")
    other = make_clf(backbone, dino, abs_config=dataclasses.replace(SMALL, **change)).logits(items[:3], "abs")
    assert not torch.allclose(base, other, atol=1e-6), change


def test_clip_attention_source(backbone, items):
    clf = Classifier(backbone, attention_model="clip", abs_config=SMALL, use_cache=False)
    clf.set_classes(["cat", "coffee", "rocket"], descriptions=GOLDEN / "descriptions.json")
    assert isinstance(clf.attention, ClipSelfAttention)
    logits = clf.logits(items[:2], "abs")
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["clip", "clip-e", "cupl", "dclip", "waffle", "wca", "abs"])
def test_every_method_gives_finite_logits(backbone, dino, items, method):
    clf = make_clf(backbone, dino)
    logits = clf.logits(items[:2], method)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    ranked = clf.classify(items[0], method=method, top=3)
    assert [r["label"] for r in ranked] == [clf.classes[i] for i in logits[0].argsort(descending=True)[:3]]
    assert abs(sum(r["score"] for r in ranked) - 1) < 1e-4


def test_full_image_shared_across_methods(backbone, dino, items):
    """One batch, several methods: the full image is encoded once and reused."""
    clf = make_clf(backbone, dino)
    calls = {"n": 0}
    orig = backbone.encode_images

    def counting(px):
        calls["n"] += px.shape[0]
        return orig(px)

    backbone.encode_images = counting
    try:
        clf.logits_batch(items[:2], ["clip", "cupl", "dclip"])
    finally:
        del backbone.encode_images
    assert calls["n"] == 2


def test_unequal_description_counts_are_masked(backbone):
    enc = TextEncoder(backbone, use_cache=False)
    classes = ClassList.from_names(["cat", "dog"])
    bank = enc.encode_bank(match_bank(classes, {"cat": ["a", "b", "c"], "dog": ["d"]}))
    assert bank.emb.shape[:2] == (2, 3)
    assert bank.mask.tolist() == [[True, True, True], [True, False, False]]


def test_text_cache_is_reused_and_keyed_by_text(backbone, tmp_path):
    e1 = TextEncoder(backbone, cache_dir=tmp_path)
    a = e1.encode(["a photo of a cat.", "a photo of a dog."])
    e2 = TextEncoder(backbone, cache_dir=tmp_path)
    b = e2.encode(["a photo of a cat.", "a photo of a dog."])
    assert e1.encoded_count == 2 and e2.encoded_count == 0 and torch.equal(a, b)
    e2.encode(["a photo of a bird."])
    assert e2.encoded_count == 1
    for f in tmp_path.rglob("*.pt"):  # corrupt entries are detected and recomputed
        f.write_bytes(b"garbage")
    e3 = TextEncoder(backbone, cache_dir=tmp_path)
    c = e3.encode(["a photo of a cat.", "a photo of a dog."])
    assert e3.encoded_count == 2 and torch.allclose(a, c)


def test_text_cache_is_keyed_by_model_identity(backbone, tmp_path):
    """A model with other weights never reads the first model's cache entries."""
    import json

    from absclip import load_clip

    from .conftest import CLIP_CFG

    e1 = TextEncoder(backbone, cache_dir=tmp_path)
    e1.encode(["a photo of a cat."])
    cfg = json.loads(CLIP_CFG.read_text())
    other_cfg = tmp_path / "clip-tiny-other.json"
    other_cfg.write_text(json.dumps(cfg))
    other = load_clip(str(other_cfg), None)  # same architecture, random weights
    assert other.identity != backbone.identity
    e2 = TextEncoder(other, cache_dir=tmp_path)
    e2.encode(["a photo of a cat."])
    assert e2.encoded_count == 1

