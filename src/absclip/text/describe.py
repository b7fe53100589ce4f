"""CuPL-style class descriptions from any OpenAI-compatible chat-completions server.

For each class, several questions ("Describe what a {c} looks like", ...) are sent to the
server; the answers are split into sentences, deduplicated (ignoring case and spaces) and the
first ``per_class`` are kept, taking the questions in turn so that each contributes. The output
is the ``{class: [sentences]}`` JSON that ``--descriptions`` reads.

The output file is rewritten atomically after each finished class, so an interrupted run keeps
every finished class and a new run skips them (resume). The server is asked through
:class:`absclip.text.chat.ChatClient` (retries, backoff, Retry-After; the API key only ever sent
as a Bearer header).

Example::

    >>> from absclip.text.describe import ChatClient, ChatSettings, generate_descriptions
    >>> client = ChatClient(ChatSettings(base_url="http://127.0.0.1:8000/v1", model="llama3"))  # doctest: +SKIP
    >>> generate_descriptions(["cat", "dog"], "descriptions.json", client=client, per_class=20)  # doctest: +SKIP
    DescribeReport(written=['cat', 'dog'], resumed=[], failed={}, short={}, requests=10)"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from absclip.errors import AbsclipError
from absclip.io.files import atomic_write_json
from absclip.text.chat import (
    DEFAULT_SYSTEM_PROMPT,
    MAX_N_PER_REQUEST,
    ChatClient,
    ChatError,
    ChatFatalError,
)
from absclip.text.chat import ChatSettings as ChatSettings  # re-exported: the example above imports it from here

log = logging.getLogger(__name__)

# CuPL's question prompts (Pratt et al.), as chat questions with a {c} placeholder.
DEFAULT_QUESTIONS: tuple[str, ...] = (
    "Describe what a {c} looks like.",
    "How can you identify a {c}?",
    "What does a {c} look like?",
    "Describe an image from the internet of a {c}.",
    "Write a caption of an image of a {c}.",
)


# -----------------------------------------------------------------------------------------------
# Questions and sentences
# -----------------------------------------------------------------------------------------------


def fill_question(template: str, name: str) -> str:
    """Return ``template`` with ``{c}`` (or ``{}``) replaced by ``name``, turning "a" into "an" before a vowel."""
    def article(m: re.Match[str]) -> str:
        a = m.group(1)
        return a + "n" if name[:1].lower() in "aeiou" else a

    text = re.sub(r"\b([aA])(?= (?:\{c\}|\{\}))", article, template)
    return text.replace("{c}", name).replace("{}", name)


def load_questions(path: str | os.PathLike) -> list[str]:
    """Return the question templates of a file: a JSON list or a ``.txt`` with one per line, each with ``{c}``.

    Raises:
        AbsclipError: the file is missing, empty, not a list, or a question has no ``{c}``/``{}``.
    """
    from absclip.text.sources import read_text_source

    data = read_text_source(path)
    if not isinstance(data, list) or not data:
        raise AbsclipError(f"{path} must hold a list of questions with {{c}} (JSON list or one per line in .txt).")
    bad = [q for q in data if "{c}" not in q and "{}" not in q]
    if bad:
        raise AbsclipError(f"The question {bad[0]!r} in {path} has no {{c}} placeholder for the class name.")
    return list(data)


_LIST_MARK = re.compile(r"^\s*(?:[-*•·]+|\(?\d{1,2}[.):]|[a-z][.)])\s+")
_PREAMBLE = re.compile(r"^(?:sure|certainly|of course|here (?:is|are)|okay|ok)\b", re.IGNORECASE)
_ABBREVIATIONS = {"st", "mr", "mrs", "ms", "dr", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx", "no", "mt", "ft",
                  "in", "cm", "mm", "oz", "lb", "lbs", "u.s"}
_QUOTES = "\"'“”‘’`"


def split_sentences(text: str, protect: Sequence[str] = ()) -> list[str]:
    """Return the sentences of an answer: one per line or per ``. ``/``! ``/``? ``, without list marks or quotes.

    Abbreviations ("St. Bernard", "e.g.") and the strings in ``protect`` (e.g. the class name)
    are never split. Fragments under three words, lines ending in ":" and chatty preambles
    ("Sure, here are ...") are dropped.
    """
    out: list[str] = []
    for line in text.replace("\r", "\n").split("\n"):
        line = _LIST_MARK.sub("", line.strip()).strip().strip(_QUOTES).strip()
        if not line:
            continue
        guarded = line
        for i, p in enumerate(protect):
            if p and ". " in p:
                guarded = guarded.replace(p, p.replace(". ", f".\x00{i}\x00"))
        start = 0
        parts: list[str] = []
        for m in re.finditer(r"[.!?]+[\"'”’)]?\s+", guarded):
            before = guarded[start : m.start()].rsplit(" ", 1)[-1].lower().lstrip("(")
            nxt = guarded[m.end() : m.end() + 1]
            if before in _ABBREVIATIONS or re.fullmatch(r"[a-z]", before) or not (nxt.isupper() or nxt.isdigit()
                                                                                   or nxt in _QUOTES + "("):
                continue
            parts.append(guarded[start : m.end()])
            start = m.end()
        parts.append(guarded[start:])
        for part in parts:
            s = re.sub(r"\x00\d+\x00", " ", part).strip().strip(_QUOTES).strip()
            s = " ".join(s.split())
            if len(s.split()) < 3 or s.endswith(":") or _PREAMBLE.match(s):
                continue
            out.append(s)
    return out


def sentence_key(sentence: str) -> str:
    """Return the deduplication key: lower case, single spaces, no trailing punctuation."""
    return " ".join(sentence.lower().split()).rstrip(" .!?")


def _drop_truncated_tail(text: str) -> str:
    """Return ``text`` without a last fragment that does not end a sentence (the answer was cut off)."""
    t = text.rstrip()
    if not t or t[-1] in ".!?\"'”’)":
        return t
    m = list(re.finditer(r"[.!?][\"'”’)]?(?=\s)", t))
    return t[: m[-1].end()] if m else ""


def describe_class(client: ChatClient, name: str, questions: Sequence[str], per_class: int, *,
                   system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, max_rounds: int = 4) -> list[str]:
    """Return up to ``per_class`` distinct sentences describing ``name``, asking each question in turn.

    Each round asks every question for ``ceil(missing / len(questions))`` completions (``n``;
    repeated requests when the server returns fewer); answers are split into sentences and
    merged round-robin over the questions, then deduplicated. Rounds repeat while sentences are
    missing, up to ``max_rounds`` or until a round adds nothing new.

    Raises:
        ChatError: no usable sentence, or a request failed for good.
    """
    if per_class < 1:
        raise AbsclipError("`per_class` must be at least 1.")
    prompts = [fill_question(q, name) for q in questions]
    system = fill_question(system_prompt, name) if system_prompt else None
    per_question: list[list[str]] = [[] for _ in prompts]
    seen: set[str] = set()
    kept: list[str] = []

    def merged() -> list[str]:
        out, keys = [], set()
        for row in zip(*[q + [None] * (max(map(len, per_question)) - len(q)) for q in per_question]):
            for s in row:
                if s is not None and sentence_key(s) not in keys:
                    keys.add(sentence_key(s))
                    out.append(s)
        return out

    for _ in range(max_rounds):
        missing = per_class - len(kept)
        if missing <= 0:
            break
        want = math.ceil(missing / len(prompts))
        before = len(seen)
        for qi, prompt in enumerate(prompts):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            got = 0
            while got < want:
                answers = client.complete(messages, n=min(want - got, MAX_N_PER_REQUEST))
                got += len(answers)
                for a in answers:
                    text = _drop_truncated_tail(a.text) if a.truncated else a.text
                    for s in split_sentences(text, protect=[name]):
                        k = sentence_key(s)
                        if k not in seen:
                            seen.add(k)
                            per_question[qi].append(s)
        kept = merged()
        if len(seen) == before:
            break
    if not kept:
        raise ChatError("the answers held no usable sentence")
    if len(kept) < per_class:
        log.warning("Only %d of %d distinct sentences for %r.", len(kept), per_class, name)
    return kept[:per_class]


# -----------------------------------------------------------------------------------------------
# The resumable run
# -----------------------------------------------------------------------------------------------


@dataclass
class DescribeReport:
    """What a run did: classes written now, classes already present (resumed), failures, short classes."""

    written: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    short: dict[str, int] = field(default_factory=dict)  # class -> sentences obtained (< per_class)
    requests: int = 0


def read_existing(path: str | os.PathLike) -> dict[str, list[str]]:
    """Return the ``{class: [sentences]}`` already in ``path`` (empty if the file is absent or empty).

    Raises:
        AbsclipError: the file exists but is not such a JSON object (it is never overwritten then).
    """
    p = Path(path)
    if not p.exists():
        return {}
    try:
        raw = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AbsclipError(f"Cannot read the existing output {p} ({e}); move it away or pass `overwrite`.") from e
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AbsclipError(f"The existing output {p} is not valid JSON (line {e.lineno}); move it away or pass "
                           "`overwrite`.") from e
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                             for v in data.values()):
        raise AbsclipError(f"The existing output {p} is not a {{class: [sentences]}} object; move it away or pass "
                           "`overwrite`.")
    return data


def write_atomic(path: str | os.PathLike, data: dict[str, list[str]]) -> None:
    """Write ``data`` as JSON to ``path`` via a synced temporary file and ``os.replace`` (never half-written)."""
    try:
        atomic_write_json(path, data, ensure_ascii=False)
    except OSError as e:
        raise AbsclipError(f"Cannot write {path} ({e.strerror}).") from e


def generate_descriptions(
    classes: Sequence[str],
    out: str | os.PathLike,
    *,
    client: ChatClient,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
    per_class: int = 50,
    concurrency: int = 4,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    overwrite: bool = False,
    progress: bool = True,
    on_class: Callable[[str, list[str]], None] | None = None,
) -> DescribeReport:
    """Return a report after writing ``{class: [sentences]}`` for every class to ``out`` (resuming).

    Classes already in ``out`` with at least one sentence are not asked again (unless
    ``overwrite``). Up to ``concurrency`` classes are in flight at once, one request each. The
    file is rewritten atomically after every finished class, in class order, keeping entries
    for other classes that were already there. A class whose requests fail for good is left
    out and reported in ``failed``; the others are still written.

    Raises:
        ChatFatalError: the server refused the run (key, URL, model); finished classes are saved.
        AbsclipError: bad arguments or an unreadable existing output.
        KeyboardInterrupt: passed on after the finished classes are saved.
    """
    if concurrency < 1:
        raise AbsclipError("`concurrency` must be at least 1.")
    if not questions:
        raise AbsclipError("Give at least one question.")
    if per_class < 1:
        raise AbsclipError("`per_class` must be at least 1.")
    order = list(dict.fromkeys(c.strip() for c in classes if c.strip()))
    existing = {} if overwrite else read_existing(out)
    results: dict[str, list[str]] = dict(existing)
    report = DescribeReport(resumed=[c for c in order if existing.get(c)])
    todo = [c for c in order if not existing.get(c)]
    if report.resumed:
        log.info("Resuming: %d of %d classes are already in %s.", len(report.resumed), len(order), out)

    def ordered() -> dict[str, list[str]]:
        done = {c: results[c] for c in order if results.get(c)}
        done.update({k: v for k, v in results.items() if k not in done})
        return done

    from tqdm import tqdm

    bar = tqdm(total=len(order), initial=len(report.resumed), desc="describe", unit="class", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="absclip-describe")
    pending: dict[Future[list[str]], str] = {}
    queue = list(reversed(todo))
    try:
        while queue or pending:
            while queue and len(pending) < concurrency:
                name = queue.pop()
                pending[pool.submit(describe_class, client, name, questions, per_class,
                                    system_prompt=system_prompt)] = name
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                name = pending.pop(fut)
                try:
                    sentences = fut.result()
                except ChatFatalError:
                    raise
                except ChatError as e:
                    report.failed[name] = str(e)
                    log.warning("No descriptions for %r: %s", name, e)
                    bar.update(1)
                    continue
                results[name] = sentences
                if len(sentences) < per_class:
                    report.short[name] = len(sentences)
                write_atomic(out, ordered())
                report.written.append(name)
                bar.update(1)
                if on_class is not None:
                    on_class(name, sentences)
    except BaseException:
        client.stop()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
        report.requests = client.requests
    pool.shutdown(wait=True)
    return report
