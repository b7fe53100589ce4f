"""Pure functions of attention tensors: head fusion, rollout, attention sinks, text similarity maps."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from absclip.core.settings import DEFAULT_SINK_THRESHOLD
from absclip.errors import AbsclipError

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
