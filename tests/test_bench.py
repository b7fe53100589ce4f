"""The fast ABS path: same results as the reference-style pipeline, fewer passes, and the bench command."""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from absclip import ABSConfig
from absclip.backbones.base import BackboneFacts, tower_flops, vit_flops
from absclip.backbones.fused_vit import OneDNNLinear, _onednn_usable
from absclip.cli.main import main
from absclip.core import views
from absclip.core.geometry import feature_crop_tokens
from absclip.core.settings import fast_abs_config
from absclip.core.timer import StageTimer
from absclip.diagnostics.bench import STAGES, synthetic_bank
from absclip.diagnostics.flops import abs_image_flops
from absclip.diagnostics.naive import naive_abs_logits
from absclip.diagnostics.timing import peak_rss_mb
from absclip.io.images import make_item
from absclip.io.loader import iter_image_batches
from absclip.methods.abs import ABSMethod, encode_feature_crops
from absclip.methods.base import create_method
from absclip.methods.batch import BatchContext, default_view_batch

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO, GOLDEN_IMAGES

PHOTOS = [str(p) for p in sorted((DATA / "photos").iterdir())[:4]]
SMALL = ABSConfig(pixel_crops=6, feature_crops=12)
TOL = 1e-4


@pytest.fixture(scope="module")
def bank(backbone):
    return synthetic_bank(7, 5, backbone.facts.embed_dim, seed=0)


def optimised_logits(backbone, dino, bank, cfg, *, batch_size, workers, crop_workers=0, seed=0):
    method = ABSMethod(cfg)
    method.bank = bank
    out, keys = [], []
    for items in iter_image_batches(PHOTOS, batch_size, workers=workers):
        ctx = BatchContext(items, backbone, dino, view_batch=16, crop_workers=crop_workers)
        out.append(method.logits(ctx, seed))
        keys += [it.key for it in items]
    return torch.cat(out), keys


@pytest.fixture(scope="module")
def reference(backbone, dino, bank):
    items = [make_item(p) for p in PHOTOS]
    logits, mismatches = naive_abs_logits(items, backbone, dino, SMALL, 0, bank, StageTimer())
    assert mismatches == 0
    return logits


@pytest.mark.parametrize(("batch_size", "workers", "crop_workers"), [(1, 0, 0), (4, 0, 2), (1, 2, 0), (4, 2, 2)])
def test_optimised_path_equals_reference_pipeline(backbone, dino, bank, reference, batch_size, workers, crop_workers):
    logits, _ = optimised_logits(backbone, dino, bank, SMALL, batch_size=batch_size, workers=workers,
                                 crop_workers=crop_workers)
    assert (logits - reference).abs().max() <= TOL
    assert torch.equal(logits.argmax(1), reference.argmax(1))


def test_fused_vit_matches_open_clip_modules(backbone, golden_items):
    px = torch.stack([backbone.preprocess(it.image) for it in golden_items])
    assert backbone.fused_path
    fused = (backbone.encode_images(px), backbone.tokens_before(px, -1))
    fused_tail = backbone.forward_from(fused[1], -1)
    unfused = backbone.unfused()
    assert not unfused.fused_path and backbone.fused_path  # a second adapter: the shared one is unchanged
    assert unfused.model is backbone.model  # over the same weights
    plain = (unfused.encode_images(px), unfused.tokens_before(px, -1))
    plain_tail = unfused.forward_from(plain[1], -1)
    assert (fused[0] - plain[0]).abs().max() <= 1e-5
    assert (fused[1] - plain[1]).abs().max() <= 1e-4
    assert (fused_tail - plain_tail).abs().max() <= 1e-5


