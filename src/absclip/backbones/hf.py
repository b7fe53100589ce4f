"""Adapter for Hugging Face ``transformers`` CLIP models (``CLIPModel``) behind the
:class:`~absclip.backbones.base.Backbone` protocol: preprocess, tokenizer, image/text encoders, the tokens
entering a block, finishing from a block, explicit attention (CLS row and all blocks) and patch embeddings.

Names: ``--model hf:openai/clip-vit-base-patch16`` (hub name or local directory), or a local
directory saved with ``save_pretrained`` whose ``config.json`` says ``"model_type": "clip"``.

Also the pieces every transformers adapter shares (:class:`HFBackbone`, the ``hf:`` spec, reading a
checkpoint's JSON files, load errors); SigLIP and SigLIP2 are in :mod:`absclip.backbones.hf_siglip`."""

from __future__ import annotations

import json
import os
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from absclip.backbones.base import Backbone, BackboneFacts, LoaderRow, LoadRequest, attention_probs
from absclip.backbones.hub import dir_digest, download_hint, is_network_error
from absclip.errors import AbsclipError, WeightsUnavailableError

HF_PREFIX = "hf:"
#: transformers model types loaded by :mod:`absclip.backbones.hf_siglip`
SIGLIP_TYPES = ("siglip", "siglip2")


def hf_source(model: str) -> tuple[str, bool]:
    """Return ``(hub name or directory, whether it is a local directory)`` of an ``hf:`` spec (prefix optional)."""
    src = model[len(HF_PREFIX):] if model.startswith(HF_PREFIX) else model
    return src, os.path.isdir(src)


def read_hf_json(src: str, filename: str, cache_dir: str | None = None) -> dict[str, Any] | None:
    """Return a checkpoint's JSON file (``config.json``...) from its directory or the hub cache; None if absent.

    Never downloads: a hub checkpoint's file is read only when it is already cached.
    """
    path: Any = Path(src) / filename
    if not os.path.isdir(src):
        from huggingface_hub import try_to_load_from_cache

        try:
            path = try_to_load_from_cache(src, filename, cache_dir=cache_dir)
        except Exception:  # noqa: BLE001 - not a valid repo name: nothing cached
            return None
        if not isinstance(path, str):
            return None
        path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def hf_model_type(model: str, cache_dir: str | None = None) -> str | None:
    """Return the ``model_type`` of a transformers checkpoint spec from its local or cached config (None: unknown)."""
    cfg = read_hf_json(hf_source(model)[0], "config.json", cache_dir)
    return cfg.get("model_type") if cfg else None


def is_hf_clip_dir(path: str) -> bool:
    """Return True if ``path`` is a directory holding a transformers CLIP model (``model_type == "clip"``)."""
    return os.path.isdir(path) and hf_model_type(path) == "clip"


def hf_load_error(e: Exception, src: str, local: bool, what: str) -> AbsclipError:
    """Return the one-sentence error for a failed transformers load of ``what`` (e.g. "CLIP model") from ``src``."""
    if not local and (is_network_error(e) or isinstance(e, OSError)):
        return WeightsUnavailableError(
            download_hint(f"Hugging Face {what} {src}", "the Hugging Face hub", "`model` hf:/path/to/dir")
        )
    return AbsclipError(f"Could not load the transformers {what} {src}: {str(e).splitlines()[0]}")


def hf_identity(kind: str, src: str, local: bool) -> str:
    """Return the cache identity of a transformers checkpoint (a directory by its content digest)."""
    return f"{kind}:{dir_digest(src) if local else src}"


