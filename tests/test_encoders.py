"""ABS on every open_clip encoder family: tiny random models built from shrunk open_clip configs.

Families: open_clip's own ViT (the golden tiny CLIP), a timm SigLIP-like ViT (MAP pooling, no class
token, sigmoid scores, non-causal text tower), a timm EVA02-like Eva (class token, rotary
embeddings), a timm PE-Core-like Eva (class token, rotary, MAP) and a convolutional tower (ConvNeXt).
No weights or tokenizers are downloaded: the timm towers are registered here with small
dimensions, the SigLIP-like config names a tokenizer saved to a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from absclip import load_clip
from absclip.cli.main import main
from absclip.core import views
from absclip.core.geometry import batched_feature_crop_tokens
from absclip.errors import WeightsUnavailableError

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

OPEN_CLIP_CONFIGS = Path(__import__("open_clip").__file__).parent / "model_configs"
PHOTOS = sorted((DATA / "photos").iterdir())[:2] + sorted((DATA / "imagenet-sample").glob("*.JPEG"))[:3]
CLASSES = "tabby cat,espresso,rocket,tench,goldfish"
TIMM_FAMILIES = ("siglip", "eva", "pe")
TOKEN_FAMILIES = ("native", *TIMM_FAMILIES)


def _args(kwargs: dict) -> dict:
    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(k, None)
    return kwargs


def _register_tiny_timm_models() -> None:
    """Small versions of the timm architectures open_clip's SigLIP2, EVA02, PE-Core and ConvNeXt configs name."""
    from timm.models import is_model, register_model
    from timm.models.convnext import ConvNeXt
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if is_model("absclip_tiny_siglip"):
        return
    small = dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=4)

    @register_model
    def absclip_tiny_siglip(pretrained=False, **kw):  # vit_base_patch16_siglip_224, shrunk
        return VisionTransformer(**{**small, "class_token": False, "global_pool": "map", **_args(kw)})

    @register_model
    def absclip_tiny_eva02(pretrained=False, **kw):  # eva02_base_patch16_clip_224, shrunk
        return Eva(**{**small, "qkv_fused": False, "mlp_ratio": 4 * 2 / 3, "swiglu_mlp": True, "scale_mlp": True,
                      "scale_attn_inner": True, "use_rot_pos_emb": True, "ref_feat_shape": (4, 4),
                      "global_pool": "token", **_args(kw)})

    @register_model
    def absclip_tiny_pe_core(pretrained=False, **kw):  # vit_pe_core_base_patch16_224, shrunk
        return Eva(**{**small, "global_pool": "map", "attn_type": "rope", "use_pre_transformer_norm": True,
                      "use_rot_pos_emb": True, "ref_feat_shape": (4, 4), "rope_grid_offset": 1.0,
                      "rope_grid_indexing": "xy", "attn_pool_num_heads": 4, **_args(kw)})

    @register_model
    def absclip_tiny_convnext(pretrained=False, **kw):  # convnext_base, shrunk
        model = ConvNeXt(**{"depths": (1, 1, 1, 1), "dims": (16, 24, 32, 48), **_args(kw)})
        model.pretrained_cfg = model.default_cfg = {}  # what timm's builder would attach (open_clip reads it)
        return model


_register_tiny_timm_models()


