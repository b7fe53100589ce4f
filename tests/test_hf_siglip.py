"""transformers SiglipModel / Siglip2Model adapter: tiny random checkpoints saved with save_pretrained (model,
image processor config, a tiny locally trained tokenizer) reproduce the models' own forward passes."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from absclip import load_clip
from absclip.backbones import hf as hf_clip_module
from absclip.backbones import registry
from absclip.backbones.base import LoadRequest, vit_flops
from absclip.backbones.hf_siglip import HFSiglipBackbone, patchify
from absclip.cli.main import main
from absclip.core.geometry import batched_feature_crop_tokens, feature_crop_tokens
from absclip.errors import AbsclipError, WeightsUnavailableError
from absclip.io.images import make_item
from absclip.methods.batch import BatchContext

from .conftest import DATA

TOL = 1e-5
SAMPLE = DATA / "imagenet-sample"
SUSX = DATA / "descriptions" / "susx_cupl" / "gpt3_prompts" / "CuPL_prompts_imagenet.json"
PHOTOS = [SAMPLE / f for f in ("n01440764_tench.JPEG", "n01443537_goldfish.JPEG", "n01484850_great_white_shark.JPEG",
                               "n01491361_tiger_shark.JPEG", "n01494475_hammerhead.JPEG",
                               "n01496331_electric_ray.JPEG", "n01498041_stingray.JPEG", "n01514668_cock.JPEG",
                               "n01514859_hen.JPEG")]
CLASSES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray", "stingray",
           "rooster", "hen"]
CONTEXT = 64


def write_tokenizer(d) -> int:
    """Train a tiny BPE tokenizer (the SigLIP layout: lower-cased, ``</s>`` appended, ``<pad>``) into ``d``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bank = json.loads(SUSX.read_text())
    corpus = [s for c in CLASSES for s in bank[c]] + CLASSES
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = [chr(i) for i in range(32, 127)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                                         initial_alphabet=alphabet, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=CONTEXT).save_pretrained(d)
    return tok.get_vocab_size()


def write_siglip(d, kind: str = "siglip"):
    """Write a tiny random SiglipModel (7x7 grid of 16 px patches) or Siglip2Model (NaFlex) checkpoint into ``d``."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    vocab = write_tokenizer(d)
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=CONTEXT, projection_size=48, pad_token_id=0, eos_token_id=1,
                bos_token_id=1)
    vision = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, patch_size=16)
    torch.manual_seed(0 if kind == "siglip" else 1)
    if kind == "siglip":
        model = SiglipModel(SiglipConfig(text_config=text, vision_config={**vision, "image_size": 112}))
        SiglipImageProcessor(size={"height": 112, "width": 112}, resample=3).save_pretrained(d)
    else:  # an 8x8 position grid run at 7x7 (max_num_patches 49): the position embeddings are resized
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config={**vision, "num_patches": 64}))
        Siglip2ImageProcessor(patch_size=16, max_num_patches=49, resample=2).save_pretrained(d)
    with torch.no_grad():  # random init leaves scale and bias at 0: give them values the tests can see
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-2.5)
        head = model.vision_model.head  # a sharper probe: attention the tests can tell from uniform
        head.probe.mul_(8.0)
        head.attention.in_proj_weight[:96].mul_(3.0)
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def ckpt(request, tmp_path_factory):
    d = write_siglip(tmp_path_factory.mktemp(request.param), request.param)
    return request.param, d


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return write_siglip(tmp_path_factory.mktemp("siglip-cli"), "siglip")


@pytest.fixture(scope="module")
def bb(ckpt):
    return load_clip(f"hf:{ckpt[1]}", device="cpu")


def items(n: int = 3):
    return [make_item(p) for p in PHOTOS[:n]]


def model_image_features(bb: HFSiglipBackbone, pixels: torch.Tensor) -> torch.Tensor:
    """The model's own ``get_image_features`` for pixels ``[B, 3, S, S]`` (SigLIP2: patches + shapes + mask)."""
    with torch.no_grad():
        if bb.kind == "siglip":
            out = bb.model.get_image_features(pixel_values=pixels)
        else:
            g = bb.facts.grid[0]
            out = bb.model.get_image_features(pixel_values=patchify(pixels, 16),
                                              pixel_attention_mask=torch.ones(len(pixels), g * g, dtype=torch.long),
                                              spatial_shapes=torch.tensor([[g, g]] * len(pixels)))
    return F.normalize(out.pooler_output.float(), dim=-1)


