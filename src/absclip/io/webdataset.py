"""webdataset tar shards (CLIP_benchmark's ``wds_*`` sets): brace expansion, streamed reading, labels.

``DIR/test/{0..N}.tar`` (local paths or any URI pyarrow reads) is expanded to the shard list; each
shard is read member by member with the standard library's ``tarfile`` in stream mode (nothing
extracted, nothing listed ahead), and members sharing a key (the name up to the first ``.`` of
its last component, webdataset's rule) form one sample: an image (``.jpg``, ``.jpeg``, ``.png``,
``.webp``) and a label (``.cls``: a class index; ``.txt``: a class name or index; ``.json``: a
number, a name or an object with a label field). Hidden members (``._x.jpg``) are skipped.

A sample's identity is ``<shard>#<key>`` (the shard as expanded from ``--data``), stable across
runs: resume and records use it. CLIP_benchmark's layout is understood as is: ``classnames.txt``
and ``zeroshot_classification_templates.txt`` in the shards' folder or the one above it are the
default classes and templates. The Ray engine reads the same shards with Ray Data's webdataset
reader and turns its rows into samples with :func:`wds_sample` too."""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from absclip.errors import AbsclipError

if TYPE_CHECKING:  # pragma: no cover
    from absclip.io.sources import Sample
    from absclip.text.classes import ClassList

#: image members, in the order one is chosen when a sample has several
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
#: label members, in the order one is chosen
WDS_LABEL_EXTENSIONS = ("cls", "txt", "json")
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
_KEY = re.compile(r"^((?:.*/|)[^./][^.]*)[.]([^/]*)$")  # webdataset's key rule, hidden names excluded
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(spec: str) -> list[str]:
    """Return the strings a brace pattern stands for, in order: ``{0..3}`` (zero padding kept, as
    ``{000..009}``), ``{a,b}``; several groups multiply. Without braces, ``[spec]``.

    Raises:
        AbsclipError: an empty or unbalanced group.
    """
    m = _BRACE.search(spec)
    if m is None:
        if "{" in spec or "}" in spec:
            raise AbsclipError(f"{spec}: unbalanced braces (expected a pattern such as DIR/{{0..9}}.tar).")
        return [spec]
    body = m.group(1)
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") and len(a) > 1 else 0
        step = 1 if int(b) >= int(a) else -1
        items = [str(i).zfill(width) for i in range(int(a), int(b) + step, step)]
    elif "," in body:
        items = body.split(",")
    else:
        raise AbsclipError(f"{spec}: the brace group {{{body}}} is neither a range a..b nor a list a,b.")
    head, tail = spec[: m.start()], spec[m.end():]
    return [x for item in items for x in expand_braces(head + item + tail)]


def is_webdataset(data: str) -> bool:
    """Return whether ``--data`` names webdataset shards (a ``.tar`` file or a pattern of them)."""
    if "{" not in data:
        return data.lower().endswith(".tar")
    try:
        return expand_braces(data)[0].lower().endswith(".tar")
    except AbsclipError:
        return False


