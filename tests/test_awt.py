"""AWT: parity with the authors' code (tests/fixtures/peers/awt.npz), seeded views, batch independence, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from absclip.cli.main import main
from absclip.core import augment
from absclip.core.sampling import image_rng
from absclip.io.images import make_item
from absclip.methods import create_method
from absclip.methods.awt import AWTConfig, awt_scores, awt_texts, awt_weights, sinkhorn
from absclip.methods.batch import BatchContext

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA

FIXTURE = Path(__file__).parent / "fixtures" / "peers" / "awt.npz"
PHOTOS = [str(p) for p in sorted((DATA / "photos").iterdir()) if p.stem not in ("hubble_deep_field", "quokka")][:8]
TOL = 1e-5


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(FIXTURE))


def test_fixture_records_the_authors_commit(fx):
    assert str(fx["commit"]) == "b2b49a8fd932bd322cd2515e7bad87bdd132be65"


def test_defaults_are_the_authors(fx):
    d = json.loads(str(fx["defaults_json"]))
    cfg = AWTConfig()
    assert (cfg.image_temperature, cfg.text_temperature) == (d["image_temperature"], d["text_temperature"])
    assert d["get_entropy_weight_defaults"] == [cfg.image_temperature, cfg.text_temperature]
    assert (cfg.epsilon, cfg.sinkhorn_iterations, cfg.sinkhorn_threshold) == \
        (d["epsilon"], d["sinkhorn_iterations"], d["sinkhorn_threshold"])
    assert (cfg.views, cfg.max_descriptions) == (d["views"], d["max_descriptions"]) == (50, 50)
    assert cfg.template.replace("{c}", "{}") == d["template_imagenet"]
    assert list(cfg.crop_scale) == d["crop_scale"] and list(cfg.crop_ratio) == pytest.approx(d["crop_ratio"])
    assert cfg.flip_p == d["flip_probability"] and d["crop_interpolation"] == "bilinear"
    assert create_method("awt").image_views() == 51  # the full image and 50 views


def test_prompts_are_the_authors(fx):
    classes = [str(c) for c in fx["classes"]]
    descs = [[str(x) for x in row] for row in fx["descriptions"]]
    n = descs[0].__len__()
    flat = [t for g in awt_texts(classes, AWTConfig().template, descs, n) for t in g]
    assert flat == [str(p) for p in fx["prompts"]]
    assert awt_texts(["x"], "a photo of a {c}", None, 50) == [["a photo of a x."]]


@pytest.mark.parametrize("image", [0, 1, 2])
def test_weights_transport_and_scores_match_the_authors(fx, image):
    views, text, scale = torch.from_numpy(fx["views"][image]), torch.from_numpy(fx["text"]), float(fx["logit_scale"])
    mask = torch.ones(text.shape[:2], dtype=torch.bool)
    cfg = AWTConfig()
    cos = torch.einsum("vd,cnd->cvn", views, text)
    iw, tw = awt_weights(cos.permute(1, 0, 2) * scale, mask, cfg.image_temperature, cfg.text_temperature)
    assert (iw - torch.from_numpy(fx["image_weights"][image])).abs().max() <= TOL
    assert (tw - torch.from_numpy(fx["text_weights"][image])).abs().max() <= TOL
    plan = sinkhorn(torch.exp(-(1 - cos) / cfg.epsilon), iw, tw, cfg.sinkhorn_iterations, cfg.sinkhorn_threshold)
    assert (plan - torch.from_numpy(fx["plan"][image])).abs().max() <= TOL
    got = awt_scores(views, text, mask, scale, cfg)
    # theirs are logit_scale * sum(T * cos); ours sum(T * cos) (the same probabilities)
    assert (got - torch.from_numpy(fx["scores"][image]) / scale).abs().max() <= TOL
    assert float(plan.sum()) == pytest.approx(len(text), abs=1e-3)  # one unit of mass per class


def test_padded_descriptions_change_nothing(fx):
    views, text, scale = torch.from_numpy(fx["views"][0]), torch.from_numpy(fx["text"]), float(fx["logit_scale"])
    mask = torch.ones(text.shape[:2], dtype=torch.bool)
    padded = torch.cat([text, torch.zeros(text.shape[0], 2, text.shape[2])], 1)
    pmask = torch.cat([mask, torch.zeros(text.shape[0], 2, dtype=torch.bool)], 1)
    cfg = AWTConfig()
    assert (awt_scores(views, padded, pmask, scale, cfg) - awt_scores(views, text, mask, scale, cfg)).abs().max() \
        <= 1e-6
    # a class with fewer descriptions scores as if it stood alone with them
    short = pmask.clone()
    short[0, 3:] = False
    alone = awt_scores(views, padded, short, scale, cfg)
    assert torch.isfinite(alone).all() and not torch.equal(alone, awt_scores(views, padded, pmask, scale, cfg))


def test_view_pixels_match_the_authors_augmenter(fx):
    from PIL import Image
    from torchvision import transforms as T

    norm = T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    pre = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(), norm])
    ctx = BatchContext([], SimpleNamespace(preprocess=pre, facts=SimpleNamespace(image_size=(224, 224))))
    item = SimpleNamespace(image=Image.fromarray(fx["aug_image"]))
    flips = fx["aug_flips"].tolist()
    assert True in flips and False in flips
    got = torch.stack(ctx.augmented_pixels([(item, tuple(b), f) for b, f in zip(fx["aug_boxes"].tolist(), flips)]))
    theirs = torch.stack([norm(T.ToTensor()(Image.fromarray(p))) for p in fx["aug_pixels"]])
    assert got.shape == theirs.shape and (got - theirs).abs().max() <= 1e-6


@pytest.mark.parametrize("size", ["500x375", "400x40"])
def test_crop_distribution_is_torchvisions(fx, size):
    """Their RandomResizedCrop draws (torch generator) and ours (per-image numpy generator) agree in law."""
    w, h = (int(x) for x in size.split("x"))
    theirs = fx[f"rrc_{size}"].astype(np.float64)
    ours = np.array(augment.random_resized_crop_boxes(image_rng(0, "k", "awt"), w, h, len(theirs)), dtype=np.float64)
    assert (ours[:, 2] <= w).all() and (ours[:, 3] <= h).all() and (ours[:, :2] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= w).all() and (ours[:, 1] + ours[:, 3] <= h).all()

    def stats(b):
        return np.stack([b[:, 2] * b[:, 3] / (w * h), np.log(b[:, 2] / b[:, 3]), (b[:, 0] + b[:, 2] / 2) / w,
                         (b[:, 1] + b[:, 3] / 2) / h], 1)

    a, b = stats(ours), stats(theirs)
    se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b)) + 1e-12
    assert (np.abs(a.mean(0) - b.mean(0)) <= 5 * se).all(), (a.mean(0), b.mean(0), se)
    if size == "400x40":  # the thin image mostly falls back to torchvision's ratio-clamped centre crop
        fb = ((w - round(h * 4 / 3)) // 2, 0, round(h * 4 / 3), h)
        rate_t = np.mean([tuple(x) == fb for x in theirs.astype(int).tolist()])
        rate_o = np.mean([tuple(x) == fb for x in ours.astype(int).tolist()])
        assert rate_t > 0.5 and abs(rate_t - rate_o) < 0.05


def test_flips_are_bernoulli():
    f = augment.flips(image_rng(0, "k", "flip"), 4000)
    assert abs(np.mean(f) - 0.5) < 0.04 and augment.flips(image_rng(0, "k", "flip"), 5, p=0.0) == [False] * 5


def test_views_come_from_the_image_seeded_sampler():
    meth = create_method("awt", views=7)
    item = make_item(PHOTOS[0])
    boxes, flips = meth.view_params(item, 3)
    rng = image_rng(3, item.key, "augment")  # BatchContext.augmented's draws (shared with ZERO and MTA)
    assert boxes == augment.random_resized_crop_boxes(rng, *item.size, 7) and flips == augment.flips(rng, 7)
    assert meth.view_params(item, 3) == (boxes, flips)
    assert meth.view_params(item, 4) != (boxes, flips)
    assert meth.view_params(make_item(PHOTOS[1]), 3) != (boxes, flips)


@pytest.fixture(scope="module")
def awt_logits(backbone):
    from absclip import Classifier
    from absclip.methods.awt import AWTConfig

    out = {}
    for bs in (1, 8):
        clf = Classifier(backbone, settings=[AWTConfig(views=3)], batch_size=bs, view_batch=3, use_cache=False,
                         crop_workers=2 if bs == 8 else 0)
        clf.set_classes(["cat", "coffee", "rocket", "astronaut"],
                        {"cat": ["it purrs.", "whiskers."], "coffee": ["a cup."], "rocket": ["flames."],
                         "astronaut": ["a suit.", "a helmet.", "space."]})
        out[bs] = clf.logits(PHOTOS, method="awt")
    return out


def test_batch_size_1_and_8_are_identical(awt_logits):
    assert awt_logits[1].shape == (len(PHOTOS), 4)
    assert (awt_logits[1] - awt_logits[8]).abs().max() <= 1e-6


def test_views_are_encoded_and_counted(backbone):
    meth = create_method("awt", views=5)
    items = [make_item(p) for p in PHOTOS[:2]]
    ctx = BatchContext(items, backbone, view_batch=4)
    embs = meth.view_embeddings(ctx, 0)
    assert [tuple(e.shape) for e in embs] == [(6, backbone.facts.embed_dim)] * 2
    assert ctx.images_encoded == 2 * meth.image_views() == 12
    assert torch.allclose(embs[0][0], ctx.full[0].cpu().float())
    boxes, flips = meth.view_params(items[1], 0)  # view 3 of image 1 is that crop and flip, encoded
    px = ctx.augmented_pixels([(items[1], boxes[2], flips[2])])
    assert (backbone.encode_images(torch.stack(px))[0].cpu() - embs[1][3]).abs().max() <= 1e-5
    assert torch.allclose(embs[0].norm(dim=-1), torch.ones(6), atol=1e-4)


def test_eval_clip_and_awt_on_the_golden_tiny_model(tmp_path, capsys):
    sample = DATA / "imagenet-sample"
    out = tmp_path / "r.json"
    args = ["eval", "--data", str(sample), "--classes-file", str(DATA / "imagenet-meta" / "imagenet_classes.tsv"),
            "--descriptions", str(DATA / "descriptions/susx_cupl/gpt3_prompts/CuPL_prompts_imagenet.json"),
            "--methods", "clip,awt", "--awt-views", "3", "--max-descriptions", "2", "--limit", "4",
            "--output", str(out), "--json", "--no-progress", "--model", str(CLIP_CFG), "--pretrained",
            str(CLIP_WEIGHTS)]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    by = {r["absclip"]["method"]: r for r in res}
    assert set(by) == {"clip", "awt"}
    assert by["awt"]["absclip"]["method_config"]["views"] == 3
    recs = [json.loads(x) for x in (tmp_path / "r.predictions.jsonl").read_text().splitlines()]
    assert sum(r["method"] == "awt" for r in recs) == 4
    assert 0 <= by["awt"]["metrics"]["acc1"] <= 1


@pytest.mark.parametrize(("w", "h", "scale", "ratio"), [(100, 100, (1.0, 1.0), (2.0, 2.0)), (100, 100, (1.0, 1.0),
                         (0.5, 0.5)), (120, 90, (1.0, 1.0), (1.0, 1.0)), (400, 40, (1.0, 1.0), (0.75, 4 / 3))])
def test_centre_crop_fallback_is_torchvisions(w, h, scale, ratio):
    """When no try fits, torchvision's fallback is deterministic: ours gives the very same box."""
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    i, j, hh, ww = RandomResizedCrop.get_params(Image.new("RGB", (w, h)), list(scale), list(ratio))
    assert augment.random_resized_crop_boxes(image_rng(0, "k", "awt"), w, h, 3, scale, ratio) == [(j, i, ww, hh)] * 3
