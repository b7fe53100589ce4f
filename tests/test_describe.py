"""absclip describe end to end against a real chat-completions server on 127.0.0.1 (no network).

The fake server answers with canned but varied text (duplicates, lists, preambles, several
sentences per answer), honours ``n`` for some classes and ignores it for others, and fails on
purpose: 429 with Retry-After: 0, 500, malformed JSON.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from absclip.cli.main import main
from absclip.text.describe import ChatClient, ChatSettings, describe_class, fill_question, sentence_key, split_sentences

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-7f3c9e1d-super-secret"
KEY_ENV = "ABSCLIP_TEST_LLM_KEY"
CLASSES = ["red fox", "Abyssinian", "St. Bernard", "apple pie", "golden retriever", "espresso", "oak tree",
           "sea otter"]
ADJ = ["bright", "dark", "striped", "spotted", "glossy", "matte", "tiny", "huge", "curved", "pointed", "soft",
       "rough", "pale", "vivid", "round", "flat", "narrow", "wide", "long", "short"]
PART = ["ears", "tail", "surface", "edges", "outline", "texture", "colour", "shape", "top", "base"]


class FakeLLM:
    """POST /v1/chat/completions with scripted failures; counts requests per class."""

    def __init__(self, classes, *, delay=0.0, fail=True, always_fail=(), reject_n=False, status_for_all=None):
        self.classes = sorted(classes, key=len, reverse=True)  # longest match first
        self.delay = delay
        self.fail = fail
        self.always_fail = set(always_fail)
        self.reject_n = reject_n
        self.status_for_all = status_for_all
        self.lock = threading.Lock()
        self.per_class: Counter[str] = Counter()
        self.ok_per_class: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.auth: set[str | None] = set()
        self.ns: list[int] = []
        self.total = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                code, headers, payload = outer.answer(self.path, self.headers.get("Authorization"), body)
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _class_of(self, text):
        return next((c for c in self.classes if c in text), None)

    def answer(self, path, auth, body):
        if self.delay:
            time.sleep(self.delay)
        js = {"Content-Type": "application/json"}
        req = json.loads(body)
        question = req["messages"][-1]["content"]
        cls = self._class_of(question)
        with self.lock:
            self.total += 1
            g = self.total
            self.auth.add(auth)
            self.per_class[cls] += 1
            self.ns.append(req.get("n", 1))
            if path != "/v1/chat/completions":
                return 404, js, b'{"error": {"message": "not found"}}'
            if self.status_for_all:
                self.statuses[str(self.status_for_all)] += 1
                return self.status_for_all, js, json.dumps({"error": {"message": f"nope, key {auth}"}}).encode()
            if cls in self.always_fail:
                self.statuses["500"] += 1
                return 500, js, b'{"error": {"message": "overloaded"}}'
            if self.fail and g % 5 == 1:
                self.statuses["429"] += 1
                return 429, {**js, "Retry-After": "0"}, b'{"error": {"message": "rate limited"}}'
            if self.fail and g % 7 == 3:
                self.statuses["500"] += 1
                return 500, js, b"Internal Server Error"
            if self.fail and g % 11 == 5:
                self.statuses["malformed"] += 1
                return 200, js, b'{"choices": [{"message": {"content": "The cut-off'
            if self.reject_n and req.get("n", 1) > 1:
                self.statuses["400"] += 1
                return 400, js, b'{"error": {"message": "n must be 1"}}'
            self.ok_per_class[cls] += 1
            k0 = self.ok_per_class[cls]
        honours_n = CLASSES.index(cls) % 2 == 0 if cls in CLASSES else True
        n = req.get("n", 1) if honours_n else 1
        choices = [{"index": i, "message": {"role": "assistant", "content": self._text(cls, k0 * 10 + i)},
                    "finish_reason": "stop"} for i in range(n)]
        return 200, js, json.dumps({"id": f"c{g}", "object": "chat.completion", "choices": choices}).encode()

    @staticmethod
    def _text(cls, k):
        a, p = ADJ[k % len(ADJ)], PART[(k // len(ADJ)) % len(PART)]
        b = ADJ[(k * 7 + 3) % len(ADJ)]
        style = k % 6
        if style == 0:
            return f"A {cls} has {a} {p}."
        if style == 1:  # the same sentence as in style 5, in another case and spacing
            return f"a  {cls.upper()}   is   shown   in this photo"
        if style == 2:
            return f"The {cls} shows {b} {p}. You can spot a {cls} by its {a} {p}!"
        if style == 3:
            return f"Sure! Here are some details:\n1. A {cls} with {a} {p}.\n2. The {cls} looks {b} overall."
        if style == 4:
            return f'"A photo of a {cls}, which has {a} {p}."'
        return f"- A {cls} is shown in this photo.\n- Its {p} looks {b}, like every {cls}."


@pytest.fixture
def llm():
    servers = []

    def start(*a, **k):
        s = FakeLLM(*a, **k)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _args(server, out, *extra, classes_file=None):
    return ["describe", "--classes-file", str(classes_file), "--out", str(out), "--base-url", server.base_url,
            "--model", "fake-model", "--api-key-env", KEY_ENV, "--backoff", "0.001", "--max-retries", "8",
            "--no-progress", *extra]


def _classes_file(tmp_path, classes=CLASSES):
    f = tmp_path / "classes.txt"
    f.write_text("\n".join(classes) + "\n")
    return f


def _assert_valid(out: Path, classes, per_class):
    data = json.loads(out.read_text())
    assert list(data) == list(classes)  # class order, nothing else
    for c, sentences in data.items():
        assert len(sentences) == per_class, (c, sentences)
        assert all(isinstance(s, str) and s == s.strip() and s for s in sentences)
        keys = [sentence_key(s) for s in sentences]
        assert len(set(keys)) == len(keys), f"duplicates for {c}: {sentences}"
        assert all(c.lower() in s.lower() or "its" in s.lower() for s in sentences)
        assert not any(s.endswith(":") or s.lower().startswith("sure") or s[:2] in ("1.", "- ") for s in sentences)
    return data


def test_describe_end_to_end_with_failures(llm, env, tmp_path, capsys, caplog):
    server = llm(CLASSES)
    out = tmp_path / "sub" / "descriptions.json"
    questions = tmp_path / "questions.txt"
    questions.write_text("Describe what a {c} looks like.\nHow can you identify a {c}?\nWhat colour is a {c}?\n")
    caplog.set_level("DEBUG")
    rc = main(_args(server, out, "--per-class", "7", "--questions", str(questions), "--concurrency", "3",
                    classes_file=_classes_file(tmp_path)))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = _assert_valid(out, CLASSES, 7)
    assert "St. Bernard" in " ".join(data["St. Bernard"])  # the class name was not split at "St."
    # failures really happened and were retried
    assert server.statuses["429"] and server.statuses["500"] and server.statuses["malformed"]
    # every request carried the key as a Bearer header
    assert server.auth == {f"Bearer {KEY}"}
    assert "8 of 8 classes (8 new, 0 already there, 0 failed" in captured.out
    for text in (out.read_text(), captured.out, captured.err, caplog.text):
        assert KEY not in text
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp files left
    # n was used, and a server that ignores it still gave enough completions
    assert max(server.ns) > 1


def test_describe_default_questions_and_articles(llm, env, tmp_path):
    server = llm(["apple pie", "cat"], fail=False)
    out = tmp_path / "d.json"
    rc = main(["describe", "--classes", "apple pie,cat", "--out", str(out), "--base-url", server.base_url,
               "--api-key-env", KEY_ENV, "--per-class", "5", "--no-progress"])
    assert rc == 0
    _assert_valid(out, ["apple pie", "cat"], 5)
    assert server.per_class["apple pie"] >= 5  # one request per default question at least


def test_server_rejecting_n_falls_back_to_single_completions(llm, env, tmp_path):
    server = llm(["apple pie"], fail=False, reject_n=True)
    out = tmp_path / "d.json"
    assert main(["describe", "--classes", "apple pie", "--out", str(out), "--base-url", server.base_url,
                 "--api-key-env", KEY_ENV, "--per-class", "6", "--no-progress", "--backoff", "0"]) == 0
    _assert_valid(out, ["apple pie"], 6)
    assert server.statuses["400"] == 1 and server.ns[-1] == 1


def test_a_class_that_keeps_failing_is_reported_and_the_rest_saved(llm, env, tmp_path, capsys):
    server = llm(CLASSES[:4], fail=False, always_fail={"St. Bernard"})
    out = tmp_path / "d.json"
    rc = main(_args(server, out, "--per-class", "3", "--max-retries", "2", classes_file=_classes_file(
        tmp_path, CLASSES[:4])))
    err = capsys.readouterr().err
    assert rc == 1
    assert "1 classes failed ('St. Bernard': gave up after 3 attempts" in err and "HTTP 500" in err
    assert server.per_class["St. Bernard"] == 3
    data = json.loads(out.read_text())
    assert list(data) == ["red fox", "Abyssinian", "apple pie"]
    # the next run only asks for the missing class
    before = Counter(server.per_class)
    server.always_fail.clear()
    assert main(_args(server, out, "--per-class", "3", classes_file=tmp_path / "classes.txt")) == 0
    _assert_valid(out, CLASSES[:4], 3)
    assert {c: server.per_class[c] - before[c] for c in CLASSES[:4]}["red fox"] == 0
    assert server.per_class["St. Bernard"] > before["St. Bernard"]


def test_refused_key_stops_the_run_without_leaking_it(llm, env, tmp_path, capsys):
    server = llm(["cat", "dog"], status_for_all=401)
    out = tmp_path / "d.json"
    rc = main(["describe", "--classes", "cat,dog", "--out", str(out), "--base-url", server.base_url,
               "--api-key-env", KEY_ENV, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("absclip: error: The server at") and "HTTP 401" in err and KEY_ENV in err
    assert KEY not in err and "***" in err  # the server echoed the key; we redact it
    assert server.total <= 2  # no retries on 401
    assert not out.exists()


def test_missing_key_for_openai_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rc = main(["describe", "--classes", "cat", "--out", str(tmp_path / "d.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Set the environment variable OPENAI_API_KEY" in err


def test_corrupt_existing_output_is_not_overwritten(llm, env, tmp_path, capsys):
    server = llm(["cat"], fail=False)
    out = tmp_path / "d.json"
    out.write_text('{"cat": ["half')
    rc = main(["describe", "--classes", "cat", "--out", str(out), "--base-url", server.base_url, "--no-progress",
               "--api-key-env", KEY_ENV])
    assert rc == 2 and "not valid JSON" in capsys.readouterr().err
    assert out.read_text() == '{"cat": ["half' and server.total == 0
    assert main(["describe", "--classes", "cat", "--out", str(out), "--base-url", server.base_url, "--no-progress",
                 "--api-key-env", KEY_ENV, "--overwrite", "--per-class", "2"]) == 0
    _assert_valid(out, ["cat"], 2)


def test_resume_after_sigkill(llm, tmp_path, monkeypatch, capsys):
    """Kill a running describe, restart it: finished classes are kept and never asked again."""
    server = llm(CLASSES, delay=0.08)
    out = tmp_path / "d.json"
    cf = _classes_file(tmp_path)
    cmd = [sys.executable, "-m", "absclip", *_args(server, out, "--per-class", "4", "--concurrency", "1",
                                                       classes_file=cf)]
    env = {**os.environ, KEY_ENV: KEY, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",
           "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(json.loads(out.read_text())) >= 2:  # always valid JSON (atomic writes)
                break
            time.sleep(0.01)
        assert proc.poll() is None, "describe finished before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.2)  # let the server finish answering the request in flight
    finished = json.loads(out.read_text())
    assert 2 <= len(finished) < len(CLASSES)
    assert list(finished) == CLASSES[: len(finished)]  # concurrency 1: in class order
    asked_before = Counter(server.per_class)
    assert all(asked_before[c] == 0 for c in CLASSES[len(finished) + 1:])

    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server.delay = 0.0
    assert main(cmd[3:]) == 0  # the same command again, in this process
    captured = capsys.readouterr()
    assert f"({len(CLASSES) - len(finished)} new, {len(finished)} already there" in captured.out
    for c in finished:
        assert server.per_class[c] == asked_before[c], f"{c} was asked again"
    data = _assert_valid(out, CLASSES, 4)
    assert {c: data[c] for c in finished} == finished  # finished classes untouched
    assert KEY not in out.read_text() + captured.out + captured.err


# -----------------------------------------------------------------------------------------------
# units
# -----------------------------------------------------------------------------------------------


def test_split_sentences():
    text = ('Sure! Here are a few:\n1. The St. Bernard is a huge dog. It has a broad head!\n'
            '- "A St. Bernard, e.g. a rescue dog, has a red coat."\n\nok\nWhat a dog? Yes it is big')
    assert split_sentences(text, protect=["St. Bernard"]) == [
        "The St. Bernard is a huge dog.", "It has a broad head!",
        "A St. Bernard, e.g. a rescue dog, has a red coat.", "What a dog?", "Yes it is big"]
    assert split_sentences("Mr. Potato Head is a toy. 3.5 cm tall.") == ["Mr. Potato Head is a toy.", "3.5 cm tall."]
    assert sentence_key("A  Cat is here.") == sentence_key("a cat is HERE")


def test_fill_question_articles():
    assert fill_question("Describe what a {c} looks like.", "apple") == "Describe what an apple looks like."
    assert fill_question("A caption of a {}:", "cat") == "A caption of a cat:"
    assert fill_question("A {c}", "owl") == "An owl"


def test_client_honours_retry_after_and_gives_up(llm, env):
    server = llm(["cat"], status_for_all=503)
    client = ChatClient(ChatSettings(base_url=server.base_url, api_key_env=KEY_ENV, max_retries=2, backoff=0.0))
    t = time.monotonic()
    with pytest.raises(Exception, match=r"gave up after 3 attempts \(last: HTTP 503"):
        describe_class(client, "cat", ["Describe a {c}."], 2)
    assert server.total == 3 and time.monotonic() - t < 5
    assert client._delay(0, 1.5) == 1.5  # Retry-After wins
    slow = ChatClient(ChatSettings(base_url=server.base_url, api_key_env=KEY_ENV, backoff=1.0, max_backoff=5.0))
    assert 2.0 <= slow._delay(2, None) <= 4.0 and 2.5 <= slow._delay(6, None) <= 5.0
    assert "key" not in repr(client).lower() and KEY not in repr(client)


def test_connection_errors_are_retried_then_reported(env, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    client = ChatClient(ChatSettings(base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, max_retries=1,
                                     backoff=0.0, timeout=5))
    with pytest.raises(Exception, match="connection failed") as e:
        client.complete([{"role": "user", "content": "hi"}])
    assert KEY not in str(e.value) and client.requests == 2
    assert re.search(r"attempts", str(e.value))
