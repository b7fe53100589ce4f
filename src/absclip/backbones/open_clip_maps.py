"""Per-block attention and patch embeddings of an open_clip ViT image tower."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from absclip.backbones.base import attention_probs
from absclip.backbones.open_clip import ClipBackbone
from absclip.errors import AbsclipError

log = logging.getLogger(__name__)


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
