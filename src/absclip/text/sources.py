"""Reading text files: CuPL/DCLIP JSON dicts, template lists, CLIP_benchmark files, public set names."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from absclip.errors import AbsclipError

log = logging.getLogger(__name__)


def is_template(s: str) -> bool:
    """Return True if ``s`` has a ``{c}`` or ``{}`` class-name placeholder."""
    return "{c}" in s or "{}" in s


def _read_text_file(path: Path, what: str) -> str:
    if not path.exists():
        raise AbsclipError(f"The {what} {path} does not exist.")
    if path.is_dir():
        raise AbsclipError(f"The {what} {path} is a directory, not a file.")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AbsclipError(f"Cannot read the {what} {path}: {e.strerror}.") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AbsclipError(f"The {what} {path} is not UTF-8 text (byte {e.start}).") from e


def _parse_json(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AbsclipError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e


def read_text_source(path: str | os.PathLike, *, descriptions_dir: str | os.PathLike | None = None
                     ) -> dict[str, list[str]] | list[str]:
    """Read a descriptions/descriptors/templates file.

    Returns a ``{class: [strings]}`` dict (CuPL descriptions or DCLIP descriptors) or a list of
    templates (``{c}`` or ``{}``; a CLIP_benchmark template file, an ABS ``clip-e.json``, or a
    ``.txt`` with one template per line). A CLIP_benchmark ``{dataset: [templates]}`` dict with
    a single entry is read as that entry's templates. A named public set such as ``cupl:pets``
    or ``abs:dtd/clip-e`` (see :mod:`absclip.text.public_sets`) is resolved to its verified file first,
    looked up in ``descriptions_dir`` (default ``$ABSCLIP_DESCRIPTIONS_DIR``), then the cache.
    """
    p = Path(path)
    if isinstance(path, str) and not p.exists():
        from absclip.text.public_sets import is_set_spec, resolve

        if is_set_spec(path):
            p = resolve(path, descriptions_dir=descriptions_dir)
    text = _read_text_file(p, "descriptions file")
    if p.suffix.lower() == ".txt":
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise AbsclipError(f"Template file {p} is empty.")
        return lines
    data = _parse_json(text, p)
    if isinstance(data, list):
        if not data or not all(isinstance(t, str) for t in data):
            raise AbsclipError(f"{p} holds a list; expected a non-empty list of template strings with {{c}}.")
        if not all(is_template(t) for t in data):
            raise AbsclipError(f"{p} holds a list of strings without {{c}}/{{}}; a description file must be "
                               "a JSON object {class: [sentences]}.")
        return data
    if not isinstance(data, dict):
        raise AbsclipError(f"{p} must be a JSON object {{class: [sentences]}} or a list of templates.")
    out: dict[str, list[str]] = {}
    for k, v in data.items():
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise AbsclipError(f"{p}: the entry for {k!r} must be a list of strings.")
        out[str(k)] = v
    if len(out) == 1 and all(is_template(s) for s in next(iter(out.values()))):
        return next(iter(out.values()))
    return out


@dataclass(frozen=True)
class Texts:
    """The texts a user gave for the classes, read: ``None`` means "not given".

    Attributes:
        descriptions: CuPL-style ``{class: [sentences]}``.
        descriptors: DCLIP-style ``{class: [phrases]}``.
        templates: ``{c}`` templates (``clip-e``, and the fallback of the description methods).
        descriptions_are_templates: the descriptions source held templates, so they became ``templates``.
        descriptions_source: the file or set name the descriptions were read from (None: data or not given).
    """

    descriptions: dict[str, list[str]] | None = None
    descriptors: dict[str, list[str]] | None = None
    templates: list[str] | None = None
    descriptions_are_templates: bool = False
    descriptions_source: str | None = None


def read_texts(descriptions: Any = None, descriptors: Any = None, templates: Any = None, *,
               descriptions_dir: str | os.PathLike | None = None) -> Texts:
    """Read the descriptions, descriptors and templates a user gave (files, public set names or data).

    Each may be a path, a public set name (:func:`read_text_source`), already-read data, or None.
    A templates file given as ``descriptions`` becomes the templates (each class's descriptions are
    then its filled templates), unless templates were given too.

    Raises:
        AbsclipError: a file of the wrong kind (descriptions given as templates, templates as descriptors).
    """
    def read(src: Any) -> Any:
        if isinstance(src, (str, os.PathLike)):
            return read_text_source(src, descriptions_dir=descriptions_dir)
        if isinstance(src, dict):
            return {str(k): list(v) for k, v in src.items()}
        return list(src) if src is not None else None

    desc, dscr, tmpl = read(descriptions), read(descriptors), read(templates)
    if isinstance(tmpl, dict):
        raise AbsclipError(f"{templates} holds per-class descriptions, not templates.")
    if isinstance(dscr, list):
        raise AbsclipError(f"{descriptors} holds templates, not per-class descriptors.")
    as_templates = isinstance(desc, list)
    if as_templates:
        tmpl, desc = tmpl or desc, None
    source = str(descriptions) if isinstance(descriptions, (str, os.PathLike)) else None
    return Texts(desc, dscr, tmpl, as_templates, source)