def run_layer(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """Run one transformers encoder layer on ``x`` without an attention mask; return its hidden states."""
    out = layer(x, None)
    return out[0] if isinstance(out, tuple) else out


class _Preprocess:
    """PIL image → ``[3, H, W]`` float tensor with the model's own image processor (PIL backend)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


class HFTokenizer:
    """list[str] → ``[N, context]`` token ids, padded to ``context`` and truncated (open_clip's tokenizer contract)."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return enc["input_ids"]


class HFBackbone(Backbone):
    """What the transformers adapters share: a ViT tower in ``model.vision_model``, a text tower, a logit scale.

    Subclasses implement the image-side protocol and :meth:`_text_features`.
    """

    def __init__(self, model: Any, preprocess: Any, tokenizer: HFTokenizer, facts: BackboneFacts, *, name: str,
                 identity: str, device: torch.device, dtype: torch.dtype) -> None:
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.facts = facts
        self.name = name
        self.pretrained = name
        self.identity = identity
        self.device = device
        self.dtype = dtype
        self.has_tokens = True

    @property
    def logit_scale(self) -> float:
        """The model's learned logit scale (exp)."""
        return float(self.model.logit_scale.exp())

    @property
    def _layers(self) -> Any:
        return self.model.vision_model.encoder.layers

    _run = staticmethod(run_layer)

    def _qk(self, blk: Any, tokens: torch.Tensor, cls_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Return fp32 ``(q, k)`` of one encoder layer for its input (``q`` of the first token only if ``cls_only``)."""
        attn = blk.self_attn
        h = blk.layer_norm1(tokens.to(self.device, self.dtype)).float()
        q = F.linear(h[:, :1] if cls_only else h, attn.q_proj.weight.float(), attn.q_proj.bias.float())
        k = F.linear(h, attn.k_proj.weight.float(), attn.k_proj.bias.float())
        return q, k

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return normalised image embeddings ``[B, D]`` (fp32)."""
        return self.forward_from(self.tokens_before(pixels, 0), 0)

    @abstractmethod
    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the (unnormalised) text embeddings of token ids ``[N, context]``."""

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256, *,
                     on_batch: Callable[[int], Any] | None = None) -> torch.Tensor:
        """Return normalised text embeddings ``[T, D]`` (fp32, CPU), full context length."""
        out = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenizer(texts[i : i + batch_size]).to(self.device)
            out.append(F.normalize(self._text_features(ids).float(), dim=-1).cpu())
            if on_batch is not None:
                on_batch(len(ids))
        return torch.cat(out) if out else torch.zeros(0, self.facts.embed_dim)


class HFClipBackbone(HFBackbone):
    """A transformers ``CLIPModel`` behind the :class:`~absclip.backbones.base.Backbone` protocol (batch-first)."""

    def __init__(self, model: Any, processor: Any, tokenizer: Any, *, name: str, identity: str,
                 device: torch.device, dtype: torch.dtype) -> None:
        vcfg = model.config.vision_config
        tcfg = model.config.text_config
        size, patch = int(vcfg.image_size), int(vcfg.patch_size)
        facts = BackboneFacts((size, size), (patch, patch), (size // patch, size // patch),
                              int(vcfg.num_hidden_layers), int(vcfg.hidden_size), int(model.config.projection_dim),
                              int(vcfg.num_attention_heads), int(vcfg.intermediate_size))
        super().__init__(model, _Preprocess(processor), HFTokenizer(tokenizer, int(tcfg.max_position_embeddings)),
                         facts, name=name, identity=identity, device=device, dtype=dtype)
        self.processor = processor

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        return vm.pre_layrnorm(vm.embeddings(pixels.to(self.device, self.dtype)))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``post_layernorm`` and the visual projection of tokens ``[..., width]``; normalised fp32."""
        pooled = self.model.vision_model.post_layernorm(x)
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.inference_mode()
    def encode_images_dropped(self, pixels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Return normalised embeddings ``[B, D]`` keeping only patches ``keep`` ``[B, k]`` (token dropping).

        Patches are dropped after the patch and positional embedding, as in the open_clip adapter.
        """
        x = self.model.vision_model.embeddings(pixels.to(self.device, self.dtype))  # [B, 1 + N, width]
        idx = keep.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1])
        x = torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, idx)], dim=1)
        return self.forward_from(self.model.vision_model.pre_layrnorm(x), 0)

    @torch.inference_mode()
    def tokens_before(self, pixels: torch.Tensor, layer: int) -> torch.Tensor:
        """Return the tokens entering block ``layer``: ``[B, 1 + rows*cols, width]`` after ``pre_layrnorm``."""
        idx = self.block_index(layer)
        x = self._embed(pixels)
        for blk in self._layers[:idx]:
            x = self._run(blk, x)
        return x

    @torch.inference_mode()
    def forward_from(self, tokens: torch.Tensor, layer: int) -> torch.Tensor:
        """Run blocks ``layer ..``, ``post_layernorm`` on CLS, project; return normalised ``[B, D]``."""
        idx = self.block_index(layer)
        x = tokens.to(self.device, self.dtype)
        for blk in self._layers[idx:]:
            x = self._run(blk, x)
        return self._project(x[:, 0])

    @torch.inference_mode()
    def cls_attention(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return CLS→patch attention ``[B, heads, rows*cols]`` of block ``layer``, recomputed from q and k."""
        q, k = self._qk(self._layers[self.block_index(layer)], tokens, cls_only=True)
        return attention_probs(q, k, self.facts.heads)[:, :, 0, 1:]

    @torch.inference_mode()
    def block_attentions(self, pixels: torch.Tensor, last: int = -1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return ``(attentions, outputs)`` of blocks ``0 .. last`` (see :meth:`Backbone.block_attentions`)."""
        idx = self.block_index(last)
        x = self._embed(pixels)
        attentions, outputs = [], []
        for blk in self._layers[: idx + 1]:
            q, k = self._qk(blk, x, cls_only=False)
            attentions.append(attention_probs(q, k, self.facts.heads).cpu())
            x = self._run(blk, x)
            outputs.append(x.float().cpu())
        return attentions, outputs

    @torch.inference_mode()
    def patch_embeddings(self, tokens: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Return normalised patch embeddings ``[B, rows*cols, D]`` (fp32, CPU): blocks ``layer ..``, norm, proj."""
        x = tokens.to(self.device, self.dtype)
        for blk in self._layers[self.block_index(layer):]:
            x = self._run(blk, x)
        return self._project(x[:, 1:]).cpu()

    def _text_features(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_projection(self.model.text_model(input_ids=ids).pooler_output)


def is_hf_clip(request: LoadRequest) -> bool:
    """Registry predicate: ``hf:NAME_OR_DIR`` or a ``save_pretrained`` directory of a transformers CLIP model."""
    return request.model.startswith(HF_PREFIX) or is_hf_clip_dir(request.model)


def load_hf_clip(request: LoadRequest) -> HFBackbone:
    """Return an :class:`HFClipBackbone` for a hub name or local directory (``hf:`` prefix optional).

    A SigLIP checkpoint whose name did not say so (its config not yet cached) goes to
    :func:`absclip.backbones.hf_siglip.load_hf_siglip` once its config is read.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device, dtype = request.device, request.dtype
    src, local = hf_source(request.model)
    try:
        kind = AutoConfig.from_pretrained(src, cache_dir=request.weights_dir).model_type
    except Exception as e:
        raise hf_load_error(e, src, local, "CLIP model") from e
    if kind in SIGLIP_TYPES:
        from absclip.backbones.hf_siglip import load_hf_siglip

        return load_hf_siglip(request)
    if kind != "clip":
        raise AbsclipError(f"{src} is a transformers {kind!r} model; absclip loads clip, siglip and siglip2 "
                           "checkpoints from `model` hf:NAME_OR_DIR.")
    try:
        model = CLIPModel.from_pretrained(src, cache_dir=request.weights_dir)
        try:
            processor = AutoImageProcessor.from_pretrained(src, backend="pil")
        except TypeError:  # transformers 4.x
            processor = AutoImageProcessor.from_pretrained(src, use_fast=False)
        tokenizer = AutoTokenizer.from_pretrained(src)
    except Exception as e:
        raise hf_load_error(e, src, local, "CLIP model") from e
    identity = hf_identity("hf-clip", src, local)
    model = model.to(device, dtype)
    return HFClipBackbone(model, processor, tokenizer, name=src, identity=identity, device=device, dtype=dtype)


#: this module's rows of the loader table (:mod:`absclip.backbones.registry`)
LOADERS = (LoaderRow("transformers CLIPModel (hf: or a save_pretrained directory)", is_hf_clip, load_hf_clip, 10),)
