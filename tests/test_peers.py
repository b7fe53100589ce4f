"""The training-free test-time peers ZERO, MTA and TDA: parity with their authors' code, augmentation,
independence of batching, the online method's stream order, and end-to-end runs on the golden tiny models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from absclip.cli.main import main
from absclip.core import augment, scoring
from absclip.core.meanshift import mta_mode
from absclip.core.sampling import image_rng
from absclip.core.voting import zero_votes
from absclip.errors import AbsclipError
from absclip.methods.mta import MTASettings
from absclip.methods.tda import TDAMethod
from absclip.methods.zero import ZeroSettings

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA

FIXTURES = Path(__file__).parent / "fixtures" / "peers"
MODEL = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS)]
FEW_VIEWS = ["--zero-views", "5", "--mta-views", "5"]  # int(5 * 0.3) = 1 kept view / 1 bandwidth neighbour
CLASSES = ["tabby cat", "espresso", "missile", "tench", "goldfish"]
IMAGES = [("photos/chelsea.png", "tabby cat"), ("photos/coffee.png", "espresso"), ("photos/rocket.jpg", "missile"),
          ("imagenet-sample/n01440764_tench.JPEG", "tench"), ("imagenet-sample/n01443537_goldfish.JPEG", "goldfish"),
          ("photos/grace_hopper.jpg", "missile")]


def fixture(name: str) -> dict[str, np.ndarray]:
    data = dict(np.load(FIXTURES / f"{name}.npz"))
    assert len(str(data["commit"])) == 40  # made by scripts/fixtures/make_peer_fixtures.py at a recorded commit
    return data


def f64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a)).double()


# -- parity with the authors' code (tests/fixtures/peers, made by running their functions) --------------------

def test_zero_votes_match_the_authors_code():
    d = fixture("zero")
    views, text = f64(d["views"]), f64(d["text"])
    ours = torch.stack([zero_votes(v @ text.T, float(d["logit_scale"]), float(d["keep"])) for v in views])
    ref = f64(d["votes"])
    assert torch.allclose(ours, ref, rtol=0, atol=1e-5)
    kept = int(views.shape[1] * float(d["keep"]))
    assert (ref.sum(1) == kept + 1).sum() >= 3  # the fixture exercises ZERO's tie break ...
    assert not d["fallback"].any()  # ... but never its last resort, where absclip differs (docs/methods.md)


def test_mta_mode_matches_the_authors_code():
    d = fixture("mta")
    views, text, scale = f64(d["views"]), f64(d["text"]), float(d["logit_scale"])
    s = MTASettings()
    assert (s.lambda_y, s.lambda_q) == (float(d["lambda_y"]), float(d["lambda_q"]))
    modes = [mta_mode(v, v @ text.T * scale, lambda_y=s.lambda_y, lambda_q=s.lambda_q, iterations=s.iterations,
                      inner_iterations=s.iterations, tolerance=s.tolerance, neighbours=s.neighbours,
                      temperature=s.temperature) for v in views]
    ours = torch.stack([m.mode for m in modes]) @ text.T * scale
    assert torch.allclose(ours, f64(d["logits"]), rtol=0, atol=1e-5)
    assert all(abs(float(m.inlierness.sum()) - 1) < 1e-9 for m in modes)
    original = views[:, 0] @ text.T * scale
    assert (ours - original).abs().max() > 1  # mode seeking moved away from the original image's embedding


def test_tda_caches_match_the_authors_code():
    d = fixture("tda")
    templates = F.normalize(f64(d["template_embeddings"]), dim=-1)  # the text encoder's unit embeddings
    features = F.normalize(f64(d["features"]), dim=-1)
    method = TDAMethod()
    method.classifier = scoring.masked_mean_classifier(templates, torch.ones(templates.shape[:2], dtype=torch.bool))
    method.reset()
    ours = torch.stack([method.step(f) for f in features])
    assert torch.allclose(ours, f64(d["logits"]), rtol=0, atol=1e-5)
    assert method.state.images == len(features)
    assert len(method.state.positive) > 0 and len(method.state.negative) > 0  # both caches were used ...
    clip = 100 * features @ method.classifier.T
    assert (ours.argmax(1) != clip.argmax(1)).sum() >= 3  # ... and changed predictions
    method.reset()
    assert len(method.state.positive) == len(method.state.negative) == 0


# -- augmentation ---------------------------------------------------------------------------------------------

class TorchDraws:
    """A generator with numpy's ``uniform``/``integers`` that draws from torch's global generator, as torchvision."""

    def uniform(self, lo: float, hi: float) -> float:
        return torch.empty(1).uniform_(lo, hi).item()

    def integers(self, lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, size=(1,)).item())


@pytest.mark.parametrize("size", [(500, 375), (224, 224), (1000, 60), (37, 400), (1, 1), (3, 500)])
def test_random_resized_crop_is_torchvisions_algorithm(size):
    """Fed torch's own draws, the crops are exactly torchvision's ``get_params`` (tries and fallback included)."""
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    img = Image.new("RGB", size)
    torch.manual_seed(3)
    ref = [RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(200)]
    torch.manual_seed(3)
    ours = augment.random_resized_crop_boxes(TorchDraws(), *size, 200)
    assert [(top, left, h, w) for left, top, w, h in ours] == ref


def test_augmentation_distribution():
    """numpy draws give torchvision's distribution of crop areas, aspect ratios and positions."""
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    rng = np.random.default_rng(0)
    w, h = 500, 375
    boxes = augment.random_resized_crop_boxes(rng, w, h, 4000)
    assert all(0 <= x and 0 <= y and bw >= 1 and bh >= 1 and x + bw <= w and y + bh <= h for x, y, bw, bh in boxes)
    torch.manual_seed(0)
    ref = [RandomResizedCrop.get_params(Image.new("RGB", (w, h)), [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]

    def stats(b):  # area fraction, log aspect ratio, horizontal centre: quartiles
        b = np.array(b, dtype=float)
        return np.quantile(np.stack([b[:, 2] * b[:, 3] / (w * h), np.log(b[:, 2] / b[:, 3]),
                                     (b[:, 0] + b[:, 2] / 2) / w]), [0.25, 0.5, 0.75], axis=1)

    ours, theirs = stats(boxes), stats([(j, i, bw, bh) for i, j, bh, bw in ref])
    assert np.abs(ours - theirs).max() < 0.03, (ours, theirs)
    flipped = augment.flips(rng, 4000)
    assert abs(np.mean(flipped) - 0.5) < 0.03 and augment.flips(rng, 5, p=0.0) == [False] * 5
    # tall images fall back to the centred 3:4 box when no try fits
    assert augment.random_resized_crop_boxes(np.random.default_rng(1), 3, 500, 1, scale=(1.0, 1.0)) == [(0, 248, 3, 4)]


def test_augmented_pixels_are_torchvisions_transform(backbone, golden_items):
    """Given the parameters, a view's pixels are torchvision's resized crop + flip + the model's normalisation."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    from absclip.methods.batch import BatchContext, split_preprocess

    item = golden_items[0]
    crops = [(10, 20, 200, 150), (0, 0, *item.size), (item.size[0] - 30, 5, 30, 60)]
    flips = [False, True, True]
    ours = BatchContext([item], backbone).augmented_pixels([(item, c, f) for c, f in zip(crops, flips)])
    _, mean, std = split_preprocess(backbone.preprocess)
    size = list(backbone.facts.image_size)
    for (left, top, w, h), flip, px in zip(crops, flips, ours):
        im = TF.resized_crop(item.image, top, left, h, w, size, InterpolationMode.BILINEAR, antialias=True)
        ref = (TF.to_tensor(TF.hflip(im) if flip else im) - mean) / std
        assert torch.allclose(px, ref, atol=1e-6)


def test_augmented_views_are_per_image_and_share_the_full_image(backbone, golden_items):
    from absclip.methods.batch import BatchContext

    together = BatchContext(list(golden_items), backbone, view_batch=5).augmented(7, 3)
    for item, views in zip(golden_items, together):
        alone = BatchContext([item], backbone, view_batch=2).augmented(7, 3)[0]
        assert views.shape == (4, backbone.facts.embed_dim) and torch.allclose(views, alone, atol=1e-5)
        assert torch.allclose(views[0], BatchContext([item], backbone).full[0].cpu(), atol=1e-6)
    rng = image_rng(7, golden_items[0].key, "augment")
    crops = augment.random_resized_crop_boxes(rng, *golden_items[0].size, 3)
    assert len(set(crops)) == 3  # three different crops of the first image


# -- batching, stream order, engines --------------------------------------------------------------------------

def samples():
    from absclip.io.sources import Sample

    return [Sample(str(DATA / p), CLASSES.index(c)) for p, c in IMAGES]


def records(path: Path) -> dict[tuple[str, str], list[float]]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if "method" in r:
            out[(r["path"], r["method"])] = r["topk_logits"]
    return out


def test_batch_size_and_listing_order_do_not_change_results(tmp_path):
    from absclip import api
    from absclip.engines.local import evaluate

    got = []
    for batch, listing in ((1, samples()), (8, samples()[::-1])):
        clf = api.load(str(CLIP_CFG), str(CLIP_WEIGHTS), batch_size=batch,
                       settings=[ZeroSettings(views=4, keep=0.5), MTASettings(views=4, neighbours=0.4)])
        clf.set_classes(CLASSES)
        doc = evaluate(clf, listing, ["zero", "mta", "tda"], output=tmp_path / f"r{batch}.json", progress=False)
        assert doc["config"]["stream"]["methods"] == ["tda"] and "sha256" in doc["config"]["stream"]["order"]
        got.append(records(tmp_path / f"r{batch}.predictions.jsonl"))
    assert got[0].keys() == got[1].keys() and len(got[0]) == 3 * len(IMAGES)
    for k in got[0]:
        assert np.allclose(got[0][k], got[1][k], atol=1e-5), k
    # the records are written in the one stream order, whatever the listing order
    order = [json.loads(x)["path"] for x in (tmp_path / "r8.predictions.jsonl").read_text().splitlines()
             if json.loads(x).get("method") == "tda"]
    from absclip.engines.local import stream_order

    assert order == [s.path for s in stream_order(samples(), 0)]


def test_tda_depends_on_the_stream_and_refuses_a_partial_resume(tmp_path):
    from absclip import api
    from absclip.engines.local import evaluate

    clf = api.load(str(CLIP_CFG), str(CLIP_WEIGHTS))
    clf.set_classes(CLASSES)
    items = [str(DATA / p) for p, _ in IMAGES]
    alone = clf.logits(items[-1:], "tda")  # a fresh stream: only the image itself in the caches
    clf.method("tda").reset()
    streamed = clf.logits(items, "tda")[-1:]  # after five other images
    assert not torch.allclose(alone, streamed)
    clf.method("tda").reset()
    assert torch.allclose(clf.logits(items[-1:], "tda"), alone)

    out = tmp_path / "r.json"
    evaluate(clf, samples(), ["tda"], output=out, progress=False)
    pred = tmp_path / "r.predictions.jsonl"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:3]) + "\n")  # as if interrupted after two images
    with pytest.raises(AbsclipError, match="cannot be resumed"):
        evaluate(clf, samples(), ["tda"], output=out, progress=False)
    evaluate(clf, samples(), ["tda"], output=out, progress=False, overwrite=True)
    assert records(pred) == records(tmp_path / "r.predictions.jsonl")


def test_ray_engine_refuses_tda():
    from absclip.engines.ray.driver import run_pipeline

    with pytest.raises(AbsclipError, match="Ray engine processes in no fixed order"):
        run_pipeline(None, "unused", ["clip", "tda"], output="unused", labelled=True, top=5)


def test_settings_are_checked():
    with pytest.raises(AbsclipError, match="keep"):
        ZeroSettings(views=3, keep=0.3)
    with pytest.raises(AbsclipError, match="neighbours"):
        MTASettings(views=3)
    with pytest.raises(AbsclipError, match="crop scale"):
        ZeroSettings(crop_scale=(0.5, 0.2))


# -- end to end ------------------------------------------------------------------------------------------------

def test_eval_cli_with_the_peers(tmp_path, capsys):
    listing = tmp_path / "listing.csv"
    listing.write_text("path,label\n" + "".join(f"{DATA / p},{c}\n" for p, c in IMAGES))
    out = tmp_path / "results.json"
    assert main(["eval", "--data", str(listing), "--classes", ",".join(CLASSES), "--methods", "clip,zero,mta,tda",
                 "--output", str(out), "--json", "--no-progress", *MODEL, *FEW_VIEWS]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["absclip"]["method"] for r in doc["results"]] == ["clip", "zero", "mta", "tda"]
    assert all(0 <= r["metrics"]["acc1"] <= 1 for r in doc["results"])
    saved = json.loads(out.read_text())
    assert saved["config"]["methods"]["zero"]["config"]["views"] == 5
    assert saved["config"]["methods"]["tda"]["config"]["positive_alpha"] == 2.0
    assert saved["config"]["stream"]["methods"] == ["tda"]
    recs = [json.loads(x) for x in Path(saved["predictions"]).read_text().splitlines()]
    recs = [r for r in recs if "method" in r]
    assert {r["method"] for r in recs} == {"clip", "zero", "mta", "tda"} and len(recs) == 4 * len(IMAGES)
    for r in recs:
        assert len(r["topk"]) == 5 and math.isclose(sum(r["topk_scores"]), 1.0, abs_tol=1e-4)
        if r["method"] == "zero":  # one kept view votes: its class gets all the score
            assert r["topk_logits"][0] == 1.0 and r["score"] == 1.0
