"""A client for any OpenAI-compatible chat-completions server: retries, backoff, Retry-After, cancellation.

Requests are retried with exponential backoff and jitter on 429, 408, 409, 5xx, connection
errors and malformed answers, honouring Retry-After (capped); 401/403 (the key) and 404 (the URL
or model) stop the run with one sentence that says what to check, and a server that refuses
``n`` > 1 is asked one completion per request. The API key is read from an environment variable
and only ever sent as a Bearer header. :mod:`absclip.text.describe` asks it CuPL's questions."""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, NoReturn

from absclip.errors import AbsclipError

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = (
    "You write short visual descriptions for an image classifier. Answer in one or two plain sentences "
    "about what can be seen, and name the {c} in each sentence. No lists, no preamble."
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"
MAX_N_PER_REQUEST = 16  # completions asked for in one request (servers may return fewer)
MAX_RETRY_AFTER_S = 600.0


class ChatError(AbsclipError):
    """A request failed for good (retries exhausted or a refusal); the class it was for is skipped."""


class ChatFatalError(ChatError):
    """The server refused the whole run (bad key, unknown model or URL); no class can succeed."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Cancelled(Exception):
    pass


@dataclass(frozen=True)
class ChatSettings:
    """Where and how to ask: the server, the model and the retry policy (never the key itself)."""

    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.99  # CuPL's sampling temperature
    max_tokens: int = 80
    timeout: float = 60.0  # seconds per request
    max_retries: int = 6  # retries after the first attempt
    backoff: float = 1.0  # first retry delay in seconds; doubles each retry (with jitter)
    max_backoff: float = 60.0


@dataclass(frozen=True)
class Completion:
    """One answer: its text and whether the server cut it off at ``max_tokens``."""

    text: str
    truncated: bool = False


def chat_url(base_url: str) -> str:
    """Return the chat-completions URL for a base URL (``.../v1`` or the full endpoint)."""
    base = base_url.strip().rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


class ChatClient:
    """A minimal, thread-safe client for ``POST {base_url}/chat/completions`` (standard library only).

    The API key comes from the environment variable ``settings.api_key_env``; it is sent as
    ``Authorization: Bearer ...`` and removed from any error text. ``stop()`` makes pending
    back-off sleeps end at once (used on interruption).
    """

    def __init__(self, settings: ChatSettings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.url = chat_url(settings.base_url)
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise AbsclipError(f"`base_url` {settings.base_url!r} is not an http(s) URL.")
        self._api_key = os.environ.get(settings.api_key_env, "").strip() or None
        if self._api_key is None:
            if parsed.hostname == "api.openai.com":
                raise AbsclipError(f"Set the environment variable {settings.api_key_env} to your API key (or name "
                                   "another variable with `api_key_env`).")
            log.info("No %s in the environment; sending requests without an API key.", settings.api_key_env)
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._n_supported = True
        self.requests = 0  # HTTP requests sent (for reports and tests)

    def __repr__(self) -> str:
        return f"ChatClient(url={self.url!r}, model={self.settings.model!r})"

    def stop(self) -> None:
        """Make running and future back-off sleeps end at once; later requests are cancelled."""
        self._stop.set()

    def redact(self, text: str) -> str:
        """Return ``text`` with the API key replaced by ``***``."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def complete(self, messages: list[dict[str, str]], n: int = 1) -> list[Completion]:
        """Return the server's completions for ``messages`` (up to ``n``; servers may return fewer).

        Retries 429, 5xx, 408/409, connection errors, timeouts and malformed answers up to
        ``max_retries`` times with exponential backoff and jitter, or after Retry-After.

        Raises:
            ChatFatalError: 401/403/404 (key, model or URL wrong) — retrying cannot help.
            ChatError: another refusal, or retries exhausted.
        """
        s = self.settings
        last = ""
        for attempt in range(s.max_retries + 1):
            if self._stop.is_set():
                raise _Cancelled()
            try:
                return self._post(messages, n if self._n_supported else 1)
            except _Retryable as e:
                last = str(e)
                if attempt == s.max_retries:
                    break
                delay = self._delay(attempt, e.retry_after)
                log.debug("Request failed (%s); retry %d/%d in %.2f s.", last, attempt + 1, s.max_retries, delay)
                if self._stop.wait(delay):
                    raise _Cancelled() from None
        raise ChatError(f"gave up after {s.max_retries + 1} attempts (last: {last})")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
        d = min(self.settings.max_backoff, self.settings.backoff * (2**attempt))
        with self._lock:
            return d / 2 + self._rng.uniform(0, d / 2)  # "equal jitter"

    def _headers(self) -> dict[str, str]:
        from absclip._version import __version__

        h = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": f"absclip/{__version__}"}
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _post(self, messages: list[dict[str, str]], n: int) -> list[Completion]:
        s = self.settings
        body: dict[str, Any] = {"model": s.model, "messages": messages, "temperature": s.temperature,
                                "max_tokens": s.max_tokens}
        if n > 1:
            body["n"] = n
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=self._headers(), method="POST")
        with self._lock:
            self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=s.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            self._raise_for_status(e, n)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise _Retryable(self.redact(f"connection failed: {reason}")) from None
        return self._parse(raw)

    def _raise_for_status(self, e: urllib.error.HTTPError, n: int) -> NoReturn:
        code = e.code
        try:
            detail = e.read(2000).decode("utf-8", "replace")
        except Exception:  # the body is only used for the message
            detail = ""
        detail = self.redact(_error_message(detail))
        msg = f"HTTP {code}" + (f": {detail}" if detail else "")
        if code == 429 or code >= 500 or code in (408, 409):
            raise _Retryable(msg, _retry_after(e.headers.get("Retry-After") if e.headers else None))
        if code in (401, 403):
            raise ChatFatalError(f"The server at {self.url} refused the request ({msg}); check the key in "
                                 f"{self.settings.api_key_env}.")
        if code == 404:
            raise ChatFatalError(f"The server answered 404 for {self.url} ({msg}); check `base_url` (usually "
                                 f"ending in /v1) and `model` {self.settings.model!r}.")
        if code in (400, 422) and n > 1 and self._n_supported:
            log.info("The server refused n=%d (%s); asking for one completion per request from now on.", n, msg)
            self._n_supported = False
            raise _Retryable(msg, retry_after=0.0)
        raise ChatError(msg)

    def _parse(self, raw: bytes) -> list[Completion]:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Retryable("malformed JSON in the response") from None
        if not isinstance(data, dict):
            raise _Retryable("the response is not a JSON object")
        if "error" in data and not data.get("choices"):
            raise _Retryable(self.redact(f"error in the response: {_error_message(json.dumps(data['error']))}"))
        choices = data.get("choices")
        out: list[Completion] = []
        if isinstance(choices, list):
            for c in choices:
                msg = c.get("message") if isinstance(c, dict) else None
                text = msg.get("content") if isinstance(msg, dict) else None
                if isinstance(text, str):
                    out.append(Completion(text, truncated=c.get("finish_reason") == "length"))
        if not out:
            raise _Retryable("the response has no choices[].message.content")
        return out


def _error_message(body: str) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                return err["message"][:200]
            if isinstance(err, str):
                return err[:200]
    except (json.JSONDecodeError, TypeError):
        pass
    return " ".join(body.split())[:200]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None
