"""The open_clip adapter (:class:`ClipBackbone`) and its loaders (open_clip names and tags, JSON configs,
checkpoints, OpenAI files, hub repos), chosen by :func:`absclip.backbones.registry.load_clip`.

Adapters carry their own facts (grid size, patch size, input size, number of blocks, identity
for caches), so that the rest of absclip never compares model-name strings or hard-codes
14/16/224. The attention models (DINO via transformers, or CLIP itself) are in
:mod:`absclip.attention.sources` (:func:`absclip.attention.factory.load_attention`).

CLIP attention is read by explicit recomputation of ``softmax(q k^T / sqrt(d))``
(:func:`attention_probs`); no library code is edited."""

from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from absclip.backbones.base import Backbone, BackboneFacts, LoaderRow, LoadRequest, TowerRow, attention_probs
from absclip.backbones.fused_vit import FusedViT, fused_vit, mlp_activation
from absclip.backbones.hub import (
    dir_digest,
    download_hint,
    file_digest,
    is_network_error,
    quiet_root_logging,
    safe_load_state_dict,
)
from absclip.backbones.network import check_model_weights
from absclip.errors import AbsclipError, WeightsUnavailableError

log = logging.getLogger(__name__)


def _is_openai_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return "visual.conv1.weight" in sd and "text_projection" in sd and "token_embedding.weight" in sd


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


def open_clip_tokenizer(name: str, **kwargs: Any) -> Any:
    """Return ``open_clip.get_tokenizer(name)``; a tokenizer that cannot be downloaded is one clear sentence."""
    import open_clip

    try:
        with quiet_root_logging():
            return open_clip.get_tokenizer(name, **kwargs)
    except Exception as e:  # noqa: BLE001 - HF tokenizers raise OSError/ValueError/HTTP errors alike
        if not is_network_error(e) and not isinstance(e, OSError):
            raise AbsclipError(f"Could not build the tokenizer of {name}: {str(e).splitlines()[0]}") from e
        cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {}) if ":" not in name else {}
        source = cfg.get("hf_tokenizer_name") or "its download source"
        raise WeightsUnavailableError(
            f"The tokenizer of {name} ({source}) is not cached here and could not be downloaded; run once "
            "online to cache it, or give a `model` config whose text_cfg.hf_tokenizer_name is a local tokenizer "
            "directory."
        ) from e


def is_open_clip_config(request: LoadRequest) -> bool:
    """Registry predicate: an open_clip JSON model config."""
    return request.model.endswith(".json")


def is_openai_file(request: LoadRequest) -> bool:
    """Registry predicate: a checkpoint file given as the model (OpenAI format; it carries its own weights)."""
    return os.path.isfile(request.model) and not request.model.endswith(".json")


def is_open_clip_hub(request: LoadRequest) -> bool:
    """Registry predicate: an open_clip ``hf-hub:`` repo or ``local-dir:`` directory."""
    return request.model.startswith(("hf-hub:", "local-dir:"))


def load_open_clip_config(request: LoadRequest) -> ClipBackbone:
    """Load an open_clip JSON config (its file stem becomes the name) with ``request.pretrained`` weights."""
    import open_clip

    path = request.model
    if not os.path.isfile(path):
        raise AbsclipError(f"Model config file {path} does not exist.")
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AbsclipError(f"Model config {path} is not valid JSON ({e}).") from e
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise AbsclipError(f"Model config {path} is not an open_clip config (needs vision_cfg and text_cfg).")
    open_clip.add_model_config(path)
    return load_open_clip(request, name=Path(path).stem, identity_suffix=f"|cfg:{file_digest(path)}")


#: ``pretrained`` values that agree with an OpenAI file given as the model (``openai`` is the CLI's default tag)
OPENAI_FILE_TAGS = (None, "openai")


def load_openai_file(request: LoadRequest) -> ClipBackbone:
    """Load an OpenAI-format checkpoint file (TorchScript archive or state dict) given as the model.

    The file carries its own weights: ``pretrained`` must be None or ``openai`` (what they are).
    """
    if request.pretrained not in OPENAI_FILE_TAGS:
        raise AbsclipError(f"{request.model} is a checkpoint file and carries its own weights; leave out "
                           f"`pretrained` ({request.pretrained!r}), or give an open_clip `model` name or config "
                           "with the checkpoint as `pretrained`.")
    return _load_openai_file(request.model, request.device, request.dtype)


