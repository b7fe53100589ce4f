"""Scale-out on a real local Ray instance (no mocks): same answers as the local engine, faults, resume.

One Ray instance for the module (``ray.init(num_cpus=2)``); tiny golden models; 34 listed images
(32 photos of the ImageNet sample with their 32 class names, one empty file and one text file).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

SAMPLE = DATA / "imagenet-sample"
N_PHOTOS = 32
MODEL = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", str(DINO),
         "--crops", "4", "--feature-crops", "4", "--no-cache", "--device", "cpu"]


# -- without Ray ---------------------------------------------------------------------------------


def test_missing_ray_is_one_sentence(monkeypatch, tmp_path, capsys):
    from absclip.cli.main import main
    from absclip.engines.ray import RAY_HINT, import_ray
    from absclip.errors import AbsclipError

    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" raises ImportError
    with pytest.raises(AbsclipError, match=r"pip install 'absclip\[ray\]'"):
        import_ray()
    rc = main(["label", str(SAMPLE / "n01440764_tench.JPEG"), "--classes", "cat,dog", "--output", str(tmp_path),
               "--engine", "ray", *MODEL])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == f"absclip: error: {RAY_HINT}"


def test_plan_defaults():
    from absclip.engines.ray import RayOptions, make_plan
    from absclip.errors import AbsclipError

    cpu = make_plan(RayOptions(), 16, 0, batch_size=8, attention_separable=True)
    assert cpu.attention_stage and cpu.actors == 15 and cpu.threads_per_actor == 1 and cpu.batch_size == 8
    with pytest.raises(AbsclipError, match="exceed the cluster's 2 CPUs"):  # would wait forever
        make_plan(RayOptions(actors=2), 2, 0, batch_size=8, attention_separable=True, fixed=True)
    gpu = make_plan(RayOptions(gpus_per_actor=0.5), 32, 4, batch_size=8, attention_separable=True)
    assert gpu.actors == 8 and not gpu.attention_stage
    own = make_plan(RayOptions(cpus_per_actor=1.5, actors=1), 2, 0, batch_size=4, attention_separable=False)
    assert not own.attention_stage and own.threads_per_actor == 2
    assert "1 actor(s) x (1.5 CPU, 2 torch thread(s))" in own.describe()


def test_actor_stage_without_ray_uses_the_text_it_is_given(backbone):
    """The encode stage, called in this process: text arrives prepared (never encoded again), and its
    predictions equal the classifier's own, with attention and draws from the CPU stage."""
    pa = pytest.importorskip("pyarrow")
    from absclip import ABSConfig
    from absclip.api import ClassifierSpec
    from absclip.engines.local import run_spec
    from absclip.engines.ray import AttentionMaps, ClassifierRecipe, EncodeAndScore, decode_images, prepare_text

    spec = ClassifierSpec(str(CLIP_CFG), str(CLIP_WEIGHTS), attention_model=str(DINO),
                          settings=(ABSConfig(pixel_crops=4, feature_crops=4),), use_cache=False)
    recipe = ClassifierRecipe.from_sources(spec, ["tench", "goldfish", "cat"])
    meta, prepared = prepare_text(recipe, ["clip", "abs"], 3)
    paths = [str(SAMPLE / f) for f in ("n01440764_tench.JPEG", "n01443537_goldfish.JPEG")] + ["/no/such.jpg"]
    batch = decode_images(pa.table({"path": paths, "label": pa.array([0, 1, 2], pa.int64())}))
    assert batch.column("skip_reason").to_pylist()[:2] == [None, None]
    assert set(meta["draws"]) == {"abs"}
    batch = AttentionMaps(meta["attention"], meta["draws"], meta["seed"], meta["backbone_facts"])(batch)
    stage = EncodeAndScore(recipe, prepared, meta, ["clip", "abs"], 3, attempt="t")
    rows = stage(batch).to_pylist()
    assert stage.clf.encoder.encoded_count == 0
    assert len(rows) == 6 and rows[-1]["skip_reason"] == "/no/such.jpg: no such file."
    ref = recipe.classifier()
    assert run_spec(ref, ["clip", "abs"], 3) == meta["spec"]
    for m in ("clip", "abs"):
        expect = ref.logits(paths[:2], m).argmax(1).tolist()
        assert [r["pred"] for r in rows if r["method"] == m][:2] == expect


