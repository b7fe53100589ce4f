"""The fused ViT path runs both MLP activations of open_clip towers: exact GELU and OpenAI's QuickGELU.

OpenAI weights (``ViT-B-16`` + ``openai``, every OpenAI ``.pt`` file) use QuickGELU; the fused
path computes it as oneDNN's fused swish with the 1.702 factor moved onto the MLP's input and
output. Both must give the model's own forward within 1e-5.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU

from absclip import load_clip
from absclip.backbones.fused_vit import mlp_activation
from absclip.backbones.open_clip_loaders import tag_needs_quick_gelu

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}


def tiny(tmp_path, quick_gelu: bool):
    cfg = {"embed_dim": 64, "quick_gelu": quick_gelu,
           "vision_cfg": {"image_size": 224, "layers": 3, "width": 96, "patch_size": 16}, "text_cfg": TINY_TEXT}
    path = tmp_path / f"tiny-qg{int(quick_gelu)}.json"
    path.write_text(json.dumps(cfg))
    torch.manual_seed(0)
    bb = load_clip(str(path), None)
    with torch.no_grad():  # open_clip initialises biases to 0: random ones exercise the folded 1.702 too
        for blk in bb.model.visual.transformer.resblocks:
            blk.mlp.c_fc.bias.normal_(0, 0.5)
            blk.mlp.c_proj.bias.normal_(0, 0.5)
    return bb


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_fused_activation_equals_the_models_own_forward(tmp_path, golden_items, monkeypatch, quick_gelu):
    bb = tiny(tmp_path, quick_gelu)
    want = "quick_gelu" if quick_gelu else "gelu"
    assert bb.fused_path and bb._fused.activation == want and bb.activation == want
    px = torch.stack([bb.preprocess(it.image) for it in golden_items])
    with torch.inference_mode():
        own = bb.model.encode_image(px)
        own_tokens = bb.unfused().tokens_before(px, -1)

    def refuse(self, x):
        raise AssertionError("the fused path must not run the activation module")

    monkeypatch.setattr(QuickGELU, "forward", refuse)
    monkeypatch.setattr(torch.nn.GELU, "forward", refuse)
    with torch.inference_mode():
        fused = bb._fused.encode(px)
        tokens = bb.tokens_before(px, -1)
        tail = bb.forward_from(tokens, -1)
    assert (fused - own).abs().max() <= 1e-5 * max(1.0, float(own.abs().max()))
    assert (tokens - own_tokens).abs().max() <= 1e-4
    assert (bb.encode_images(px) - F.normalize(own, dim=-1)).abs().max() <= 1e-5
    assert (tail - F.normalize(own, dim=-1)).abs().max() <= 1e-5


def test_fused_quick_gelu_without_onednn(tmp_path, golden_items):
    bb = tiny(tmp_path, True)
    px = torch.stack([bb.preprocess(it.image) for it in golden_items[:2]])
    bb._fused.linear.enabled = False  # torch's own linears + F.silu: the non-oneDNN (e.g. CUDA) path
    with torch.inference_mode():
        got, own = bb.encode_images(px), F.normalize(bb.model.encode_image(px), dim=-1)
    assert (got - own).abs().max() <= 1e-5


def test_golden_clip_is_quick_gelu_and_fused(backbone):
    """The golden parity fixture (quick_gelu config) now runs the fused MLP in every block."""
    assert backbone.activation == "quick_gelu" and backbone._fused.activation == "quick_gelu"


def test_other_mlps_are_not_fused():
    mlp = torch.nn.Sequential()
    mlp.add_module("c_fc", torch.nn.Linear(4, 8))
    mlp.add_module("gelu", torch.nn.GELU(approximate="tanh"))
    mlp.add_module("c_proj", torch.nn.Linear(8, 4))
    assert mlp_activation(mlp) is None
    mlp.gelu = torch.nn.SiLU()
    assert mlp_activation(mlp) is None
    mlp.gelu = QuickGELU()
    assert mlp_activation(mlp) == "quick_gelu"


def test_which_weights_need_quick_gelu():
    assert tag_needs_quick_gelu("ViT-B-16", "openai")  # the default model: OpenAI weights on a GELU config
    assert not tag_needs_quick_gelu("ViT-B-16-quickgelu", "openai")  # the config has it already
    assert not tag_needs_quick_gelu("ViT-B-16", "laion2b_s34b_b88k")  # GELU weights
    assert not tag_needs_quick_gelu("no-such-model", "openai")