def test_onednn_linear_is_f_linear(monkeypatch):
    """The oneDNN inner product gives F.linear's numbers (fp32: rounding only), with and without bias/activation."""
    assert _onednn_usable(), "this torch build has no oneDNN linear: the CPU fast path is not exercised"
    monkeypatch.setenv("ABSCLIP_ONEDNN", "0")
    assert not _onednn_usable() and not OneDNNLinear().enabled
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 48, generator=g)[:, ::2]  # 3-D and not contiguous, as the CLS rows are
    w, b = torch.randn(40, 48, generator=g), torch.randn(40, generator=g)
    lin = OneDNNLinear(True)
    acts = {"none": lambda y: y, "gelu": torch.nn.functional.gelu, "swish": lambda y: y * torch.sigmoid(y)}
    for bias in (b, None):
        for act, fn in acts.items():
            want = fn(torch.nn.functional.linear(x, w, bias))
            got = lin(x, w, bias, act)
            assert got.shape == want.shape and (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert lin.enabled
    xb, wb = x.bfloat16(), w.bfloat16()
    got = lin(xb, wb, None)
    assert got.dtype == torch.bfloat16
    assert (got.float() - torch.nn.functional.linear(xb, wb).float()).abs().max() <= 2e-2 * got.float().abs().max()
    assert (lin(x.double(), w.double(), None) - torch.nn.functional.linear(x.double(), w.double())).abs().max() == 0


def test_fused_vit_with_and_without_onednn(backbone, golden_items):
    px = torch.stack([backbone.preprocess(it.image) for it in golden_items])
    fused = backbone._fused
    assert fused.linear.enabled
    with_onednn = backbone.encode_images(px)
    fused.linear.enabled = False
    try:
        without = backbone.encode_images(px)
    finally:
        fused.linear.enabled = True
    assert (with_onednn - without).abs().max() <= 1e-5


def test_default_view_batch():
    assert default_view_batch(torch.device("cuda")) == 256
    assert 4 <= default_view_batch(torch.device("cpu")) <= 32


def test_bf16_stays_within_its_documented_tolerance(backbone, dino, bank, reference):
    """bf16 weights (docs/benchmarks.md): same crops, logits within 2% of the logit range, no NaN; fp32 untouched."""
    bf16 = backbone.cast(torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and backbone.dtype == torch.float32
    assert bf16.fused_path and bf16._fused is not backbone._fused
    logits, _ = optimised_logits(bf16, dino, bank, SMALL, batch_size=2, workers=0)
    diff = (logits.float() - reference).abs().max()
    assert torch.isfinite(logits).all() and 0 < diff <= 0.02 * reference.abs().max()
    again, _ = optimised_logits(backbone, dino, bank, SMALL, batch_size=2, workers=0)
    assert (again - reference).abs().max() <= TOL


def test_one_attention_pass_per_image_and_batched_encoder_calls(backbone, dino, bank):
    calls = {"attention_images": 0, "forward_from": 0}
    embeddings = dino.model.embeddings  # runs once per attention pass, in the fast and the full path
    orig_forward = embeddings.forward
    orig_from = backbone.forward_from

    def counting_forward(pixel_values, *a, **kw):
        calls["attention_images"] += pixel_values.shape[0]
        return orig_forward(pixel_values, *a, **kw)

    def counting_from(tokens, layer):
        calls["forward_from"] += 1
        return orig_from(tokens, layer)

    embeddings.forward = counting_forward
    backbone.forward_from = counting_from
    try:
        items = [make_item(p) for p in PHOTOS]
        ctx = BatchContext(items, backbone, dino, view_batch=256)
        method = ABSMethod(SMALL)
        method.bank = bank
        method.logits(ctx, 0)
        assert calls["attention_images"] == len(items)
        assert ctx.encoder_calls == 1  # all pixel crops of the batch in one call
        assert calls["forward_from"] == 2  # all feature crops in one call + the full image
        assert ctx.feature_crops_encoded < len(items) * SMALL.feature_crops  # repeated windows computed once
        calls["attention_images"] = 0
        naive_abs_logits(items[:1], backbone, dino, SMALL, 0, bank, StageTimer())
        assert calls["attention_images"] == 2  # the reference runs DINO twice
    finally:
        del embeddings.forward
        del backbone.forward_from


def test_feature_crop_dedup_is_exact(backbone, golden_items):
    ctx = BatchContext(golden_items, backbone, None, view_batch=4)
    windows = [[(0, 9, 0, 9), (2, 11, 3, 14), (0, 9, 0, 9)], [(5, 14, 5, 14)], [(0, 9, 0, 9), (1, 14, 0, 13)]]
    got = encode_feature_crops(ctx, windows)
    assert ctx.feature_crops_encoded == 5
    for b, ws in enumerate(windows):
        want = backbone.forward_from(feature_crop_tokens(ctx.tokens[b], ws, backbone.facts.grid), -1)
        assert got[b].shape == want.shape and (got[b] - want).abs().max() <= 1e-5


def test_fast_mode_changes_results_and_keeps_tokens_by_attention(backbone, dino, bank, reference):
    fast = create_method("abs-fast", SMALL)
    assert fast.settings == fast_abs_config(SMALL) and fast.settings.token_keep == 0.5
    fast.bank = bank
    items = [make_item(p) for p in PHOTOS]
    logits = fast.logits(BatchContext(items, backbone, dino), 0)
    assert torch.isfinite(logits).all() and not torch.allclose(logits, reference, atol=1e-3)
    # keep = 1 is the faithful path
    full = dataclasses.replace(SMALL, token_keep=1.0)
    same, _ = optimised_logits(backbone, dino, bank, full, batch_size=4, workers=0)
    assert (same - reference).abs().max() <= TOL


def test_crop_token_cells_cover_the_seen_square():
    # a full square image seen whole: token cells tile the attention grid in order
    cells = views.crop_token_cells((0, 0, 224, 224), 224, 224, 14, 14, 14, 14)
    assert cells == list(range(196))
    # a landscape box: only its centred square is seen, so the leftmost/rightmost columns are never used
    cells = views.crop_token_cells((0, 0, 448, 224), 448, 224, 14, 14, 14, 14)
    cols = {c % 14 for c in cells}
    assert min(cols) == 3 and max(cols) == 10


def test_flop_estimates():
    # ViT-B/16 at 224: 17.6 GMACs per image
    assert vit_flops(197, 768, 12, 3072, patch_dim=768, patches=196, out_dim=512) == pytest.approx(35.1e9, rel=0.01)
    facts = BackboneFacts((224, 224), (16, 16), (14, 14), 12, 768, 512, heads=12, mlp_width=3072)
    assert tower_flops(facts)["full"] == pytest.approx(35.1e9, rel=0.01)
    bb = SimpleNamespace(facts=facts, tower_flops=lambda: tower_flops(facts),
                         block_index=lambda layer: layer + 12 if layer < 0 else layer)
    faithful = abs_image_flops(bb, ABSConfig(), 50, fused=True)
    fast = abs_image_flops(bb, fast_abs_config(ABSConfig()), 50, fused=True)
    assert 45 < faithful / 35.1e9 < 50  # ~47 forward-equivalents (CLS-only last blocks)
    assert faithful / fast >= 4


def test_stage_timer_and_rss():
    t = StageTimer()
    with t("a"):
        pass
    with t("a"):
        pass
    assert t.calls["a"] == 2 and t.seconds["a"] >= 0
    assert peak_rss_mb() > 10


def test_bench_cli_json_smoke(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in GOLDEN_IMAGES:
        shutil.copy(p, imgs / p.name)
    code = main(["bench", "--images", str(imgs), "--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS),
                 "--attention-model", str(DINO), "--crops", "4", "--feature-crops", "6", "--classes", "10",
                 "--descriptions-per-class", "3", "--text-sample", "4", "--method", "abs,abs-fast",
                 "--batch-size", "2", "--json"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    rep = json.loads(out[-1])
    text = "\n".join(out[:-1])  # the human-readable report printed before the JSON line
    for needle in ("naive@fp32", "abs@fp32", "abs-fast@fp32", "stage breakdown", *STAGES):
        assert needle in text, needle
    for key in ("method", "model", "device", "images", "images_per_s", "naive_images_per_s", "speedup_vs_naive",
                "max_abs_logit_diff", "peak_rss_mb", "stages_s_per_image", "flops", "runs"):
        assert key in rep, key
    assert rep["method"] == "abs" and rep["images"] == 3 and rep["device"] == "cpu"
    assert rep["max_abs_logit_diff"] <= TOL and rep["naive_topk_mismatches"] == 0
    assert rep["images_per_s"] > 0 and rep["speedup_vs_naive"] > 0 and rep["peak_rss_mb"] > 0
    fast = next(r for r in rep["runs"] if r["method"] == "abs-fast")
    assert fast["changes_results"] and fast["image_encoder_flops_vs_faithful"] > 1
    assert rep["activation"] == "quick_gelu" and "MLP activation: quick_gelu (fused: True)" in text


def test_attention_fast_path_matches_eager_maps(dino, golden_items, golden):
    ims = [it.image for it in golden_items]
    fast = dino.heads(ims)
    dino.fast = False
    try:
        eager = dino.heads(ims)
    finally:
        dino.fast = True
    assert (fast - eager).abs().max() <= 1e-5
    assert (fast - torch.from_numpy(golden["dino_attn_heads"])).abs().max() <= 1e-5
    assert dino.model.config._attn_implementation == "eager"  # restored


def test_batched_crop_preprocessing_is_bit_identical(backbone, golden_items):
    jobs = [(it, (x0, y0, x0 + 150, y0 + 120)) for it in golden_items for x0, y0 in ((0, 0), (33, 17), (101, 59))]
    want = [backbone.preprocess(it.image.crop(box)) for it, box in jobs]
    for workers in (0, 2):
        got = BatchContext(golden_items, backbone, crop_workers=workers).crop_pixels(jobs)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
