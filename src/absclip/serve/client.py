"""A small standard-library client of ``absclip serve`` (what ``curl -F`` does), for scripts and tests."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request


def encode_multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """Return ``(body, content type)`` of a multipart/form-data request with text ``fields`` and ``files``
    given as ``{field: (file name, bytes)}``."""
    boundary = "absclip" + secrets.token_hex(8)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post_form(url: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]], *,
              headers: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, bytes, str]:
    """POST a multipart form; return ``(status, body, content type)``, error statuses included."""
    body, ctype = encode_multipart(fields, files)
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype, **(headers or {})}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers["Content-Type"]
