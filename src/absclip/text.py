"""Class lists and text banks: CuPL description dicts, DCLIP descriptor dicts, ``{c}`` templates.

A text bank is data: for each class, a list of strings. Banks are built once per method and
encoded once per (backbone, exact texts), with an on-disk cache keyed by both.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import AbsclipError

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {c}."

# The 80 prompts of the CLIP paper, as "{c}" strings (open_clip ships them as lambdas).
_OPENAI_TEMPLATES: list[str] | None = None


def openai_imagenet_templates() -> list[str]:
    """Return the CLIP paper's 80 ImageNet templates as ``{c}`` format strings."""
    global _OPENAI_TEMPLATES
    if _OPENAI_TEMPLATES is None:
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        _OPENAI_TEMPLATES = [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    return list(_OPENAI_TEMPLATES)


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

    @classmethod
    def from_names(cls, names: Sequence[str | Sequence[str]]) -> ClassList:
        """Build from a list whose entries are a name or a list of synonyms (first = canonical)."""
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
        if dups:
            log.warning("Duplicate class names (labels with these names are ambiguous): %s", ", ".join(sorted(dups)))
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
        hits = [i for i, n in enumerate(self.names) if n == name.strip()]
        if not hits:
            hits = [i for i, n in enumerate(self.names) if normalise_name(n) == key]
        if not hits:
            hits = [i for i, group in enumerate(self.synonyms) if key in {normalise_name(s) for s in group}]
        if len(hits) != 1:
            why = "not in the class list" if not hits else f"ambiguous ({len(hits)} classes)"
            raise AbsclipError(f"Label {name!r} is {why}.")
        return hits[0]


def load_classes(
    classes: str | Sequence[str] | None = None, classes_file: str | os.PathLike | None = None
) -> ClassList:
    """Return the class list from ``--classes a,b,c`` (or a list) or from ``--classes-file``.

    Files: ``.txt`` one class per line; ``.json`` a list of names or of synonym lists (the
    ``shared/data/classnames`` format), or a ``{index: name}`` dict; ``.csv``/``.tsv`` with a
    header, taking the first column whose name contains "name" (or "class") and, if present, a
    column containing "synonym" (comma-separated).
    """
    if (classes is None) == (classes_file is None):
        raise AbsclipError("Give the classes either with --classes a,b,c or with --classes-file FILE (exactly one).")
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
        return ClassList.from_names(data)
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
        return ClassList.from_names(entries)
    return ClassList.from_names([line.strip() for line in text.splitlines() if line.strip()])


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


def read_text_source(path: str | os.PathLike) -> dict[str, list[str]] | list[str]:
    """Read a descriptions/descriptors/templates file.

    Returns a ``{class: [strings]}`` dict (CuPL descriptions or DCLIP descriptors) or a list of
    templates (``{c}`` or ``{}``; a CLIP_benchmark template file, an ABS ``clip-e.json``, or a
    ``.txt`` with one template per line). A CLIP_benchmark ``{dataset: [templates]}`` dict with
    a single entry is read as that entry's templates. A named public set such as ``cupl:pets``
    or ``abs:dtd/clip-e`` (see :mod:`absclip.description_sets`) is resolved to its verified file first.
    """
    p = Path(path)
    if isinstance(path, str) and not p.exists():
        from .description_sets import is_set_spec, resolve

        if is_set_spec(path):
            p = resolve(path)
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
        if not all(_is_template(t) for t in data):
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
    if len(out) == 1 and all(_is_template(s) for s in next(iter(out.values()))):
        return next(iter(out.values()))
    return out


def _is_template(s: str) -> bool:
    return "{c}" in s or "{}" in s


def fill_template(template: str, name: str) -> str:
    """Return ``template`` with ``{c}`` (CLIP_benchmark) or ``{}`` (CLIP/ABS) replaced by ``name``."""
    return template.replace("{c}", name).replace("{}", name)


def template_bank(classes: ClassList, templates: Sequence[str]) -> list[list[str]]:
    """Return per-class texts: every template filled with the class's canonical name."""
    bad = [t for t in templates if not _is_template(t)]
    if bad:
        raise AbsclipError(f"Template {bad[0]!r} has no {{c}} or {{}} placeholder.")
    return [[fill_template(t, n) for t in templates] for n in classes.names]


def match_bank(classes: ClassList, mapping: dict[str, list[str]], *, what: str = "descriptions") -> list[list[str]]:
    """Return per-class lists from a ``{class: [strings]}`` dict, matching names tolerantly.

    Keys match a class's canonical name or one of its synonyms, ignoring case and ``_`` vs space.
    When a key is already taken by an earlier class with the same name, a synonym's key is
    preferred. Unmatched classes raise an error listing them; extra keys are logged.

    Raises:
        AbsclipError: classes without an entry, or classes whose entry is empty.
    """
    by_norm: dict[str, list[str]] = {}
    for k in mapping:
        by_norm.setdefault(normalise_name(k), []).append(k)
    cands: list[list[str]] = []
    for group in classes.synonyms:
        found = [s for s in group if s in mapping]  # exact keys first (keeps 'Cardigan' apart from 'cardigan')
        for s in group:
            found += by_norm.get(normalise_name(s), [])
        cands.append(list(dict.fromkeys(found)))
    claims: dict[str, int] = {}
    for c in cands:
        for k in c:
            claims[k] = claims.get(k, 0) + 1
    out: list[list[str]] = []
    missing: list[str] = []
    empty: list[str] = []
    used: set[str] = set()
    for group, c in zip(classes.synonyms, cands):
        if not c:
            missing.append(group[0])
            out.append([])
            continue
        # a key several classes could claim goes to none of them if a synonym is unique to this class
        # (ImageNet: 'missile' vs 'projectile, missile', 'sunglass' vs 'sunglasses')
        key = c[0] if claims[c[0]] == 1 else next((k for k in c if claims[k] == 1), c[0])
        used.add(key)
        texts = [t.strip() for t in mapping[key] if t and t.strip()]
        if not texts:
            empty.append(group[0])
        out.append(texts)
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        shown = ", ".join(repr(m) for m in missing[:10]) + more
        raise AbsclipError(f"{len(missing)} of {len(classes)} classes have no entry in the {what} file: {shown}.")
    if empty:
        raise AbsclipError(f"These classes have zero {what}: {', '.join(repr(e) for e in empty[:10])}.")
    extra = len(mapping) - len(used)
    if extra > 0:
        log.info("%d %s entries match no class and are ignored.", extra, what)
    return out


def dclip_sentence(name: str, phrase: str) -> str:
    """Return DCLIP's sentence for a descriptor: ``"{c}, which (is/has) {phrase}"``.

    As in DCLIP's ``make_descriptor_sentence``: phrases starting with "a"/"an"/"used" take "is",
    ones starting with a verb such as "has"/"often"/"typically"/"may"/"can" stand alone, others
    take "has". (DCLIP tests ``startswith('a')`` on characters; we test whole words.)
    """
    phrase = phrase.strip()
    first = phrase.split(" ", 1)[0].lower() if phrase else ""
    if first in ("a", "an", "used"):
        return f"{name}, which is {phrase}"
    if first in ("has", "often", "typically", "may", "can", "is", "are"):
        return f"{name}, which {phrase}"
    return f"{name}, which has {phrase}"


def descriptor_bank(classes: ClassList, descriptors: dict[str, list[str]]) -> list[list[str]]:
    """Return per-class DCLIP sentences built from a ``{class: [phrases]}`` dict."""
    groups = match_bank(classes, descriptors, what="descriptors")
    return [[dclip_sentence(n, d) for d in g] for n, g in zip(classes.names, groups)]


def waffle_bank(classes: ClassList, vocabulary: Sequence[str], *, count: int, seed: int) -> list[list[str]]:
    """Return WaffleCLIP's random descriptors: ``count`` pairs of (random words, random characters).

    The same random descriptors are used for every class (as in WaffleCLIP), each in the form
    ``"A photo of a {c}, which (is/has) {descriptor}."``; drawn from ``seed``.
    """
    import numpy as np

    rng = np.random.default_rng([int(seed), 0x9AFF1E])
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    descs: list[str] = []
    vocab = list(vocabulary)
    for _ in range(count):
        words = " ".join(vocab[int(i)] for i in rng.integers(0, len(vocab), size=2))
        chars = " ".join("".join(rng.choice(letters, size=int(rng.integers(3, 9)))) for _ in range(2))
        descs += [words, chars]
    return [[f"A photo of a {n}, which (is/has) {d}." for d in descs] for n in classes.names]


def tokenizer_vocabulary(limit: int = 20000) -> list[str]:
    """Return alphabetic whole words from the CLIP BPE vocabulary (WaffleCLIP's random words)."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    words = [w[:-4] for w in tok.encoder if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6]
    return sorted(set(words))[:limit] if len(words) > limit else sorted(set(words))


def texts_digest(groups: Sequence[Sequence[str]]) -> str:
    """Return a sha256 over the exact per-class texts (recorded in results as the bank hash)."""
    h = hashlib.sha256()
    for g in groups:
        h.update(b"\x1e")
        for t in g:
            h.update(t.encode())
            h.update(b"\x1f")
    return h.hexdigest()


# -----------------------------------------------------------------------------------------------
# Encoding with an on-disk cache
# -----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Return ``$ABSCLIP_CACHE_DIR`` or ``~/.cache/absclip``."""
    return Path(os.environ.get("ABSCLIP_CACHE_DIR") or Path.home() / ".cache" / "absclip")


@dataclass
class EncodedBank:
    """Encoded text bank: ``emb [C, M, D]`` (normalised, zero padding), ``mask [C, M]``, ``digest``."""

    emb: torch.Tensor
    mask: torch.Tensor
    digest: str
    texts: list[list[str]]


class TextEncoder:
    """Encodes text banks with a backbone; each distinct text is encoded once per process and cached on disk.

    The cache key is the backbone identity (model, weights digest, QuickGELU, dtype) plus the
    exact texts; entries are verified on read and recomputed when corrupt.
    """

    def __init__(self, backbone: Any, *, cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 batch_size: int = 256) -> None:
        self.backbone = backbone
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "text"
        self._memo: dict[str, torch.Tensor] = {}
        self.encoded_count = 0  # texts actually run through the text tower (for tests)

    def _key(self, texts: Sequence[str]) -> str:
        h = hashlib.sha256(f"{self.backbone.identity}|{self.backbone.dtype}|v1".encode())
        for t in texts:
            h.update(t.encode())
            h.update(b"\x1f")
        return h.hexdigest()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Return ``[T, D]`` normalised embeddings for ``texts`` (fp32, CPU)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            key = self._key(todo)
            emb = self._read(key, len(todo))
            if emb is None:
                emb = self.backbone.encode_texts(list(todo), batch_size=self.batch_size)
                self.encoded_count += len(todo)
                self._write(key, emb)
            for t, e in zip(todo, emb):
                self._memo[t] = e
        if not texts:
            return torch.zeros(0, self.backbone.facts.embed_dim)
        return torch.stack([self._memo[t] for t in texts])

    def encode_bank(self, groups: Sequence[Sequence[str]], max_per_class: int | None = None) -> EncodedBank:
        """Return the padded ``[C, M, D]`` embeddings and ``[C, M]`` mask of per-class text lists."""
        groups = [list(g[:max_per_class] if max_per_class else g) for g in groups]
        flat = [t for g in groups for t in g]
        emb = self.encode(flat)
        c, m = len(groups), max((len(g) for g in groups), default=0)
        out = torch.zeros(c, m, emb.shape[-1])
        mask = torch.zeros(c, m, dtype=torch.bool)
        i = 0
        for ci, g in enumerate(groups):
            out[ci, : len(g)] = emb[i : i + len(g)]
            mask[ci, : len(g)] = True
            i += len(g)
        return EncodedBank(out, mask, texts_digest(groups), groups)

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.pt"

    def _read(self, key: str, n: int) -> torch.Tensor | None:
        if not self.use_cache:
            return None
        p = self._path(key)
        if not p.is_file():
            return None
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
            emb = obj["emb"]
            shape = (n, self.backbone.facts.embed_dim)
            if obj.get("key") != key or tuple(emb.shape) != shape or not torch.isfinite(emb).all():
                raise ValueError("cache entry does not match")
            return emb
        except Exception as e:  # corrupt or stale: recompute, never trust it
            log.warning("Ignoring corrupt text-embedding cache entry %s (%s); recomputing.", p, e)
            return None

    def _write(self, key: str, emb: torch.Tensor) -> None:
        if not self.use_cache:
            return
        p = self._path(key)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(f".tmp{os.getpid()}")
            torch.save({"key": key, "emb": emb.contiguous()}, tmp)
            os.replace(tmp, p)
        except OSError as e:
            log.warning("Could not write the text-embedding cache at %s (%s).", p, e)