def _tiny_tokenizer(path: Path) -> Path:
    """A word-level Hugging Face tokenizer saved to ``path`` (stands in for SigLIP's, which cannot be downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "</s>", "a", "photo", "of", "the", ".", ","] + \
        [w for c in CLASSES.split(",") for w in c.split()]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                            eos_token="</s>").save_pretrained(path)
    return path


def _shrunk(config: str, timm_name: str, **text: object) -> dict:
    """open_clip's JSON config ``config`` with a tiny tower ``timm_name`` and a 2-layer, 64-wide text tower."""
    cfg = json.loads((OPEN_CLIP_CONFIGS / config).read_text())
    cfg["embed_dim"] = 48 if cfg["vision_cfg"].get("timm_proj") != "none" else 64
    cfg["vision_cfg"].update(image_size=64, timm_model_name=timm_name)
    cfg["vision_cfg"].pop("timm_drop_path", None)
    cfg["text_cfg"].update(context_length=16, width=64, heads=4, layers=2, **text)
    return cfg


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``{family: (config path, weights path)}``: the random weights saved once, so every load is the same model."""
    import open_clip

    root = tmp_path_factory.mktemp("encoders")
    tok = _tiny_tokenizer(root / "tokenizer")
    configs = {
        # stems without "siglip": open_clip would pick its downloadable SigLIP tokenizer by name
        "siglip": _shrunk("ViT-B-16-SigLIP2.json", "absclip_tiny_siglip", hf_tokenizer_name=str(tok),
                          vocab_size=64),
        "eva": _shrunk("EVA02-B-16.json", "absclip_tiny_eva02"),
        "pe": _shrunk("PE-Core-B-16.json", "absclip_tiny_pe_core"),
        "conv": _shrunk("convnext_base.json", "absclip_tiny_convnext"),
    }
    out = {"native": (str(CLIP_CFG), str(CLIP_WEIGHTS))}
    for fam, cfg in configs.items():
        path = root / f"tiny-{fam}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(str(path))
        torch.manual_seed(0)
        model = open_clip.create_model(path.stem, pretrained=None)
        if fam == "siglip":  # away from the init so that scale and bias are really used
            model.logit_scale.data.fill_(2.5)
            model.logit_bias.data.fill_(-3.0)
        torch.save(model.state_dict(), root / f"tiny-{fam}.pt")
        out[fam] = (str(path), str(root / f"tiny-{fam}.pt"))
    return out


@pytest.fixture(scope="module")
def backbones(models):
    return {fam: load_clip(cfg, w, device="cpu", precision="fp32") for fam, (cfg, w) in models.items()}


def _pixels(bb, n: int = 2) -> torch.Tensor:
    return torch.stack([bb.preprocess(Image.open(p).convert("RGB")) for p in PHOTOS[:n]])


def test_every_family_gets_its_adapter_and_geometry(backbones):
    kinds = {fam: type(bb).__name__ for fam, bb in backbones.items()}
    assert kinds == {"native": "ClipBackbone", "siglip": "TimmViTBackbone", "eva": "EvaBackbone",
                     "pe": "EvaBackbone", "conv": "ClipBackbone"}
    for fam in TIMM_FAMILIES:
        f = backbones[fam].facts
        assert (f.image_size, f.patch_size, f.grid, f.num_blocks, f.width) == ((64, 64), (16, 16), (4, 4), 3, 64)
        assert f.class_token == (fam != "siglip") and backbones[fam].has_tokens
    assert not backbones["conv"].has_tokens
    assert backbones["siglip"].logit_bias == pytest.approx(-3.0)
    assert backbones["native"].logit_bias is None and backbones["eva"].logit_bias is None


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
@pytest.mark.parametrize("layer", [-1, 1])
def test_full_window_feature_crop_equals_encode_image(backbones, family, layer):
    bb = backbones[family]
    px = _pixels(bb)
    ref = F.normalize(bb.model.encode_image(px).float(), dim=-1)
    tokens = bb.tokens_before(px, layer)
    g = bb.facts.grid
    assert tokens.shape[1] == 1 + g[0] * g[1]
    # the real feature-crop path: the whole grid as the window, resized to its own size
    seqs = batched_feature_crop_tokens(tokens, [(0, (0, g[0], 0, g[1])), (1, (0, g[0], 0, g[1]))], g)
    assert torch.allclose(bb.forward_from(seqs, layer), ref, atol=1e-5, rtol=0)
    assert torch.allclose(bb.encode_images(px), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", [*TOKEN_FAMILIES, "conv"])
def test_pixel_crop_embedding_equals_encode_image_of_the_crop(backbones, family):
    from absclip.api import Classifier
    from absclip.core.settings import ABSConfig

    bb = backbones[family]
    clf = Classifier(bb, attention_model=str(DINO), abs_config=ABSConfig(pixel_crops=3, feature_crops=0),
                     use_cache=False).set_classes(CLASSES.split(","))
    image = Image.open(PHOTOS[0]).convert("RGB")
    (v,) = clf.views(image)
    crops = torch.stack([bb.preprocess(image.crop(box)) for box in v.boxes])
    ref = F.normalize(bb.model.encode_image(crops).float(), dim=-1)
    assert len(v.boxes) == 3 and torch.allclose(v.embeddings, ref, atol=1e-5, rtol=0)


def _explicit_probe(bb, tokens: torch.Tensor, prefix_in_keys: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) of the MAP probe, from its weights, after the last block and the final norm."""
    trunk = bb.model.visual.trunk
    x = tokens[:, 1:] if not bb.facts.class_token else tokens
    rope = trunk.rope.get_embed() if getattr(trunk, "rope", None) is not None else None
    x = trunk.blocks[-1](x) if rope is None else trunk.blocks[-1](x, rope=rope)
    x = trunk.norm(x)
    if not prefix_in_keys and bb.facts.class_token:
        x = x[:, 1:]
    pool = trunk.attn_pool
    d = pool.head_dim
    q = (pool.latent @ pool.q.weight.T + pool.q.bias).reshape(1, 1, pool.num_heads, d).transpose(1, 2)
    k = (x @ pool.kv.weight[: pool.num_heads * d].T + pool.kv.bias[: pool.num_heads * d])
    k = k.reshape(x.shape[0], x.shape[1], pool.num_heads, d).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)[:, :, 0]


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
def test_clip_attention_is_an_explicit_softmax_over_the_patches(backbones, family):
    from absclip.attention.sources import ClipSelfAttention

    bb = backbones[family]
    px = _pixels(bb)
    tokens = bb.tokens_before(px, -1)
    att = bb.cls_attention(tokens, -1)
    n = bb.facts.grid[0] * bb.facts.grid[1]
    assert att.shape == (2, bb.facts.heads if family != "pe" else 4, n)
    if family in ("siglip", "pe"):  # the MAP probe's attention (PE's probe reads the class token too)
        ref = _explicit_probe(bb, tokens, prefix_in_keys=family == "pe")[..., -n:]
    elif family == "eva":  # the last block's CLS row, rotary embedding on the patch queries and keys
        from timm.layers import apply_rot_embed_cat

        blk = bb.model.visual.trunk.blocks[-1]
        a = blk.attn
        h = blk.norm1(tokens)
        heads, d = a.num_heads, a.head_dim
        q = (h @ a.q_proj.weight.T + a.q_proj.bias).reshape(2, -1, heads, d).transpose(1, 2)
        k = (h @ a.k_proj.weight.T).reshape(2, -1, heads, d).transpose(1, 2)
        rope = bb.model.visual.trunk.rope.get_embed()
        q = torch.cat([q[:, :, :1], apply_rot_embed_cat(q[:, :, 1:], rope)], dim=2)
        k = torch.cat([k[:, :, :1], apply_rot_embed_cat(k[:, :, 1:], rope)], dim=2)
        ref = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1)[:, :, 0, 1:]
    else:
        blk = bb.model.visual.transformer.resblocks[-1]
        h = blk.ln_1(tokens)
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        width, heads = w.shape[1], blk.attn.num_heads
        q = (h @ w[:width].T + b[:width]).reshape(2, -1, heads, width // heads).transpose(1, 2)
        k = (h @ w[width: 2 * width].T + b[width: 2 * width]).reshape(2, -1, heads, width // heads).transpose(1, 2)
        ref = torch.softmax(q @ k.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)[:, :, 0, 1:]
    assert torch.allclose(att, ref, atol=1e-5, rtol=0)
    assert bool((att >= 0).all()) and bool((att.sum(-1) <= 1 + 1e-5).all())
    if family == "siglip":  # no class token: the probe's attention is a distribution over the patches alone
        assert torch.allclose(att.sum(-1), torch.ones(2, att.shape[1]), atol=1e-5)
    # the attention source ABS uses reads the same
    heads = ClipSelfAttention(bb).heads([Image.open(p).convert("RGB") for p in PHOTOS[:2]])
    assert torch.allclose(heads, att, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
def test_classify_abs_with_feature_crops_does_not_depend_on_batch_size(models, capsys, family):
    cfg, weights = models[family]
    args = ["classify", *map(str, PHOTOS), "--classes", CLASSES, "--method", "abs", "--json", "--model", cfg,
            "--pretrained", weights, "--attention-model", "clip", "--crops", "3", "--feature-crops", "4",
            "--precision", "fp32", "--device", "cpu", "--no-cache"]
    runs = []
    for batch in ("1", "8"):
        assert main([*args, "--batch-size", batch]) == 0
        runs.append([[p["label"] for p in o["predictions"]] for o in json.loads(capsys.readouterr().out)])
    assert runs[0] == runs[1] and len(runs[0]) == len(PHOTOS)


def test_eval_abs_end_to_end_on_a_timm_tower(models, tmp_path, capsys):
    cfg, weights = models["siglip"]
    out = tmp_path / "results.json"
    assert main(["eval", "--data", str(DATA / "imagenet-sample"), "--limit", "4", "--methods", "abs", "--model", cfg,
                 "--pretrained", weights, "--attention-model", "clip", "--crops", "2", "--feature-crops", "3",
                 "--classes-file", str(DATA / "imagenet-meta" / "imagenet_classes.tsv"), "--device", "cpu",
                 "--output", str(out), "--no-progress"]) == 0
    (res,) = json.loads(out.read_text())["results"]
    assert res["absclip"]["images"] == 4 and set(res["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}


def test_siglip_scores_are_sigmoids_of_the_models_own_forward(backbones):
    from absclip.api import Classifier

    bb = backbones["siglip"]
    classes = CLASSES.split(",")
    clf = Classifier(bb, attention_model="clip", use_cache=False).set_classes(classes)
    images = [Image.open(p).convert("RGB") for p in PHOTOS[:3]]
    ranked = clf.ranked(clf.logits(images, "clip"), "clip", top=len(classes))
    img, txt, scale, bias = bb.model(torch.stack([bb.preprocess(im) for im in images]),
                                     bb.tokenizer([f"a photo of a {c}." for c in classes]))
    ref = torch.sigmoid(scale * img @ txt.T + bias)
    for r, row in enumerate(ranked):
        for p in row:
            assert p["score"] == pytest.approx(float(ref[r, p["index"]]), abs=1e-5)
    assert abs(sum(p["score"] for p in ranked[0]) - 1) > 1e-3  # independent sigmoids, not a softmax


def test_non_causal_text_tower_is_encoded_at_full_length(backbones, monkeypatch):
    bb = backbones["siglip"]
    texts = ["a photo of a tabby cat.", "espresso", "a photo of the rocket, a photo of a tench."]
    tokens = bb.tokenizer(texts)
    assert bb.text_ends(tokens) is None  # no causal mask: every position is read, no truncation
    called = []
    monkeypatch.setattr(type(bb), "_encode_text_prefix", lambda self, t: called.append(t))
    got = bb.encode_texts(texts, batch_size=2)
    ref = F.normalize(bb.model.encode_text(tokens).float(), dim=-1)
    assert not called and torch.allclose(got, ref, atol=1e-5, rtol=0)
    assert backbones["native"].text_ends(backbones["native"].tokenizer(texts)) is not None  # causal: fast path


@pytest.mark.parametrize("family", TIMM_FAMILIES)
def test_rollout_and_text_maps_on_timm_towers(backbones, family):
    from absclip.attention.layered import ClipLayeredAttention

    bb = backbones[family]
    atts, outs = bb.block_attentions(_pixels(bb), -1)
    assert len(atts) == 3 and atts[-1].shape == (2, 4, 17, 17) and outs[-1].shape == (2, 17, 64)
    assert torch.allclose(atts[-1].sum(-1), torch.ones(2, 4, 17), atol=1e-5)  # the slot row too (SigLIP)
    roll = ClipLayeredAttention(bb, rollout="mean").heads([Image.open(p).convert("RGB") for p in PHOTOS[:2]])
    assert roll.shape == (2, 1, 16) and bool((roll >= 0).all())
    patches = bb.patch_embeddings(bb.tokens_before(_pixels(bb), -1), -1)
    assert patches.shape == (2, 16, bb.facts.embed_dim)
    assert torch.allclose(patches.norm(dim=-1), torch.ones(2, 16), atol=1e-5)


def test_siglip_text_map_is_the_probe_attending_to_one_patch(backbones):
    bb = backbones["siglip"]
    tokens = bb.tokens_before(_pixels(bb, 1), -1)
    patches = bb.patch_embeddings(tokens, -1)  # [1, 16, D]
    # a probe attending to patch 5 alone: the tower's own pooling with every other key masked out
    trunk = bb.model.visual.trunk
    x = trunk.norm(trunk.blocks[-1](tokens[:, 1:]))
    mask = torch.full((1, 1, 1, 16), float("-inf"))
    mask[..., 5] = 0
    pooled = trunk.attn_pool(x, attn_mask=mask)
    ref = F.normalize(bb.model.visual.head(trunk.head(trunk.fc_norm(pooled))).float(), dim=-1)
    assert torch.allclose(patches[0, 5], ref[0], atol=1e-5, rtol=0)
    # rollout: the probe in the CLS slot of the last block, [1, 0, ...] before it; patches never attend to the slot
    atts, outs = bb.block_attentions(_pixels(bb, 1))
    assert [a.shape for a in atts] == [(1, 4, 17, 17)] * 3 and outs[-1].shape == (1, 17, 64)
    assert torch.allclose(atts[-1][:, :, 0, 1:], bb.cls_attention(tokens, -1), atol=1e-5, rtol=0)
    assert bool((atts[0][:, :, 0, 0] == 1).all()) and bool((atts[-1][:, :, 1:, 0] == 0).all())
    assert torch.allclose(atts[1].sum(-1), torch.ones(1, 4, 17), atol=1e-5)


def test_conv_tower_runs_pixel_crops_and_refuses_token_parts_in_one_sentence(models, capsys):
    cfg, weights = models["conv"]
    common = ["classify", str(PHOTOS[0]), "--classes", CLASSES, "--model", cfg, "--pretrained", weights,
              "--crops", "3", "--no-cache", "--json"]
    for method in ("abs", "clip", "wca"):  # pixel crops with DINO attention, and the baselines
        assert main([*common, "--method", method, "--attention-model", str(DINO), "--feature-crops", "0"]) == 0
        assert len(json.loads(capsys.readouterr().out)[0]["predictions"]) == 5
    for extra, flag in ((["--attention-model", str(DINO)], "--feature-crops"),
                        (["--attention-model", "clip", "--feature-crops", "0"], "--attention-model")):
        assert main([*common, "--method", "abs", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert flag in err and err.count(". ") == 0 and "\n" not in err, err


def test_tokenizer_that_cannot_be_downloaded_is_one_sentence(tmp_path):
    cfg = _shrunk("ViT-B-16-SigLIP2.json", "absclip_tiny_siglip", hf_tokenizer_name="absclip-test/not-cached")
    path = tmp_path / "tiny-hub-tokenizer.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsUnavailableError) as e:
        load_clip(str(path), None, device="cpu")
    msg = str(e.value)
    assert "absclip-test/not-cached" in msg and "tokenizer" in msg and msg.count(". ") == 0 and "\n" not in msg


def test_grid_mapping_follows_the_model_grid():
    # the reference's rules (14 -> 14 identity, 14 -> 7 halving, 14 -> 16 floor(r*16/14)) for any grid
    for dst in (7, 14, 16, 24, 27, 32):
        for r in range(14):
            for c in (0, 5, 13):
                assert views.map_index_to_grid(r * 14 + c, 14, 14, dst, dst) == (r * dst // 14) * dst + c * dst // 14
    assert views.map_index_to_grid(3 * 14 + 4, 14, 14, 7, 7) == 1 * 7 + 2
    # SigLIP's squash resize: both grids span the whole image, the source cell's centre is binned
    for src, dst in ((14, 16), (14, 27), (16, 24), (14, 7)):
        for i in range(src * src):
            r, c = divmod(i, src)
            got = views.map_index_aligned(i, src, src, 500, 300, 224, dst, dst, squash=True)
            assert divmod(got, dst) == (int((r + 0.5) * dst / src), int((c + 0.5) * dst / src))


@pytest.mark.parametrize("family", TOKEN_FAMILIES)
def test_flop_estimates_for_every_vit_family(backbones, family):
    from absclip.core.settings import ABSConfig
    from absclip.diagnostics.flops import abs_image_flops, naive_image_flops

    bb = backbones[family]
    cfg = ABSConfig(pixel_crops=4, feature_crops=4)
    tf = bb.tower_flops()
    assert tf["tokens"] == bb.facts.grid[0] * bb.facts.grid[1] + int(bb.facts.class_token)
    assert tf["full"] > tf["block"] * 3 > 0
    assert 0 < abs_image_flops(bb, cfg, 4, fused=False) <= naive_image_flops(bb, cfg)


def test_models_listing_shows_the_family_and_its_abs_parts(capsys):
    assert main(["models", "*SigLIP2*", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ViT-B-16-SigLIP2"]["family"] == "timm ViT (MAP)"
    assert rows["ViT-B-16-SigLIP2"]["supports"]["feature_crops"] is True
    assert main(["models", "convnext_base", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["supports"] == {"pixel_crops": True, "feature_crops": False, "clip_attention": False,
                               "rollout": False, "text_maps": False}


def test_eva_feature_crop_gets_the_full_grids_rotary_positions(backbones):
    # a resized window fills the grid: its token (r, c) is rotated as grid cell (r, c), as the model does
    # for any full-size input (documented in absclip.backbones.eva)
    bb = backbones["eva"]
    trunk = bb.model.visual.trunk
    tokens = bb.tokens_before(_pixels(bb, 1), 1)
    seqs = batched_feature_crop_tokens(tokens, [(0, (1, 4, 0, 3))], bb.facts.grid)  # a 3x3 window -> 4x4
    x = seqs
    for blk in trunk.blocks[1:]:
        x = blk(x, rope=trunk.rope.get_embed())  # the full 4x4 grid's positions
    ref = F.normalize(bb.model.visual.head(trunk.forward_head(trunk.norm(x))).float(), dim=-1)
    assert torch.allclose(bb.forward_from(seqs, 1), ref, atol=1e-5, rtol=0)


def test_resize_mode_comes_from_the_models_preprocess_cfg(backbones):
    from absclip.backbones.open_clip import resize_mode

    model = backbones["siglip"].model
    saved = getattr(model.visual, "preprocess_cfg", None)
    try:
        model.visual.preprocess_cfg = {"resize_mode": "squash", "mean": (0.5,) * 3, "std": (0.5,) * 3}
        assert resize_mode(model) == "squash"
        model.visual.preprocess_cfg = {"resize_mode": "shortest"}
        assert resize_mode(model) == "shortest"
    finally:
        model.visual.preprocess_cfg = saved


@pytest.mark.parametrize("family", ["siglip", "eva"])
def test_bench_runs_on_timm_families(models, tmp_path, capsys, family):
    import shutil

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in PHOTOS[:2]:
        shutil.copy(p, imgs / p.name)
    cfg, weights = models[family]
    assert main(["bench", "--images", str(imgs), "--model", cfg, "--pretrained", weights, "--attention-model", "clip",
                 "--crops", "2", "--feature-crops", "3", "--classes", "5", "--descriptions-per-class", "2",
                 "--text-sample", "2", "--device", "cpu", "--precision", "fp32", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["images"] == 2 and rep["max_abs_logit_diff"] <= 1e-4 and rep["flops"]
