"""absclip serve: a real server process on 127.0.0.1, its answers, its errors, load, the page in Chromium."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from absclip.cli.main import main
from absclip.serve.client import encode_multipart, post_form

from .conftest import CLIP_CFG, CLIP_WEIGHTS, DATA, DINO, ROOT

MODEL = ["--model", str(CLIP_CFG), "--pretrained", str(CLIP_WEIGHTS), "--attention-model", str(DINO)]
SMALL = ["--crops", "6", "--feature-crops", "6"]
CLASSES = "tench,goldfish,tabby cat,espresso,missile,scuba diver"
SAMPLE = DATA / "imagenet-sample"
PHOTOS = [SAMPLE / "n01440764_tench.JPEG", SAMPLE / "n01443537_goldfish.JPEG", DATA / "photos" / "chelsea.png",
          DATA / "photos" / "coffee.png"]
KEY_ENV = "ABSCLIP_TEST_SERVE_KEY"
MAX_UPLOAD_MB = 1


def post(url: str, path: str, image: bytes | None, key: str | None, **fields: str) -> tuple[int, bytes, str]:
    files = {} if image is None else {"image": ("photo.jpg", image)}
    return post_form(url + path, fields, files, headers={"X-API-Key": key} if key else {})


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, key: str, proc: subprocess.Popen, log: Path) -> None:
        self.url, self.key, self.proc, self.log = url, key, proc, log

    def classify(self, image: bytes, **fields: str) -> list[dict]:
        status, body, _ = post(self.url, "/v1/classify", image, self.key, **fields)
        assert status == 200, body
        return json.loads(body)

    def alive(self) -> bool:
        return self.proc.poll() is None and get_json(self.url + "/healthz")["status"] == "ok"


@pytest.fixture(scope="module")
def absclip_server(tmp_path_factory):
    """``python -m absclip serve`` on a free port with an API key and a 1 MB upload limit."""
    tmp = tmp_path_factory.mktemp("serve")
    port = free_port()
    key = secrets.token_urlsafe(16)
    env = {**os.environ, KEY_ENV: key, "ABSCLIP_CACHE_DIR": str(tmp / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = tmp / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "absclip", "serve", *MODEL, *SMALL, "--classes", CLASSES,
                                 "--port", str(port), "--api-key-env", KEY_ENV, "--max-upload-mb", str(MAX_UPLOAD_MB),
                                 "--batch-wait-ms", "20", "--access-log"],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            get_json(url + "/healthz")
            break
        except OSError:
            assert time.monotonic() < deadline, "the server did not answer /healthz in 240 s:\n" + log.read_text()
            time.sleep(0.5)
    server = Server(url, key, proc, log)
    yield server
    proc.terminate()
    proc.wait(timeout=60)
    assert key not in log.read_text(), "the API key was logged"


def read(p: Path) -> bytes:
    return p.read_bytes()


def assert_same_answers(got: list[dict], want: list[dict], atol: float = 1e-6) -> None:
    """Same labels in the same order, scores equal up to float rounding.

    Server and CLI run in different processes (thread pools, oneDNN kernels), so sums may round
    differently in the last bits; a batch shared with other requests changes the order more (1e-5).
    """
    assert [r["label"] for r in got] == [r["label"] for r in want]
    assert np.allclose([r["score"] for r in got], [r["score"] for r in want], atol=atol, rtol=0)


# -- answers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["abs", "clip"])
def test_answers_equal_classify_json(absclip_server, capsys, method):
    """Each answer is the one 'absclip classify --json' gives for the same photo and settings."""
    # one image per model call on both sides (batched answers: next test)
    args = ["classify", *map(str, PHOTOS), "--json", "--method", method, "--top", "6", "--batch-size", "1",
            "--classes", CLASSES, *MODEL, *SMALL]
    assert main(args) == 0
    cli = json.loads(capsys.readouterr().out)
    served = [absclip_server.classify(read(p), method=method, top="6") for p in PHOTOS]
    assert len(served) == len(cli)
    for rows, c in zip(served, cli):
        assert_same_answers(rows, c["predictions"])
    assert all(len(rows) == 6 for rows in served)
    # a class list given per request: encoded on demand, same answer as the CLI with those classes
    assert main(["classify", str(PHOTOS[0]), "--json", "--method", method, "--classes", "fish,cat,cup",
                 *MODEL, *SMALL]) == 0
    cli = json.loads(capsys.readouterr().out)
    for classes in ("fish,cat,cup", '["fish", "cat", "cup"]'):
        assert_same_answers(absclip_server.classify(read(PHOTOS[0]), method=method, classes=classes),
                            cli[0]["predictions"])


def test_fifty_concurrent_requests_are_batched(absclip_server):
    """50 requests from 12 client threads all succeed, are batched, and equal the one-at-a-time answers."""
    alone = {p: absclip_server.classify(read(p), top="6") for p in PHOTOS}
    before = get_json(absclip_server.url + "/healthz")
    jobs = [PHOTOS[i % len(PHOTOS)] for i in range(50)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda p: absclip_server.classify(read(p), top="6"), jobs))
    after = get_json(absclip_server.url + "/healthz")
    assert after["images"] - before["images"] == 50
    assert after["batches"] - before["batches"] < 50 and after["largest_batch"] > 1  # images shared model calls
    for p, rows in zip(jobs, answers):
        ref = alone[p]
        assert_same_answers(rows, ref, atol=1e-5)  # a shared batch sums in another order (tests/test_pipeline.py)


def test_explain_returns_the_picture(absclip_server):
    status, body, ctype = post(absclip_server.url, "/v1/explain", read(PHOTOS[2]), absclip_server.key, top="3")
    assert status == 200 and ctype == "image/png"
    with Image.open(io.BytesIO(body)) as im:
        assert im.size == (1600, 1000) and np.asarray(im.convert("L")).std() > 10


def test_healthz_openapi_and_docs(absclip_server):
    h = get_json(absclip_server.url + "/healthz")
    assert h["status"] == "ok" and h["model"] == "clip-tiny.open_clip" and {"abs", "clip", "wca"} <= set(h["methods"])
    api = get_json(absclip_server.url + "/openapi.json")
    assert {"/v1/classify", "/v1/explain", "/healthz"} <= set(api["paths"])
    form = api["components"]["schemas"]
    assert any({"image", "classes", "method", "top"} <= set(s.get("properties", {})) for s in form.values())
    with urllib.request.urlopen(absclip_server.url + "/docs", timeout=30) as r:
        assert r.status == 200 and b"openapi.json" in r.read()
    assert get_json(absclip_server.url + "/v1/classes")["classes"] == CLASSES.split(",")


# -- bad input ------------------------------------------------------------------------------------------------
def bomb_png() -> bytes:
    """A 1x1 PNG whose header claims 100000 x 100000 pixels (a decompression bomb's signature)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, 100_000, 100_000)  # IHDR width, height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


BAD = [  # (what, image, fields, key, status, words in the error)
    ("not an image", b"hello, not an image", {}, "ok", 400, "not a recognised image"),
    ("truncated image", "truncated", {}, "ok", 400, "corrupt or truncated"),
    ("decompression bomb", "bomb", {}, "ok", 400, "exceeds the limit"),
    ("empty class list", "photo", {"classes": "[]"}, "ok", 400, "empty"),
    ("empty classes field", "photo", {"classes": ""}, "ok", 400, "empty"),
    ("only commas", "photo", {"classes": " , ,"}, "ok", 400, "empty"),
    ("duplicate classes", "photo", {"classes": "cat,dog,cat"}, "ok", 400, "Duplicate class names"),
    ("bad JSON classes", "photo", {"classes": '["cat", '}, "ok", 400, "not valid JSON"),
    ("unknown method", "photo", {"method": "magic"}, "ok", 400, "Unknown method 'magic'"),
    ("top 0", "photo", {"top": "0"}, "ok", 400, "`top` must be at least 1"),
    ("top not a number", "photo", {"top": "many"}, "ok", 400, "`top` is invalid"),
    ("no image", None, {}, "ok", 400, "`image` is required"),
    ("no API key", "photo", {}, None, 401, "API key"),
    ("wrong API key", "photo", {}, "wrong", 401, "API key"),
]


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/explain"])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(absclip_server, path):
    photo = read(PHOTOS[0])
    images = {"truncated": photo[: len(photo) // 2], "bomb": bomb_png(), "photo": photo}
    for what, image, fields, key, status, words in BAD:
        image = images.get(image, image) if isinstance(image, str) else image
        key = absclip_server.key if key == "ok" else key
        got, body, ctype = post(absclip_server.url, path, image, key, **fields)
        assert (got, ctype) == (status, "application/json"), (what, body)
        error = json.loads(body)["error"]
        assert words in error and error.count(". ") == 0 and absclip_server.key not in error, (what, error)
        assert absclip_server.alive(), what
    # and it still answers a good request, with the key as a bearer token too
    body, ctype = encode_multipart({"top": "2"}, {"image": ("tench.jpg", photo)})
    req = urllib.request.Request(absclip_server.url + "/v1/classify", data=body, method="POST",
                                 headers={"Content-Type": ctype, "Authorization": f"Bearer {absclip_server.key}"})
    with urllib.request.urlopen(req, timeout=300) as r:
        assert len(json.loads(r.read())) == 2


def test_oversized_uploads_get_413_before_they_are_read(absclip_server):
    host, port = absclip_server.url.removeprefix("http://").split(":")
    # declared too large: refused from the headers alone (no body is ever sent)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/classify")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(50 * 2**20))
    conn.putheader("X-API-Key", absclip_server.key)
    conn.endheaders()
    r = conn.getresponse()
    assert r.status == 413 and "larger than the server's limit of 1 MB" in json.loads(r.read())["error"]
    conn.close()
    # streamed without a length (chunked): refused once it passes the limit
    body, ctype = encode_multipart({}, {"image": ("big.jpg", os.urandom(3 * 2**20))})
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v1/classify", body=(body[i : i + 65536] for i in range(0, len(body), 65536)),
                     headers={"Content-Type": ctype, "X-API-Key": absclip_server.key}, encode_chunked=True)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while we were still sending: the answer is read below
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"].startswith("The upload is larger")
    conn.close()
    assert absclip_server.alive()


# -- the same API on Ray Serve -------------------------------------------------------------------------------
def test_ray_serve_deployment_answers_like_the_local_server(absclip_server, tmp_path):
    """--engine ray --replicas 2: a local Ray instance, two model replicas behind the same API."""
    pytest.importorskip("ray.serve", reason="needs absclip[serve-ray] (.ci/run installs it)")
    port = free_port()
    env = {**os.environ, "ABSCLIP_CACHE_DIR": str(tmp_path / "cache"), "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "ray.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "absclip", "serve", "--engine", "ray", "--replicas", "2",
                                 "--cpus-per-replica", "0.5", *MODEL, *SMALL, "--classes", CLASSES,
                                 "--port", str(port)], stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                health = get_json(url + "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, "Ray Serve did not answer in 300 s:\n" + log.read_text()[-3000:]
                time.sleep(1)
        assert health["status"] == "ok" and health["model"] == "clip-tiny.open_clip"
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda p: post(url, "/v1/classify", read(p), None, top="6"), PHOTOS * 2))
        for p, (status, body, _) in zip(PHOTOS * 2, answers):
            assert status == 200, body
            rows, ref = json.loads(body), absclip_server.classify(read(p), top="6")
            assert [r["label"] for r in rows] == [r["label"] for r in ref]
            assert np.allclose([r["score"] for r in rows], [r["score"] for r in ref], atol=1e-5, rtol=0)
        status, body, _ = post(url, "/v1/classify", b"not an image", None)
        assert status == 400 and "not a recognised image" in json.loads(body)["error"]
        status, body, ctype = post(url, "/v1/explain", read(PHOTOS[0]), None, classes="fish,cat")
        assert status == 200 and ctype == "image/png" and body[:4] == b"\x89PNG"
    finally:
        proc.terminate()  # SIGTERM: the driver shuts Serve and its Ray instance down
        proc.wait(timeout=120)


# -- the page, in a real browser ------------------------------------------------------------------------------
class DevTools:
    """The few Chrome DevTools Protocol calls the page test needs, over one websocket."""

    def __init__(self, ws: object) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expr: str) -> object:
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)["result"].get(
            "value")

    def wait_for(self, expr: str, timeout: float = 240) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expr)
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expr}"
            time.sleep(0.25)