def shard_list(data: str) -> list[str]:
    """Return the shards of a ``--data`` pattern, each once, in pattern order.

    Raises:
        AbsclipError: a local shard that does not exist.
    """
    import os

    shards = list(dict.fromkeys(expand_braces(data)))
    missing = [s for s in shards if "://" not in s and not os.path.isfile(s)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AbsclipError(f"The shard {missing[0]} does not exist{more}.")
    return shards


def beside_shards(shards: list[str], name: str) -> str | None:
    """Return ``name`` in the first shard's folder or the folder above it (CLIP_benchmark's layout), or None."""
    import pyarrow.fs as pafs

    from absclip.io.uris import split_uri

    fs, path, prefix = split_uri(shards[0])
    folder = path.rsplit("/", 1)[0] if "/" in path else "."
    for d in (folder, folder.rsplit("/", 1)[0] if "/" in folder else None):
        if d is None:
            continue
        cand = f"{d.rstrip('/')}/{name}"
        try:
            if fs.get_file_info(cand).type == pafs.FileType.File:
                return prefix + cand
        except OSError:
            continue
    return None


def split_member(name: str) -> tuple[str, str] | None:
    """Return ``(key, extension)`` of a tar member name (extension lower case); None for hidden or key-less names."""
    last = name.rsplit("/", 1)[-1]
    m = _KEY.match(name)
    if m is None or last.startswith("."):
        return None
    return m.group(1), m.group(2).lower()


def iter_shard(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for each sample of one shard, reading it once, in order.

    Raises:
        AbsclipError: the shard cannot be opened or is not a tar file.
    """
    from absclip.io.uris import split_uri

    fs, path, _ = split_uri(shard)
    try:
        stream = fs.open_input_stream(path)
    except (OSError, FileNotFoundError) as e:
        raise AbsclipError(f"{shard}: the shard cannot be opened ({str(e).splitlines()[0]}).") from e
    with stream:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as e:
            raise AbsclipError(f"{shard}: not a tar file ({e}).") from e
        key, members = None, {}
        with tar:
            for info in tar:
                if not info.isreg():
                    continue
                parts = split_member(info.name)
                if parts is None:
                    continue
                f = tar.extractfile(info)
                data = f.read() if f is not None else b""
                if parts[0] != key:
                    if key is not None:
                        yield key, members
                    key, members = parts[0], {}
                members[parts[1]] = data
        if key is not None:
            yield key, members


def wds_label(members: dict[str, Any], classes: ClassList, where: str, label_member: str | None = None) -> int:
    """Return the class index of a sample from its label member (``.cls`` index, ``.txt`` name or index,
    ``.json`` number/name/object); ``label_member`` picks the extension (``--label-column``).

    Raises:
        AbsclipError: no label member, or a label the class list does not have.
    """
    from absclip.io.sources import LABEL_COLUMNS, label_index

    exts = (label_member,) if label_member else WDS_LABEL_EXTENSIONS
    ext = next((e for e in exts if members.get(e) is not None), None)
    if ext is None:
        raise AbsclipError(f"{where} has no label member ({', '.join('.' + e for e in exts)}); use `label_column` "
                           "to name its extension.")
    raw = members[ext]
    text = raw.decode("utf-8").strip() if isinstance(raw, bytes) else str(raw)
    if ext == "json":
        value = json.loads(text)
        if isinstance(value, dict):
            hit = next((c for c in LABEL_COLUMNS if c in value), None)
            if hit is None:
                raise AbsclipError(f"{where}: the .json member has no label field ({', '.join(LABEL_COLUMNS)}).")
            value = value[hit]
        text = str(value)
    return label_index(text, classes, where)


def wds_sample(shard: str, key: str, members: dict[str, Any], classes: ClassList | None,
               label_member: str | None = None) -> Sample:
    """Return the :class:`Sample` of one webdataset sample (``classes`` None: unlabelled).

    A sample without an image member gets empty bytes, so that it becomes a skipped record saying so.
    """
    from absclip.io.sources import Sample

    ident = f"{shard}#{key}"
    ext = next((e for e in WDS_IMAGE_EXTENSIONS if members.get(e) is not None), None)
    data = bytes(members[ext]) if ext else b""
    label = -1 if classes is None else wds_label(members, classes, ident, label_member)
    return Sample(ident, label, data if ext else None, None if ext else
                  f"{ident}: no image member ({', '.join('.' + e for e in WDS_IMAGE_EXTENSIONS)}).")


def iter_wds_samples(shards: list[str], classes: ClassList | None, label_member: str | None = None
                     ) -> Iterator[Sample]:
    """Yield every sample of ``shards`` in order (see :func:`wds_sample`)."""
    for shard in shards:
        for key, members in iter_shard(shard):
            yield wds_sample(shard, key, members, classes, label_member)
