"""Class lists: names in label order with synonyms, read from the command line or a file."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from absclip.errors import AbsclipError
from absclip.text.sources import _parse_json, _read_text_file

log = logging.getLogger(__name__)


def normalise_name(name: str) -> str:
    """Return the key used for tolerant matching: lower case, ``_`` as space, single spaces."""
    return re.sub(r"\s+", " ", name.replace("_", " ")).strip().lower()


@dataclass(frozen=True)
class ClassList:
    """Class names in label order, each with optional synonyms (first name is canonical)."""

    names: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def labels(self) -> tuple[str, ...]:
        """Display labels in label order: the canonical names, made unique (see :func:`display_labels`)."""
        return display_labels(self.names, self.synonyms)

    @classmethod
    def from_names(cls, names: Sequence[str | Sequence[str]], *, allow_duplicates: bool = False) -> ClassList:
        """Build from a list whose entries are a name or a list of synonyms (first = canonical).

        Equal canonical names are refused (:class:`AbsclipError` naming them), unless
        ``allow_duplicates`` (class files: ImageNet has two "missile" classes told apart by their
        synonyms); those classes keep their names for the prompts and get distinct :attr:`labels`.
        """
        canon, syn = [], []
        for i, entry in enumerate(names):
            if isinstance(entry, str):
                group = [entry]
            elif isinstance(entry, (list, tuple)) and entry and all(isinstance(s, str) for s in entry):
                group = list(entry)
            else:
                raise AbsclipError(f"Class entry {i} ({entry!r}) is neither a name nor a list of names.")
            group = [g.strip() for g in group if g.strip()]
            if not group:
                raise AbsclipError(f"Class entry {i} is empty.")
            canon.append(group[0])
            syn.append(tuple(group))
        if not canon:
            raise AbsclipError("The class list is empty; give at least one class.")
        out = cls(tuple(canon), tuple(syn))
        if len(canon) == 1:
            log.warning("Only one class (%r): every image is assigned to it with score 1.", canon[0])
        dups = out.duplicates()
        if dups and not allow_duplicates:
            shown = ", ".join(f"{d!r} ({out.names.count(d)}x)" for d in sorted(dups))
            raise AbsclipError(f"Duplicate class names: {shown}; give each class its own name, or use a class file "
                               "whose synonym column tells equal names apart.")
        if dups:
            relabelled = [lab for n, lab in zip(out.names, out.labels) if n in dups]
            log.info("Classes sharing a name are labelled apart: %s", ", ".join(relabelled))
        return out

    def duplicates(self) -> set[str]:
        """Return the canonical names that occur more than once."""
        seen: dict[str, int] = {}
        for n in self.names:
            seen[n] = seen.get(n, 0) + 1
        return {n for n in self.names if seen[n] > 1}

    def index(self, name: str) -> int:
        """Return the label index of ``name`` (tolerant match; synonyms allowed); raises if absent/ambiguous."""
        key = normalise_name(name)
        hits = [i for i, n in enumerate(self.labels) if n == name.strip()]
        if not hits:
            hits = [i for i, n in enumerate(self.names) if n == name.strip()]
        if not hits:
            hits = [i for i, n in enumerate(self.names) if normalise_name(n) == key]
        if not hits:
            hits = [i for i, group in enumerate(self.synonyms) if key in {normalise_name(s) for s in group}]
        if len(hits) != 1:
            why = "not in the class list" if not hits else f"ambiguous ({len(hits)} classes)"
            raise AbsclipError(f"Label {name!r} is {why}.")
        return hits[0]


def display_labels(names: Sequence[str], synonyms: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Return unique display labels: a name used by one class is its label; classes sharing a name are told apart.

    Rule, for each group of classes with the same canonical name: a class is labelled
    ``"name (synonym)"`` with its first synonym that differs from the name and is no synonym of
    another class in the group (ImageNet: ``missile`` and ``missile (projectile)``; ``sunglasses
    (sunglass)`` and ``sunglasses (dark glasses)``). If exactly one class of the group has no such
    synonym it keeps the bare name; otherwise the classes without one are labelled ``"name (#index)"``.
    A derived label that collides with another label becomes ``"name (#index)"``.
    """
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        groups.setdefault(n, []).append(i)
    labels = list(names)
    for name, idx in groups.items():
        if len(idx) < 2:
            continue
        key = normalise_name(name)
        bare: list[int] = []
        for i in idx:
            others = {normalise_name(s) for j in idx if j != i for s in synonyms[j]}
            q = next((s for s in synonyms[i] if normalise_name(s) not in others | {key}), None)
            if q is None:
                bare.append(i)
            else:
                labels[i] = f"{name} ({q})"
        if len(bare) > 1:
            for i in bare:
                labels[i] = f"{name} (#{i})"
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return tuple(f"{names[i]} (#{i})" if counts[lab] > 1 and lab != names[i] else lab for i, lab in enumerate(labels))


def load_classes(
    classes: str | Sequence[str] | None = None, classes_file: str | os.PathLike | None = None
) -> ClassList:
    """Return the class list from ``--classes a,b,c`` (or a list) or from ``--classes-file``.

    Files: ``.txt`` one class per line; ``.json`` a list of names or of synonym lists (the
    ``shared/data/classnames`` format), or a ``{index: name}`` dict; ``.csv``/``.tsv`` with a
    header, taking the first column whose name contains "name" (or "class") and, if present, a
    column containing "synonym" (comma-separated).

    Raises:
        AbsclipError: ``classes`` names a class twice. A file may (ImageNet's two "missile"
            classes); such classes get distinct :attr:`ClassList.labels`.
    """
    if (classes is None) == (classes_file is None):
        raise AbsclipError("Give the classes either as `classes` (a,b,c) or as `classes_file` (exactly one).")
    if classes is not None:
        items = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
        return ClassList.from_names([c for c in items if c])
    path = Path(classes_file)  # type: ignore[arg-type]
    text = _read_text_file(path, "class file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _parse_json(text, path)
        if isinstance(data, dict):
            try:
                data = [data[k] for k in sorted(data, key=lambda k: int(k))]
            except ValueError as e:
                raise AbsclipError(f"Class file {path} is a dict; expected a list of names or {{index: name}}.") from e
        if not isinstance(data, list):
            raise AbsclipError(f"Class file {path} must hold a JSON list of class names.")
        return ClassList.from_names(data, allow_duplicates=True)
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
        if not rows:
            raise AbsclipError(f"Class file {path} has no rows.")
        cols = list(rows[0].keys())
        name_col = next((c for c in cols if "name" in c.lower()), None) or next(
            (c for c in cols if "class" in c.lower()), None)
        if name_col is None:
            raise AbsclipError(f"Class file {path} has no column whose header contains 'name' or 'class'.")
        syn_col = next((c for c in cols if "synonym" in c.lower()), None)
        entries: list[Any] = []
        for r in rows:
            group = [r[name_col]]
            if syn_col and r.get(syn_col):
                group += [s.strip() for s in r[syn_col].split(",") if s.strip()]
            entries.append(group)
        return ClassList.from_names(entries, allow_duplicates=True)
    return ClassList.from_names([line.strip() for line in text.splitlines() if line.strip()], allow_duplicates=True)
