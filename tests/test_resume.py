"""Long runs: kill `absclip eval` mid-run (SIGINT, SIGTERM, SIGKILL), resume, and get the same results."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

SAMPLE = DATA / "imagenet-sample"
ARGS = ["eval", "--data", str(SAMPLE), "--classes-file", str(DATA / "imagenet-meta" / "imagenet_classes.tsv"),
        "--methods", "clip,abs", "--limit", "10", "--batch-size", "2", "--no-progress",
        "--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", str(DINO),
        "--crops", "8", "--feature-crops", "8"]


def run(out, *extra):
    return subprocess.run([sys.executable, "-m", "absclip", *ARGS, "--output", str(out), *extra],
                          capture_output=True, text=True, timeout=600)


def predictions(doc):
    rows = [json.loads(line) for line in open(doc["predictions"])]
    return sorted((r["path"], r["method"], r["pred"], tuple(r["topk"])) for r in rows)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "results.json"
    proc = run(out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    return doc, predictions(doc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_kill_and_resume_gives_identical_results(tmp_path, reference, sig):
    ref_doc, ref_preds = reference
    out = tmp_path / "results.json"
    pred = tmp_path / "results.predictions.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "absclip", *ARGS, "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pred.exists() and len(pred.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    if sig != signal.SIGKILL:
        assert proc.returncode == 130 and "interrupted" in err
    assert not out.exists()  # results are written only at the end, atomically
    lines = pred.read_text().splitlines()
    done = [json.loads(x) for x in lines[:-1]]  # every complete line is valid JSON
    assert len(done) >= 4 and len(lines) < 20

    again = run(out)  # same command: resumes by default
    assert again.returncode == 0, again.stderr
    assert "Resuming" in again.stderr
    doc = json.loads(out.read_text())
    assert [r["metrics"] for r in doc["results"]] == [r["metrics"] for r in ref_doc["results"]]
    assert predictions(doc) == ref_preds
    assert len(pred.read_text().splitlines()) == 20  # each (image, method) exactly once


def test_changed_settings_are_refused(tmp_path, reference):
    out = tmp_path / "results.json"
    assert run(out).returncode == 0
    proc = run(out, "--crops", "9")
    assert proc.returncode == 2 and "different settings" in proc.stderr and "Traceback" not in proc.stderr
    assert "pixel_crops" in proc.stderr and "vs 9" in proc.stderr  # it says which setting differs
    assert run(out, "--crops", "9", "--overwrite").returncode == 0


# -- the prediction record, in process ------------------------------------------------------------

PHOTOS = DATA / "photos"
CLASSES = ["cat", "coffee", "rocket", "astronaut", "motorcycle", "quokka"]
FILES = ["chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png", "quokka.jpg"]


@pytest.fixture(scope="module")
def clf():
    from absclip import ABSConfig, Classifier

    c = Classifier.from_pretrained(str(CLIP_CFG), str(CLIP_WEIGHTS), attention_model=str(DINO),
                                   abs_config=ABSConfig(pixel_crops=4, feature_crops=4), use_cache=False,
                                   batch_size=2)
    return c.set_classes(CLASSES)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from absclip.io.sources import Sample

    bad = tmp_path_factory.mktemp("bad") / "broken.jpg"
    bad.write_text("not an image\n")
    return [Sample(str(PHOTOS / f), i) for i, f in enumerate(FILES)] + [Sample(str(bad), 0)]


def test_record_writer_resumes_and_refuses(tmp_path):
    from absclip.errors import AbsclipError
    from absclip.io.records import FIELDS, JsonlRecordWriter, make_records, read_records, record_schema

    assert tuple(record_schema().names) == FIELDS  # one table: the dataclass, the JSONL keys, the Parquet columns
    ranked = {"clip": [{"index": 1, "label": "b", "score": 0.9, "logit": 0.3}]}
    recs = [*make_records("a.jpg", 1, "k", ranked, ["clip"], seed=0, run="r", attempt="x", top=5),
            *make_records("b.jpg", 0, None, None, ["clip"], seed=0, run="r", attempt="x", top=5, skip_reason="bad")]
    path = tmp_path / "p.jsonl"
    w = JsonlRecordWriter.open(path, "r", resume=False)
    for r in recs:
        w.write(r)
    w.close()
    path.write_text(path.read_text() + '{"path": "c.jpg", "la')  # torn by a kill
    assert read_records(path) == recs
    w = JsonlRecordWriter.open(path, "r", resume=True)
    w.close()
    assert set(w.done) == {("a.jpg", "clip"), ("b.jpg", "clip")} and w.skipped == {"b.jpg": "bad"}
    assert len(path.read_text().splitlines()) == 2  # the torn line is gone
    with pytest.raises(AbsclipError, match="different settings"):
        JsonlRecordWriter.open(path, "other", resume=True)
    with pytest.raises(AbsclipError, match="`resume`"):
        JsonlRecordWriter.open(path, "r", resume=False)
    old = tmp_path / "old.jsonl"  # the eval format before records were unified
    old.write_text(json.dumps({"run": "r", "file": "a.jpg", "method": "clip", "pred": 1}) + "\n")
    with pytest.raises(AbsclipError, match="another format"):
        JsonlRecordWriter.open(old, "r", resume=True)
    with pytest.raises(AbsclipError, match="does not exist"):
        read_records(tmp_path / "missing.jsonl")


def test_eval_and_label_write_the_same_records(clf, samples, tmp_path):
    from absclip.engines.local import evaluate, label_images
    from absclip.engines.results import compute_metrics
    from absclip.io.records import FIELDS, read_records

    methods = ["clip", "abs"]
    doc = evaluate(clf, samples, methods, output=tmp_path / "r.json", progress=False)
    summary = label_images(clf, [s.path for s in samples], methods, output=tmp_path / "lab", progress=False)
    ev, lab = read_records(doc["predictions"]), read_records(summary["predictions"])
    assert doc["predictions"] == str(tmp_path / "r.predictions.jsonl")
    assert {tuple(r) for r in ev} == {tuple(r) for r in lab} == {FIELDS}
    assert len(ev) == len(lab) == len(samples) * len(methods)
    assert {r["label"] for r in lab} == {None} and {(r["path"], r["label"]) for r in ev} == {
        (s.path, s.label) for s in samples}
    by_key = {(r["path"], r["method"]): r for r in lab}
    for r in ev:
        other = by_key[(r["path"], r["method"])]
        for f in ("pred", "pred_label", "score", "topk", "topk_labels", "topk_scores", "key", "skip_reason", "run"):
            assert r[f] == other[f], f
    skipped = [r for r in ev if r["skip_reason"]]
    assert [r["path"] for r in skipped] == [samples[-1].path] * 2 and all(r["pred"] is None for r in skipped)
    assert doc["skipped"] == summary["skipped"] == [{"file": samples[-1].path, "reason": skipped[0]["skip_reason"]}]
    for res in doc["results"]:
        rows = [r for r in ev if r["method"] == res["absclip"]["method"] and not r["skip_reason"]]
        assert res["metrics"] == compute_metrics([r["label"] for r in rows], [r["topk"] for r in rows], len(CLASSES))
        assert res["absclip"]["images"] == len(FILES)

    # resume after a partial file (a torn last line): the same records and results
    pred = tmp_path / "r.predictions.jsonl"
    lines = pred.read_text().splitlines()
    pred.write_text("\n".join(lines[:5]) + "\n" + lines[5][:30])
    again = evaluate(clf, samples, methods, output=tmp_path / "r.json", progress=False)
    assert [r["metrics"] for r in again["results"]] == [r["metrics"] for r in doc["results"]]
    assert again["skipped"] == doc["skipped"]
    keep = ("path", "method", "pred", "topk", "topk_scores", "skip_reason")
    assert sorted(tuple(str(r[f]) for f in keep) for r in read_records(pred)) == sorted(
        tuple(str(r[f]) for f in keep) for r in ev)


def test_max_pixels_is_passed_through(clf, samples, tmp_path):
    from absclip.engines.local import label_images

    summary = label_images(clf, [s.path for s in samples[:2]], ["clip"], output=tmp_path, progress=False,
                           max_pixels=100)
    assert summary["labelled"] == 0 and all("pixels" in s["reason"] for s in summary["skipped"])
