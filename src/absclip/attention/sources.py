"""Attention sources: where ABS's CLS→patch attention maps come from (a DINO-like ViT, or CLIP itself).

* :class:`HFAttention` — the last-layer CLS attention of a transformers ViT (DINO ViT-B/16 by
  default), read from transformers' eager attention with the model's own preprocessing;
* :class:`ClipSelfAttention` — the CLIP model's own attention (no second model), recomputed
  from its ``in_proj`` weights (:func:`absclip.backbones.base.attention_probs`);
* rollout and attention-sink variants over all blocks live in :mod:`absclip.attention.layered`.

Every source returns ``[B, rows*cols]`` maps (mean over heads) on its own fixed grid, and
carries an ``identity`` for caches."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from absclip.backbones.base import Backbone, attention_probs, vit_flops
from absclip.backbones.hub import dir_digest, download_hint, is_network_error
from absclip.backbones.network import check_attention_weights
from absclip.errors import AbsclipError, WeightsUnavailableError

log = logging.getLogger(__name__)


class AttentionSource:
    """Base class: returns CLS→patch attention ``[B, rows*cols]`` (mean over heads) on a fixed grid."""

    name: str = "attention"
    grid: tuple[int, int] = (0, 0)
    identity: str = ""

    def heads(self, images: list[Image.Image]) -> torch.Tensor:  # pragma: no cover - interface
        """Return per-head CLS→patch attention ``[B, heads, rows*cols]`` (fp32, CPU)."""
        raise NotImplementedError

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """Return head-averaged CLS→patch attention ``[B, rows*cols]`` (fp32, CPU)."""
        return self.heads(images).mean(dim=1)


class HFAttention(AttentionSource):
    """Last-layer CLS attention of a transformers ViT (DINO ``facebook/dino-vitb16`` by default).

    Input: the whole image resized (squashed, no centre crop) to the model's size with its own
    resampling and mean/std from the preprocessor config (0.5/0.5 for DINO), computed with
    PIL as transformers' PIL backend does, so values match the reference exactly.
    """

    def __init__(self, name_or_path: str, *, device: torch.device, layer: int = -1) -> None:
        check_attention_weights(name_or_path)  # offline and not cached: one sentence now, not retries
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.name = name_or_path
        self.device = device
        local = os.path.isdir(name_or_path)
        try:
            config = AutoConfig.from_pretrained(name_or_path)
            self.model = AutoModel.from_pretrained(name_or_path, attn_implementation="eager").to(device).eval()
            pp = _read_preprocessor(name_or_path)
        except OSError as e:
            if local:
                raise AbsclipError(
                    f"Attention model directory {name_or_path} is not a transformers model ({e})."
                ) from e
            raise WeightsUnavailableError(
                download_hint(f"attention model {name_or_path}", "the Hugging Face hub",
                               "`attention_model` /path/to/dir")
            ) from e
        except Exception as e:
            if is_network_error(e):
                raise WeightsUnavailableError(
                    download_hint(f"attention model {name_or_path}", "the Hugging Face hub",
                                   "`attention_model` /path/to/dir")
                ) from e
            raise AbsclipError(f"Could not load attention model {name_or_path}: {str(e).splitlines()[0]}") from e
        vcfg = getattr(config, "vision_config", config)
        size = pp.get("size", getattr(vcfg, "image_size", 224))
        if isinstance(size, dict):
            size = (size.get("height", size.get("shortest_edge")), size.get("width", size.get("shortest_edge")))
        elif isinstance(size, int):
            size = (size, size)
        self.size = (int(size[0]), int(size[1]))
        patch = int(getattr(vcfg, "patch_size", 16))
        self.grid = (self.size[0] // patch, self.size[1] // patch)
        self.mean = tuple(pp.get("image_mean", (0.5, 0.5, 0.5)))
        self.std = tuple(pp.get("image_std", (0.5, 0.5, 0.5)))
        self.resample = int(pp.get("resample", 2))
        self.num_layers = int(getattr(vcfg, "num_hidden_layers", 12))
        self.layer = layer
        if not -self.num_layers <= layer < self.num_layers:
            raise AbsclipError(f"Attention layer {layer} is out of range for a {self.num_layers}-layer model.")
        weights = dir_digest(name_or_path) if local else name_or_path
        self.identity = f"hf-attn:{weights}|layer={layer}"

    def pass_flops(self) -> float:
        """Return the multiply-add FLOPs of one pass of the model on one image (:func:`vit_flops`)."""
        c = self.model.config
        t = 1 + self.grid[0] * self.grid[1]
        return vit_flops(t, int(c.hidden_size), int(c.num_hidden_layers), int(c.intermediate_size),
                         patch_dim=3 * int(c.patch_size) ** 2, patches=t - 1)

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """Return the model input ``[B, 3, H, W]``: PIL resize (squash), /255, (x-mean)/std."""

        h, w = self.size
        arrs = [np.asarray(im.convert("RGB").resize((w, h), self.resample), dtype=np.float32) for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def heads(self, images: list[Image.Image]) -> torch.Tensor:
        px = self.pixel_values(images).to(self.device)
        fast = self._cls_attention_only(px) if self.fast else None
        if fast is not None:
            return fast.cpu()
        out = self.model(pixel_values=px, output_attentions=True)
        atts = out.attentions
        if not atts:
            raise AbsclipError(f"{self.name} returned no attention maps (it must support eager attention).")
        a = atts[self.layer].float()  # [B, heads, T, T]
        n = self.grid[0] * self.grid[1]
        if a.shape[-1] != n + 1:
            raise AbsclipError(
                f"{self.name} has {a.shape[-1]} tokens; expected CLS + {n} patches (register tokens are not supported)."
            )
        return a[:, :, 0, 1:].cpu()


    #: compute only what the CLS attention of ``layer`` needs (SDPA attention in the earlier layers,
    #: the later layers skipped); False runs the whole model with eager attention and
    #: ``output_attentions`` as the reference does (same values up to float rounding)
    fast: bool = True

    def _cls_attention_only(self, px: torch.Tensor) -> torch.Tensor | None:
        """Return ``[B, heads, rows*cols]`` computed up to ``layer`` only, or None if the model's layout is unknown.

        Runs the model's own embedding and layers ``0 .. layer-1`` with SDPA attention, then
        ``softmax(q k^T / sqrt(d))`` of ``layer`` for the CLS query alone (``attention_probs``).
        """
        model = self.model
        layers = getattr(model, "layers", None)  # transformers >= 5
        if layers is None:
            layers = getattr(getattr(model, "encoder", None), "layer", None)  # transformers 4
        embeddings = getattr(model, "embeddings", None)
        if layers is None or embeddings is None or not hasattr(model, "set_attn_implementation"):
            return None
        target = layers[self.layer]
        inner = getattr(target.attention, "attention", target.attention)  # 4.x nests the projections
        q = getattr(inner, "q_proj", None) or getattr(inner, "query", None)
        k = getattr(inner, "k_proj", None) or getattr(inner, "key", None)
        ln = getattr(target, "layernorm_before", None)
        heads = getattr(model.config, "num_attention_heads", None)
        if q is None or k is None or ln is None or heads is None:
            return None
        before = model.config._attn_implementation
        model.set_attn_implementation("sdpa")
        try:
            h = embeddings(px)
            for layer in layers[: self.layer % len(layers)]:
                out = layer(h)
                h = out[0] if isinstance(out, tuple) else out
        finally:
            model.set_attn_implementation(before)
        n = self.grid[0] * self.grid[1]
        if h.shape[1] != n + 1:
            return None  # register tokens etc.: the full path reports it
        x = ln(h)
        return attention_probs(q(x[:, :1]), k(x), int(heads))[:, :, 0, 1:]


def _read_preprocessor(name_or_path: str) -> dict[str, Any]:
    if os.path.isdir(name_or_path):
        p = Path(name_or_path) / "preprocessor_config.json"
        return json.loads(p.read_text()) if p.is_file() else {}
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(name_or_path, "preprocessor_config.json")).read_text())
    except Exception as e:  # the model itself downloaded, so this is a genuinely missing file
        log.info("no preprocessor_config.json for %s (%s); using defaults", name_or_path, e)
        return {}


class ClipSelfAttention(AttentionSource):
    """The CLIP model's own CLS→patch attention (last block by default): no second model needed."""

    def __init__(self, backbone: Backbone, layer: int = -1) -> None:
        backbone.require_tokens("CLIP attention maps")
        self.backbone = backbone
        self.layer = layer
        self.grid = backbone.facts.grid
        self.name = "clip"
        self.identity = f"clip-attn:{backbone.identity}|layer={layer}"

    def heads_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return ``[B, heads, rows*cols]`` from the tokens entering block ``layer``."""
        return self.backbone.cls_attention(tokens, self.layer).float().cpu()

    def heads(self, images: list[Image.Image]) -> torch.Tensor:
        px = torch.stack([self.backbone.preprocess(im) for im in images])
        return self.heads_from_tokens(self.backbone.tokens_before(px, self.layer))
