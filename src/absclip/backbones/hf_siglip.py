"""Adapter for Hugging Face ``transformers`` SigLIP models (``SiglipModel``, ``Siglip2Model``) behind the
:class:`~absclip.backbones.base.Backbone` protocol.

Names: ``--model hf:google/siglip-base-patch16-224`` (hub name or local directory), or a directory saved
with ``save_pretrained`` whose ``config.json`` says ``"model_type": "siglip"`` or ``"siglip2"``.

SigLIP's image tower has no class token: it pools the post-layernormed patch tokens with a multi-head
attention head whose learned probe is the only query (MAP). The protocol's token sequences are
``[B, 1 + rows*cols, width]`` with a class token first; here position 0 is a *pooling slot*, a zero
placeholder the tower never reads, so that feature crops and attention sources work unchanged:

* feature crops: the remaining encoder layers run on the cropped, resized patch grid (the position
  embeddings were added at the full grid, as the model does at its fixed resolution), then
  ``post_layernorm`` and the MAP head;
* CLIP-side attention (:meth:`HFSiglipBackbone.cls_attention`): the probe's attention over the
  patches, ``softmax(q k^T / sqrt(d))`` from the head's own ``in_proj`` weights, on the
  post-layernormed output of the block asked for (for the last block: exactly the pooling);
* :meth:`HFSiglipBackbone.block_attentions`: patch→patch attention of each block; the slot attends
  to itself in every block but the last one returned, whose slot row is that probe attention
  (so attention rollout is half the probe's attention carried back through the earlier blocks'
  rollout; the slot keeps the other half);
* patch embeddings: each patch through the head as if the probe attended to it alone (value and
  output projections, then the head's residual MLP).

Text: SigLIP's text tower has no causal mask and pools the last position, padding included, so texts
are always padded to the full context (64) and encoded whole.

``Siglip2Model`` (NaFlex) checkpoints run at one fixed square grid: ``floor(sqrt(max_num_patches))``
patches a side (16 x 16 for the usual 256), the image squashed to that square; that is what the NaFlex
processor gives a square image. Aspect-preserving variable resolution is not used: ABS's crops and
feature windows need one fixed grid. (The hub's fixed-resolution SigLIP2 checkpoints are stored as
``SiglipModel`` and load as such.)"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from absclip.backbones.base import BackboneFacts, LoaderRow, LoadRequest, attention_probs, probe_in_slot, vit_flops
from absclip.backbones.hf import (
    HF_PREFIX,
    SIGLIP_TYPES,
    HFBackbone,
    HFTokenizer,
    hf_identity,
    hf_load_error,
    hf_model_type,
    hf_source,
    read_hf_json,
)
from absclip.errors import AbsclipError

#: how the tower differs from CLIP's, for the facts that describe it (fields the open_clip tower work of
#: issue 13 adds to ``BackboneFacts``; passed where the protocol has them)
TOWER_LAYOUT = {"class_token": False, "resize_mode": "squash"}

#: PIL resampling filters by their integer code (as image processor configs store them)
_PIL_FILTERS = ("NEAREST", "LANCZOS", "BILINEAR", "BICUBIC", "BOX", "HAMMING")


def to_rgb(image: Any) -> Any:
    """Return the PIL image in RGB (a module-level step so that the transform pickles)."""
    return image.convert("RGB")


def squash_preprocess(size: tuple[int, int], resample: int, mean: Any, std: Any) -> Any:
    """Return PIL image → ``[3, H, W]``: resize to ``size`` (H, W) without a centre crop, ``/255``, ``(x-mean)/std``.

    SigLIP's image processor, done locally (no hub access); a torchvision ``Compose`` ending in
    ``ToTensor`` + ``Normalize``, so pixel crops take the batched path of :mod:`absclip.methods.batch`.
    """
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize, ToTensor

    mode = InterpolationMode[_PIL_FILTERS[int(resample)]]
    return Compose([to_rgb, Resize(size, interpolation=mode), ToTensor(), Normalize(list(mean), list(std))])


def fixed_grid(kind: str, vcfg: Any, processor: dict[str, Any]) -> int:
    """Return the patches per side the tower runs at: the config's for SigLIP, the fixed NaFlex grid for SigLIP2."""
    patch = int(vcfg.patch_size)
    if kind == "siglip":
        return int(vcfg.image_size) // patch
    side = math.isqrt(int(processor.get("max_num_patches", vcfg.num_patches)))
    if side < 1:
        raise AbsclipError("The SigLIP2 image processor config allows no patches (`max_num_patches` < 1).")
    return side


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """Return SigLIP2's patches ``[B, rows*cols, p*p*C]`` of ``[B, C, H, W]`` (row-major; (y, x, c) in a patch)."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class HFSiglipBackbone(HFBackbone):
    """A transformers ``SiglipModel`` / ``Siglip2Model`` behind the Backbone protocol (see the module docstring)."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, *, grid: int, name: str, identity: str,
                 device: torch.device, dtype: torch.dtype) -> None:
        vcfg, tcfg = model.config.vision_config, model.config.text_config
        if not getattr(vcfg, "vision_use_head", True):
            raise AbsclipError(f"{name} has no attention-pooling head (vision_use_head is false); absclip needs it.")
        self.kind = model.config.model_type
        patch = int(vcfg.patch_size)
        layout = {k: v for k, v in TOWER_LAYOUT.items() if k in {f.name for f in dataclasses.fields(BackboneFacts)}}
        facts = BackboneFacts((grid * patch, grid * patch), (patch, patch), (grid, grid), int(vcfg.num_hidden_layers),
                              int(vcfg.hidden_size), int(vcfg.hidden_size), int(vcfg.num_attention_heads),
                              int(vcfg.intermediate_size), **layout)
        super().__init__(model, preprocess, HFTokenizer(tokenizer, int(tcfg.max_position_embeddings)), facts,
                         name=name, identity=identity, device=device, dtype=dtype)

    @property
    def logit_bias(self) -> float:
        """The model's learned logit bias: probabilities are ``sigmoid(logit_scale * cos + logit_bias)``."""
        return float(self.model.logit_bias)

    # -- pieces of the tower ------------------------------------------------------------------
    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch + position embeddings ``[B, rows*cols, width]`` (no class token, no pre-norm)."""
        emb = self.model.vision_model.embeddings
        px = pixels.to(self.device, self.dtype)
        if self.kind == "siglip":
            return emb(px)
        g = self.facts.grid[0]
        shapes = torch.tensor([[g, g]], device=self.device).expand(px.shape[0], 2)
        return emb(patchify(px, self.facts.patch_size[0]), shapes)

    def _slot(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the pooling slot (zeros) to patch tokens ``[B, N, width]``."""
        return torch.cat([x.new_zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)

    def _blocks(self, x: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """Run encoder layers ``start .. stop-1`` on patch tokens ``[B, N, width]``."""
        x = x.to(self.device, self.dtype)
        for blk in self._layers[start:stop]:
            x = self._run(blk, x)
        return x

    def _run_from(self, tokens: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
        """Run encoder layers ``start .. stop-1`` on the patches of slot-first ``tokens``; return the patches."""
        return self._blocks(tokens[:, 1:], start, stop)

    def _probe_qk(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return fp32 ``(q [B, 1, width], k [B, N, width])`` of the MAP head for post-norm ``patches``."""
        head = self.model.vision_model.head
        w, b = head.attention.in_proj_weight.float(), head.attention.in_proj_bias.float()
        width = w.shape[1]
        q = F.linear(head.probe.float(), w[:width], b[:width]).expand(patches.shape[0], -1, -1)
        k = F.linear(patches.float(), w[width : 2 * width], b[width : 2 * width])
        return q, k

    def _probe_attention(self, patches: torch.Tensor) -> torch.Tensor:
        """Return the probe's attention ``[B, heads, N]`` over block-output ``patches`` (post-layernormed here)."""
        q, k = self._probe_qk(self.model.vision_model.post_layernorm(patches))
        return attention_probs(q, k, self.facts.heads)[:, :, 0]

    def _pool(self, patches: torch.Tensor) -> torch.Tensor:
        """``post_layernorm`` and the model's MAP head on block-output ``patches``; normalised fp32 ``[B, D]``."""
        vm = self.model.vision_model
        return F.normalize(vm.head(vm.post_layernorm(patches)).float(), dim=-1)

    # -- protocol: image side ------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images_dropped(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Return normalised embeddings ``[B, D]`` keeping only patches ``keep`` ``[B, k]`` (token dropping).

        Patches are dropped after the patch and position embedding; the head pools the rest.
        """
        x = self._embed(pixels)
        idx = keep.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return self.forward_from(self._slot(torch.gather(x, 1, idx)), 0)

    @torch.inference_mode()
    def tokens_before(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Return the tokens entering block ``layer``: ``[B, 1 + rows*cols, width]``, the pooling slot (zeros) first."""
        return self._slot(self._blocks(self._embed(pixels), 0, self.block_index(layer)))

    @torch.inference_mode()
    def forward_from(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Run blocks ``layer ..`` on the patches, ``post_layernorm``, the MAP head; return normalised ``[B, D]``."""
        return self._pool(self._run_from(tokens, self.block_index(layer)))

    @torch.inference_mode()
    def cls_attention(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return the pooling probe's attention over the patches ``[B, heads, rows*cols]`` after block ``layer``.

        ``tokens`` enter block ``layer``; the block runs, then ``post_layernorm`` and
        ``softmax(q k^T / sqrt(d))`` of the head's probe (for the last block: the model's own pooling).
        Rows sum to 1 over the patches (there is no class token).
        """
        idx = self.block_index(layer)
        return self._probe_attention(self._run_from(tokens, idx, idx + 1))

    @torch.inference_mode()
    def block_attentions(self, pixels: torch.Tensor, last: int = -1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(attentions, outputs)`` of blocks ``0 .. last``, slot first (see the module docstring).

        ``attentions[l]`` is ``[B, heads, 1 + N, 1 + N]``: patch rows are the block's self-attention
        (nothing attends to the slot); the slot row is ``[1, 0, ...]`` except in block ``last``, where
        it is the probe's attention over that block's output (:meth:`cls_attention`).
        """
        idx = self.block_index(last)
        x = self._embed(pixels)
        heads = self.facts.heads
        attentions, outputs = [], []
        for i, blk in enumerate(self._layers[: idx + 1]):
            q, k = self._qk(blk, x, cls_only=False)
            patches = attention_probs(q, k, heads).cpu()
            x = self._run(blk, x)
            attentions.append(probe_in_slot(patches, self._probe_attention(x).cpu() if i == idx else None))
            outputs.append(self._slot(x).float().cpu())
        return attentions, outputs

    @torch.inference_mode()
    def patch_embeddings(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return normalised patch embeddings ``[B, rows*cols, D]`` (fp32, CPU).

        Blocks ``layer ..`` and ``post_layernorm``, then each patch through the head as if the probe
        attended to it alone: value and output projections, then the head's residual MLP.
        """
        head = self.model.vision_model.head
        x = self.model.vision_model.post_layernorm(self._run_from(tokens, self.block_index(layer)))
        w, b = head.attention.in_proj_weight, head.attention.in_proj_bias
        width = w.shape[1]
        v = head.attention.out_proj(F.linear(x, w[2 * width :], b[2 * width :]))
        return F.normalize((v + head.mlp(head.layernorm(v))).float(), dim=-1).cpu()

    def tower_flops(self) -> dict[str, float]:
        """Return FLOP building blocks (:func:`absclip.backbones.base.tower_flops` keys) of the tower and MAP head.

        No class token: blocks run on the patches only; ``proj`` is the head (probe attention over
        the patches, output projection, MLP on one token). No block is ever CLS-only.
        """
        f = self.facts
        n, w = f.grid[0] * f.grid[1], f.width
        mlp, pd = f.mlp_width or 4 * w, 3 * f.patch_size[0] * f.patch_size[1]
        out = {"tokens": n, "width": w, "mlp": mlp, "blocks": f.num_blocks, "patch_dim": pd, "patches": n,
               "embed": vit_flops(n, w, 0, mlp, patch_dim=pd, patches=n), "block": vit_flops(n, w, 1, mlp),
               "proj": float(2 * (2 * n * w * w + 2 * w * w + 2 * n * w + 2 * w * mlp))}
        out["block_cls"] = out["block"]
        out["full"] = out["full_cls"] = out["embed"] + f.num_blocks * out["block"] + out["proj"]
        return out

    # -- protocol: text side -------------------------------------------------------------------
    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        # no attention mask, as the model was trained: the pooled last position reads the padding
        return self.model.text_model(input_ids=ids).pooler_output


def is_hf_siglip(request: LoadRequest) -> bool:
    """Registry predicate: an ``hf:`` spec or ``save_pretrained`` directory of a SigLIP/SigLIP2 checkpoint.

    The type is read from the local or cached ``config.json``; a hub name not yet downloaded is
    recognised by "siglip" in its name (others reach the CLIP row, which hands SigLIP configs back here).
    """
    src, local = hf_source(request.model)
    if not (request.model.startswith(HF_PREFIX) or local):
        return False
    kind = hf_model_type(request.model, request.weights_dir)
    if kind is None and not local:
        return "siglip" in src.lower()
    return kind in SIGLIP_TYPES


def _load_tokenizer(src: str, local: bool) -> Any:
    """Return the checkpoint's own tokenizer; a missing one is an error, never an empty stand-in."""
    from transformers import AutoTokenizer

    missing = (f"{src} has no readable tokenizer; save the model's tokenizer into it with save_pretrained." if local
               else f"The tokenizer of {src} is missing from the hub repo; pass `model` hf:/path/to/dir with one.")
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except ImportError as e:  # SigLIP's slow SentencePiece tokenizer
        raise AbsclipError(f"The tokenizer of {src} needs a missing package ({str(e).splitlines()[0]}); "
                           "pip install sentencepiece protobuf.") from e
    except Exception as e:
        if local:
            raise AbsclipError(missing) from e
        raise hf_load_error(e, src, local, "SigLIP tokenizer") from e
    # transformers 5 builds a tokenizer of special tokens only when the files are absent
    if len(tok.get_vocab()) <= len(set(tok.all_special_tokens)) + 1:
        raise AbsclipError(missing)
    return tok


def load_hf_siglip(request: LoadRequest) -> HFSiglipBackbone:
    """Return an :class:`HFSiglipBackbone` for a hub name or local directory (``hf:`` prefix optional)."""
    from transformers import AutoConfig, SiglipModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src, local = hf_source(request.model)
    try:
        kind = AutoConfig.from_pretrained(src, cache_dir=request.weights_dir).model_type
        if kind not in SIGLIP_TYPES:
            raise AbsclipError(f"{src} is a transformers {kind!r} model, not SigLIP; pass a siglip or siglip2 "
                               "checkpoint as `model`.")
        if kind == "siglip":
            model = SiglipModel.from_pretrained(src, cache_dir=request.weights_dir)
        else:
            from transformers import Siglip2Model

            model = Siglip2Model.from_pretrained(src, cache_dir=request.weights_dir)
        tokenizer = _load_tokenizer(src, local)
    except AbsclipError:
        raise
    except Exception as e:
        raise hf_load_error(e, src, local, "SigLIP model") from e
    # after from_pretrained the processor config is local or cached (never fetched separately)
    pp = read_hf_json(src, "preprocessor_config.json", request.weights_dir) or {}
    vcfg = model.config.vision_config
    grid = fixed_grid(kind, vcfg, pp)
    side = grid * int(vcfg.patch_size)
    size = pp.get("size") if kind == "siglip" else None
    size = (int(size["height"]), int(size["width"])) if isinstance(size, dict) and "height" in size else (side, side)
    if size != (side, side):
        raise AbsclipError(f"The image processor of {src} resizes to {size[0]}x{size[1]}, but the model's input is "
                           f"{side}x{side}; absclip runs SigLIP at its fixed resolution.")
    preprocess = squash_preprocess(size, pp.get("resample", 3 if kind == "siglip" else 2),
                                   pp.get("image_mean", (0.5, 0.5, 0.5)), pp.get("image_std", (0.5, 0.5, 0.5)))
    model = model.to(request.device, request.dtype)
    return HFSiglipBackbone(model, preprocess, tokenizer, grid=grid, name=src,
                            identity=hf_identity(f"hf-{kind}", src, local), device=request.device,
                            dtype=request.dtype)


#: this module's rows of the loader table (:mod:`absclip.backbones.registry`); before the catch-all hf: row
LOADERS = (LoaderRow("transformers SiglipModel / Siglip2Model (hf: or a save_pretrained directory)", is_hf_siglip,
                     load_hf_siglip, 9),)