def pixels_of(bb, its):
    return torch.stack([bb.preprocess(it.image) for it in its])


def test_geometry_and_scores_come_from_the_checkpoint(bb, ckpt):
    kind = ckpt[0]
    assert isinstance(bb, HFSiglipBackbone) and bb.kind == kind and bb.has_tokens and not bb.fused_path
    assert bb.facts.grid == (7, 7) and bb.facts.patch_size == (16, 16) and bb.facts.image_size == (112, 112)
    assert (bb.facts.num_blocks, bb.facts.width, bb.facts.embed_dim, bb.facts.heads) == (3, 48, 48, 2)
    assert bb.logit_scale == pytest.approx(10.0, rel=1e-5) and bb.logit_bias == pytest.approx(-2.5)
    # no class token, squashed resize (where the protocol's facts carry these)
    assert getattr(bb.facts, "class_token", False) is False and getattr(bb.facts, "resize_mode", "squash") == "squash"
    assert bb.identity.startswith(f"hf-{kind}:") and load_clip(str(ckpt[1]), device="cpu").identity == bb.identity
    f = bb.tower_flops()  # no class token: 49 tokens per block, the MAP head in place of a projection
    assert f["tokens"] == 49 and f["full"] == f["embed"] + 3 * f["block"] + f["proj"] and f["proj"] > 0
    assert f["block"] == vit_flops(49, 48, 1, 96) < vit_flops(50, 48, 1, 96)


def test_preprocess_is_the_image_processor_done_locally(bb, ckpt):
    """SigLIP: squash to 112x112 (bicubic), mean/std 0.5; SigLIP2: the NaFlex processor's output for square images."""
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(ckpt[1], backend="pil")
    square = items(1)[0].image.resize((300, 300))
    wide = items(1)[0].image.resize((400, 150))
    assert bb.preprocess(wide).shape == (3, 112, 112)  # a fixed grid for every image, squashed
    mine = bb.preprocess(square)
    ref = proc(images=square, return_tensors="pt")
    if ckpt[0] == "siglip":
        assert (mine - ref["pixel_values"][0]).abs().max() <= 1e-5
    else:
        assert ref["spatial_shapes"].tolist() == [[7, 7]] and bool(ref["pixel_attention_mask"].all())
        assert (patchify(mine[None], 16) - ref["pixel_values"]).abs().max() <= 1e-5
        with torch.no_grad():
            own = F.normalize(bb.model.get_image_features(**ref).pooler_output, dim=-1)
        assert (bb.encode_images(mine[None]) - own).abs().max() <= TOL


def test_feature_crop_of_the_whole_grid_is_the_models_image_features(bb):
    """(1) Full window, no resize: the remaining layers, post-layernorm and MAP head give get_image_features."""
    px = pixels_of(bb, items())
    ref = model_image_features(bb, px)
    assert (bb.encode_images(px) - ref).abs().max() <= TOL
    whole = (0, 7, 0, 7)
    for layer in (-1, 1, 0):
        tokens = bb.tokens_before(px, layer)
        assert tokens.shape == (3, 50, 48) and bool((tokens[:, 0] == 0).all())  # the pooling slot
        assert (bb.forward_from(tokens, layer) - ref).abs().max() <= TOL
        seqs = batched_feature_crop_tokens(tokens, [(b, whole) for b in range(3)], (7, 7))
        assert (bb.forward_from(seqs, layer) - ref).abs().max() <= TOL
    one = bb.forward_from(feature_crop_tokens(tokens[1], [whole, (1, 5, 2, 6)], (7, 7)), 0)
    assert (one[0] - ref[1]).abs().max() <= TOL and (one[1] - ref[1]).abs().max() > 1e-3  # a real crop differs
    keep = torch.arange(49).expand(3, -1)
    assert (bb.encode_images_dropped(px, keep) - ref).abs().max() <= TOL