def test_torn_shard_is_dropped_on_resume(tmp_path):
    """A shard cut short by a crash is deleted (its images are predicted again), never trusted."""
    pq = pytest.importorskip("pyarrow.parquet")
    from absclip.engines.ray import OutputDir, row_schema
    from absclip.errors import AbsclipError
    from absclip.io.records import make_records

    pa = pytest.importorskip("pyarrow")
    rows = make_records("a.jpg", 1, "k", {"clip": [{"index": 1, "label": "b", "score": 0.9, "logit": 0.3}]},
                           ["clip"], seed=0, run="r", attempt="x", top=5)
    pq.write_table(pa.Table.from_pylist(rows, schema=row_schema()), tmp_path / "good.parquet")
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 cut short")
    out = OutputDir(str(tmp_path))
    with pytest.raises(AbsclipError, match="not a readable Parquet file"):
        out.read()
    assert out.read(drop_broken=True).column("path").to_pylist() == ["a.jpg"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["good.parquet"]


def test_label_local_resumes(tmp_path, capsys):
    from absclip.cli.main import main

    out = tmp_path / "labels"
    args = ["label", str(SAMPLE), "--classes", "tench,goldfish,great white shark", "--method", "clip", "--limit", "3",
            "--output", str(out), "--no-progress", "--json", *MODEL]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert first["labelled"] == 3 and len(rows) == 3 and {r["pred_label"] for r in rows} <= {"tench", "goldfish",
                                                                                               "great white shark"}
    assert main(args) == 0  # resumes: nothing left to do, nothing written twice
    capsys.readouterr()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3


# -- on Ray --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    """A CSV listing (relative paths for the broken files) and the class names of its photos."""
    d = tmp_path_factory.mktemp("listing")
    with open(SAMPLE / "labels.csv") as f:
        rows = list(csv.DictReader(f))[:N_PHOTOS]
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("not an image\n")
    with open(d / "list.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class"])
        for r in rows:
            w.writerow([str(SAMPLE / r["file"]), r["clip_name"]])
        w.writerow(["empty.jpg", rows[0]["clip_name"]])
        w.writerow(["text.jpg", rows[1]["clip_name"]])
    (d / "classes.txt").write_text("".join(r["clip_name"] + "\n" for r in rows))
    return d


def eval_args(listing, out, *extra):
    return ["eval", "--data", str(listing / "list.csv"), "--classes-file", str(listing / "classes.txt"),
            "--methods", "clip,abs", "--output", str(out), "--no-progress", "--batch-size", "4", *MODEL, *extra]


def local_preds(doc):
    return {(r["path"], r["method"]): (r["pred"], r["topk"]) for r in map(json.loads, open(doc["predictions"]))
            if not r["skip_reason"]}


