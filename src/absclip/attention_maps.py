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
:class:`ClipLayeredAttention`, chosen by :func:`absclip.attention.load_attention` with
``rollout=`` / ``sink_threshold=``); the text map is for display (``absclip explain --map text``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .attention import AttentionSource, ClipSelfAttention, HFAttention
from .config import DEFAULT_SINK_THRESHOLD
from .errors import AbsclipError
from .models import ClipBackbone, attention_probs

log = logging.getLogger(__name__)

HEAD_FUSIONS = ("mean", "max")
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


# -----------------------------------------------------------------------------------------------
# Pure functions of attention tensors
# -----------------------------------------------------------------------------------------------


def fuse_heads(attention: torch.Tensor, fusion: str = "mean") -> torch.Tensor:
    """Return the heads of ``attention`` ``[B, heads, T, T]`` fused to ``[B, T, T]`` by their mean or max."""
    if fusion == "mean":
        return attention.mean(dim=1)
    if fusion == "max":
        return attention.amax(dim=1)
    raise AbsclipError(f"Unknown head fusion {fusion!r}; choose from {', '.join(HEAD_FUSIONS)}.")


def rollout(attentions: Sequence[torch.Tensor], head_fusion: str = "mean") -> torch.Tensor:
    """Return the attention rollout ``[B, T, T]`` over ``attentions`` (first block first).

    Each block's fused attention gets the residual connection added (``0.5 * A + 0.5 * I``), rows
    are renormalised to sum to 1, and the blocks are multiplied in order:
    ``R = Â_L @ ... @ Â_1``. Rows of ``R`` sum to 1.

    Args:
        attentions: per-block attention probabilities ``[B, heads, T, T]`` (rows sum to 1).
        head_fusion: ``mean`` or ``max`` over heads.
    """
    if not attentions:
        raise AbsclipError("Attention rollout needs at least one block's attention.")
    result: torch.Tensor | None = None
    for att in attentions:
        a = fuse_heads(att.float(), head_fusion)  # [B, T, T]
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    assert result is not None
    return result


def robust_outliers(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return a boolean mask ``[B, N]``: True where ``scores`` ``[B, N]`` exceed ``median + threshold * MAD``.

    The MAD (median absolute deviation) is scaled by 1.4826, so ``threshold`` reads as a robust
    z-score. A row with zero MAD flags only values strictly above its median.
    """
    med = scores.median(dim=-1, keepdim=True).values
    mad = (scores - med).abs().median(dim=-1, keepdim=True).values * MAD_TO_SIGMA
    return scores > med + threshold * mad.clamp_min(torch.finfo(scores.dtype).tiny)


def incoming_attention(attention: torch.Tensor) -> torch.Tensor:
    """Return the attention each token receives ``[B, T]``: mean over heads and queries of ``[B, heads, T, T]``."""
    return attention.float().mean(dim=(1, 2))


def sink_tokens(
    hidden: torch.Tensor | None, incoming: torch.Tensor | None, threshold: float = DEFAULT_SINK_THRESHOLD
) -> torch.Tensor:
    """Return a boolean mask ``[B, N]`` of attention-sink patch tokens.

    A token is a sink if its norm or the attention it receives is a robust outlier
    (:func:`robust_outliers`). At least one of the two inputs is required.

    Args:
        hidden: ``[B, N, width]`` patch tokens (no CLS) output by the attention block, or None.
        incoming: ``[B, N]`` attention received by each patch token (:func:`incoming_attention`), or None.
        threshold: robust z-score (MADs above the median).
    """
    masks = []
    if hidden is not None:
        masks.append(robust_outliers(hidden.float().norm(dim=-1), threshold))
    if incoming is not None:
        masks.append(robust_outliers(incoming.float(), threshold))
    if not masks:
        raise ValueError("sink_tokens needs hidden states or incoming attention")
    out = masks[0]
    for m in masks[1:]:
        out = out | m
    return out


def suppress_sinks(cls_attention: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Return ``cls_attention`` with sink tokens zeroed and each row rescaled to its previous total.

    Args:
        cls_attention: ``[B, ..., N]`` CLS→patch attention (e.g. ``[B, heads, N]`` or ``[B, N]``).
        sinks: ``[B, N]`` boolean mask from :func:`sink_tokens`.

    A row whose every token is a sink is returned unchanged.
    """
    shape = (sinks.shape[0],) + (1,) * (cls_attention.dim() - 2) + (sinks.shape[-1],)
    keep = (~sinks).reshape(shape).to(cls_attention.dtype)
    kept = cls_attention * keep
    total = cls_attention.sum(dim=-1, keepdim=True)
    new_total = kept.sum(dim=-1, keepdim=True)
    scale = torch.where(new_total > 0, total / new_total.clamp_min(torch.finfo(total.dtype).tiny),
                        torch.ones_like(total))
    return torch.where(new_total > 0, kept * scale, cls_attention)


def text_similarity_map(patches: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return the text-conditioned similarity map ``[B, N]``: mean cosine of each patch with the texts.

    Args:
        patches: ``[B, N, D]`` L2-normalised patch embeddings in the joint space.
        text: ``[M, D]`` L2-normalised description embeddings of one class.
        mask: ``[M]`` True for valid descriptions (default: all).
    """
    if mask is not None:
        text = text[mask.bool()]
    if text.shape[0] == 0:
        raise AbsclipError("The text similarity map needs at least one description.")
    return (patches.float() @ text.float().T).mean(dim=-1)


# -----------------------------------------------------------------------------------------------
# CLIP: explicit per-block attention and patch embeddings
# -----------------------------------------------------------------------------------------------


def clip_block_attention(block: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Return one CLIP block's attention probabilities ``[B, heads, T, T]`` (fp32) for its input ``tokens``.

    Recomputed as ``softmax(q k^T / sqrt(d_head))`` from the block's ``ln_1`` and ``in_proj``
    weights (as :meth:`ClipBackbone.cls_attention` does), so fused attention kernels do not matter.

    Args:
        block: an open_clip ``ResidualAttentionBlock`` with a ``torch.nn.MultiheadAttention``.
        tokens: ``[B, T, width]`` batch-first tokens entering the block.
    """
    attn = getattr(block, "attn", None)
    if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None:
        raise AbsclipError("CLIP attention maps need open_clip blocks with a standard MultiheadAttention.")
    x = block.ln_1(tokens).float()
    bias = attn.in_proj_bias.float() if attn.in_proj_bias is not None else None
    q, k, _ = F.linear(x, attn.in_proj_weight.float(), bias).chunk(3, dim=-1)  # [B, T, width] each
    return attention_probs(q, k, attn.num_heads)  # [B, h, T, T]


@torch.inference_mode()
def clip_layers(
    backbone: ClipBackbone, pixels: torch.Tensor, last: int = -1
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Return ``(attentions, outputs)`` of CLIP image blocks ``0 .. last``, running the blocks one at a time.

    ``attentions[l]`` is ``[B, heads, T, T]`` (fp32, CPU) and ``outputs[l]`` the block's output
    tokens ``[B, T, width]`` (fp32, CPU), CLS first.

    Args:
        backbone: the CLIP adapter (open_clip VisionTransformer tower).
        pixels: preprocessed images ``[B, 3, H, W]``.
        last: the last block to run (negative counts from the end).
    """
    backbone._require_tokens("CLIP attention maps")
    visual = backbone.model.visual
    idx = backbone.block_index(last)
    x = visual._embeds(pixels.to(backbone.device, backbone.dtype))  # [B, T, width]
    attentions, outputs = [], []
    for blk in visual.transformer.resblocks[: idx + 1]:
        attentions.append(clip_block_attention(blk, x).cpu())
        x = blk(x) if visual.transformer.batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
        outputs.append(x.float().cpu())
    return attentions, outputs


@torch.inference_mode()
def clip_patch_embeddings(backbone: ClipBackbone, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Return L2-normalised patch embeddings in the joint space ``[B, rows*cols, D]`` (fp32, CPU).

    Runs blocks ``layer ..`` on ``tokens`` (the tokens entering block ``layer``, as
    :meth:`ClipBackbone.tokens_before` returns them), then ``ln_post`` and ``proj`` on every
    patch token (CLS dropped).

    Args:
        backbone: the CLIP adapter.
        tokens: ``[B, 1 + rows*cols, width]``.
        layer: the block ``tokens`` enter.
    """
    backbone._require_tokens("The text similarity map")
    visual = backbone.model.visual
    x = tokens.to(backbone.device, backbone.dtype)
    for blk in visual.transformer.resblocks[backbone.block_index(layer):]:
        x = blk(x) if visual.transformer.batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
    patches = visual.ln_post(x[:, 1:])
    if visual.proj is not None:
        patches = patches @ visual.proj
    return F.normalize(patches.float(), dim=-1).cpu()


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

    Wraps an :class:`absclip.attention.HFAttention` (same preprocessing, same eager attention).
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

    def __init__(self, backbone: ClipBackbone, *, layer: int = -1, rollout: str | None = None,
                 sink_threshold: float | None = None) -> None:
        backbone._require_tokens("CLIP self-attention")
        super().__init__(layer=layer, rollout=rollout, sink_threshold=sink_threshold)
        self.backbone = backbone
        self.grid = backbone.facts.grid
        self.name = "clip"
        self.identity = f"clip-attn:{backbone.identity}|layer={layer}|{self._options_identity()}"

    def layers(self, images: list[Image.Image]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        px = torch.stack([self.backbone.preprocess(im) for im in images])
        return clip_layers(self.backbone, px, self.layer)


def layered_attention(
    source: AttentionSource | str,
    backbone: ClipBackbone,
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
