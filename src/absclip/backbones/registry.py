"""Which adapter loads a model spec: a table of ``(predicate, loader)`` rows, and :func:`load_clip`.

Adding a backbone family means one new module in :mod:`absclip.backbones` (a
:class:`~absclip.backbones.base.Backbone` subclass and a loader taking a
:class:`~absclip.backbones.base.LoadRequest`) and one row in :data:`LOADERS`. The first row whose
predicate accepts the request loads it; the last row accepts everything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from absclip.backbones import hf, open_clip
from absclip.backbones.base import Backbone, LoadRequest, resolve_device, resolve_precision


@dataclass(frozen=True)
class LoaderRow:
    """One row of the table: ``loader`` loads every request ``accepts`` says yes to."""

    name: str
    accepts: Callable[[LoadRequest], bool]
    loader: Callable[[LoadRequest], Backbone]


#: tried in order; the first row that accepts a request loads it
LOADERS: list[LoaderRow] = [
    LoaderRow("transformers CLIPModel (hf: or a save_pretrained directory)", hf.is_hf_clip, hf.load_hf_clip),
    LoaderRow("open_clip JSON config + weights", open_clip.is_open_clip_config, open_clip.load_open_clip_config),
    LoaderRow("OpenAI-format checkpoint file", open_clip.is_openai_file, open_clip.load_openai_file),
    LoaderRow("open_clip hf-hub: / local-dir:", open_clip.is_open_clip_hub, open_clip.load_open_clip),
    LoaderRow("open_clip name + tag or checkpoint file", lambda request: True, open_clip.load_open_clip),
]


def load_clip(
    model: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device | None = "cpu",
    precision: str | None = "fp32",
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> Backbone:
    """Return the :class:`~absclip.backbones.base.Backbone` for a model spec (the first row of :data:`LOADERS`).

    Args:
        model: an open_clip model name (``ViT-B-16``), ``hf-hub:org/repo``, ``local-dir:/path``,
            ``hf:NAME_OR_DIR`` or a ``save_pretrained`` directory for a transformers ``CLIPModel``,
            a path to an open_clip JSON config (its file stem becomes the name), or a path to an
            OpenAI-format checkpoint (TorchScript archive or state dict) when ``pretrained`` is None.
        pretrained: an open_clip tag (``openai``, ``laion2b_s34b_b88k``...) or a checkpoint file.
            ``None`` builds the architecture with random weights (logged).
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto``.
        precision: ``fp32`` (default), ``bf16``, ``fp16`` or ``auto`` (fp16 on CUDA, fp32 on CPU).
        quick_gelu: force QuickGELU (OpenAI weights need it); ``None`` follows the tag/config.
        cache_dir: where open_clip caches downloads.

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
        cache_dir=cache_dir,
    )
    row = next(r for r in LOADERS if r.accepts(request))
    return row.loader(request)
