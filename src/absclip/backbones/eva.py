"""The adapter for open_clip models whose image tower is a timm ``Eva`` (EVA02-CLIP, PE-Core).

Eva towers have a class token and rotary position embeddings (RoPE) applied to the patch tokens'
queries and keys inside every block; PE-Core also pools with an attention probe (MAP) that reads
the class token too. Everything else is :class:`~absclip.backbones.timm_vit.TimmViTBackbone`.

**Rotary positions of a feature crop.** A feature crop resizes a window of the token grid to the
full grid, so the crop fills the grid the way a pixel crop fills the image: its tokens get the
full grid's rotary positions (token ``(r, c)`` of the resized crop is rotated as grid cell
``(r, c)``), exactly what the model does for any full-size input. The positions are not those of
the window's cells in the original image. With the full window and no resize, a feature crop
therefore equals the model's own forward (tested)."""

from __future__ import annotations

import torch

from absclip.backbones.base import TowerRow
from absclip.backbones.timm_vit import TimmViTBackbone, plain_token_tower, timm_trunk


class EvaBackbone(TimmViTBackbone):
    """An open_clip model with a timm ``Eva`` image tower (see the module docstring)."""

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        trunk = self._trunk
        x, _ = trunk._pos_embed(trunk.patch_embed(pixels.to(self.device, self.dtype)))  # rope: see _rope
        return trunk.norm_pre(x)

    def _rope(self, index: int) -> torch.Tensor | None:
        """The full grid's rotary embedding for block ``index`` (per block in timm's "mixed" mode), as timm's."""
        rope = self._trunk.rope
        if rope is None:
            return None
        emb = rope.get_embed() if hasattr(rope, "feat_shape") else rope.get_embed(shape=self.facts.grid)
        return emb[index] if getattr(self._trunk, "rope_mixed", False) else emb

    def _probe_reads_prefix(self) -> bool:
        return True  # Eva's attention pooling reads every token, the class token included


def is_eva_tower(visual: torch.nn.Module) -> bool:
    """Tower predicate: a timm ``Eva`` this adapter can run piecewise."""
    trunk = timm_trunk(visual)
    if trunk is None:
        return False
    from timm.models.eva import Eva

    return isinstance(trunk, Eva) and plain_token_tower(trunk)


#: this module's rows of the open_clip tower table (:func:`absclip.backbones.open_clip.open_clip_backbone`)
TOWERS = (TowerRow("timm Eva (EVA02, PE-Core)", is_eva_tower, EvaBackbone, 20),)
