"""Paths and URIs: :func:`split_uri` (a pyarrow filesystem for a local path or ``scheme://`` URI)
and :func:`read_bytes` (an image's bytes, one filesystem object per scheme and bucket/host)."""

from __future__ import annotations

import os
from typing import Any

from absclip.errors import AbsclipError, BadImageError

_FILESYSTEMS: dict[str, Any] = {}


def split_uri(uri: str) -> tuple[Any, str, str]:
    """Return ``(pyarrow filesystem, path inside it, prefix)`` so that ``prefix + path`` is the URI again.

    Local paths (no ``scheme://``) get the local filesystem, an absolute path and an empty prefix.
    """
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri), ""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises several types for unknown schemes or bad URIs
        raise AbsclipError(f"{uri}: pyarrow cannot open this URI ({str(e).splitlines()[0]}).") from e
    prefix = uri[: len(uri) - len(path)] if uri.endswith(path) else uri.split("://", 1)[0] + "://"
    return fs, path, prefix


def read_bytes(path: str) -> bytes:
    """Return the bytes of a local file or a pyarrow-reachable URI; a missing file raises :class:`BadImageError`.

    Other I/O errors propagate, so that Ray retries a transient failure instead of skipping the image.
    """
    from absclip.io.images import read_image_bytes

    if "://" not in path:
        return read_image_bytes(path)
    scheme, rest = path.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}"  # one filesystem object per scheme and bucket/host
    if key not in _FILESYSTEMS:
        fs, _, prefix = split_uri(path)
        _FILESYSTEMS[key] = (fs, prefix)
    fs, prefix = _FILESYSTEMS[key]
    inner = path[len(prefix):]
    try:
        with fs.open_input_file(inner) as f:
            return f.read()
    except FileNotFoundError as e:
        raise BadImageError(f"{path}: no such file.") from e
    except IsADirectoryError as e:
        raise BadImageError(f"{path}: is a directory, not an image.") from e