@pytest.fixture()
def browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed (.ci/run installs the Debian package)"
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                             "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}",
                             "--window-size=1280,1000", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None:  # "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "chromium exited before opening its DevTools port"
            if "DevTools listening on" in line:
                port = int(line.split("ws://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
            assert time.monotonic() < deadline, "chromium did not open its DevTools port in 60 s"
        pages = [t for t in get_json(f"http://127.0.0.1:{port}/json/list") if t["type"] == "page"]
        from websockets.sync.client import connect

        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as ws:
            yield DevTools(ws)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_page_classifies_an_uploaded_photo_in_chromium(absclip_server, browser, tmp_path):
    """Load /, type the API key, pick a photo in the page's file input: ranked labels and the picture appear."""
    photo = PHOTOS[2]
    expected = absclip_server.classify(read(photo))  # the page's defaults: server classes, abs, top 5
    browser.call("Page.enable")
    browser.call("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1, mobile=False)
    browser.call("Page.navigate", url=absclip_server.url + "/")
    browser.wait_for("document.body && document.body.dataset.ready === '1'", timeout=60)
    assert browser.js("document.getElementById('classes').value") == CLASSES.replace(",", "\n")
    assert browser.js("document.getElementById('method').value") == "abs"
    browser.js("document.getElementById('apikey').focus()")
    browser.call("Input.insertText", text=absclip_server.key)
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=root, selector="#image")["nodeId"]
    browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(photo)])  # what picking a file does
    width = browser.wait_for("document.getElementById('explanation').complete && "
                             "document.getElementById('explanation').naturalWidth")
    assert width == 1600
    labels = browser.js("[...document.querySelectorAll('#labels .label')].map(e => e.textContent)")
    scores = browser.js("[...document.querySelectorAll('#labels .score')].map(e => e.textContent)")
    assert labels == [r["label"] for r in expected]
    assert scores == [f"{r['score']:.4f}" for r in expected]
    assert browser.js("document.getElementById('error').textContent") == ""
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    with Image.open(io.BytesIO(shot)) as im:
        assert im.size == (1280, 1000)
        px = np.asarray(im.convert("L"), dtype=np.float32)
    assert px.std() > 10  # the form, the labels and the picture, not a blank page
    (tmp_path / "serve-page.png").write_bytes(shot)
    if os.environ.get("ABSCLIP_UPDATE_DOCS"):  # refresh the README's screenshot
        (ROOT / "docs" / "serve-page.png").write_bytes(shot)


