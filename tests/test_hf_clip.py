"""transformers CLIPModel adapter: the golden tiny CLIP converted to HF format reproduces the fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from absclip import ABSConfig, Classifier, load_clip
from absclip.methods.batch import BatchContext

from .conftest import CLIP_WEIGHTS, GOLDEN

TOL = 1e-4


def _convert(sd: dict, prefix_oc: str, prefix_hf: str, layers: int) -> dict:
    out = {}
    for i in range(layers):
        a, b = f"{prefix_oc}resblocks.{i}.", f"{prefix_hf}encoder.layers.{i}."
        q, k, v = sd[a + "attn.in_proj_weight"].chunk(3)
        qb, kb, vb = sd[a + "attn.in_proj_bias"].chunk(3)
        out.update({
            b + "self_attn.q_proj.weight": q, b + "self_attn.k_proj.weight": k, b + "self_attn.v_proj.weight": v,
            b + "self_attn.q_proj.bias": qb, b + "self_attn.k_proj.bias": kb, b + "self_attn.v_proj.bias": vb,
            b + "self_attn.out_proj.weight": sd[a + "attn.out_proj.weight"],
            b + "self_attn.out_proj.bias": sd[a + "attn.out_proj.bias"],
            b + "layer_norm1.weight": sd[a + "ln_1.weight"], b + "layer_norm1.bias": sd[a + "ln_1.bias"],
            b + "layer_norm2.weight": sd[a + "ln_2.weight"], b + "layer_norm2.bias": sd[a + "ln_2.bias"],
            b + "mlp.fc1.weight": sd[a + "mlp.c_fc.weight"], b + "mlp.fc1.bias": sd[a + "mlp.c_fc.bias"],
            b + "mlp.fc2.weight": sd[a + "mlp.c_proj.weight"], b + "mlp.fc2.bias": sd[a + "mlp.c_proj.bias"],
        })
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """Write the golden OpenAI-format tiny CLIP as a transformers CLIPModel directory."""
    return write_hf_clip(tmp_path_factory.mktemp("hf-clip"))


def write_hf_clip(d):
    """Write the golden tiny CLIP (open_clip weights) to directory ``d`` as a transformers CLIPModel; return ``d``."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    sd = {k: v.float() for k, v in torch.load(CLIP_WEIGHTS, weights_only=True).items()}
    cfg = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                         vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu",
                         eos_token_id=49407, bos_token_id=49406, pad_token_id=0),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=2,
                           image_size=224, patch_size=16, hidden_act="quick_gelu"),
        projection_dim=512,
    )
    model = CLIPModel(cfg)
    hf = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T.contiguous(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T.contiguous(),
        "logit_scale": sd["logit_scale"],
    }
    hf.update(_convert(sd, "visual.transformer.", "vision_model.", 3))
    hf.update(_convert(sd, "transformer.", "text_model.", 2))
    missing, unexpected = model.load_state_dict(hf, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    model.save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(d)
    tok = SimpleTokenizer()  # the same BPE as open_clip, in the files HF's CLIPTokenizer reads
    vocab = {k: v for k, v in tok.encoder.items() if v < 49406}
    vocab.update({"<|startoftext|>": 49406, "<|endoftext|>": 49407})  # HF's names for the special tokens
    (d / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    return d


def test_hf_clip_matches_golden(hf_dir, dino, golden_items, golden):
    """Given the fixture's pixels, every image-side stage and the text side match the reference."""
    from absclip.core.geometry import feature_crop_tokens

    bb = load_clip(f"hf:{hf_dir}")
    assert bb.facts.grid == (14, 14) and bb.facts.num_blocks == 3 and bb.facts.embed_dim == 512
    assert load_clip(str(hf_dir)).identity == bb.identity  # a save_pretrained dir is recognised by its config
    px = torch.from_numpy(golden["clip_pixel_values"])
    tokens = bb.tokens_before(px, -1)
    assert np.abs(tokens.numpy() - golden["clip_pre_last_block"]).max() <= TOL
    assert np.abs(bb.encode_images(px).numpy() - golden["full_emb"]).max() <= TOL
    assert np.abs(bb.forward_from(tokens, -1).numpy() - golden["full_emb"]).max() <= TOL
    crop0 = bb.encode_images(torch.from_numpy(golden["pix_crop0_clip_pixels"]))
    assert np.abs(crop0.numpy() - golden["pix_crop_emb"][:, 0]).max() <= TOL
    for b in range(3):
        windows = [tuple(int(x) for x in w) for w in golden["feat_window"][b]]
        emb = bb.forward_from(feature_crop_tokens(tokens[b], windows, (14, 14)), -1)
        assert np.abs(emb.numpy() - golden["feat_crop_emb"][b]).max() <= TOL
    heads = bb.cls_attention(tokens)
    assert heads.shape == (3, 2, 196) and torch.all(heads.sum(-1) < 1 + 1e-5)
    clf = Classifier(bb, attention_model=dino, abs_config=ABSConfig(pixel_crops=6, feature_crops=6), use_cache=False)
    clf.set_classes(["cat", "coffee", "rocket"], descriptions=GOLDEN / "descriptions.json")
    assert np.abs(clf.method("abs").bank.emb.numpy() - golden["text_desc_emb"]).max() <= TOL
    assert np.abs(clf.method("clip").classifier.numpy() - golden["text_clip_classifier"]).max() <= TOL


def test_hf_clip_runs_every_method_end_to_end(hf_dir, dino, golden_items):
    """With the model's own (HF) preprocessing, ABS and the baselines run and agree on shapes."""
    bb = load_clip(f"hf:{hf_dir}")
    clf = Classifier(bb, attention_model=dino, abs_config=ABSConfig(pixel_crops=6, feature_crops=6), use_cache=False)
    clf.set_classes(["cat", "coffee", "rocket"], descriptions=GOLDEN / "descriptions.json")
    out = clf.logits_batch(golden_items, ["clip", "cupl", "wca", "abs"])
    assert all(v.shape == (3, 3) and torch.isfinite(v).all() for v in out.values())
    ctx = BatchContext(golden_items, bb, dino)
    assert ctx.pixels.shape == (3, 3, 224, 224)
