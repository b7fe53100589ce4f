"""Choosing an attention source from a spec: :func:`load_attention`."""

from __future__ import annotations

import logging

import torch

from absclip.attention.sources import AttentionSource, ClipSelfAttention, HFAttention
from absclip.backbones.base import Backbone, resolve_device
from absclip.core.settings import DEFAULT_ATTENTION_MODEL

log = logging.getLogger(__name__)


def load_attention(
    spec: str | None, backbone: Backbone, *, device: str | torch.device | None = "cpu", layer: int = -1,
    rollout: str | None = None, sink_threshold: float | None = None,
) -> AttentionSource:
    """Return the attention source for ``spec``: an HF name or local dir, or ``clip``.

    Without ``spec``: the backbone's ``default_attention``, else :data:`DEFAULT_ATTENTION_MODEL` (DINO ViT-B/16).

    ``rollout`` (``mean``/``max`` head fusion) and ``sink_threshold`` (robust z-score) select the
    all-block sources of :mod:`absclip.attention.layered`; without them the source is unchanged.
    """
    spec = spec or backbone.default_attention or DEFAULT_ATTENTION_MODEL
    if rollout is not None or sink_threshold is not None:
        from absclip.attention.layered import layered_attention

        return layered_attention(spec, backbone, device=resolve_device(device), layer=layer, rollout=rollout,
                                 sink_threshold=sink_threshold)
    if spec == "clip":
        return ClipSelfAttention(backbone, layer)
    return HFAttention(spec, device=resolve_device(device), layer=layer)
