"""Files absclip writes: atomic writes and the cache root.

Every file is written to a temporary file in the same folder, synced, then moved over the target
with ``os.replace``, so a reader (or a process killed mid-write) sees the old file or the new one,
never a half-written one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: environment variable naming absclip's cache folder (text embeddings, downloaded description sets)
CACHE_ENV = "ABSCLIP_CACHE_DIR"


def cache_root() -> Path:
    """Return absclip's cache folder: ``$ABSCLIP_CACHE_DIR`` or ``~/.cache/absclip``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "absclip")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is synced and moved over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _finite(obj: Any) -> Any:
    """Return ``obj`` with every NaN or infinite float replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any, **dump_kwargs: Any) -> str:
    """Return ``obj`` as strict JSON (RFC 8259, what ``JSON.parse`` accepts): NaN and infinities become ``null``.

    Every JSON file and JSON output absclip writes goes through here (``allow_nan=False``).
    """
    try:
        return json.dumps(obj, allow_nan=False, **dump_kwargs)
    except ValueError:  # a non-finite float somewhere: write it as null rather than as invalid JSON
        return json.dumps(_finite(obj), allow_nan=False, **dump_kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> Path:
    """Write ``obj`` as indented strict JSON (:func:`json_text`) to ``path`` atomically; return the path."""
    dump_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json_text(obj, **dump_kwargs) + "\n")
