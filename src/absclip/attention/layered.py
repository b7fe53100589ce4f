"""Attention maps beyond the last-layer CLS row: rollout, attention-sink suppression, text similarity.

Three ideas from the related literature, sharing one piece of machinery (per-block attention
probabilities ``[B, heads, T, T]`` and block outputs ``[B, T, width]``, CLS first):

* **Attention rollout** (Abnar & Zuidema, 2020): ``R = prod_l norm(fuse_heads(A_l) + I)``; the
  CLS row of ``R`` says how much each patch flowed into the CLS token over all blocks. Heads are
  fused by their mean or their max.
* **Attention-sink suppression** (Darcet et al., "Vision transformers need registers"; Xiao et
  al., "attention sinks"): a few background tokens carry an abnormally high norm and absorb
  attention from every query. They are detected as robust outliers (``> median + k * MAD``) of
  the token norm or of the attention a token receives, zeroed, and the map is rescaled to its
  previous mass.
* **Text-conditioned similarity** (as in RadZero): CLIP's last-layer patch tokens projected
  through ``ln_post`` and ``proj`` into the joint space, cosine with a class's descriptions.

The first two are available as ABS attention sources (:class:`HFLayeredAttention`,
:class:`ClipLayeredAttention`, chosen by :func:`absclip.attention.factory.load_attention` with
``rollout=`` / ``sink_threshold=``); the text map is for display (``absclip explain --map text``)."""

from __future__ import annotations

import logging

import torch
from PIL import Image

from absclip.attention.maps import HEAD_FUSIONS, incoming_attention, rollout, sink_tokens, suppress_sinks
from absclip.attention.sources import AttentionSource, ClipSelfAttention, HFAttention
from absclip.backbones.base import Backbone
from absclip.errors import AbsclipError

log = logging.getLogger(__name__)


# -----------------------------------------------------------------------------------------------
# Attention sources built on all blocks
# -----------------------------------------------------------------------------------------------