# -- fast checks without a server -----------------------------------------------------------------------------
def test_missing_extra_is_one_sentence(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now fails
    assert main(["serve", "--classes", "a,b", *MODEL]) == 2
    err = capsys.readouterr().err
    assert "pip install 'absclip[serve]'" in err and err.count("\n") == 1


def test_api_key_variable_must_be_set(monkeypatch, capsys):
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert main(["serve", "--classes", "a,b", "--api-key-env", KEY_ENV, *MODEL]) == 2
    assert f"--api-key-env names {KEY_ENV}, but that environment variable is not set" in capsys.readouterr().err


def test_parse_classes():
    from absclip.serve.service import parse_classes

    assert parse_classes("cat, dog ,,fish") == ("cat", "dog", "fish")
    assert parse_classes("cat\ndog") == ("cat", "dog")
    assert parse_classes('["cat", ["dog", "puppy"]]') == ("cat", ("dog", "puppy"))
    assert parse_classes("[]") == ()


def test_micro_batcher_batches_and_routes_results():
    from absclip.serve.batching import MicroBatcher

    seen: list[list[int]] = []

    def run(jobs):
        seen.append(list(jobs))
        return [ValueError(f"bad {j}") if j == 7 else j * 10 for j in jobs]

    async def scenario():
        b = MicroBatcher(run, max_batch=4, max_wait_s=0.05)
        await b.start()
        out = await asyncio.gather(*(b.submit(j) for j in range(10)), return_exceptions=True)
        one = await b.submit(11)  # alone: runs after the wait, in a batch of one
        await b.stop()
        return out, one

    out, one = asyncio.run(scenario())
    assert out[:7] == [0, 10, 20, 30, 40, 50, 60] and out[8:] == [80, 90] and one == 110
    assert isinstance(out[7], ValueError) and str(out[7]) == "bad 7"  # only its own caller hears of it
    assert [len(s) for s in seen] == [4, 4, 2, 1] and sorted(sum(seen, [])) == [*range(10), 11]


def test_app_without_a_model_behind_a_root_path():
    """The app's own rules, in process with a stand-in backend: prefix, page, key, upload limit, error shape."""
    from starlette.testclient import TestClient

    from absclip.serve.app import create_app

    class Backend:
        info = {"model": "stand-in", "methods": ["abs", "clip"], "classes": ["a", "b"], "method": "abs"}

        async def start(self):
            pass

        async def stop(self):
            pass

        async def classify(self, job):
            return [{"label": c, "score": 0.5} for c in (job.classes or self.info["classes"])][: job.top]

        def stats(self):
            return {}

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    app = create_app(Backend(), api_key="k", max_upload_bytes=1000, root_path="/absclip")
    with TestClient(app) as c:
        assert c.get("/openapi.json").json()["servers"] == [{"url": "/absclip"}]
        assert "/absclip/openapi.json" in c.get("/docs").text
        page = c.get("/")
        assert page.status_code == 200 and "<form" in page.text and "http" not in page.text.split("<script>")[1]
        assert c.get("/healthz").json() == {"status": "ok", "model": "stand-in", "methods": ["abs", "clip"]}
        files = {"image": ("x.png", png.getvalue())}
        r = c.post("/v1/classify", files=files, data={"classes": "x,y", "top": "1"})
        assert (r.status_code, r.json()) == (401, {"error": r.json()["error"]}) and "API key" in r.json()["error"]
        r = c.post("/v1/classify", files=files, data={"classes": "x,y", "top": "1"}, headers={"X-API-Key": "k"})
        assert r.json() == [{"label": "x", "score": 0.5}]
        r = c.post("/v1/classify", files={"image": ("x.png", b"0" * 2000)}, headers={"X-API-Key": "k"})
        assert r.status_code == 413 and r.json() == {"error": "The upload is larger than the server's limit of "
                                                              "0.000953674 MB."}
        assert c.get("/nowhere").json() == {"error": "Not Found"}
