"""``absclip bench --method a,b``: any registered method, with images/s and image-encoder FLOPs on the same images."""

from __future__ import annotations

import json
import shutil

import pytest

from absclip.cli.main import main
from absclip.diagnostics.bench import SyntheticTextEncoder

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DINO, GOLDEN_IMAGES

TINY = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--classes", "10", "--descriptions-per-class",
        "3", "--text-sample", "4", "--batch-size", "2", "--workers", "0", "--json"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    for p in GOLDEN_IMAGES:
        shutil.copy(p, d / p.name)
    return str(d)


def bench(capsys, *args):
    assert main(["bench", *args]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1]), "\n".join(out[:-1])


def test_bench_each_method_on_the_same_images(images, capsys):
    rep, text = bench(capsys, "--images", images, *TINY, "--method", "awt,clip,abs", "--attention-model", str(DINO),
                      "--crops", "4", "--feature-crops", "6", "--awt-views", "5", "--no-warmup")
    runs = {r["method"]: r for r in rep["runs"]}
    assert list(runs) == ["awt", "clip", "abs"] and rep["images"] == 3 and rep["method"] == "awt"
    for name in ("awt@fp32", "clip@fp32", "abs@fp32", "naive@fp32"):
        assert name in text
    for r in runs.values():
        assert r["images_per_s"] > 0 and r["seconds_per_image"] > 0 and r["image_encoder_gflop_per_image"] > 0
    # FLOPs from the views each method encodes: the full image and AWT's augmented views (--awt-views)
    assert (runs["awt"]["image_views_per_image"], runs["clip"]["image_views_per_image"]) == (6, 1)
    assert runs["awt"]["images_encoded_per_image"] == 6 and runs["clip"]["images_encoded_per_image"] == 1
    clip_gflop = runs["clip"]["image_encoder_gflop_per_image"]
    assert runs["awt"]["image_encoder_gflop_per_image"] == pytest.approx(6 * clip_gflop)
    assert runs["abs"]["image_views_per_image"] == 5  # 4 pixel crops and the full image (+ feature crops)
    assert runs["awt"]["stages_s_per_image"]["scoring"] > 0
    # the naive pipeline is ABS's reference: its comparison is reported for abs only
    assert "max_abs_logit_diff" in runs["abs"] and "max_abs_logit_diff" not in runs["awt"]


def test_bench_without_abs_runs_no_naive_pipeline_and_no_attention(images, capsys, tmp_path):
    desc = tmp_path / "d.json"  # a real description file: the methods' own text side, encoded by the model
    desc.write_text(json.dumps({"cat": ["it purrs."], "coffee": ["a cup.", "hot."], "rocket": ["flames."]}))
    methods = ["clip", "awt", "wca", "zero", "mta", "tda"]
    rep, text = bench(capsys, "--images", images, *TINY, "--method", ",".join(methods), "--no-warmup", "--awt-views",
                      "2", "--wca-crops", "3", "--zero-views", "4", "--mta-views", "5", "--descriptions", str(desc))
    assert rep["text"]["classes"] == 3
    assert [r["method"] for r in rep["runs"]] == methods
    views = {"clip": 1, "awt": 3, "wca": 4, "zero": 4, "mta": 5, "tda": 1}
    for r in rep["runs"]:  # what each method declares is what it encoded
        assert r["images_encoded_per_image"] == r["image_views_per_image"] == views[r["method"]]
    assert rep["naive_images_per_s"] is None and "naive@fp32" not in text
    assert rep["attention_model"] == "None"
    assert main(["bench", "--images", images, *TINY, "--method", "awt,nope"]) == 2
    assert "Unknown method 'nope'" in capsys.readouterr().err


def test_synthetic_text_encoder_is_seeded_per_text(backbone):
    enc = SyntheticTextEncoder(backbone, seed=0)
    a = enc.encode(["x", "y", "x"])
    assert a.shape == (3, backbone.facts.embed_dim) and bool((a[0] == a[2]).all()) and not bool((a[0] == a[1]).all())
    assert bool((SyntheticTextEncoder(backbone, seed=0).encode(["y"])[0] == a[1]).all())
    assert abs(float(a.norm(dim=-1).mean()) - 1) < 1e-5


def test_a_new_method_is_measured_by_the_views_it_encodes(images, capsys):
    """A method registered later (as zero/mta are) needs no bench code; undeclared views are still counted."""
    import torch

    from absclip.methods.base import Method, register_method, unregister_method

    @register_method("bench-toy")
    class Toy(Method):
        """Toy: the full image and two copies of it."""

        def prepare(self, inputs, encoder):
            self.n = len(inputs.classes)

        def logits(self, ctx, seed):
            ctx.encode_crops(list(ctx.pixels) * 2)
            return torch.zeros(len(ctx.items), self.n) + ctx.full.sum(-1, keepdim=True).cpu()

    try:
        rep, _ = bench(capsys, "--images", images, *TINY, "--method", "bench-toy,clip", "--no-warmup")
    finally:
        unregister_method("bench-toy")
    toy, clip = rep["runs"]
    assert toy["images_encoded_per_image"] == 3 and toy["image_views_per_image"] == 3
    assert toy["image_encoder_gflop_per_image"] == pytest.approx(3 * clip["image_encoder_gflop_per_image"])
    assert any("bench-toy declares 1 image views per image and encoded 3" in n for n in rep["notes"])