def test_pixel_crop_is_the_encoding_of_the_cropped_pixels(bb):
    """(2) A pixel crop through absclip's crop path equals the model on the cropped, preprocessed pixels."""
    its = items(2)
    boxes = [(10, 20, 200, 180), (0, 0, 120, 260)]
    ctx = BatchContext(its, bb, None)
    got = ctx.encode_crop_jobs(list(zip(its, boxes)))
    px = torch.stack([bb.preprocess(it.image.crop(box)) for it, box in zip(its, boxes)])
    assert (got - model_image_features(bb, px)).abs().max() <= TOL
    assert (got - bb.encode_images(px)).abs().max() <= TOL


def test_probe_attention_is_the_pooling_heads_softmax(bb):
    """(3) CLIP-side attention: the MAP probe over the patches, recomputed from the head's weights."""
    px = pixels_of(bb, items())
    att = bb.cls_attention(bb.tokens_before(px, -1), -1)
    assert att.shape == (3, 2, 49) and bool((att >= 0).all())
    torch.testing.assert_close(att.sum(-1), torch.ones(3, 2))  # probabilities over the patches (no class token)
    vm = bb.model.vision_model
    with torch.no_grad():
        if bb.kind == "siglip":
            hidden = vm(pixel_values=px).last_hidden_state  # post_layernorm applied
        else:
            g = torch.tensor([[7, 7]] * 3)
            hidden = vm(pixel_values=patchify(px, 16), pixel_attention_mask=torch.ones(3, 49), spatial_shapes=g)
            hidden = hidden.last_hidden_state
        head = vm.head
        wq, wk, _ = head.attention.in_proj_weight.chunk(3)
        bq, bk, _ = head.attention.in_proj_bias.chunk(3)
        q = (head.probe @ wq.T + bq).reshape(1, 1, 2, 24).transpose(1, 2)  # [1, heads, 1, d]
        k = (hidden @ wk.T + bk).reshape(3, 49, 2, 24).transpose(1, 2)  # [B, heads, N, d]
        explicit = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(24), dim=-1)[:, :, 0]
        _, own = head.attention(head.probe.expand(3, -1, -1), hidden, hidden, need_weights=True,
                                average_attn_weights=False)  # the head's own module
    assert (att - explicit).abs().max() <= TOL and (att - own[:, :, 0]).abs().max() <= TOL
    assert att.std() > 1e-3  # not uniform: the test can tell patches apart
    atts, outs = bb.block_attentions(px, -1)
    assert len(atts) == 3 and atts[-1].shape == (3, 2, 50, 50) and outs[-1].shape == (3, 50, 48)
    for a in atts:
        torch.testing.assert_close(a.sum(-1), torch.ones(3, 2, 50))
        assert bool((a[:, :, 1:, 0] == 0).all())  # nothing attends to the pooling slot
    assert (atts[-1][:, :, 0, 1:] - att).abs().max() <= TOL
    assert bool((atts[0][:, :, 0, 0] == 1).all())
    patches = bb.patch_embeddings(bb.tokens_before(px, -1), -1)
    assert patches.shape == (3, 49, 48)
    torch.testing.assert_close(patches.norm(dim=-1), torch.ones(3, 49))