def pretrained_hub_repo(model: str, tag: str) -> str | None:
    """Return the Hugging Face hub repo open_clip downloads ``model``'s ``tag`` from (None: elsewhere or unknown)."""
    import open_clip

    try:
        cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    except Exception:  # noqa: BLE001 - unknown names are reported by the load itself
        return None
    parts = str(cfg.get("hf_hub") or "").strip("/").split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def tag_needs_quick_gelu(model: str, tag: str) -> bool:
    """Return whether open_clip's weights ``tag`` of ``model`` need QuickGELU where the model's config has GELU.

    True for OpenAI's weights of the plain names (``ViT-B-16`` + ``openai``); False for ``-quickgelu``
    names (their config has it already), GELU weights, and names or tags open_clip does not know.
    """
    import open_clip

    try:
        tag_cfg = open_clip.get_pretrained_cfg(model, tag) or {}
        model_cfg = open_clip.get_model_config(model) or {}
    except Exception:  # noqa: BLE001 - unknown names are reported by the load itself
        return False
    return bool(tag_cfg.get("quick_gelu")) and not model_cfg.get("quick_gelu")


def load_open_clip(request: LoadRequest, *, name: str | None = None, identity_suffix: str = "") -> ClipBackbone:
    """Load an open_clip model by name + tag or checkpoint file, or an ``hf-hub:``/``local-dir:`` repo.

    Raises:
        AbsclipError: unknown name or tag, unreadable or mismatched checkpoint.
        WeightsUnavailableError: weights could not be downloaded.
    """
    check_model_weights(name or request.model, request.pretrained, weights_dir=request.weights_dir,
                        tag_repo=pretrained_hub_repo)  # before the slow import: offline fails at once
    import open_clip

    dev, dtype, pretrained, quick_gelu = request.device, request.dtype, request.pretrained, request.quick_gelu
    name = name or request.model
    # random weights differ in every process: never let a cache or a resumed run take them for the same model
    identity_weights = (pretrained or f"random-init:{uuid.uuid4().hex}") + identity_suffix
    kwargs: dict[str, Any] = {"device": dev, "cache_dir": request.weights_dir}
    schema = name.split(":", 1)[0] if name.startswith(("hf-hub:", "local-dir:")) else None

    force_qg = bool(quick_gelu)
    if schema is None:
        if name not in open_clip.list_models():
            close = difflib.get_close_matches(name, open_clip.list_models(), n=5)
            hint = f" Did you mean: {', '.join(close)}?" if close else " See `absclip models`."
            raise AbsclipError(f"Unknown model {name!r}.{hint}")
        if pretrained is not None:
            tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
            if tag_cfg:
                if quick_gelu is None and tag_needs_quick_gelu(name, pretrained):
                    force_qg = True  # e.g. ViT-B-16 + openai: GELU would drift outputs by ~1e-2
            elif os.path.isfile(pretrained):
                # local files: our own weights_only load, then an explicit key/shape check
                identity_weights = f"file:{file_digest(pretrained)}"
                sd = safe_load_state_dict(pretrained)
                return _build_from_state_dict(name, pretrained, sd, dev, dtype, force_qg, identity_weights)
            elif os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
                raise AbsclipError(f"Checkpoint file {pretrained} does not exist.")
            else:
                tags = open_clip.list_pretrained_tags_by_model(name)
                raise AbsclipError(
                    f"Unknown pretrained tag {pretrained!r} for {name}; known tags: "
                    f"{', '.join(tags) if tags else 'none (pass a checkpoint file)'}."
                )
    elif schema == "local-dir":
        d = name.split(":", 1)[1]
        if not os.path.isdir(d):
            raise AbsclipError(f"Model directory {d} does not exist.")
        # the folder holds its own weights (open_clip ignores the tag): key caches by their content
        pretrained, identity_weights = None, f"dir:{dir_digest(d)}{identity_suffix}"

    try:
        with quiet_root_logging():
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=pretrained,
                precision="fp32",
                force_quick_gelu=force_qg,
                weights_only=True,
                **kwargs,
            )
    except AbsclipError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError subclasses for all of these
        text = str(e)
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Unsupported global" in text:
            raise AbsclipError(
                f"Refusing to load {pretrained}: it is not a plain tensor checkpoint (loading it would execute "
                "pickled code); re-save it as a state dict or .safetensors."
            ) from e
        if "Error(s) in loading state_dict" in text or "size mismatch" in text:
            raise AbsclipError(
                f"Checkpoint {pretrained} does not fit model {name} (different architecture); pass the `model` "
                "that matches it."
            ) from e
        if is_network_error(e):
            if schema == "hf-hub":
                msg = download_hint(name, f"the Hugging Face hub ({name[len('hf-hub:'):]})",
                                     "`model` local-dir:/path/to/dir (open_clip_config.json + weights)")
            else:
                tag_cfg = open_clip.get_pretrained_cfg(name, pretrained or "") or {}
                src = f"the Hugging Face hub ({tag_cfg['hf_hub'].rstrip('/')})" if tag_cfg.get("hf_hub") \
                    else tag_cfg.get("url", "the open_clip download source")
                msg = download_hint(f"'{pretrained}' {name}", src, "`pretrained` /path/to/file")
            raise WeightsUnavailableError(msg) from e
        raise AbsclipError(f"Could not load model {name} ({pretrained}): {str(e).splitlines()[0]}") from e
    if pretrained is None and schema is None:
        log.warning("No pretrained weights given for %s: the model is randomly initialised.", name)
    tokenizer = open_clip_tokenizer(name, cache_dir=request.weights_dir)
    identity = f"open_clip:{name}|{identity_weights}|qg={force_qg}"
    clip = clip.to(dev, dtype)
    return open_clip_backbone(clip, preprocess, tokenizer, name=name, pretrained=pretrained, identity=identity,
                              device=dev, dtype=dtype)


