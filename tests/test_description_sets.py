"""Named description sets: resolution through ABSCLIP_DESCRIPTIONS_DIR, checksums, cache, download, CLI. No network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import threading
import urllib.error
from pathlib import Path

import pytest

from absclip.cli.main import main
from absclip.errors import AbsclipError
from absclip.text import public_sets as ds
from absclip.text.sources import read_text_source

from .conftest import DATA

DESCRIPTIONS = DATA / "descriptions"


@pytest.fixture
def local_copy(monkeypatch):
    monkeypatch.setenv(ds.ENV_DIR, str(DESCRIPTIONS))
    monkeypatch.delenv(ds.ENV_MIRROR, raising=False)
    return DESCRIPTIONS


@pytest.fixture
def no_local(monkeypatch, tmp_path):
    """No local copy, an empty cache, and any attempt to reach the internet fails loudly."""
    monkeypatch.delenv(ds.ENV_DIR, raising=False)
    monkeypatch.delenv(ds.ENV_MIRROR, raising=False)
    monkeypatch.setenv("ABSCLIP_CACHE_DIR", str(tmp_path / "cache"))

    def offline(req, *a, **k):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(ds.urllib.request, "urlopen", offline)
    return tmp_path / "cache" / "descriptions"


@pytest.mark.parametrize("entry", ds.list_sets(), ids=lambda e: e.name)
def test_every_recorded_checksum_matches_the_shared_copy(entry):
    p = DESCRIPTIONS / entry.local_path
    assert p.is_file(), p
    assert hashlib.sha256(p.read_bytes()).hexdigest() == entry.sha256


def test_names_are_unique_and_urls_are_pinned():
    names = [s.name for s in ds.list_sets()]
    assert len(names) == len(set(names))
    for s in ds.list_sets():
        assert s.url.startswith(f"https://raw.githubusercontent.com/{s.source.repo}/{s.source.commit}/")
    assert ds.get_set("abs:dtd").url.endswith("/BIT-DA/ABS/5ba77c652af789590c0e863517c2291514093d6e/"
                                              "prompts/dtd/cupl.json")
    assert ds.get_set("cupl:pets").url.endswith("/all_prompts/full_prompts/pets_prompts_full.json")


@pytest.mark.parametrize("spec, rel", [
    ("cupl:pets", "cupl/all_prompts/full_prompts/pets_prompts_full.json"),
    ("cupl:pets/base", "cupl/all_prompts/base_prompts/pet_prompts_base.json"),
    ("cupl:texture", "cupl/all_prompts/full_prompts/texture_prompts_full.json"),
    ("cupl:imagenet", "cupl/all_prompts/base_prompts/imagenet_prompts_base.json"),
    ("dclip:imagenet", "dclip/descriptors/descriptors_imagenet.json"),
    ("waffle:cub", "waffleclip/descriptors/descriptors_cub.json"),
    ("waffle:flowers102", "waffleclip/descriptors/descriptors_flowers102.json"),
    ("abs:dtd", "abs/dtd/cupl.json"),
    ("abs:oxford_pet", "abs/oxford_pet/cupl.json"),
    ("abs:Places365/CLIP-D", "abs/place365/clip-d.json"),
    ("abs:imagenet/clip-e", "abs/imagenet/clip-e.json"),
    ("susx:imagenet", "susx_cupl/gpt3_prompts/CuPL_prompts_imagenet.json"),
    ("susx:imagenet_r", "susx_cupl/gpt3_prompts/CuPL_prompts_imagenet-r.json"),
])
def test_resolve_from_the_local_copy(local_copy, spec, rel):
    assert ds.resolve(spec) == local_copy / rel


def test_unknown_names_list_the_known_ones(local_copy):
    with pytest.raises(AbsclipError, match=r"Unknown description set 'cupl:nosuch'.*cupl:pets"):
        ds.resolve("cupl:nosuch")
    with pytest.raises(AbsclipError, match=r"abs:imagenet/clip-d"):
        ds.get_set("abs:imagenet")  # the ABS paper has no cupl.json for ImageNet
    assert not ds.is_set_spec("foo:bar") and not ds.is_set_spec("C:\\data\\x.json")
    assert ds.is_set_spec("abs:dtd/clip-e")


def test_tampered_local_copy_is_refused(monkeypatch, tmp_path):
    entry = ds.get_set("abs:dtd")
    copy = tmp_path / "copy" / entry.local_path
    copy.parent.mkdir(parents=True)
    data = json.loads((DESCRIPTIONS / entry.local_path).read_text())
    data["banded"][0] = "tampered"
    copy.write_text(json.dumps(data))
    monkeypatch.setenv(ds.ENV_DIR, str(tmp_path / "copy"))
    with pytest.raises(AbsclipError, match="does not match its recorded sha256"):
        ds.resolve("abs:dtd")
    with pytest.raises(AbsclipError, match="does not match"):
        read_text_source("abs:dtd")
    assert ds.status(entry)[0] == "local-mismatch"


def test_missing_dir_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(ds.ENV_DIR, str(tmp_path / "nope"))
    with pytest.raises(AbsclipError, match="not a directory"):
        ds.resolve("abs:dtd")


def test_offline_failure_names_the_url_and_the_env_var(no_local):
    with pytest.raises(AbsclipError) as e:
        ds.resolve("dclip:imagenet")
    msg = str(e.value)
    assert "https://raw.githubusercontent.com/sachit-menon/classify_by_description_release/" in msg
    assert "ABSCLIP_DESCRIPTIONS_DIR" in msg and "dclip/descriptors/descriptors_imagenet.json" in msg
    assert "\n" not in msg
    assert not no_local.exists() or not any(no_local.rglob("*.json"))


def test_a_cached_file_is_used_without_network(no_local):
    entry = ds.get_set("cupl:pets")
    target = no_local / entry.local_path
    target.parent.mkdir(parents=True)
    shutil.copyfile(DESCRIPTIONS / entry.local_path, target)
    assert ds.resolve("cupl:pets") == target
    assert ds.status(entry)[0] == "cached"


class _Mirror:
    """A local HTTP server with the shared layout (what ABSCLIP_DESCRIPTIONS_MIRROR points at)."""

    def __init__(self, root: Path) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.paths.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    monkeypatch.delenv(ds.ENV_DIR, raising=False)
    monkeypatch.setenv("ABSCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def start(root: Path) -> _Mirror:
        m = _Mirror(root)
        servers.append(m)
        monkeypatch.setenv(ds.ENV_MIRROR, m.url)
        return m

    yield start
    for m in servers:
        m.close()


def test_download_into_the_cache_once(mirror, tmp_path):
    m = mirror(DESCRIPTIONS)
    p = ds.resolve("abs:pets/clip-e")
    assert p == tmp_path / "cache" / "descriptions" / "abs/oxford_pet/clip-e.json"
    assert p.read_bytes() == (DESCRIPTIONS / "abs/oxford_pet/clip-e.json").read_bytes()
    assert m.paths == ["/abs/oxford_pet/clip-e.json"]
    assert ds.resolve("abs:pets/clip-e") == p and len(m.paths) == 1  # cached: no second request
    assert not [x for x in p.parent.iterdir() if x.name.startswith(".")]  # no temp files left behind


def test_corrupt_download_is_refused_and_not_cached(mirror, tmp_path):
    bad = tmp_path / "bad" / "abs/dtd/clip-e.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('["a photo of a {} evil texture."]')
    mirror(tmp_path / "bad")
    with pytest.raises(AbsclipError, match="does not match its recorded sha256.*refusing"):
        ds.resolve("abs:dtd/clip-e")
    assert not (tmp_path / "cache" / "descriptions" / "abs/dtd/clip-e.json").exists()


def test_corrupt_cache_entry_is_downloaded_again(mirror, tmp_path):
    m = mirror(DESCRIPTIONS)
    target = tmp_path / "cache" / "descriptions" / "abs/dtd/clip-e.json"
    target.parent.mkdir(parents=True)
    target.write_text("[]")
    assert ds.resolve("abs:dtd/clip-e") == target
    assert m.paths == ["/abs/dtd/clip-e.json"]
    assert target.read_bytes() == (DESCRIPTIONS / "abs/dtd/clip-e.json").read_bytes()


def test_read_text_source_resolves_set_names(local_copy):
    desc = read_text_source("abs:dtd")
    assert isinstance(desc, dict) and len(desc) == 47 and "banded" in desc
    templates = read_text_source("abs:dtd/clip-e")
    assert isinstance(templates, list) and all("{}" in t for t in templates)
    descriptors = read_text_source("dclip:pets")
    assert isinstance(descriptors, dict) and len(descriptors) == 37


def test_read_text_source_keeps_plain_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("cupl:pets").write_text('{"cat": ["a cat."]}')  # an existing file wins over a set name
    assert read_text_source("cupl:pets") == {"cat": ["a cat."]}
    with pytest.raises(AbsclipError, match="does not exist"):
        read_text_source("missing.json")


def test_classifier_inputs_accept_set_names(local_copy):
    from absclip.text.sources import read_texts

    texts = read_texts("abs:food101", templates="abs:food101/clip-e")
    assert len(texts.descriptions) == 101 and texts.templates == ["a photo of {}, a type of food."]
    as_descriptions = read_texts("abs:food101/clip-e")  # a template file given as descriptions
    assert as_descriptions.descriptions is None and as_descriptions.descriptions_are_templates
    assert as_descriptions.templates == ["a photo of {}, a type of food."]


def test_descriptions_dir_is_passed_not_set_in_the_environment(local_copy, monkeypatch, tmp_path):
    """The local copy travels as an argument; nothing is written to os.environ."""
    import os

    from absclip.text.sources import read_texts

    monkeypatch.delenv("ABSCLIP_DESCRIPTIONS_DIR", raising=False)
    texts = read_texts("abs:food101", descriptions_dir=DESCRIPTIONS)
    assert len(texts.descriptions) == 101 and "ABSCLIP_DESCRIPTIONS_DIR" not in os.environ


def test_cli_list_json(local_copy, capsys, tmp_path):
    assert main(["descriptions", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert len(rows) == len(ds.list_sets())
    assert {"cupl:pets", "dclip:imagenet", "waffle:cub", "abs:dtd", "susx:imagenet"} <= set(by_name)
    r = by_name["abs:dtd"]
    assert r["status"] == "local" and r["kind"] == "descriptions"
    assert r["path"] == str(DESCRIPTIONS / "abs/dtd/cupl.json")
    assert r["repo"] == "BIT-DA/ABS" and len(r["sha256"]) == 64

    assert main(["descriptions", "list", "abs", "--descriptions-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "abs:dtd/clip-e" in out and "missing" in out and "cupl:pets" not in out


def test_cli_fetch_and_errors(local_copy, capsys):
    assert main(["descriptions", "fetch", "abs:dtd", "cupl:pets"]) == 0
    out = capsys.readouterr().out
    assert str(DESCRIPTIONS / "abs/dtd/cupl.json") in out
    assert main(["descriptions", "fetch", "cupl:nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("absclip: error: Unknown description set") and err.count("\n") == 1
