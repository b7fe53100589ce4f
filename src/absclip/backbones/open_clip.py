"""The open_clip adapter: :class:`ClipBackbone` and the tower table that picks an adapter for an open_clip model.

Adapters carry their own facts (grid size, patch size, input size, number of blocks, identity
for caches), so that the rest of absclip never compares model-name strings or hard-codes
14/16/224. Loading (names and tags, JSON configs, checkpoints, OpenAI files, hub repos) is
:mod:`absclip.backbones.open_clip_loaders`; the attention models (DINO via transformers, or CLIP
itself) are in :mod:`absclip.attention.sources` (:func:`absclip.attention.factory.load_attention`).

CLIP attention is read by explicit recomputation of ``softmax(q k^T / sqrt(d))``
(:func:`attention_probs`); no library code is edited."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from absclip.backbones.base import Backbone, BackboneFacts, TowerRow, attention_probs
from absclip.backbones.fused_vit import FusedViT, fused_vit, mlp_activation
from absclip.errors import AbsclipError

#: texts per text-tower call on the CPU when batches are cut at their longest text (see encode_texts)
CPU_TEXT_BATCH = 32


class ClipBackbone(Backbone):
    """An open_clip model behind the :class:`~absclip.backbones.base.Backbone` protocol.

    Token-level methods (feature crops, CLS attention, attention maps) need an open_clip
    ``VisionTransformer`` tower; other towers (timm, ResNet) support pixel crops and baselines.
    Plain ViT towers run the fused forward of :mod:`absclip.backbones.fused_vit`;
    :meth:`unfused` gives an adapter over the same weights running open_clip's own modules.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        *,
        name: str,
        pretrained: str | None,
        identity: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.identity = identity
        self.device = device
        self.dtype = dtype
        visual = model.visual
        self.has_tokens = all(hasattr(visual, a) for a in ("_embeds", "transformer", "_pool", "proj"))
        heads = mlp = 0
        if self.has_tokens:
            grid = tuple(visual.grid_size)
            blocks = len(visual.transformer.resblocks)
            width = visual.transformer.width
            image_size = tuple(visual.image_size)
            patch = tuple(visual.patch_size)
            first = visual.transformer.resblocks[0] if blocks else None
            attn = getattr(first, "attn", None)
            heads = int(getattr(attn, "num_heads", 0) or 0)
            fc = getattr(getattr(first, "mlp", None), "c_fc", None)
            mlp = int(fc.out_features) if isinstance(fc, torch.nn.Linear) else 0
        else:
            size = getattr(visual, "image_size", 224)
            image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
            grid, blocks, width, patch = (0, 0), 0, 0, (0, 0)
        self.facts = BackboneFacts(image_size, patch, grid, blocks, width, joint_dim(model), heads, mlp,
                                   resize_mode=resize_mode(model))
        #: fused forward (SDPA, CLS-only last block; :mod:`absclip.backbones.fused_vit`) when the tower qualifies
        self._fused: FusedViT | None = fused_vit(visual) if self.has_tokens else None

    # -- protocol: model-level facts and variants -----------------------------------------------
    @property
    def logit_scale(self) -> float:
        """The model's learned logit scale (exp); 100 when the model has none."""
        ls = getattr(self.model, "logit_scale", None)
        return float(ls.exp()) if isinstance(ls, torch.Tensor) else 100.0

    @property
    def logit_bias(self) -> float | None:
        """The model's learned logit bias (SigLIP-trained open_clip models), else None."""
        lb = getattr(self.model, "logit_bias", None)
        return float(lb.reshape(-1)[0]) if isinstance(lb, torch.Tensor) else None

    @property
    def fused_path(self) -> bool:
        """Whether image encoding runs the fused ViT forward (CLS-only last block)."""
        return self._fused is not None

    @property
    def activation(self) -> str | None:
        """The image tower's MLP activation: ``quick_gelu`` (OpenAI weights), ``gelu``, or None (another one)."""
        return mlp_activation(self._blocks()[0].mlp) if self.has_tokens and self.facts.num_blocks else None

    def unfused(self) -> ClipBackbone:
        """Return an adapter over the same model that runs open_clip's own modules (``self`` is unchanged)."""
        if self._fused is None:
            return self
        new = copy.copy(self)
        new._fused = None
        return new

    def _after_copy_cast(self) -> None:
        if self._fused is not None:  # the fused path holds the old weights: build it over the copy's
            self._fused = fused_vit(self.model.visual)

    def _blocks(self) -> Any:
        return self.model.visual.transformer.resblocks

    def _run_block(self, blk: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one open_clip block on batch-first ``x`` (whatever the transformer's layout)."""
        if self.model.visual.transformer.batch_first:
            return blk(x)
        return blk(x.transpose(0, 1)).transpose(0, 1)

    def _block_qk(self, blk: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Return fp32 ``(q, k, heads)`` of one block for its batch-first input ``tokens``."""
        attn = getattr(blk, "attn", None)
        if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None:
            raise AbsclipError(
                f"CLIP attention maps need blocks with a standard multi-head attention; {self.name} has none."
            )
        x = blk.ln_1(tokens.to(self.device, self.dtype)).float()
        bias = attn.in_proj_bias.float() if attn.in_proj_bias is not None else None
        q, k, _ = F.linear(x, attn.in_proj_weight.float(), bias).chunk(3, dim=-1)  # [B, T, width] each
        return q, k, attn.num_heads

    # -- image side ------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return normalised image embeddings ``[B, D]`` (fp32) for preprocessed pixels ``[B, 3, H, W]``."""
        x = pixels.to(self.device, self.dtype)
        if self._fused is not None:
            return F.normalize(self._fused.encode(x).float(), dim=-1)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.inference_mode()
    def encode_images_dropped(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Return normalised embeddings ``[B, D]`` keeping only patches ``keep`` ``[B, k]`` (token dropping).

        Patches are dropped after the patch and positional embedding; this changes results and
        is used only by ABS's opt-in fast mode. Needs the fused ViT path.
        """
        if self._fused is None:
            raise AbsclipError(f"Token dropping needs a plain open_clip ViT image tower; {self.name} has none.")
        return F.normalize(self._fused.encode(pixels.to(self.device, self.dtype), keep).float(), dim=-1)

    @torch.inference_mode()
    def tokens_before(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Return the tokens entering block ``layer``: ``[B, 1 + rows*cols, width]`` (CLS first, row-major).

        That is patch + positional embedding, ``ln_pre`` and blocks ``0 .. layer-1``.
        """
        self.require_tokens("feature crops")
        idx = self.block_index(layer)
        if self._fused is not None:
            return self._fused.run_blocks(self._fused.embed(pixels.to(self.device, self.dtype)), 0, idx)
        x = self.model.visual._embeds(pixels.to(self.device, self.dtype))
        for blk in self._blocks()[:idx]:
            x = self._run_block(blk, x)
        return x

    @torch.inference_mode()
    def forward_from(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Run blocks ``layer ..`` on ``tokens`` ``[B, T, width]``, pool, project; return normalised ``[B, D]``."""
        self.require_tokens("feature crops")
        visual = self.model.visual
        idx = self.block_index(layer)
        x = tokens.to(self.device, self.dtype)
        if self._fused is not None:
            return F.normalize(self._fused.forward_from(x, idx).float(), dim=-1)
        for blk in self._blocks()[idx:]:
            x = self._run_block(blk, x)
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled.float(), dim=-1)

    @torch.inference_mode()
    def cls_attention(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return the CLS→patch attention of block ``layer`` for its input ``tokens``: ``[B, heads, rows*cols]``.

        Recomputed explicitly as ``softmax(q k^T / sqrt(d_head))`` from the block's ``ln_1`` and
        ``in_proj`` weights, so it works with fused attention kernels. Rows sum to 1 over all keys
        (CLS included); the patch part is returned.
        """
        self.require_tokens("CLIP attention maps")
        q, k, heads = self._block_qk(self._blocks()[self.block_index(layer)], tokens)
        return attention_probs(q[:, :1], k, heads)[:, :, 0, 1:]

    @torch.inference_mode()
    def block_attentions(self, pixels: torch.Tensor, last: int = -1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(attentions, outputs)`` of blocks ``0 .. last`` (see :meth:`Backbone.block_attentions`)."""
        self.require_tokens("CLIP attention maps")
        idx = self.block_index(last)
        x = self.model.visual._embeds(pixels.to(self.device, self.dtype))  # [B, T, width]
        attentions, outputs = [], []
        for blk in self._blocks()[: idx + 1]:
            q, k, heads = self._block_qk(blk, x)
            attentions.append(attention_probs(q, k, heads).cpu())
            x = self._run_block(blk, x)
            outputs.append(x.float().cpu())
        return attentions, outputs

    @torch.inference_mode()
    def patch_embeddings(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return normalised patch embeddings ``[B, rows*cols, D]`` (fp32, CPU): blocks ``layer ..``, ln_post, proj."""
        self.require_tokens("text similarity maps")
        visual = self.model.visual
        x = tokens.to(self.device, self.dtype)
        for blk in self._blocks()[self.block_index(layer):]:
            x = self._run_block(blk, x)
        patches = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            patches = patches @ visual.proj
        return F.normalize(patches.float(), dim=-1).cpu()

    # -- text side ---------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256, *,
                     on_batch: Callable[[int], Any] | None = None) -> torch.Tensor:
        """Return normalised text embeddings ``[T, D]`` (fp32, on the CPU); long texts are truncated.

        Where it is exact (:meth:`text_ends`), texts are encoded in batches sorted by length, each
        only up to its longest end-of-text position; other towers run the full context.
        """
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.facts.embed_dim)
        tokens = self.tokenizer(texts)
        ends = self.text_ends(tokens)
        order = torch.argsort(ends, stable=True) if ends is not None else torch.arange(len(texts))
        if ends is not None and self.device.type == "cpu":
            # short batches follow the sorted lengths more closely: ViT-B/16's text tower on 453 CuPL
            # sentences ran 2.4x the full-length speed in batches of 256, 3.6x in 64, 4.1x in 32
            batch_size = min(batch_size, CPU_TEXT_BATCH)
        out = torch.empty(len(texts), self.facts.embed_dim)
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            batch = tokens[idx]
            if ends is None:
                emb = self.model.encode_text(batch.to(self.device))
            else:
                emb = self._encode_text_prefix(batch[:, : int(ends[idx].max()) + 1].to(self.device))
            out[idx] = F.normalize(emb.float(), dim=-1).cpu()
            if on_batch is not None:
                on_batch(len(idx))
        return out

    def text_ends(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Return each text's pooled (end-of-text) position ``[N]``, or None where truncating is not exact.

        A causal text tower that pools the end-of-text token reads nothing after it, so a batch can
        stop at its longest end-of-text position. Towers without a causal mask (SigLIP-style) or
        with another pooling read every position: None, the full context is run.
        """
        m = self.model
        if not all(hasattr(m, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
            return None  # a custom text tower (HF or timm text model)
        if getattr(m, "attn_mask", None) is None:
            return None
        pool = getattr(m, "text_pool_type", "argmax")
        if pool == "argmax":
            return tokens.argmax(dim=-1)
        eos = getattr(m, "text_eos_id", None)
        if pool == "eos" and eos is not None and bool((tokens == eos).any(dim=-1).all()):
            return (tokens == eos).int().argmax(dim=-1)
        return None

    def _encode_text_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` on the first ``L`` positions (``tokens`` ``[B, L]``): the same maths."""
        from open_clip.transformer import text_global_pool

        m = self.model
        n = tokens.shape[1]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:n].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x


def joint_dim(model: torch.nn.Module) -> int:
    """Return the joint embedding dimension of an open_clip model (native or custom text tower)."""
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    text_proj = getattr(getattr(model, "text", None), "text_projection", None)
    if isinstance(text_proj, torch.nn.Linear):
        return int(text_proj.out_features)
    if isinstance(text_proj, torch.Tensor):
        return int(text_proj.shape[-1])
    return int(getattr(model.visual, "output_dim", 0) or getattr(model, "embed_dim", 0))


def resize_mode(model: torch.nn.Module) -> str:
    """Return how the model's preprocessing fits images (``shortest`` or ``squash``; open_clip's preprocess cfg)."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    return "squash" if cfg.get("resize_mode") == "squash" else "shortest"


def open_clip_backbone(model: torch.nn.Module, preprocess: Any, tokenizer: Any, **kwargs: Any) -> ClipBackbone:
    """Return the adapter for an open_clip model: the first tower row (:data:`TOWERS` of every module) that fits.

    The image tower decides: open_clip's own ViT and other towers take :class:`ClipBackbone`;
    timm ViT and Eva towers have their own adapters (:mod:`absclip.backbones.timm_vit`, :mod:`absclip.backbones.eva`).
    """
    from absclip.backbones.registry import tower_adapter

    return tower_adapter(model.visual)(model, preprocess, tokenizer, **kwargs)


def is_open_clip_tower(visual: torch.nn.Module) -> bool:
    """Tower predicate: any open_clip image tower (the catch-all: native ViT, ModifiedResNet, other timm towers)."""
    return True


#: this module's rows of the tower table (:func:`open_clip_backbone`); the catch-all row
TOWERS = (TowerRow("open_clip ViT / other towers", is_open_clip_tower, ClipBackbone, 1000),)
