"""Encoding text banks once per (backbone, exact texts), with an on-disk cache keyed by both."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from absclip.io.files import atomic_path, cache_root
from absclip.io.progress import progress_bar
from absclip.text.banks import texts_digest

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------------------------
# Encoding with an on-disk cache
# -----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Return the text-embedding cache: ``<cache root>/text`` (:func:`absclip.io.files.cache_root`)."""
    return cache_root() / "text"


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
    exact texts; entries are verified on read and recomputed when corrupt. With ``progress``, encoding
    (not reading the cache) shows a bar on stderr by batches of texts, when stderr is a terminal.
    """

    def __init__(self, backbone: Any, *, cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 batch_size: int = 256, progress: bool = False) -> None:
        self.backbone = backbone
        self.progress = progress
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
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
                emb = self._encode(todo)
                self.encoded_count += len(todo)
                self._write(key, emb)
            for t, e in zip(todo, emb):
                self._memo[t] = e
        if not texts:
            return torch.zeros(0, self.backbone.facts.embed_dim)
        return torch.stack([self._memo[t] for t in texts])

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Run ``texts`` through the text tower in batches (the same embeddings as one call), with a bar."""
        n, step = len(texts), self.batch_size
        if n <= step:
            return self.backbone.encode_texts(list(texts), batch_size=step)
        with progress_bar(None, self.progress, total=n, desc="encoding class texts", unit="text") as bar:
            return self.backbone.encode_texts(list(texts), batch_size=step, on_batch=bar.update)

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
            with atomic_path(p) as tmp:
                torch.save({"key": key, "emb": emb.contiguous()}, tmp)
        except OSError as e:
            log.warning("Could not write the text-embedding cache at %s (%s).", p, e)
