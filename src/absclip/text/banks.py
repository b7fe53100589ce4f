"""Text banks: per-class lists of strings from CuPL descriptions, DCLIP descriptors, ``{c}`` templates, WaffleCLIP.

A text bank is data: for each class, a list of strings. Banks are built once per method and
encoded once per (backbone, exact texts), with an on-disk cache keyed by both."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from absclip.errors import AbsclipError
from absclip.text.classes import ClassList, normalise_name
from absclip.text.sources import is_template

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


def fill_template(template: str, name: str) -> str:
    """Return ``template`` with ``{c}`` (CLIP_benchmark) or ``{}`` (CLIP/ABS) replaced by ``name``."""
    return template.replace("{c}", name).replace("{}", name)


def template_bank(classes: ClassList, templates: Sequence[str]) -> list[list[str]]:
    """Return per-class texts: every template filled with the class's canonical name."""
    bad = [t for t in templates if not is_template(t)]
    if bad:
        raise AbsclipError(f"Template {bad[0]!r} has no {{c}} or {{}} placeholder.")
    return [[fill_template(t, n) for t in templates] for n in classes.names]


def match_bank(classes: ClassList, mapping: dict[str, list[str]], *, what: str = "descriptions") -> list[list[str]]:
    """Return per-class lists from a ``{class: [strings]}`` dict, matching names tolerantly.

    Keys match a class's display label (:attr:`ClassList.labels`, e.g. ``missile (projectile)``),
    canonical name or one of its synonyms, ignoring case and ``_`` vs space.
    When a key is already taken by an earlier class with the same name, a synonym's key is
    preferred. Unmatched classes raise an error listing them; extra keys are logged.

    Raises:
        AbsclipError: classes without an entry, or classes whose entry is empty.
    """
    by_norm: dict[str, list[str]] = {}
    for k in mapping:
        by_norm.setdefault(normalise_name(k), []).append(k)
    cands: list[list[str]] = []
    for label, group in zip(classes.labels, classes.synonyms):
        group = (label, *group) if label != group[0] else group
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
