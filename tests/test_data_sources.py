"""Data sources: one listing for every engine; webdataset shards and HF datasets give the same answers as folders.

The same 12 photos of the ImageNet sample are written as an ImageFolder tree, as webdataset shards in
CLIP_benchmark's layout (``wds/test/{0..2}.tar`` + ``classnames.txt`` + the templates file) and as a
Hugging Face dataset (``save_to_disk`` folder and Parquet); every form must give the same predictions
(compared by image content) and the same metrics, on the local engine and on Ray (slow tier).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import unicodedata
from pathlib import Path

import pytest

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO

SAMPLE = DATA / "imagenet-sample"
N = 12
MODEL = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", str(DINO),
         "--crops", "4", "--feature-crops", "4", "--no-cache", "--device", "cpu"]
TEMPLATES = ["a photo of a {c}.", "a blurry photo of a {c}."]


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def photos():
    with open(SAMPLE / "labels.csv") as f:
        rows = list(csv.DictReader(f))[:N]
    return [(SAMPLE / r["file"], r["clip_name"]) for r in rows]


@pytest.fixture(scope="module")
def sources(photos, tmp_path_factory):
    """The photos as a folder, shards (CLIP_benchmark layout), a save_to_disk dataset and Parquet."""
    datasets = pytest.importorskip("datasets")  # the test extra; used only to WRITE the fixtures
    root = tmp_path_factory.mktemp("sources")
    names = [c for _, c in photos]
    (root / "classes.txt").write_text("".join(n + "\n" for n in names))
    (root / "templates.txt").write_text("".join(t + "\n" for t in TEMPLATES))
    for p, c in photos:
        (root / "folder" / c).mkdir(parents=True)
        shutil.copy(p, root / "folder" / c / p.name)
    wds = root / "wds"
    (wds / "test").mkdir(parents=True)
    for s in range(3):  # 4 samples a shard; the second shard labels with .txt, the third with .json
        members = []
        for i in range(4 * s, 4 * s + 4):
            p, c = photos[i]
            members.append((f"s{i:06d}.jpg", p.read_bytes()))
            label = [str(i).encode(), c.encode(), json.dumps({"label": i}).encode()][s]
            members.append((f"s{i:06d}.{['cls', 'txt', 'json'][s]}", label))
        write_tar(wds / "test" / f"{s}.tar", members)
    shutil.copy(root / "classes.txt", wds / "classnames.txt")
    shutil.copy(root / "templates.txt", wds / "zeroshot_classification_templates.txt")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": p.read_bytes(), "path": p.name} for p, _ in photos],
                                     "label": list(range(N))}, features=features)
    ds.save_to_disk(str(root / "hf"))
    (root / "parquet").mkdir()
    ds.to_parquet(str(root / "parquet" / "test.parquet"))
    return {"folder": str(root / "folder"), "shards": str(wds / "test" / "{0..2}.tar"), "hf": str(root / "hf"),
            "parquet": str(root / "parquet" / "test.parquet"), "classes": str(root / "classes.txt"),
            "templates": str(root / "templates.txt")}


def eval_args(src, name, out, *extra):
    args = ["eval", "--data", src[name], "--methods", "clip,clip-e,abs", "--output", str(out), "--no-progress",
            "--batch-size", "4", *MODEL, *extra]
    if name == "folder":  # shards and datasets name their classes (and the shards their templates)
        args += ["--classes-file", src["classes"], "--templates", src["templates"]]
    elif name in ("hf", "parquet"):
        args += ["--templates", src["templates"]]
    return args


def by_content(doc):
    """``{(content key, method): (label, pred, topk)}`` of a results document's records."""
    from absclip.io.records import read_records

    return {(r["key"], r["method"]): (r["label"], r["pred"], r["topk"]) for r in read_records(doc["predictions"])}


# -- the listing rules ----------------------------------------------------------------------------------------


