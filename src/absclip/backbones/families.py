"""Encoder families and the ABS parts each supports (``absclip models``, the README table).

The adapters decide at load time from the model itself (:mod:`absclip.backbones.open_clip`,
:mod:`absclip.backbones.timm_vit`, :mod:`absclip.backbones.eva`); this table says the same per
family from an open_clip config alone, without building the model."""

from __future__ import annotations

from typing import Any

#: the ABS parts a family may support, in display order
PARTS = ("pixel_crops", "feature_crops", "clip_attention", "rollout", "text_maps")

_ALL = dict.fromkeys(PARTS, True)
#: family -> {part: supported}
FAMILIES: dict[str, dict[str, bool]] = {
    "open_clip ViT": _ALL,
    "timm ViT (MAP)": _ALL,  # no class token: the probe takes the CLS slot for rollout
    "timm ViT": _ALL,
    "timm Eva": _ALL,
    "timm Eva (MAP)": _ALL,
    "convolutional / hybrid": {**dict.fromkeys(PARTS, False), "pixel_crops": True},
}


def config_family(cfg: dict[str, Any]) -> str:
    """Return the :data:`FAMILIES` key of an open_clip model config (its image tower decides)."""
    vision = cfg.get("vision_cfg", {})
    timm_name = vision.get("timm_model_name")
    if not timm_name:
        return "convolutional / hybrid" if isinstance(vision.get("layers"), (list, tuple)) else "open_clip ViT"
    try:
        from timm.models import model_entrypoint

        module = model_entrypoint(timm_name).__module__
    except Exception:  # noqa: BLE001 - a name this timm does not know: nothing token-level can be promised
        return "convolutional / hybrid"
    pooled = " (MAP)" if vision.get("timm_pool") == "map" else ""
    if module.endswith(".vision_transformer"):
        return f"timm ViT{pooled}"
    if module.endswith(".eva"):
        return f"timm Eva{pooled}"
    return "convolutional / hybrid"