def _build_from_state_dict(
    name: str,
    pretrained: str,
    sd: dict[str, torch.Tensor],
    dev: torch.device,
    dtype: torch.dtype,
    force_qg: bool,
    identity_weights: str,
) -> ClipBackbone:
    import open_clip

    with quiet_root_logging():
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None, precision="fp32", force_quick_gelu=force_qg, device="cpu"
        )
    # the same conversions open_clip's load_checkpoint applies, on our weights_only-loaded dict
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    sd = convert_state_dict(clip, sd)
    if "positional_embedding" in sd and not hasattr(clip, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and clip.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(clip.logit_scale.shape)
    if "logit_bias" not in sd and getattr(clip, "logit_bias", None) is not None:
        sd["logit_bias"] = torch.zeros_like(clip.logit_bias)
    expected = clip.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        first = (f"{wrong[0]} has shape {tuple(sd[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}"
                 if wrong else f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}")
        raise AbsclipError(
            f"Checkpoint {pretrained} does not fit model {name} ({first}); pass the `model` that matches it."
        )
    clip.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)
    tokenizer = open_clip_tokenizer(name)
    identity = f"open_clip:{name}|{identity_weights}|qg={force_qg}"
    clip = clip.to(dev, dtype)
    return open_clip_backbone(clip, preprocess, tokenizer, name=name, pretrained=pretrained, identity=identity,
                              device=dev, dtype=dtype)


def _load_openai_file(path: str, dev: torch.device, dtype: torch.dtype) -> ClipBackbone:
    """Load an OpenAI-format checkpoint (TorchScript archive or state dict); QuickGELU is implied."""
    import open_clip
    from open_clip.model import build_model_from_openai_state_dict

    sd = safe_load_state_dict(path)
    if not _is_openai_state_dict(sd):
        raise AbsclipError(
            f"{path} is not an OpenAI-format CLIP checkpoint; pass an open_clip `model` name or config "
            "together with `pretrained` FILE."
        )
    try:
        # cast_dtype=None: plain LayerNorms, so that the model runs in any precision after .to(dtype)
        # (open_clip's default fp16 cast keeps fp32 LayerNorms, which a bf16/fp16 CPU run rejects)
        clip = build_model_from_openai_state_dict(sd, cast_dtype=None).float().eval()
    except Exception as e:
        raise AbsclipError(f"Could not build a CLIP model from {path}: {str(e).splitlines()[0]}") from e
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    preprocess = open_clip.image_transform(
        size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=int(clip.context_length))
    identity = f"openai-file:{file_digest(path)}"
    clip = clip.to(dev, dtype)
    return ClipBackbone(clip, preprocess, tokenizer, name=Path(path).stem, pretrained=path, identity=identity,
                        device=dev, dtype=dtype)


def _any(request: LoadRequest) -> bool:
    return True


def is_open_clip_tower(visual: torch.nn.Module) -> bool:
    """Tower predicate: any open_clip image tower (the catch-all: native ViT, ModifiedResNet, other timm towers)."""
    return True


#: this module's rows of the tower table (:func:`open_clip_backbone`); the catch-all row
TOWERS = (TowerRow("open_clip ViT / other towers", is_open_clip_tower, ClipBackbone, 1000),)

#: this module's rows of the loader table (:mod:`absclip.backbones.registry`); the name row is the catch-all
LOADERS = (
    LoaderRow("open_clip JSON config + weights", is_open_clip_config, load_open_clip_config, 20),
    LoaderRow("OpenAI-format checkpoint file", is_openai_file, load_openai_file, 30),
    LoaderRow("open_clip hf-hub: / local-dir:", is_open_clip_hub, load_open_clip, 40),
    LoaderRow("open_clip name + tag or checkpoint file", _any, load_open_clip, 1000),
)