def test_expand_braces():
    from absclip.errors import AbsclipError
    from absclip.io.webdataset import expand_braces, is_webdataset

    assert expand_braces("d/{0..2}.tar") == ["d/0.tar", "d/1.tar", "d/2.tar"]
    assert expand_braces("s3://b/{000..002}.tar")[-1] == "s3://b/002.tar"
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    assert is_webdataset("x/{0..9}.tar") and is_webdataset("one.tar") and not is_webdataset("photos/")
    with pytest.raises(AbsclipError, match="unbalanced"):
        expand_braces("d/{0..2.tar")


@pytest.fixture
def tricky(photos, tmp_path):
    """A data folder with every listing trap: a symlinked class folder, a symlink loop, a hidden checkpoints
    folder, a hidden file, a broken link, and a class folder named in NFD while the classes file is NFC."""
    root = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cafe_nfc = "caf\u00e9"
    nfd = unicodedata.normalize("NFD", cafe_nfc)
    classes = [photos[0][1], photos[1][1], cafe_nfc]
    (root / classes[0]).mkdir(parents=True)
    for p, _ in photos[:2]:
        shutil.copy(p, root / classes[0] / p.name)
    for p, _ in photos[2:4]:
        shutil.copy(p, elsewhere / p.name)
    os.symlink(elsewhere, root / classes[1])  # a symlinked sub-folder: followed
    os.symlink(root, root / classes[0] / "loop")  # a loop back to the root: reported, not followed
    (root / ".ipynb_checkpoints" / classes[0]).mkdir(parents=True)  # hidden: skipped
    shutil.copy(photos[5][0], root / ".ipynb_checkpoints" / classes[0] / "copy.JPEG")
    shutil.copy(photos[5][0], root / classes[0] / ".hidden.JPEG")
    os.symlink(tmp_path / "gone.jpg", root / classes[0] / "broken.jpg")  # reported
    (root / nfd).mkdir()
    shutil.copy(photos[4][0], root / nfd / "x.JPEG")
    (tmp_path / "classes.txt").write_text("".join(c + "\n" for c in classes))
    expected = [
        (str(root / classes[0] / photos[0][0].name), 0), (str(root / classes[0] / photos[1][0].name), 0),
        (str(root / classes[1] / photos[2][0].name), 1), (str(root / classes[1] / photos[3][0].name), 1),
        (str(root / nfd / "x.JPEG"), 2),
    ]
    expected.sort(key=lambda x: [unicodedata.normalize("NFC", part) for part in Path(x[0]).parts])
    return root, tmp_path / "classes.txt", expected


def test_listing_rules(tricky, caplog):
    from absclip.io.sources import load_paths, load_samples
    from absclip.text.classes import load_classes

    root, classes_file, expected = tricky
    with caplog.at_level("WARNING"):
        got = [(s.path, s.label) for s in load_samples(str(root), load_classes(None, str(classes_file)))]
    assert got == expected
    text = caplog.text
    assert text.count("symlink loop") == 1 and "broken symlink" in text and ".ipynb_checkpoints" not in text
    assert load_paths(str(root)) == [p for p, _ in expected]


def test_ray_listing_is_the_local_listing(tricky):
    """The Ray engine's driver lists a folder with the same function: same paths, labels and order."""
    pytest.importorskip("ray")
    from absclip.engines.ray import read_listing
    from absclip.text.classes import load_classes

    root, classes_file, expected = tricky
    table = read_listing(str(root), classes=load_classes(None, str(classes_file)))
    assert list(zip(table.column("path").to_pylist(), table.column("label").to_pylist())) == expected
    unlabelled = read_listing(str(root), classes=None)
    assert unlabelled.column("path").to_pylist() == [p for p, _ in expected]


# -- the readers ----------------------------------------------------------------------------------------------


