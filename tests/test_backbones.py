"""The backbone protocol: both adapters implement it, give the same numbers for the same weights, and the
loader registry picks the right adapter. The HF adapter here is the golden tiny open_clip model converted to a
transformers CLIPModel (see test_hf_clip.py), fed the open_clip preprocessing, so every number must agree."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import numpy as np
import pytest
import torch

from absclip import ABSConfig, Classifier, load_clip
from absclip.attention.factory import load_attention
from absclip.attention.layered import ClipLayeredAttention
from absclip.attention.sources import ClipSelfAttention
from absclip.backbones import hf as hf_module
from absclip.backbones import open_clip_loaders as oc_module
from absclip.backbones import registry
from absclip.backbones.base import Backbone, LoadRequest
from absclip.backbones.hf import HFClipBackbone
from absclip.backbones.open_clip import ClipBackbone
from absclip.core.timer import StageTimer
from absclip.diagnostics.bench import BenchSettings, run_benchmark, synthetic_bank
from absclip.diagnostics.explain import explain
from absclip.diagnostics.flops import abs_image_flops, naive_image_flops
from absclip.diagnostics.naive import naive_abs_logits
from absclip.errors import AbsclipError

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DINO, GOLDEN, GOLDEN_IMAGES
from .test_hf_clip import write_hf_clip

TOL = 1e-4
CLASSES = ["cat", "coffee", "rocket"]
SMALL = ABSConfig(pixel_crops=6, feature_crops=6)


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
    return write_hf_clip(tmp_path_factory.mktemp("hf-clip-backbones"))


@pytest.fixture(scope="module")
def hf(hf_path, backbone):
    """The converted model, with open_clip's preprocessing so that both adapters see the same pixels."""
    bb = load_clip(f"hf:{hf_path}")
    bb.preprocess = backbone.preprocess
    return bb


@pytest.fixture(scope="module")
def pixels(backbone, golden_items):
    return torch.stack([backbone.preprocess(it.image) for it in golden_items])


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and torch.isfinite(a).all()
    assert (a.float() - b.float()).abs().max() <= TOL


def test_both_adapters_implement_the_protocol(backbone, hf):
    for bb in (backbone, hf):
        assert isinstance(bb, Backbone) and not getattr(type(bb), "__abstractmethods__", None)
    assert isinstance(backbone, ClipBackbone) and isinstance(hf, HFClipBackbone)
    assert hf.facts == backbone.facts  # heads and MLP width included
    assert backbone.facts.heads == 2 and backbone.facts.mlp_width == 512
    assert hf.logit_scale == pytest.approx(backbone.logit_scale, rel=1e-6) and backbone.logit_scale > 1
    assert hf.tower_flops() == backbone.tower_flops()
    assert backbone.fused_path and not hf.fused_path and hf.unfused() is hf


def test_block_attentions_and_patch_embeddings_match(backbone, hf, pixels):
    att_oc, out_oc = backbone.block_attentions(pixels, -1)
    att_hf, out_hf = hf.block_attentions(pixels, -1)
    assert len(att_oc) == len(att_hf) == 3
    for a, b, x, y in zip(att_oc, att_hf, out_oc, out_hf):
        assert a.shape == (3, 2, 197, 197)
        _close(a, b)
        _close(x, y)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))  # rows are probabilities
    part, _ = hf.block_attentions(pixels, 1)
    assert len(part) == 2 and torch.equal(part[1], att_hf[1])
    tokens = backbone.tokens_before(pixels, -1)
    _close(att_oc[-1][:, :, 0, 1:], backbone.cls_attention(tokens, -1).cpu())
    _close(att_hf[-1][:, :, 0, 1:], hf.cls_attention(hf.tokens_before(pixels, -1), -1).cpu())
    p_oc, p_hf = backbone.patch_embeddings(tokens, -1), hf.patch_embeddings(tokens, -1)
    assert p_oc.shape == (3, 196, 512)
    _close(p_oc, p_hf)
    torch.testing.assert_close(p_hf.norm(dim=-1), torch.ones(3, 196))
    # from an earlier block too: the unfused path of the open_clip adapter agrees
    early = backbone.unfused().tokens_before(pixels, 1)
    _close(backbone.patch_embeddings(early, 1), hf.patch_embeddings(early, 1))


def test_token_dropping_matches(backbone, hf, pixels):
    keep = torch.stack([torch.randperm(196, generator=torch.Generator().manual_seed(i))[:60] for i in range(3)])
    _close(backbone.encode_images_dropped(pixels, keep), hf.encode_images_dropped(pixels, keep))
    all_kept = torch.arange(196).expand(3, -1)
    _close(hf.encode_images_dropped(pixels, all_kept), hf.encode_images(pixels))