class LayeredAttention(AttentionSource):
    """Base class of attention sources that see every block: rollout and/or sink suppression.

    Subclasses implement :meth:`layers`. ``heads`` returns ``[B, heads, N]`` (one "head" for
    rollout, whose heads are fused inside the product).

    Args:
        layer: the (last) block used; negative counts from the end.
        rollout: ``None`` (that block's CLS attention), ``mean`` or ``max`` (rollout head fusion).
        sink_threshold: ``None`` (keep sinks) or the robust z-score above which tokens are sinks.
    """

    kind: str = "attention"

    def __init__(self, *, layer: int, rollout: str | None, sink_threshold: float | None) -> None:
        if rollout is not None and rollout not in HEAD_FUSIONS:
            raise AbsclipError(f"Unknown rollout head fusion {rollout!r}; choose from {', '.join(HEAD_FUSIONS)}.")
        if sink_threshold is not None and sink_threshold <= 0:
            raise AbsclipError(f"The attention-sink threshold must be positive, got {sink_threshold}.")
        self.layer = layer
        self.rollout = rollout
        self.sink_threshold = sink_threshold
        self.last_sinks: torch.Tensor | None = None

    @property
    def label(self) -> str:
        """Return a short human-readable description of the map (for plot titles)."""
        what = f"rollout to layer {self.layer} (head {self.rollout})" if self.rollout else \
            f"CLS attention, layer {self.layer}, head mean"
        sinks = f", sinks > {self.sink_threshold:g} MAD removed" if self.sink_threshold else ""
        return f"{self.kind}: {what}{sinks}"

    def _options_identity(self) -> str:
        return f"rollout={self.rollout}|sinks={self.sink_threshold}"

    def layers(self, images: list[Image.Image]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # pragma: no cover
        """Return per-block attentions ``[B, heads, T, T]`` and outputs ``[B, T, width]`` up to ``layer``."""
        raise NotImplementedError

    def heads(self, images: list[Image.Image]) -> torch.Tensor:
        """Return CLS→patch maps ``[B, heads, rows*cols]`` (``heads`` = 1 for rollout), fp32 on the CPU."""
        attentions, outputs = self.layers(images)
        n = self.grid[0] * self.grid[1]
        if attentions[-1].shape[-1] != n + 1:
            raise AbsclipError(
                f"{self.name} has {attentions[-1].shape[-1]} tokens; expected CLS + {n} patches "
                "(register tokens are not supported)."
            )
        if self.rollout:
            maps = rollout(attentions, self.rollout)[:, 0, 1:].unsqueeze(1)  # [B, 1, N]
        else:
            maps = attentions[-1][:, :, 0, 1:].float()  # [B, heads, N]
        self.last_sinks = None
        if self.sink_threshold:
            sinks = sink_tokens(outputs[-1][:, 1:], incoming_attention(attentions[-1])[:, 1:], self.sink_threshold)
            if sinks.any():
                log.debug("%s: %d attention-sink token(s) suppressed", self.name, int(sinks.sum()))
            self.last_sinks = sinks
            maps = suppress_sinks(maps, sinks)
        return maps.float().cpu()


class HFLayeredAttention(LayeredAttention):
    """A transformers ViT (DINO by default) seen through all its blocks: rollout and/or sink suppression.

    Wraps an :class:`absclip.attention.sources.HFAttention` (same preprocessing, same eager attention).
    """

    kind = "DINO/ViT"

    def __init__(self, base: HFAttention, *, rollout: str | None = None, sink_threshold: float | None = None) -> None:
        super().__init__(layer=base.layer, rollout=rollout, sink_threshold=sink_threshold)
        self.base = base
        self.name = base.name
        self.grid = base.grid
        self.identity = f"{base.identity}|{self._options_identity()}"

    @torch.inference_mode()
    def layers(self, images: list[Image.Image]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        out = self.base.model(pixel_values=self.base.pixel_values(images).to(self.base.device),
                              output_attentions=True, output_hidden_states=True)
        if not out.attentions:
            raise AbsclipError(f"{self.name} returned no attention maps (it must support eager attention).")
        last = self.layer + len(out.attentions) if self.layer < 0 else self.layer
        atts = [a.float().cpu() for a in out.attentions[: last + 1]]
        hidden = [h.float().cpu() for h in out.hidden_states[1 : last + 2]]  # outputs of blocks 0..last
        return atts, hidden


class ClipLayeredAttention(LayeredAttention):
    """The CLIP model's own attention through all blocks: rollout and/or sink suppression."""

    kind = "CLIP self-attention"

    def __init__(self, backbone: Backbone, *, layer: int = -1, rollout: str | None = None,
                 sink_threshold: float | None = None) -> None:
        backbone.require_tokens("CLIP attention maps")
        super().__init__(layer=layer, rollout=rollout, sink_threshold=sink_threshold)
        self.backbone = backbone
        self.grid = backbone.facts.grid
        self.name = "clip"
        self.identity = f"clip-attn:{backbone.identity}|layer={layer}|{self._options_identity()}"

    def layers(self, images: list[Image.Image]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        px = torch.stack([self.backbone.preprocess(im) for im in images])
        return self.backbone.block_attentions(px, self.layer)


def layered_attention(
    source: AttentionSource | str,
    backbone: Backbone,
    *,
    device: torch.device | None = None,
    layer: int = -1,
    rollout: str | None = None,
    sink_threshold: float | None = None,
) -> LayeredAttention:
    """Return a rollout / sink-suppressing attention source over the same model as ``source``.

    Args:
        source: an already loaded source (its model is reused, not loaded again) or a spec
            (``clip`` or an HF name / local dir).
        backbone: the CLIP adapter (for ``clip``).
        device: device for a newly loaded HF model.
        layer: the (last) block used, for a spec; a loaded source keeps its own layer.
        rollout: ``None``, ``mean`` or ``max``.
        sink_threshold: ``None`` or robust z-score for attention-sink suppression.
    """
    if isinstance(source, HFLayeredAttention):
        source = source.base
    elif isinstance(source, ClipLayeredAttention):
        layer, source = source.layer, "clip"
    if isinstance(source, ClipSelfAttention):
        return ClipLayeredAttention(backbone, layer=source.layer, rollout=rollout, sink_threshold=sink_threshold)
    if isinstance(source, HFAttention):
        return HFLayeredAttention(source, rollout=rollout, sink_threshold=sink_threshold)
    if source == "clip":
        return ClipLayeredAttention(backbone, layer=layer, rollout=rollout, sink_threshold=sink_threshold)
    if isinstance(source, str):
        base = HFAttention(source, device=device or backbone.device, layer=layer)
        return HFLayeredAttention(base, rollout=rollout, sink_threshold=sink_threshold)
    raise AbsclipError(f"Rollout and sink suppression are not supported for {type(source).__name__}.")
