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
    return sorted((r["file"], r["method"], r["pred"], tuple(r["topk"])) for r in rows)


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
    assert run(out, "--crops", "9", "--overwrite").returncode == 0