def test_readers_yield_the_same_photos(sources, photos):
    from absclip.io.images import make_item
    from absclip.io.sources import open_data
    from absclip.text.classes import load_classes

    classes = load_classes(None, sources["classes"])
    want = [(make_item(p).key, i) for i, (p, _) in enumerate(photos)]
    for name in ("shards", "hf", "parquet"):
        dset = open_data(sources[name])
        assert dset.kind == ("webdataset" if name == "shards" else "hf")
        assert dset.default_class_names() == [c for _, c in photos]
        samples = list(dset.samples(classes))
        assert [(make_item(s.data).key, s.label) for s in samples] == want, name
        assert len({s.path for s in samples}) == N
    shards = open_data(sources["shards"])
    assert shards.total is None and open_data(sources["hf"]).total == N
    assert shards.default_templates().endswith("zeroshot_classification_templates.txt")
    assert next(iter(shards.samples(None))).path == sources["shards"].replace("{0..2}", "0") + "#s000000"
    assert next(iter(open_data(sources["parquet"]).samples(None))).path == sources["parquet"] + "#0"


def test_shards_are_streamed(tmp_path):
    """Members are read one at a time from a stream that cannot seek: nothing is extracted or listed ahead."""
    from absclip.io.webdataset import iter_shard

    write_tar(tmp_path / "a.tar", [("k1.jpg", b"1"), ("k1.cls", b"0"), ("._k1.jpg", b"x"), ("k2.png", b"2")])
    it = iter_shard(str(tmp_path / "a.tar"))
    assert next(it) == ("k1", {"jpg": b"1", "cls": b"0"})
    assert list(it) == [("k2", {"png": b"2"})]


def test_missing_shard_and_member_are_one_sentence(sources, tmp_path):
    from absclip.errors import AbsclipError
    from absclip.io.sources import open_data
    from absclip.io.webdataset import wds_sample
    from absclip.text.classes import ClassList

    with pytest.raises(AbsclipError, match=r"shard .*3\.tar does not exist \(and 4 more\)"):
        open_data(str(Path(sources["shards"]).parent / "{0..7}.tar"))
    s = wds_sample("a.tar", "k", {"cls": b"0"}, ClassList.from_names(["x", "y"]))
    assert s.error == "a.tar#k: no image member (.jpg, .jpeg, .png, .webp)." and s.data is None
    with pytest.raises(AbsclipError, match="no label member"):
        wds_sample("a.tar", "k", {"jpg": b"0"}, ClassList.from_names(["x", "y"]))


# -- end to end, local engine ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_runs(sources, tmp_path_factory):
    from absclip.cli.main import main

    docs = {}
    for name in ("folder", "shards", "hf", "parquet"):
        out = tmp_path_factory.mktemp(f"local-{name}") / "results.json"
        assert main(eval_args(sources, name, out)) == 0
        docs[name] = json.loads(out.read_text())
    return docs


def test_every_source_gives_the_same_results(local_runs, sources):
    ref = local_runs["folder"]
    assert ref["evaluated"] == N and any(r["metrics"]["acc5"] > 0 for r in ref["results"])
    for name in ("shards", "hf", "parquet"):
        doc = local_runs[name]
        assert doc["evaluated"] == N and doc["run"] == ref["run"], name  # same classes and templates: same run
        assert [r["metrics"] for r in doc["results"]] == [r["metrics"] for r in ref["results"]], name
        assert by_content(doc) == by_content(ref), name
    assert local_runs["shards"]["config"]["classes_file"].endswith("classnames.txt")
    assert local_runs["shards"]["dataset"] == "wds"


def test_label_reads_shards(sources, tmp_path, capsys):
    from absclip.cli.main import main
    from absclip.io.records import read_records

    out = tmp_path / "lab"
    assert main(["label", sources["shards"], "--method", "clip", "--limit", "5", "--output", str(out),
                 "--no-progress", "--json", *MODEL]) == 0
    summary = json.loads(capsys.readouterr().out)
    recs = read_records(out / "predictions.jsonl")
    assert summary["images"] == summary["labelled"] == 5 and len(recs) == 5
    assert recs[0]["path"].endswith("0.tar#s000000") and recs[-1]["path"].endswith("1.tar#s000004")