def test_unfused_and_cast_are_new_adapters_over_the_same_weights(backbone, pixels):
    plain = backbone.unfused()
    assert plain is not backbone and not plain.fused_path and backbone.fused_path
    _close(plain.encode_images(pixels), backbone.encode_images(pixels))
    half = backbone.cast(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and backbone.dtype == torch.float32 and half.fused_path
    assert (half.encode_images(pixels) - backbone.encode_images(pixels)).abs().max() < 0.05
    assert backbone.cast(torch.float32) is backbone


@pytest.mark.parametrize("spec", ["clip", "dino"])
def test_rollout_and_clip_attention_classify_the_same_on_both_adapters(backbone, hf, golden_items, spec):
    attention = "clip" if spec == "clip" else str(DINO)
    out = {}
    for name, bb in (("open_clip", backbone), ("hf", hf)):
        for rollout in (None, "mean"):
            clf = Classifier(bb, attention_model=attention, attention_rollout=rollout, abs_config=SMALL,
                             use_cache=False)
            clf.set_classes(CLASSES, descriptions=GOLDEN / "descriptions.json")
            maps = clf.attention([it.image for it in golden_items])
            assert maps.shape == (3, 196) and torch.isfinite(maps).all() and (maps >= 0).all()
            if rollout:  # the CLS row of the rollout is a probability distribution over all tokens
                assert (maps.sum(-1) <= 1 + 1e-5).all() and (maps.sum(-1) > 0).all()
            out[name, rollout] = (maps, clf.logits_batch(golden_items, ["abs"])["abs"])
    for rollout in (None, "mean"):
        _close(out["open_clip", rollout][0], out["hf", rollout][0])
        _close(out["open_clip", rollout][1], out["hf", rollout][1])
    assert not torch.allclose(out["hf", None][0], out["hf", "mean"][0])  # rollout is a different map


def test_text_map_explains_the_same_on_both_adapters(backbone, hf):
    maps = {}
    for name, bb in (("open_clip", backbone), ("hf", hf)):
        clf = Classifier(bb, attention_model="clip", abs_config=SMALL, use_cache=False)
        clf.set_classes(CLASSES, descriptions=GOLDEN / "descriptions.json")
        expl = explain(clf, GOLDEN_IMAGES[0], map="text", map_class="cat")
        assert expl.map.shape == (14, 14) and np.isfinite(expl.map).all() and np.abs(expl.map).max() <= 1 + 1e-5
        maps[name] = expl.map
    assert np.abs(maps["open_clip"] - maps["hf"]).max() <= TOL


def test_naive_pipeline_and_flops_are_the_same_on_both_adapters(backbone, hf, dino):
    from absclip.io.images import make_item

    items = [make_item(p) for p in GOLDEN_IMAGES]
    bank = synthetic_bank(5, 3, backbone.facts.embed_dim, seed=0)
    cfg = ABSConfig(pixel_crops=4, feature_crops=6)
    a, mis_a = naive_abs_logits(items, backbone, dino, cfg, 0, bank, StageTimer())
    b, mis_b = naive_abs_logits(items, hf, dino, cfg, 0, bank, StageTimer())
    assert mis_a == mis_b == 0 and backbone.fused_path  # the shared adapter was not switched
    _close(a, b)
    assert naive_image_flops(hf, cfg) == naive_image_flops(backbone, cfg)
    assert abs_image_flops(hf, cfg, 6, fused=hf.fused_path) > abs_image_flops(backbone, cfg, 6, fused=True)


def test_bench_runs_on_an_hf_clip_model(hf_path, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in GOLDEN_IMAGES[:2]:
        shutil.copy(p, imgs / p.name)
    s = BenchSettings(images=str(imgs), limit=2, model=f"hf:{hf_path}", attention_model=str(DINO),
                      methods=("abs", "abs-fast"), precisions=("fp32",), device="cpu", batch_size=2, workers=0,
                      crop_workers=0, classes=5, descriptions_per_class=3, text_sample=4, warmup=False,
                      abs_config=ABSConfig(pixel_crops=4, feature_crops=6))
    rep = run_benchmark(s)
    assert rep["images"] == 2 and rep["max_abs_logit_diff"] <= TOL and rep["naive_topk_mismatches"] == 0
    assert rep["flops"]["naive"]["image_encoder_gflop"] > rep["flops"]["abs"]["image_encoder_gflop"] > 0
    fast = next(r for r in rep["runs"] if r["method"] == "abs-fast")
    assert fast["changes_results"] and fast["image_encoder_flops_vs_faithful"] > 1


def test_capabilities_a_backbone_lacks_raise_one_sentence(backbone, pixels):
    flat = copy.copy(backbone)
    flat.has_tokens = False
    flat._fused = None
    for call in (lambda: flat.tokens_before(pixels, -1), lambda: flat.block_attentions(pixels),
                 lambda: flat.patch_embeddings(pixels), lambda: ClipSelfAttention(flat),
                 lambda: ClipLayeredAttention(flat, rollout="mean"), lambda: load_attention("clip", flat),
                 lambda: flat.tower_flops(), lambda: flat.encode_images_dropped(pixels, torch.zeros(3, 1).long())):
        with pytest.raises(AbsclipError) as e:
            call()
        msg = str(e.value)
        assert "--" not in msg and msg.endswith(".") and msg.count(". ") == 0, msg


def test_registry_rows_choose_the_adapter(hf_path, tmp_path):
    def row(model: str, pretrained: str | None = None) -> str:
        req = LoadRequest(model, pretrained, torch.device("cpu"), torch.float32)
        return next(r for r in registry.LOADERS if r.accepts(req)).name

    hf_row = hf_module.LOADERS[0].name
    names = [r.name for r in oc_module.LOADERS]
    assert row(f"hf:{hf_path}") == row(str(hf_path)) == hf_row
    assert row(str(CLIP_CFG), str(CLIP_WEIGHTS)) == names[0]
    assert row(str(CLIP_WEIGHTS)) == row(str(CLIP_WEIGHTS), "openai") == names[1]  # a file carries its weights
    assert row("hf-hub:org/repo") == row("local-dir:/x") == names[2]
    assert row("ViT-B-16", "openai") == names[3]
    assert dataclasses.is_dataclass(registry.LOADERS[0])
    with pytest.raises(AbsclipError, match="Unknown model"):
        load_clip("ViT-B-16-nonexistent")
    with pytest.raises(AbsclipError, match="does not exist"):
        load_clip(str(tmp_path / "missing.json"))
