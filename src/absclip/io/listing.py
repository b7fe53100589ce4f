"""Listing a folder of images: the one walk both engines, eval, label and classify use.

Rules (the same for every caller, so that every engine sees the same samples in the same order):

* **symlinks** to files and folders are followed; a link to a folder that is already being walked
  (one of its own ancestors: a loop) is reported once and not followed; a broken link is reported.
* **hidden** files and folders (a name starting with ``.``: ``.ipynb_checkpoints/``, ``.DS_Store``,
  macOS ``._x.jpg``) are skipped, at every depth.
* **unreadable** folders (permission denied, vanished) are reported and skipped; an unreadable
  image file is listed and becomes a skipped record with its reason when it is read.
* **order**: depth first, each folder's entries sorted by their NFC-normalised name, so a tree
  written in NFD (macOS, zip files) lists like the same tree in NFC.
* **names**: a class folder's name is NFC-normalised before it is matched to the class list;
  paths stay as they are on disk (they must open), and they are the samples' identities.

Local folders are walked with ``os.scandir``; URI folders (``s3://``, ``gs://``, ...) through
pyarrow's filesystems (no symlinks there) with the same hidden-name, order and name rules. Reports
are logged once per listing as one warning."""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

from absclip.errors import AbsclipError

log = logging.getLogger(__name__)


def nfc(text: str) -> str:
    """Return ``text`` in Unicode normal form C (what names and labels are compared in)."""
    return unicodedata.normalize("NFC", text)


def is_hidden(name: str) -> bool:
    """Return whether a file or folder name is hidden (starts with ``.``)."""
    return name.startswith(".")


@dataclass
class Listing:
    """What a walk found: image files (paths or URIs, in listing order) and what it reported.

    Attributes:
        files: the image files, in order (their paths as walked: the samples' identities).
        relative: each file's path below the root, ``/``-separated, NFC (the class folder comes first).
        reports: one sentence per entry that was not listed (loops, broken links, unreadable folders).
    """

    root: str
    files: list[str] = field(default_factory=list)
    relative: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)

    def log_reports(self) -> None:
        """Log the reports as one warning (nothing when there are none)."""
        if self.reports:
            shown = "; ".join(self.reports[:5]) + (f"; and {len(self.reports) - 5} more" if len(self.reports) > 5
                                                  else "")
            log.warning("%d entr%s under %s not listed: %s", len(self.reports),
                        "y" if len(self.reports) == 1 else "ies", self.root, shown)


def _sorted_entries(entries: list[os.DirEntry]) -> list[os.DirEntry]:
    return sorted(entries, key=lambda e: nfc(e.name))


def _walk_local(root: str, suffixes: tuple[str, ...], out: Listing) -> None:
    reported: set[str] = set()

    def report(key: str, sentence: str) -> None:
        if key not in reported:
            reported.add(key)
            out.reports.append(sentence)

    def walk(folder: str, rel: str, ancestors: frozenset[tuple[int, int]]) -> None:
        try:
            with os.scandir(folder) as it:
                entries = _sorted_entries(list(it))
        except OSError as e:
            report(folder, f"{folder}: folder cannot be read ({e.strerror or e})")
            return
        for e in entries:
            if is_hidden(e.name):
                continue
            path = os.path.join(folder, e.name)
            name = f"{rel}/{nfc(e.name)}" if rel else nfc(e.name)
            try:
                is_dir = e.is_dir()  # follows symlinks
                is_file = not is_dir and e.is_file()
            except OSError as err:
                report(path, f"{path}: cannot be read ({err.strerror or err})")
                continue
            if is_dir:
                try:
                    st = os.stat(path)
                except OSError as err:
                    report(path, f"{path}: folder cannot be read ({err.strerror or err})")
                    continue
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    target = os.path.realpath(path)
                    report(f"loop:{target}", f"{path}: symlink loop (back to {target}), not followed")
                    continue
                walk(path, name, ancestors | {ident})
            elif is_file:
                if e.name.lower().endswith(suffixes):
                    out.files.append(path)
                    out.relative.append(name)
            elif e.is_symlink():
                report(path, f"{path}: broken symlink")

    st = os.stat(root)
    walk(root, "", frozenset({(st.st_dev, st.st_ino)}))


def _walk_uri(root: str, suffixes: tuple[str, ...], out: Listing) -> None:
    import pyarrow.fs as pafs

    from absclip.io.uris import split_uri

    fs, inner, prefix = split_uri(root)
    base = inner.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except OSError as e:
        raise AbsclipError(f"{root}: the folder cannot be listed ({str(e).splitlines()[0]}).") from e
    found = []
    for f in infos:
        if f.type != pafs.FileType.File or not f.path.lower().endswith(suffixes):
            continue
        rel = f.path[len(base) + 1:]
        parts = rel.split("/")
        if any(is_hidden(p) for p in parts):
            continue
        found.append(([nfc(p) for p in parts], prefix + f.path))
    # depth-first order with sorted names equals sorting by the list of path components
    for parts, uri in sorted(found, key=lambda x: x[0]):
        out.files.append(uri)
        out.relative.append("/".join(parts))


def list_folder(root: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Listing:
    """Return the image files under ``root`` (a local folder or a URI folder), following the module's rules.

    Args:
        root: the folder.
        suffixes: file name endings to list, lower case (default: the image extensions).

    Raises:
        AbsclipError: ``root`` does not exist or is not a folder.
    """
    from absclip.io.images import IMAGE_EXTENSIONS

    suffixes = tuple(suffixes or IMAGE_EXTENSIONS)
    root = str(root)
    out = Listing(root)
    if "://" in root:
        _walk_uri(root, suffixes, out)
    else:
        if not os.path.exists(root):
            raise AbsclipError(f"Data path {root} does not exist.")
        if not os.path.isdir(root):
            raise AbsclipError(f"{root} is not a folder.")
        _walk_local(root, suffixes, out)
    out.log_reports()
    return out


def class_folders(listing: Listing) -> Iterator[tuple[str, str]]:
    """Yield ``(path, class folder name)`` of an ImageFolder tree ``ROOT/<class>/...`` (files directly in
    ROOT have no class and are left out)."""
    for path, rel in zip(listing.files, listing.relative):
        if "/" in rel:
            yield path, rel.split("/", 1)[0]
