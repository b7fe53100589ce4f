"""Which adapter loads a model spec: a table of ``(predicate, loader)`` rows, and :func:`load_clip`.

Adding a backbone family means one new module in :mod:`absclip.backbones`: a
:class:`~absclip.backbones.base.Backbone` subclass, a loader taking a
:class:`~absclip.backbones.base.LoadRequest`, and a module-level ``LOADERS`` tuple of
:class:`~absclip.backbones.base.LoaderRow` saying which specs it loads. The rows of every module are
collected here and tried by ascending priority; the first that accepts a request loads it (the
open_clip name row, last, accepts everything)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import torch

from absclip.backbones.base import (
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    Backbone,
    LoaderRow,
    LoadRequest,
    TowerRow,
    resolve_device,
    resolve_precision,
)


def _collect(table: str) -> list[Any]:
    """Return the rows of the module-level tuple ``table`` of every module of :mod:`absclip.backbones`, by priority."""
    import absclip.backbones as package

    rows: list[Any] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name != "registry":
            rows += getattr(importlib.import_module(f"{package.__name__}.{info.name}"), table, ())
    return sorted(rows, key=lambda r: r.priority)


def collect_loaders() -> list[LoaderRow]:
    """Return the ``LOADERS`` rows of every module of :mod:`absclip.backbones`, by ascending priority."""
    return _collect("LOADERS")


#: tried in order; the first row that accepts a request loads it
LOADERS: list[LoaderRow] = collect_loaders()


def collect_towers() -> list[TowerRow]:
    """Return the ``TOWERS`` rows (open_clip image-tower adapters) of every module, by ascending priority."""
    return _collect("TOWERS")


#: tried in order; the first row whose predicate accepts an open_clip image tower adapts the model
TOWERS: list[TowerRow] = collect_towers()


def tower_adapter(visual: torch.nn.Module) -> Any:
    """Return the adapter class (a :class:`Backbone` factory) for an open_clip image tower (first fitting row)."""
    return next(r for r in TOWERS if r.accepts(visual)).adapter


def load_clip(
    model: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device | None = DEFAULT_DEVICE,
    precision: str | None = DEFAULT_PRECISION,
    quick_gelu: bool | None = None,
    weights_dir: str | None = None,
) -> Backbone:
    """Return the :class:`~absclip.backbones.base.Backbone` for a model spec (the first row of :data:`LOADERS`).

    Args:
        model: an open_clip model name (``ViT-B-16``), ``hf-hub:org/repo``, ``local-dir:/path``,
            ``hf:NAME_OR_DIR`` or a ``save_pretrained`` directory for a transformers ``CLIPModel``,
            a path to an open_clip JSON config (its file stem becomes the name), or a path to an
            OpenAI-format checkpoint (TorchScript archive or state dict) when ``pretrained`` is None.
        pretrained: an open_clip tag (``openai``, ``laion2b_s34b_b88k``...) or a checkpoint file.
            ``None`` builds the architecture with random weights (logged).
        device: ``auto`` (default: CUDA if available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (default: fp16 on CUDA, fp32 on the CPU), ``fp32``, ``bf16`` or ``fp16``.
        quick_gelu: force QuickGELU (OpenAI weights need it); ``None`` follows the tag/config.
        weights_dir: where downloaded weights are cached (None: open_clip's / Hugging Face's default).

    Raises:
        AbsclipError: unknown name or tag, unreadable or mismatched checkpoint.
        WeightsUnavailableError: weights could not be downloaded.

    Example:
        >>> bb = load_clip("ViT-B-16", "openai")  # doctest: +SKIP
    """
    dev = resolve_device(device)
    request = LoadRequest(
        model=str(model),
        pretrained=None if pretrained in (None, "", "none") else str(pretrained),
        device=dev,
        dtype=resolve_precision(precision, dev),
        quick_gelu=quick_gelu,
        weights_dir=weights_dir,
    )
    row = next(r for r in LOADERS if r.accepts(request))
    return row.loader(request)
