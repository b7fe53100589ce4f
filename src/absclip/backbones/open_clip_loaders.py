"""The open_clip loaders: open_clip names and tags, JSON configs, checkpoints, OpenAI files and hub repos.

Each is a row of :data:`LOADERS`, chosen by :func:`absclip.backbones.registry.load_clip`; every one
wraps the model in its adapter with :func:`absclip.backbones.open_clip.open_clip_backbone`.
Checkpoints are read ``weights_only`` and checked key by key; download failures become one sentence."""

from __future__ import annotations

import difflib
import json
import logging
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import torch

from absclip.backbones.base import LoaderRow, LoadRequest
from absclip.backbones.hub import (
    dir_digest,
    download_hint,
    file_digest,
    is_network_error,
    quiet_root_logging,
    safe_load_state_dict,
)
from absclip.backbones.network import check_model_weights
from absclip.backbones.open_clip import ClipBackbone, open_clip_backbone
from absclip.errors import AbsclipError, WeightsUnavailableError

log = logging.getLogger(__name__)


def _is_openai_state_dict(sd: dict[str, torch.Tensor]) -> bool:
    return "visual.conv1.weight" in sd and "text_projection" in sd and "token_embedding.weight" in sd


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


#: this module's rows of the loader table (:mod:`absclip.backbones.registry`); the name row is the catch-all
LOADERS = (
    LoaderRow("open_clip JSON config + weights", is_open_clip_config, load_open_clip_config, 20),
    LoaderRow("OpenAI-format checkpoint file", is_openai_file, load_openai_file, 30),
    LoaderRow("open_clip hf-hub: / local-dir:", is_open_clip_hub, load_open_clip, 40),
    LoaderRow("open_clip name + tag or checkpoint file", _any, load_open_clip, 1000),
)