# -- resume after a kill, on shards ---------------------------------------------------------------------------


def _run(args):
    return subprocess.run([sys.executable, "-m", "absclip", *args], capture_output=True, text=True, timeout=600)


def test_kill_and_resume_on_shards(sources, tmp_path):
    ref_out = tmp_path / "ref" / "results.json"
    args = [*eval_args(sources, "shards", ref_out)]
    args[args.index("--batch-size") + 1] = "2"
    assert _run(args).returncode == 0
    ref = json.loads(ref_out.read_text())

    out = tmp_path / "run" / "results.json"
    args[args.index("--output") + 1] = str(out)
    pred = tmp_path / "run" / "results.predictions.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "absclip", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pred.exists() and len(pred.read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert not out.exists() and 6 <= len(pred.read_text().splitlines()) < 3 * N
    again = _run(args)
    assert again.returncode == 0, again.stderr
    assert "Resuming" in again.stderr
    doc = json.loads(out.read_text())
    assert [r["metrics"] for r in doc["results"]] == [r["metrics"] for r in ref["results"]]
    recs = [json.loads(x) for x in pred.read_text().splitlines()]
    assert len(recs) == 3 * N and len({(r["path"], r["method"]) for r in recs}) == 3 * N  # each once
    assert by_content(doc) == by_content(ref)


# -- the Ray engine -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("name", ["shards", "hf", "parquet"])
def test_ray_reads_every_source_like_local(ray_instance, sources, local_runs, name, tmp_path, capsys):
    from absclip.cli.main import main
    from absclip.io.records import read_records

    out = tmp_path / "results.json"
    assert main(eval_args(sources, name, out, "--engine", "ray", "--actors", "1", "--cpus-per-actor", "0.5")) == 0
    capsys.readouterr()
    doc, local = json.loads(out.read_text()), local_runs[name]
    assert doc["evaluated"] == N and doc["run"] == local["run"]
    assert [r["metrics"] for r in doc["results"]] == [r["metrics"] for r in local["results"]]
    assert by_content(doc) == by_content(local)
    ray_ids = sorted({r["path"] for r in read_records(doc["predictions"])})
    assert ray_ids == sorted({r["path"] for r in read_records(local["predictions"])})  # the same identities


def test_ray_and_local_see_the_same_tricky_folder(ray_instance, tricky, tmp_path, capsys):
    from absclip.cli.main import main
    from absclip.io.records import read_records

    root, classes_file, expected = tricky
    docs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine / "results.json"
        assert main(["eval", "--data", str(root), "--classes-file", str(classes_file), "--methods", "clip",
                     "--output", str(out), "--no-progress", "--engine", engine, "--actors", "1",
                     "--cpus-per-actor", "0.5", *MODEL]) == 0
        docs[engine] = json.loads(out.read_text())
    capsys.readouterr()
    for doc in docs.values():
        recs = read_records(doc["predictions"])
        assert sorted((r["path"], r["label"]) for r in recs) == sorted(expected)  # each image once, NFD labelled
    assert [r["metrics"] for r in docs["ray"]["results"]] == [r["metrics"] for r in docs["local"]["results"]]


def test_a_stored_sample_is_found_again_by_identity(sources, photos):
    """Reports and explanations open a record's path again: shard members and dataset rows are found by identity."""
    from absclip.errors import BadImageError
    from absclip.io.images import read_image_bytes
    from absclip.io.sources import open_data

    for name in ("shards", "hf", "parquet"):
        ident = list(open_data(sources[name]).samples(None))[5].path
        assert read_image_bytes(ident) == photos[5][0].read_bytes(), name
    with pytest.raises(BadImageError, match="no such file"):
        read_image_bytes(sources["shards"].replace("{0..2}", "0") + "#nope")
