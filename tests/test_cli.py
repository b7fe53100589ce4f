"""End-to-end CLI runs on real photos with the golden tiny models given as local files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from absclip.cli.main import main
from absclip.engines.results import compute_metrics

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

MODEL = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", str(DINO)]
SMALL = ["--crops", "6", "--feature-crops", "6"]
PHOTOS = DATA / "photos"
SAMPLE = DATA / "imagenet-sample"
IMAGENET_CLASSES = DATA / "imagenet-meta" / "imagenet_classes.tsv"
SUSX = DATA / "descriptions" / "susx_cupl" / "gpt3_prompts" / "CuPL_prompts_imagenet.json"


def run_json(capsys, args):
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("method", ["clip", "clip-e", "cupl", "dclip", "waffle", "wca", "abs"])
def test_classify_every_method(capsys, method):
    images = [str(PHOTOS / "chelsea.png"), str(PHOTOS / "grace_hopper.jpg"), str(SAMPLE / "n01440764_tench.JPEG")]
    # five ImageNet classes, with their SuS-X descriptions and DCLIP descriptors
    args = ["classify", *images, "--classes", "tabby cat,espresso,missile,scuba diver,tench", "--descriptions",
            str(SUSX), "--descriptors", str(DATA / "descriptions/dclip/descriptors/descriptors_imagenet.json"),
            "--method", method, "--top", "3", "--json", *MODEL, *SMALL]
    out = run_json(capsys, args)
    assert [o["image"] for o in out] == images
    for o in out:
        assert o["method"] == method and len(o["predictions"]) == 3
        scores = [p["score"] for p in o["predictions"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert {p["label"] for p in o["predictions"]} <= {"tabby cat", "espresso", "missile", "scuba diver", "tench"}


def test_classify_text_output_and_template_fallback(capsys, caplog):
    assert main(["classify", str(PHOTOS / "coffee.png"), "--classes", "cat,coffee,rocket", *MODEL, *SMALL]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(abs)") and len(out) == 4
    assert "No descriptions file given" in caplog.text


def test_eval_imagenet_sample_1000_classes(tmp_path, capsys):
    """>=100 ImageNet photos, 1000 classes, SuS-X CuPL descriptions: results agree with the JSONL."""
    out = tmp_path / "results.json"
    doc = run_json(capsys, ["eval", "--data", str(SAMPLE), "--classes-file", str(IMAGENET_CLASSES),
                            "--descriptions", str(SUSX), "--methods", "clip,cupl,abs", "--limit", "100",
                            "--output", str(out), "--json", "--no-progress", *MODEL])
    saved = json.loads(out.read_text())
    assert saved["run"] == doc["run"] and saved["images"] == 100 and saved["skipped"] == []
    assert saved["task"] == "zeroshot_classification" and saved["seed"] == 0
    assert saved["config"]["methods"]["abs"]["config"]["pixel_crops"] == 50
    preds = [json.loads(line) for line in open(saved["predictions"])]
    assert len(preds) == 300
    labels = {r["file"]: int(r["imagenet_index"]) for r in csv.DictReader(open(SAMPLE / "labels.csv"))}
    for res in saved["results"]:
        m = res["absclip"]["method"]
        rows = [p for p in preds if p["method"] == m]
        assert len(rows) == 100 and res["absclip"]["images"] == 100
        for p in rows:
            assert p["label"] == labels[p["path"].rsplit("/", 1)[-1]] and p["pred"] == p["topk"][0]
        metrics = compute_metrics([p["label"] for p in rows], [p["topk"] for p in rows], 1000)
        assert res["metrics"] == metrics
        assert set(res["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert all(0 <= v <= 1 for v in res["metrics"].values())


def test_eval_resume_and_refuse_mismatch(tmp_path, capsys):
    base = ["eval", "--data", str(SAMPLE), "--classes-file", str(IMAGENET_CLASSES), "--descriptions", str(SUSX),
            "--methods", "clip,abs", "--output", str(tmp_path / "r.json"), "--json", "--no-progress", *MODEL, *SMALL]
    full = run_json(capsys, [*base, "--limit", "6"])
    pred = tmp_path / "r.predictions.jsonl"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # as if killed mid-line
    again = run_json(capsys, [*base, "--limit", "6"])
    assert again["results"] == [{**r, "absclip": {**r["absclip"], "seconds_this_run": a["absclip"][
        "seconds_this_run"]}} for r, a in zip(full["results"], again["results"])]
    def same(text):  # attempt and seconds describe the invocation that wrote a record, not the prediction
        return sorted(json.dumps({k: v for k, v in json.loads(x).items() if k not in ("attempt", "seconds")})
                      for x in text)

    assert same(pred.read_text().splitlines()) == same(lines)
    assert main([*base, "--limit", "6", "--seed", "5"]) == 2
    assert "different settings" in capsys.readouterr().err


def test_eval_per_method_files_in_clip_benchmark_shape(tmp_path, capsys):
    main(["eval", "--data", str(SAMPLE), "--classes-file", str(IMAGENET_CLASSES), "--descriptions", str(SUSX),
          "--methods", "clip,cupl", "--limit", "4", "--output", str(tmp_path / "res_{method}.json"),
          "--no-progress", *MODEL])
    for m in ("clip", "cupl"):
        r = json.loads((tmp_path / f"res_{m}.json").read_text())
        assert {"dataset", "model", "pretrained", "task", "language", "metrics"} <= set(r)
        assert r["absclip"]["method"] == m


def test_metrics_definitions():
    m = compute_metrics([0, 0, 1, 2], [[0, 1], [1, 0], [1, 0], [0, 1]], num_classes=3)
    assert m["acc1"] == 0.5 and m["acc5"] is None
    assert m["mean_per_class_recall"] == pytest.approx((0.5 + 1 + 0) / 3)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "ViT-B-17"], "Unknown model 'ViT-B-17'"),
        (["--model", "ViT-B-16", "--pretrained", "no-such-tag"], "Unknown pretrained tag 'no-such-tag'"),
        (["--model", "ViT-B-16", "--pretrained", "/nonexistent/ckpt.pt"], "does not exist"),
        # (clip attention: offline, an uncached DINO would be reported first, before any model is loaded)
        (["--model", "ViT-B-32", "--pretrained", str(CLIP_WEIGHTS), "--attention-model", "clip"],
         "does not fit model ViT-B-32"),
        (["--model", "ViT-B-16", "--pretrained", "openai"], "pass the local file"),
        (["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", "facebook/dino-vitb16"],
         "--attention-model /path/to/dir"),
    ],
)
def test_model_errors_are_one_sentence(args, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "absclip", "classify", str(PHOTOS / "coffee.png"), "--classes", "a,b", *args],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("absclip: error:")]
    assert len(err) == 1 and needle in err[0], proc.stderr


def test_help_teaches():
    proc = subprocess.run([sys.executable, "-m", "absclip", "eval", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for flag in ("--data", "--methods", "--output", "--crops", "--feature-crops", "--top-k", "--attention-model",
                 "example:"):
        assert flag in proc.stdout


def test_classify_with_a_named_description_set(capsys, monkeypatch):
    monkeypatch.delenv("ABSCLIP_DESCRIPTIONS_DIR", raising=False)
    out = run_json(capsys, ["classify", str(SAMPLE / "n01440764_tench.JPEG"), "--classes", "tench,goldfish,missile",
                            "--descriptions", "susx:imagenet", "--descriptions-dir", str(DATA / "descriptions"),
                            "--method", "cupl", "--json", *MODEL])
    assert {p["label"] for p in out[0]["predictions"]} == {"tench", "goldfish", "missile"}


def test_library_errors_name_parameters_and_the_cli_shows_flags(capsys):
    """Library messages name parameters (`max_pixels`); the CLI prints its own flags instead."""
    from absclip.errors import BadImageError
    from absclip.io.images import make_item

    with pytest.raises(BadImageError) as e:
        make_item(PHOTOS / "chelsea.png", max_pixels=10)
    assert "`max_pixels`" in str(e.value) and "--" not in str(e.value)
    assert main(["classify", str(PHOTOS / "chelsea.png"), "--classes", "a,b", "--max-pixels", "10", *MODEL]) == 2
    err = capsys.readouterr().err
    assert "--max-pixels" in err and "`" not in err and len(err.strip().splitlines()) == 1


def test_max_pixels_zero_means_no_limit(capsys):
    from absclip.cli.main import build_parser

    args = build_parser().parse_args(["classify", "x.png", "--classes", "a,b", "--max-pixels", "0"])
    assert args.max_pixels is None
    default = build_parser().parse_args(["classify", "x.png", "--classes", "a,b"])
    from absclip.io.images import DEFAULT_MAX_PIXELS

    assert default.max_pixels == DEFAULT_MAX_PIXELS