def parquet_rows(folder):
    import pyarrow.parquet as pq

    return [r for f in sorted(Path(folder).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def ray_preds(rows):
    return {(r["path"], r["method"]): (r["pred"], r["topk"]) for r in rows if not r["skip_reason"]}


def assert_same_results(doc, ref):
    assert doc["run"] == ref["run"]
    assert [r["metrics"] for r in doc["results"]] == [r["metrics"] for r in ref["results"]]
    assert doc["skipped"] == ref["skipped"] and doc["evaluated"] == ref["evaluated"] == N_PHOTOS


def assert_each_once(rows):
    keys = [(r["path"], r["method"]) for r in rows]
    assert len(keys) == len(set(keys)) == (N_PHOTOS + 2) * 2


@pytest.fixture(scope="module")
def reference(listing, tmp_path_factory):
    from absclip.cli.main import main

    out = tmp_path_factory.mktemp("local") / "results.json"
    assert main(eval_args(listing, out)) == 0
    doc = json.loads(out.read_text())
    assert len(doc["skipped"]) == 2 and doc["evaluated"] == N_PHOTOS
    assert any(r["metrics"]["acc5"] > 0 for r in doc["results"])  # 32 classes: the comparison is not all zeros
    return doc, local_preds(doc)


@pytest.mark.parametrize("actors,batch", [(1, 4), (2, 3)])
def test_ray_matches_local(ray_instance, listing, reference, tmp_path, capsys, actors, batch):
    from absclip.cli.main import main

    ref_doc, ref_preds = reference
    out = tmp_path / "results.json"
    args = eval_args(listing, out, "--engine", "ray", "--actors", str(actors), "--cpus-per-actor", "0.5")
    args[args.index("--batch-size") + 1] = str(batch)
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"ray: {actors} actor(s)" in err and "images evaluated" in err
    doc = json.loads(out.read_text())
    rows = parquet_rows(doc["predictions"])
    assert_each_once(rows)
    assert ray_preds(rows) == ref_preds
    assert_same_results(doc, ref_doc)
    assert {r["seed"] for r in rows} == {0} and {r["skip_reason"] for r in rows if r["skip_reason"]} == {
        s["reason"] for s in ref_doc["skipped"]}


def test_ray_eval_report(ray_instance, listing, reference, tmp_path, capsys):
    """absclip eval --engine ray --report: the report reads the Parquet records; same metrics as the results JSON."""
    import re

    from absclip.cli.main import main
    from absclip.diagnostics.report import load_report_data
    from absclip.io.records import FIELDS, read_records

    out, html = tmp_path / "results.json", tmp_path / "report.html"
    assert main(eval_args(listing, out, "--engine", "ray", "--actors", "1", "--cpus-per-actor", "0.5",
                          "--report", str(html), "--report-max-images", "2")) == 0
    assert f"report: {html}" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert_same_results(doc, reference[0])
    recs = read_records(doc["predictions"])  # the Parquet folder, through the one reader
    assert {tuple(r) for r in recs} == {FIELDS} and ray_preds(recs) == reference[1]
    data = load_report_data(out)
    assert data.methods == ["clip", "abs"] and all(len(data.records[m]) == N_PHOTOS for m in data.methods)
    text = html.read_text(encoding="utf-8")
    for r in doc["results"]:
        m, met = r["absclip"]["method"], r["metrics"]
        row = re.search(rf"<tr data-method='{m}'[^>]*>(.*?)</tr>", text, re.S)
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
        pct = ["n/a" if v is None or v != v else f"{100 * v:.2f}"
               for v in (met["acc1"], met["acc5"], met["mean_per_class_recall"])]
        assert cells[:4] == [m, *pct] and f"data-acc1='{met['acc1']}'" in row.group(0)
    wrong = sum(1 for x in data.records["abs"] if x["pred"] != x["label"])
    assert text.count("<div class='card'>") == min(wrong, 2)


@pytest.fixture(scope="module")
def killed_run(ray_instance, listing, tmp_path_factory):
    """A run in which one actor process exits (os._exit) on its second batch; Ray restarts it."""
    from absclip.cli.engine import recipe
    from absclip.cli.main import build_parser
    from absclip.engines.ray import RayOptions, evaluate_ray
    from absclip.text.classes import load_classes

    d = tmp_path_factory.mktemp("killed")
    out = d / "results.json"
    args = build_parser().parse_args(eval_args(listing, out))
    marker = d / "fault-happened"
    doc = evaluate_ray(recipe(args, load_classes(None, args.classes_file)), args.data, ["clip", "abs"], output=out,
                       top=5, options=RayOptions(actors=2, cpus_per_actor=0.5, batch_size=4, progress=False,
                                                 fault=f"exit:2:{marker}"))
    assert marker.exists(), "no actor was killed"
    return doc, out


def test_killed_actor_every_image_once(killed_run, reference):
    doc, _ = killed_run
    rows = parquet_rows(doc["predictions"])
    assert_each_once(rows)
    assert ray_preds(rows) == reference[1]
    assert_same_results(doc, reference[0])


def test_resume(killed_run, reference, listing, capsys):
    from absclip.cli.main import main

    doc, out = killed_run
    folder = Path(doc["predictions"])
    shards = sorted(folder.glob("*.parquet"))
    args = eval_args(listing, out, "--engine", "ray", "--actors", "1", "--cpus-per-actor", "0.5", "--resume")
    assert main(args) == 0  # everything is done: nothing recomputed
    assert "nothing left to do" in capsys.readouterr().err
    assert sorted(folder.glob("*.parquet")) == shards
    assert_same_results(json.loads(out.read_text()), reference[0])

    import pyarrow.parquet as pq

    lost = shards[:2]
    lost_keys = {(r["path"], r["method"]) for f in lost for r in pq.read_table(f).to_pylist()}
    before = {r["attempt"] for r in parquet_rows(folder)}
    for f in lost:
        os.remove(f)
    assert main(args) == 0  # only the deleted shards' images are predicted again
    capsys.readouterr()
    rows = parquet_rows(folder)
    assert_each_once(rows)
    assert {(r["path"], r["method"]) for r in rows if r["attempt"] not in before} == lost_keys
    assert ray_preds(rows) == reference[1]
    assert_same_results(json.loads(out.read_text()), reference[0])

    assert main([*args[:-1], "--no-resume"]) == 2  # existing output without --resume is refused
    assert "--resume" in capsys.readouterr().err


def test_label_on_ray_matches_local(ray_instance, tmp_path, capsys):
    """absclip label: local vs Ray (attention inside the actors; an error raised in one batch is retried)."""
    from absclip.cli.engine import recipe
    from absclip.cli.main import build_parser
    from absclip.engines.ray import RayOptions, label_ray
    from absclip.text.classes import load_classes

    common = ["--classes", "tench,goldfish,great white shark,tiger shark", "--method", "abs", "--limit", "6",
              "--no-progress", "--batch-size", "2", *MODEL]
    from absclip.cli.main import main

    assert main(["label", str(SAMPLE), "--output", str(tmp_path / "local"), *common]) == 0
    capsys.readouterr()
    local = {r["path"]: (r["pred_label"], r["topk_labels"]) for r in
             map(json.loads, (tmp_path / "local" / "predictions.jsonl").read_text().splitlines())}
    args = build_parser().parse_args(["label", str(SAMPLE), "--output", str(tmp_path / "ray"), *common])
    marker = tmp_path / "raised"
    summary = label_ray(recipe(args, load_classes(args.classes, None)), str(SAMPLE), ["abs"],
                        output=str(tmp_path / "ray"), top=5, limit=6,
                        options=RayOptions(actors=1, cpus_per_actor=0.5, attention="actor", batch_size=2,
                                           progress=False, fault=f"raise:1:{marker}"))
    assert marker.exists() and summary["labelled"] == 6 and summary["config"]["ray"]["attention_stage"] is False
    rows = parquet_rows(tmp_path / "ray")
    assert len(rows) == 6 and {r["label"] for r in rows} == {None}
    assert {r["path"]: (r["pred_label"], r["topk_labels"]) for r in rows} == local
    assert json.loads((tmp_path / "ray" / "_summary.json").read_text())["run"] == summary["run"]


def test_sigterm_on_the_ray_driver_is_an_interrupt(listing, tmp_path):
    """SIGTERM to `absclip eval --engine ray` ends like Ctrl-C: exit 130, one sentence, no native stack dump."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "results.json"
    args = [*eval_args(listing, out, "--engine", "ray", "--actors", "1", "--cpus-per-actor", "0.5")]
    proc = subprocess.Popen([sys.executable, "-m", "absclip", *args], stderr=subprocess.PIPE, text=True)
    err = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the plan line is printed once Ray is up, before the pipeline starts
        line = proc.stderr.readline()
        if not line:
            break
        err.append(line)
        if line.startswith("absclip: ray:"):
            break
    assert any(line.startswith("absclip: ray:") for line in err), "".join(err)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    text = "".join(err) + rest
    assert proc.returncode == 130, text
    assert "interrupted; finished predictions are saved" in text
    assert "SIGTERM received" not in text and "Aborted" not in text
