"""Other grid sizes: ViT-B/32-like (7x7) and ViT-L/14-like (16x16) towers, facts derived from the model."""

from __future__ import annotations

import json

import pytest
import torch

from absclip import ABSConfig, Classifier, load_clip
from absclip.io.images import make_item

from .conftest import DATA, GOLDEN

TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}


@pytest.mark.parametrize("patch, grid", [(32, 7), (14, 16)])
def test_grid_and_layer_come_from_the_model(tmp_path, dino, patch, grid):
    cfg = {"embed_dim": 64, "quick_gelu": True, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64,
                                                                  "patch_size": patch}, "text_cfg": TINY_TEXT}
    path = tmp_path / f"tiny-p{patch}.json"
    path.write_text(json.dumps(cfg))
    bb = load_clip(str(path), None)
    assert bb.facts.grid == (grid, grid) and bb.facts.num_blocks == 2
    clf = Classifier(bb, attention_model=dino, abs_config=ABSConfig(pixel_crops=6, feature_crops=6), use_cache=False)
    clf.set_classes(["cat", "coffee", "rocket"], descriptions=GOLDEN / "descriptions.json")
    items = [make_item(DATA / "photos" / "chelsea.png"), make_item(DATA / "photos" / "grace_hopper.jpg")]
    logits = clf.logits(items, "abs")
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    for v in clf.views(items, "abs"):
        assert v.embeddings.shape == (12, 64)
        assert all(0 <= r0 < r1 <= grid and 0 <= c0 < c1 <= grid for r0, r1, c0, c1 in v.windows)
        assert all(0 <= c < grid * grid for c in v.feat_centres)
        # DINO's 14x14 cells are mapped onto the model's own grid
        src = v.topk_idx.numpy()[v.draws.feat_pos]
        assert [c // grid for c in v.feat_centres] == [int(s) // 14 * grid // 14 for s in src]
    # the CLIP model's own attention works on its own grid too
    clf2 = Classifier(bb, attention_model="clip", abs_config=ABSConfig(pixel_crops=4, feature_crops=4),
                      use_cache=False).set_classes(["cat", "coffee"])
    assert clf2.attention.grid == (grid, grid)
    assert torch.isfinite(clf2.logits(items[:1], "abs")).all()