def test_sigmoid_scores_and_text_embeddings_are_the_models(bb, ckpt):
    """(5) sigmoid(scale*cos + bias) from the adapter equals the model's own logits_per_image; texts equal."""
    texts = ["a photo of a tench.", "goldfish", "a rooster crowing at dawn " * 20]  # the last one is truncated
    emb = bb.encode_texts(texts, batch_size=2)
    ids = bb.tokenizer(texts)
    assert ids.shape == (3, CONTEXT)
    px = pixels_of(bb, items())
    with torch.no_grad():
        ref_text = F.normalize(bb.model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        kwargs = {"pixel_values": px} if bb.kind == "siglip" else {
            "pixel_values": patchify(px, 16), "pixel_attention_mask": torch.ones(3, 49, dtype=torch.long),
            "spatial_shapes": torch.tensor([[7, 7]] * 3)}
        own = torch.sigmoid(bb.model(input_ids=ids, **kwargs).logits_per_image)
    assert (emb - ref_text).abs().max() <= TOL
    ours = torch.sigmoid(bb.logit_scale * bb.encode_images(px) @ emb.T + bb.logit_bias)
    assert (ours - own).abs().max() <= TOL and own.std() > 1e-3


def test_texts_are_encoded_at_the_full_context_without_a_causal_mask(bb):
    """The truncated-text fast path (exact only for causal towers) is not used: every batch runs 64 positions."""
    texts = ["tench", "a photo of a goldfish.", "hen"]
    assert getattr(bb, "text_ends", None) is None
    lengths = []
    hook = bb.model.text_model.register_forward_pre_hook(
        lambda mod, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        emb = bb.encode_texts(texts, batch_size=1)
    finally:
        hook.remove()
    assert lengths == [CONTEXT] * 3
    ids = bb.tokenizer(texts)
    end = int((ids != 0).sum(1).max())  # a causal tower could stop here; this one reads the padding
    with torch.no_grad():
        cut = F.normalize(bb.model.text_model(input_ids=ids[:, :end]).pooler_output, dim=-1)
    assert (cut - emb).abs().max() > 1e-3


def test_cast_copies_the_weights(bb):
    px = pixels_of(bb, items(1))
    half = bb.cast(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and bb.dtype == torch.float32 and half.model is not bb.model
    assert (half.encode_images(px) - bb.encode_images(px)).abs().max() < 0.05


def test_registry_routes_siglip_specs(ckpt, tmp_path):
    def row(model: str) -> str:
        req = LoadRequest(model, None, torch.device("cpu"), torch.float32)
        return next(r for r in registry.LOADERS if r.accepts(req)).name

    siglip_row = next(r.name for r in registry.LOADERS if "Siglip" in r.name)
    assert row(f"hf:{ckpt[1]}") == row(str(ckpt[1])) == siglip_row
    assert row("hf:google/siglip2-base-patch16-224") == siglip_row  # not cached: recognised by its name
    assert row("hf:openai/clip-vit-base-patch16") == hf_clip_module.LOADERS[0].name
    with pytest.raises(WeightsUnavailableError) as e:  # the tests run offline (conftest)
        load_clip("hf:google/siglip-base-patch16-224", device="cpu")
    assert str(e.value).count(". ") <= 1 and "hf:/path/to/dir" in str(e.value)


def test_a_checkpoint_without_its_tokenizer_is_one_sentence(ckpt, tmp_path):
    d = tmp_path / "no-tokenizer"
    d.mkdir()
    for f in ckpt[1].iterdir():
        if "token" not in f.name and f.name != "special_tokens_map.json":
            (d / f.name).write_bytes(f.read_bytes())
    with pytest.raises(AbsclipError) as e:
        load_clip(f"hf:{d}", device="cpu")
    msg = str(e.value)
    assert "no readable tokenizer" in msg and msg.endswith(".") and "\n" not in msg


def _cli(capsys, args):
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_classify_and_eval_end_to_end_batch_size_free(siglip_dir, tmp_path, capsys):
    """(4) absclip classify and eval --method abs: feature crops, CLIP (probe) attention; batch 1 == batch 8."""
    model = ["--model", f"hf:{siglip_dir}", "--attention-model", "clip", "--crops", "4", "--feature-crops", "6",
             "--device", "cpu"]
    classes = ["--classes", ",".join(CLASSES), "--descriptions", str(SUSX)]
    images = [str(p) for p in PHOTOS]
    runs = [_cli(capsys, ["classify", *images, *classes, "--method", "abs", "--top", "3", "--json",
                          "--batch-size", str(b), *model]) for b in (1, 8)]
    assert len(runs[0]) == 9
    for one, eight in zip(*runs):  # the same predictions; scores equal up to float rounding
        assert [p["label"] for p in one["predictions"]] == [p["label"] for p in eight["predictions"]]
        scores = [p["score"] for p in one["predictions"]]
        assert scores == pytest.approx([p["score"] for p in eight["predictions"]], abs=1e-6)
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    listing = tmp_path / "list.csv"
    with listing.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([str(p), c] for p, c in zip(PHOTOS, CLASSES))
    preds = []
    for b in (1, 8):
        out = tmp_path / f"r{b}.json"
        doc = _cli(capsys, ["eval", "--data", str(listing), *classes, "--methods", "clip,abs", "--output", str(out),
                            "--json", "--no-progress", "--batch-size", str(b), *model])
        assert doc["images"] == 9 and doc["config"]["attention"].startswith("clip-attn:hf-siglip:")
        assert doc["config"]["methods"]["abs"]["config"]["feature_crops"] == 6
        rows = [json.loads(x) for x in open(json.loads(out.read_text())["predictions"])]
        preds.append(sorted((r["path"], r["method"], r["topk"]) for r in rows))
    assert preds[0] == preds[1] and len(preds[0]) == 18


def test_siglip2_naflex_runs_at_a_fixed_grid(tmp_path):
    """A NaFlex SigLIP2 checkpoint runs at floor(sqrt(max_num_patches))^2 patches for every image."""
    d = write_siglip(tmp_path / "naflex", "siglip2")
    cfg = json.loads((d / "preprocessor_config.json").read_text())
    cfg["max_num_patches"] = 30  # -> 5 x 5
    (d / "preprocessor_config.json").write_text(json.dumps(cfg))
    bb = load_clip(str(d), device="cpu")
    assert bb.facts.grid == (5, 5) and bb.facts.image_size == (80, 80)
    im = Image.new("RGB", (300, 120), (200, 30, 30))
    px = bb.preprocess(im)[None]
    assert px.shape == (1, 3, 80, 80)
    assert (bb.encode_images(px) - model_image_features(bb, px)).abs().max() <= TOL
    bad = copy.deepcopy(cfg)
    bad["max_num_patches"] = 0
    (d / "preprocessor_config.json").write_text(json.dumps(bad))
    with pytest.raises(AbsclipError, match="allows no patches"):
        load_clip(str(d), device="cpu")


def test_bench_naive_pipeline_agrees_and_counts_flops(siglip_dir, tmp_path):
    """absclip bench on SigLIP: the reference-style loop gives the same logits; FLOPs follow the MAP tower."""
    from absclip import ABSConfig
    from absclip.diagnostics.bench import BenchSettings, run_benchmark

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in PHOTOS[:2]:
        (imgs / p.name).write_bytes(p.read_bytes())
    s = BenchSettings(images=str(imgs), limit=2, model=f"hf:{siglip_dir}", attention_model="clip", methods=("abs",),
                      precisions=("fp32",), device="cpu", batch_size=2, workers=0, crop_workers=0, classes=5,
                      descriptions_per_class=3, text_sample=4, warmup=False,
                      abs_config=ABSConfig(pixel_crops=4, feature_crops=6))
    rep = run_benchmark(s)
    assert rep["images"] == 2 and rep["max_abs_logit_diff"] <= 1e-4 and rep["naive_topk_mismatches"] == 0
    assert rep["flops"]["naive"]["image_encoder_gflop"] > rep["flops"]["abs"]["image_encoder_gflop"] > 0


def test_rollout_is_the_probe_carried_back_and_text_maps_work(bb):
    """Rollout over a SigLIP tower: half the probe's attention times the patch rollout of the earlier blocks."""
    from absclip import ABSConfig, Classifier
    from absclip.attention.maps import rollout
    from absclip.diagnostics.explain import explain

    clf = Classifier(bb, attention_model="clip", attention_rollout="mean",
                     abs_config=ABSConfig(pixel_crops=2, feature_crops=4), use_cache=False)
    clf.set_classes(CLASSES[:3], descriptions=SUSX)
    its = items()
    maps = clf.attention([it.image for it in its])
    atts, _ = bb.block_attentions(pixels_of(bb, its), -1)
    expected = 0.5 * atts[-1][:, :, 0, 1:].mean(1).unsqueeze(1) @ rollout([a[:, :, 1:, 1:] for a in atts[:-1]])
    assert maps.shape == (3, 49) and (maps - expected[:, 0]).abs().max() <= TOL
    assert maps.sum(-1).sub(0.5).abs().max() <= TOL  # the slot keeps the other half
    expl = explain(clf, PHOTOS[0], map="text", map_class="tench")
    assert expl.map.shape == (7, 7) and bool(abs(expl.map).max() <= 1 + 1e-5) and expl.map.std() > 0
