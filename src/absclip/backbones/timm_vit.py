"""The adapter for open_clip models whose image tower is a timm ``VisionTransformer`` (SigLIP, SigLIP2, ...).

open_clip wraps the timm model as ``visual.trunk`` and adds ``visual.head`` (projection or
nothing). The image embedding is ``visual.head(trunk.forward_head(trunk.norm(blocks(embed(x)))))``;
this adapter runs those same modules piecewise, so that feature crops, CLIP attention and
text maps work as for open_clip's own ViT:

* **Feature crops** run the blocks from the crop block on the cropped, resized token grid, then
  the model's own final norm, pooling (MAP attention pooling, class token or average) and
  projection. Positional embeddings are added once, before the first block (as the reference).
* **Towers without a class token** (SigLIP's MAP pooling) exchange tokens in the protocol's layout
  (``[B, 1 + rows*cols, width]``): the CLS slot holds a zero placeholder that no block reads.
* **CLIP attention** is the attention pooling probe's attention over the patches where the tower
  pools with one (the query that makes the embedding), else the given block's CLS row. Both are
  recomputed explicitly as ``softmax(q k^T * scale)`` from the modules' weights.
* **Text maps** send each patch token alone through the pooling head (for MAP: the pooled output
  if the probe attended to that patch only), then the projection.
* **Rollout and sink suppression** use the CLS row of every block; towers without a class token put
  the pooling probe in that slot (its attention over the last block's output), as the HF SigLIP
  adapter does, so that rollout carries the probe back through the patch attention.

The Eva tower (rotary position embeddings) is :mod:`absclip.backbones.eva`, a subclass."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from absclip.backbones.base import BackboneFacts, TowerRow, probe_in_slot
from absclip.backbones.open_clip import ClipBackbone, joint_dim, resize_mode
from absclip.errors import AbsclipError

#: timm block classes whose attention input is ``norm1(x)`` (pre-norm): the attention can be recomputed
PRE_NORM_BLOCKS = ("Block", "EvaBlock")


def timm_trunk(visual: torch.nn.Module) -> Any:
    """Return the timm model inside an open_clip ``TimmModel`` tower (None for other towers)."""
    return getattr(visual, "trunk", None)


def plain_token_tower(trunk: Any) -> bool:
    """Whether a timm ViT-like trunk has the layout this adapter runs piecewise.

    Plain patch embedding (hybrid towers such as ViTamin embed with a convolutional stem: pixel
    crops only), fixed input size, at most one prefix token (class token; registers are not
    supported), no patch dropout, pre-norm blocks.
    """
    from timm.layers import PatchEmbed

    blocks = getattr(trunk, "blocks", None)
    return (
        isinstance(getattr(trunk, "patch_embed", None), PatchEmbed)
        and type(trunk.patch_embed).__name__ == "PatchEmbed"
        and blocks is not None
        and len(blocks) > 0
        and getattr(trunk, "num_prefix_tokens", 2) <= 1
        and not getattr(trunk, "dynamic_img_size", False)
        and isinstance(getattr(trunk, "patch_drop", None), (torch.nn.Identity, type(None)))
        and all(type(b).__name__ in PRE_NORM_BLOCKS for b in blocks)
    )


def mlp_width(block: torch.nn.Module, width: int) -> int:
    """Return the MLP hidden width that gives the block MLP's multiply-adds in :func:`vit_flops` (``2*width*w``).

    Counts every linear layer of the MLP, so gated MLPs (SwiGLU: three matrices) are counted right.
    """
    macs = sum(m.in_features * m.out_features for m in block.mlp.modules() if isinstance(m, torch.nn.Linear))
    return max(1, macs // (2 * width))


class TimmViTBackbone(ClipBackbone):
    """An open_clip model with a timm ``VisionTransformer`` image tower (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(model, preprocess, tokenizer, **kwargs)  # no fused path, no tokens yet
        trunk = self._trunk
        first = trunk.blocks[0]
        self.has_tokens = True
        self.facts = BackboneFacts(
            image_size=tuple(trunk.patch_embed.img_size),
            patch_size=tuple(trunk.patch_embed.patch_size),
            grid=tuple(trunk.patch_embed.grid_size),
            num_blocks=len(trunk.blocks),
            width=int(trunk.embed_dim),
            embed_dim=joint_dim(model),
            heads=int(first.attn.num_heads),
            mlp_width=mlp_width(first, int(trunk.embed_dim)),
            class_token=trunk.num_prefix_tokens == 1,
            resize_mode=resize_mode(model),
        )

    # -- the tower, piecewise -------------------------------------------------------------------
    @property
    def _trunk(self) -> Any:
        return self.model.visual.trunk

    @property
    def _prefix(self) -> int:
        return int(self._trunk.num_prefix_tokens)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch embedding, class token, positional embedding and pre-norm: the tokens entering block 0."""
        trunk = self._trunk
        x = trunk._pos_embed(trunk.patch_embed(pixels.to(self.device, self.dtype)))
        return trunk.norm_pre(trunk.patch_drop(x))

    def _rope(self, index: int) -> torch.Tensor | None:
        """Rotary position embedding of block ``index`` (None: the tower has none)."""
        return None

    def _run_blocks(self, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        blocks = self._trunk.blocks
        stop = len(blocks) if stop is None else stop
        for i in range(start, stop):
            rope = self._rope(i)
            x = blocks[i](x) if rope is None else blocks[i](x, rope=rope)
        return x

    def _slot(self, x: torch.Tensor) -> torch.Tensor:
        """The protocol's layout: a zero placeholder in the CLS slot of towers without a class token."""
        return x if self._prefix else torch.cat([x.new_zeros(x.shape[0], 1, x.shape[2]), x], dim=1)

    def _unslot(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.to(self.device, self.dtype)
        return x if self._prefix else x[:, 1:]

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, the trunk's pooling head and open_clip's projection: ``[B, D]`` (not normalised)."""
        return self.model.visual.head(self._trunk.forward_head(self._trunk.norm(x)))

    def _block_probs(self, index: int, x: torch.Tensor, queries: slice = slice(None)) -> torch.Tensor:
        """Return ``softmax(q k^T * scale)`` ``[B, heads, Tq, T]`` (fp32) of block ``index`` for its input ``x``.

        The block's own modules give q and k (norm1, fused or separate projections, q/k norms,
        rotary embedding of the patch tokens, grouped key heads), exactly as its forward computes them.
        """
        from timm.layers import apply_rot_embed_cat

        blk = self._trunk.blocks[index]
        attn = blk.attn
        h = blk.norm1(x)
        b, n, _ = h.shape
        heads = int(attn.num_heads)
        if getattr(attn, "qkv", None) is not None:
            bias = attn.qkv.bias
            if getattr(attn, "q_bias", None) is not None:  # Eva keeps q/v biases apart (k has none)
                bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
            q, k, _ = F.linear(h, attn.qkv.weight, bias).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        else:
            q = attn.q_proj(h).reshape(b, n, heads, -1).transpose(1, 2)
            k = attn.k_proj(h).reshape(b, n, -1, q.shape[-1]).transpose(1, 2)
        q, k = attn.q_norm(q), attn.k_norm(k)
        rope = self._rope(index)
        if rope is not None:
            npt, half = self._prefix, getattr(attn, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], dim=2)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], dim=2)
        if k.shape[1] != heads:  # grouped-query attention: each key head serves a group of query heads
            k = k.repeat_interleave(heads // k.shape[1], dim=1)
        scores = (q[:, :, queries].float() * float(attn.scale)) @ k.float().transpose(-1, -2)
        return torch.softmax(scores, dim=-1)

    def _probe_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Return the attention pooling probe's ``softmax(q k^T * scale)`` ``[B, heads, T]`` over the keys it pools."""
        trunk = self._trunk
        pool = trunk.attn_pool
        x = trunk.norm(x)
        if not self._probe_reads_prefix():
            x = x[:, self._prefix:]
        if pool.pos_embed is not None:
            x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
        b, n, _ = x.shape
        heads, dim = int(pool.num_heads), int(pool.head_dim)
        q = pool.q(pool.latent.expand(b, -1, -1)).reshape(b, -1, heads, dim).transpose(1, 2)
        k = pool.kv(x).reshape(b, n, 2, heads, dim)[:, :, 0].transpose(1, 2)
        q, k = pool.q_norm(q), pool.k_norm(k)
        probs = torch.softmax((q.float() * float(pool.scale)) @ k.float().transpose(-1, -2), dim=-1)
        return probs.mean(dim=2)  # latents (one in every open_clip config) averaged

    def _probe_reads_prefix(self) -> bool:
        """Whether the attention pooling probe reads the class token too (timm ViT: ``pool_include_prefix``)."""
        return bool(getattr(self._trunk, "pool_include_prefix", False))

    def _pool_each(self, patches: torch.Tensor) -> torch.Tensor:
        """Each patch token through the pooling head alone (MAP: as if the probe attended to it only)."""
        trunk = self._trunk
        pool = getattr(trunk, "attn_pool", None)
        y = patches
        if pool is not None:
            if pool.pos_embed is not None:
                y = y + pool.pos_embed.unsqueeze(0).to(y.dtype)[:, : y.shape[1]]
            y = pool.proj(pool.kv(y)[..., y.shape[-1]:])  # the value half of kv, then the output projection
            if pool.mlp is not None:
                y = y + pool.mlp(pool.norm(y))
        return self.model.visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(y))))

    # -- protocol: image side --------------------------------------------------------------------
    @torch.inference_mode()
    def tokens_before(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Return the tokens entering block ``layer`` ``[B, 1 + rows*cols, width]`` (CLS or placeholder first)."""
        self.require_tokens("feature crops")
        return self._slot(self._run_blocks(self._embed(pixels), 0, self.block_index(layer)))

    @torch.inference_mode()
    def forward_from(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Run blocks ``layer ..``, the final norm, the model's own pooling and projection; normalised ``[B, D]``."""
        self.require_tokens("feature crops")
        x = self._run_blocks(self._unslot(tokens), self.block_index(layer))
        return F.normalize(self._head(x).float(), dim=-1)

    @torch.inference_mode()
    def cls_attention(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return the attention over the patches ``[B, heads, rows*cols]`` for the tokens entering block ``layer``.

        Towers with attention pooling: the probe's attention after blocks ``layer ..`` and the
        final norm (rows sum to 1 over the keys the probe reads). Otherwise block ``layer``'s CLS
        row (sums to 1 over all keys, CLS included). The patch part is returned.
        """
        self.require_tokens("CLIP attention maps")
        idx = self.block_index(layer)
        x = self._unslot(tokens)
        if getattr(self._trunk, "attn_pool", None) is not None:
            probs = self._probe_probs(self._run_blocks(x, idx))
            return probs[..., probs.shape[-1] - self.facts.grid[0] * self.facts.grid[1]:]
        if not self._prefix:
            raise AbsclipError(f"CLIP attention maps need a class token or an attention pooling probe; "
                               f"{self.name} has neither (set `attention_model` to a DINO-like ViT).")
        return self._block_probs(idx, x, slice(0, 1))[:, :, 0, 1:]

    @torch.inference_mode()
    def block_attentions(self, pixels: torch.Tensor, last: int = -1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(attentions, outputs)`` of blocks ``0 .. last`` (:meth:`Backbone.block_attentions`).

        Towers without a class token put the pooling probe in the CLS slot (as the HF SigLIP adapter):
        patch rows are the block's self-attention (nothing attends to the slot); the slot row is
        ``[1, 0, ...]`` except in block ``last``, where it is the probe's attention over that block's
        output, so that rollout carries the probe back through the patch attention.
        """
        self.require_tokens("CLIP attention maps")
        probe = getattr(self._trunk, "attn_pool", None)
        if not self._prefix and probe is None:
            raise AbsclipError(f"Attention rollout and sink suppression need a class token or an attention pooling "
                               f"probe; {self.name} has neither (leave out `rollout` and `sink_threshold`).")
        idx = self.block_index(last)
        x = self._embed(pixels)
        attentions, outputs = [], []
        for i in range(idx + 1):
            att = self._block_probs(i, x).cpu()
            x = self._run_blocks(x, i, i + 1)
            if not self._prefix:
                att = probe_in_slot(att, self._probe_probs(x).cpu() if i == idx else None)
            attentions.append(att)
            outputs.append(self._slot(x).float().cpu())
        return attentions, outputs

    @torch.inference_mode()
    def patch_embeddings(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return normalised patch embeddings ``[B, rows*cols, D]`` (fp32, CPU): blocks, norm, each patch pooled."""
        self.require_tokens("text similarity maps")
        x = self._trunk.norm(self._run_blocks(self._unslot(tokens), self.block_index(layer)))
        return F.normalize(self._pool_each(x[:, self._prefix:]).float(), dim=-1).cpu()


def is_timm_vit_tower(visual: torch.nn.Module) -> bool:
    """Tower predicate: a timm ``VisionTransformer`` this adapter can run piecewise."""
    trunk = timm_trunk(visual)
    if trunk is None:
        return False
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(trunk, VisionTransformer) and plain_token_tower(trunk)


#: this module's rows of the open_clip tower table (:func:`absclip.backbones.open_clip.open_clip_backbone`)
TOWERS = (TowerRow("timm VisionTransformer (SigLIP, SigLIP2)", is_timm_vit_tower, TimmViTBackbone, 20),)
