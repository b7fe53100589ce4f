"""Stage-by-stage parity with the reference implementation (shared/golden), fp32 CPU, injected draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from absclip import ABSConfig, Classifier
from absclip.core import scoring, views
from absclip.core.sampling import ABSDraws
from absclip.methods.abs import abs_views
from absclip.methods.batch import BatchContext

from .conftest import GOLDEN

TOL = 1e-4  # the bar; observed differences are <= 4e-6


@pytest.fixture(scope="module")
def cfg():
    return ABSConfig(pixel_crops=6, feature_crops=6, top_k=20)


@pytest.fixture(scope="module")
def run(backbone, dino, golden_items, golden, cfg):
    ctx = BatchContext(golden_items, backbone, dino, feature_layer=-1)
    draws = [
        ABSDraws(golden["pix_topk_pos"][b], golden["pix_crop_w"][b], golden["pix_crop_h"][b],
                 golden["feat_topk_pos"][b], golden["feat_cropsize"][b])
        for b in range(3)
    ]
    return ctx, abs_views(ctx, cfg, seed=0, draws=draws)


@pytest.fixture(scope="module")
def clf(backbone, dino, cfg):
    c = Classifier(backbone, attention_model=dino, abs_config=cfg, use_cache=False)
    return c.set_classes(["cat", "coffee", "rocket"], descriptions=GOLDEN / "descriptions.json")


def test_pixel_values(backbone, dino, golden_items, golden):
    x = torch.stack([backbone.preprocess(it.image) for it in golden_items])
    assert np.abs(x.numpy() - golden["clip_pixel_values"]).max() <= 1e-6
    d = dino.pixel_values([it.image for it in golden_items])
    assert np.abs(d.numpy() - golden["dino_pixel_values"]).max() <= 1e-6
    assert [it.size for it in golden_items] == [tuple(s) for s in golden["image_size_wh"]]


def test_attention(run, dino, golden_items, golden):
    ctx, _ = run
    assert np.abs(ctx.attention.numpy() - golden["dino_attn"]).max() <= TOL
    heads = dino.heads([it.image for it in golden_items])
    assert np.abs(heads.numpy() - golden["dino_attn_heads"]).max() <= TOL
    assert dino.grid == (14, 14)


def test_topk(run, golden):
    _, vs = run
    for b, v in enumerate(vs):
        np.testing.assert_array_equal(v.topk_idx.numpy(), golden["topk_idx"][b])
        assert np.abs(v.topk_prob.numpy() - golden["topk_prob"][b]).max() <= TOL


def test_pixel_crop_geometry(run, golden, golden_items):
    _, vs = run
    for b, (v, it) in enumerate(zip(vs, golden_items)):
        np.testing.assert_array_equal(np.array(v.boxes), golden["pix_box"][b])
        w, h = it.size
        centres = v.topk_idx.numpy()[golden["pix_topk_pos"][b]]
        np.testing.assert_array_equal(centres, golden["pix_center_idx"][b])
        for i, c in enumerate(centres):
            pb = views.patch_box(int(c), w, h, 14, 14)
            np.testing.assert_array_equal(pb, golden["pix_patch_box"][b, i])
            np.testing.assert_array_equal(views.box_centre(pb), golden["pix_center_xy"][b, i])
        assert views.ratio_bounds(w, 0.6, 0.9) == tuple(golden["pix_crop_w_bounds"][b])
        assert views.ratio_bounds(h, 0.6, 0.9) == tuple(golden["pix_crop_h_bounds"][b])
    assert views.window_bounds(14, 0.6, 0.9) == tuple(golden["feat_cropsize_bounds"])


def test_pixel_crop_pixels_and_embeddings(run, backbone, golden_items, golden):
    _, vs = run
    for b, (v, it) in enumerate(zip(vs, golden_items)):
        px = backbone.preprocess(it.image.crop(v.boxes[0]))
        assert np.abs(px.numpy() - golden["pix_crop0_clip_pixels"][b]).max() <= 1e-6
        assert np.abs(v.embeddings[6:].numpy() - golden["pix_crop_emb"][b]).max() <= TOL


def test_feature_crops(run, backbone, golden):
    from absclip.core.geometry import feature_crop_tokens

    ctx, vs = run
    assert np.abs(ctx.tokens.numpy() - golden["clip_pre_last_block"]).max() <= TOL
    for b, v in enumerate(vs):
        np.testing.assert_array_equal(v.feat_centres, golden["feat_center_idx"][b])
        np.testing.assert_array_equal(np.array(v.windows), golden["feat_window"][b])
        seq = feature_crop_tokens(ctx.tokens[b], v.windows[:1], (14, 14))[0, 1:].reshape(14, 14, -1)
        assert np.abs(seq.numpy() - golden["feat_crop0_resized_tokens"][b]).max() <= TOL
        assert np.abs(v.embeddings[:6].numpy() - golden["feat_crop_emb"][b]).max() <= TOL


def test_full_embedding_and_view_cos(run, backbone, golden):
    ctx, vs = run
    assert np.abs(ctx.full.numpy() - golden["full_emb"]).max() <= TOL
    plain = backbone.encode_images(ctx.pixels)
    assert np.abs(plain.numpy() - golden["full_emb"]).max() <= TOL
    cos = torch.stack([v.embeddings @ v.full for v in vs])
    assert np.abs(cos.numpy() - golden["view_full_cos"]).max() <= TOL


def test_text_embeddings_and_tokens(clf, backbone, golden):
    bank = clf.method("abs").bank
    assert bank.mask.all() and bank.emb.shape == (3, 4, 512)
    assert np.abs(bank.emb.numpy() - golden["text_desc_emb"]).max() <= TOL
    toks = backbone.tokenizer([t for g in bank.texts for t in g]).reshape(3, 4, -1)
    np.testing.assert_array_equal(toks.numpy(), golden["text_desc_tokens"])
    prompts = backbone.tokenizer([f"a photo of a {c}." for c in ["cat", "coffee", "rocket"]])
    np.testing.assert_array_equal(prompts.numpy(), golden["text_prompt_tokens"])
    assert np.abs(clf.method("clip").classifier.numpy() - golden["text_clip_classifier"]).max() <= TOL
    assert np.abs(clf.method("cupl").classifier.numpy() - golden["text_cupl_classifier"]).max() <= TOL


def test_abs_logits(run, clf, golden):
    _, vs = run
    bank = clf.method("abs").bank
    emb = torch.stack([v.embeddings for v in vs])
    g = scoring.soft_match_view_scores(emb, bank.emb, bank.mask, 0.03)
    assert np.abs(g.numpy() - golden["view_class_scores"]).max() <= TOL
    logits = g.sum(1)
    assert np.abs(logits.numpy() - golden["logits_abs"]).max() <= TOL
    np.testing.assert_array_equal(logits.argmax(1).numpy(), golden["pred_abs"])


def test_baseline_logits(clf, golden_items, golden):
    out = clf.logits_batch(golden_items, ["clip", "cupl"])
    assert np.abs(out["clip"].numpy() - golden["logits_clip"]).max() <= TOL
    assert np.abs(out["cupl"].numpy() - golden["logits_cupl"]).max() <= TOL


def test_clip_attention_is_a_distribution(backbone, golden_items):
    """The CLIP self-attention hook returns non-empty maps whose full rows sum to 1."""
    from absclip.attention.sources import ClipSelfAttention

    src = ClipSelfAttention(backbone)
    heads = src.heads([it.image for it in golden_items])
    assert heads.shape == (3, 2, 196)
    assert torch.all(heads > 0) and torch.all(heads.sum(-1) < 1 + 1e-5)
    assert src.grid == (14, 14)
