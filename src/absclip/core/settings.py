"""Method settings as frozen dataclasses: every ABS constant is a field here, not a literal in code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from absclip.errors import AbsclipError

#: robust z-score (MADs above the median) above which a token is an attention sink (``--ignore-sinks``)
DEFAULT_SINK_THRESHOLD = 5.0


@dataclass(frozen=True)
class ABSConfig:
    """Settings of ABS (spec: ``shared/design/abs.md``); defaults are the reference's for ViT-B/16.

    Attributes:
        pixel_crops: number N of attention-guided pixel-space crops per image.
        feature_crops: number of feature-space (token-grid) crops per image.
        top_k: the number of highest-attention cells the crop centres are drawn from.
        sample_temperature: temperature of ``softmax(a_topk / T)`` the centres are drawn from.
        score_temperature: tau in the soft-matching score ``<f, t> / tau``.
        pixel_crop_ratio: inclusive (lo, hi) fraction of W (and H) for the crop width (height).
        feature_crop_ratio: inclusive (lo, hi) fraction of the CLIP grid for the window side.
        feature_layer: index of the CLIP block the feature crops enter (negative counts from the
            end; -1 = the last block, the reference's ``layer2 = 11`` on ViT-B/16).
        max_descriptions: M, the first M descriptions of each class are used.
        centres: "independent" draws separate centres/sizes for pixel and feature crops (the
            released code); "shared" uses one set of centres for both (paper Algorithm 1).
        feature_mapping: "reference" maps attention-grid cells to the CLIP grid by index
            scaling (the released code; grids are misaligned for non-square images);
            "aligned" maps them through pixel space onto the CLIP centre crop.
        token_keep: fraction of each pixel crop's patch tokens kept, ranked by the image's
            attention map (HiRED-style token dropping). 1.0 (default) keeps all tokens and is the
            faithful method; below 1 changes results (ABS fast mode, method ``abs-fast``).
    """

    pixel_crops: int = 50
    feature_crops: int = 50
    top_k: int = 20
    sample_temperature: float = 0.03
    score_temperature: float = 0.03
    pixel_crop_ratio: tuple[float, float] = (0.6, 0.9)
    feature_crop_ratio: tuple[float, float] = (0.6, 0.9)
    feature_layer: int = -1
    max_descriptions: int = 50
    centres: Literal["independent", "shared"] = "independent"
    feature_mapping: Literal["reference", "aligned"] = "reference"
    token_keep: float = 1.0

    def __post_init__(self) -> None:
        if self.pixel_crops < 0 or self.feature_crops < 0 or self.pixel_crops + self.feature_crops == 0:
            raise AbsclipError("ABS needs at least one crop: set --crops and/or --feature-crops above 0.")
        if self.top_k < 1:
            raise AbsclipError(f"--top-k must be at least 1, got {self.top_k}.")
        if self.sample_temperature <= 0 or self.score_temperature <= 0:
            raise AbsclipError("ABS temperatures must be positive.")
        for name in ("pixel_crop_ratio", "feature_crop_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise AbsclipError(f"{name} must satisfy 0 < lo <= hi <= 1, got ({lo}, {hi}).")
        if self.max_descriptions < 1:
            raise AbsclipError("--max-descriptions must be at least 1.")
        if self.centres not in ("independent", "shared"):
            raise AbsclipError(f"centres must be 'independent' or 'shared', got {self.centres!r}.")
        if self.feature_mapping not in ("reference", "aligned"):
            raise AbsclipError(f"feature_mapping must be 'reference' or 'aligned', got {self.feature_mapping!r}.")
        if not 0 < self.token_keep <= 1:
            raise AbsclipError(f"token_keep must satisfy 0 < keep <= 1, got {self.token_keep}.")


@dataclass(frozen=True)
class WCAConfig:
    """Settings of WCA (visual-text cross alignment): random square crops weighted by similarity.

    Attributes:
        crops: number of random square crops (the full image is always an extra view).
        min_ratio: alpha, the crop side is ``U(alpha, max_ratio) * min(W, H)``.
        max_ratio: upper bound of the crop side ratio.
        image_weight_scale: crop weights are ``softmax(scale * cos(crop, full))`` (e^4 in WCA).
        text_weight_scale: description weights are ``softmax(scale * cos(desc, prompt))`` (e^2).
        max_descriptions: the first M descriptions of each class are used.
    """

    crops: int = 50
    min_ratio: float = 0.5
    max_ratio: float = 0.9
    image_weight_scale: float = 54.598150033144236  # e**4
    text_weight_scale: float = 7.38905609893065  # e**2
    max_descriptions: int = 50

    def __post_init__(self) -> None:
        if self.crops < 0:
            raise AbsclipError("WCA crops must be >= 0.")
        if not 0 < self.min_ratio <= self.max_ratio <= 1:
            raise AbsclipError("WCA crop ratios must satisfy 0 < min <= max <= 1.")


@dataclass(frozen=True)
class WaffleSettings:
    """Settings of WaffleCLIP.

    Attributes:
        count: random descriptors per class (words and character strings, the same for every class).
    """

    count: int = 15

    def __post_init__(self) -> None:
        if self.count < 1:
            raise AbsclipError(f"WaffleCLIP needs at least one random descriptor, got {self.count}.")


def replace_config(cfg: Any, **overrides: Any) -> Any:
    """Return ``cfg`` with the given fields replaced; ``None`` values mean "keep the default".

    Unknown keys raise, so a misspelt option never silently does nothing.
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise AbsclipError(f"Unknown {type(cfg).__name__} setting(s): {', '.join(unknown)}.")
    clean = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **clean) if clean else cfg


#: ABS fast mode (method ``abs-fast``; changes results): at most this many pixel crops ...
FAST_PIXEL_CROPS = 16
#: ... and at most this fraction of each crop's patch tokens (feature crops are cheap and kept)
FAST_TOKEN_KEEP = 0.5


def fast_abs_config(cfg: ABSConfig) -> ABSConfig:
    """Return the fast-mode variant of ``cfg``: pixel crops capped at :data:`FAST_PIXEL_CROPS` and
    ``token_keep`` at :data:`FAST_TOKEN_KEEP` (smaller values in ``cfg`` are kept).

    About 5x fewer image-encoder FLOPs than faithful ABS on ViT-B/16 (``absclip bench`` reports
    the estimate); results differ from faithful ABS.
    """
    return dataclasses.replace(cfg, pixel_crops=min(cfg.pixel_crops, FAST_PIXEL_CROPS),
                               token_keep=min(cfg.token_keep, FAST_TOKEN_KEEP))
