"""Method settings as frozen dataclasses: every ABS constant is a field here, not a literal in code.

A field made with :func:`setting` carries its command-line flag and help; ``cli_title`` (a class
attribute) names the option group. The CLI builds its method options from these alone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from absclip.errors import AbsclipError


def setting(default: Any, flag: str | None = None, help: str | None = None, **meta: Any) -> Any:  # noqa: A002
    """Return a dataclass field with ``default`` and its command-line metadata.

    A settings dataclass declares its options here; the CLI builds them from this metadata
    (``absclip.cli.options``), so a new method needs no CLI code.

    Args:
        default: the field's default value.
        flag: the command-line flag (``--crops``); None: the setting has no option. Several settings
            types may share a flag (``--max-descriptions``): one option then sets all of them.
        help: the option's help text.
        meta: more option metadata (``metavar``).
    """
    data = {**meta, **({"flag": flag} if flag else {}), **({"help": help} if help else {})}
    return dataclasses.field(default=default, metadata=data)

#: the one default of every entry point (API, CLI, scale-out): CUDA when there is one, else the CPU
DEFAULT_DEVICE = "auto"
#: ... and fp16 on CUDA (as the reference), fp32 on the CPU (bf16 moves logits ~1%: opt-in)
DEFAULT_PRECISION = "auto"
#: ABS's attention source when none is given and the model has no default of its own
DEFAULT_ATTENTION_MODEL = "facebook/dino-vitb16"
#: images with more pixels are refused (PIL's own decompression-bomb limit)
DEFAULT_MAX_PIXELS = 178_956_970
#: the kinds of map an explanation picture can show (``absclip explain --map``)
MAP_KINDS = ("attention", "rollout", "text")

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

    cli_title: ClassVar[str] = "ABS"

    pixel_crops: int = setting(50, "--crops", "pixel-space crops per image (default: 50)")
    feature_crops: int = setting(50, "--feature-crops", "feature-space crops per image (default: 50)")
    top_k: int = setting(20, "--top-k", "attention cells the centres are drawn from (default: 20)")
    sample_temperature: float = setting(0.03, "--temperature",
                                        "sampling temperature of softmax(top-k / T) (default: 0.03)")
    score_temperature: float = setting(0.03, "--score-temperature", "soft-matching temperature tau (default: 0.03)")
    pixel_crop_ratio: tuple[float, float] = setting((0.6, 0.9), "--crop-ratio",
                                                    "pixel crop side as LO,HI fraction of W/H (default: 0.6,0.9)")
    feature_crop_ratio: tuple[float, float] = setting((0.6, 0.9), "--feature-crop-ratio",
                                                      "window side as LO,HI fraction of the grid (default: 0.6,0.9)")
    feature_layer: int = setting(-1, "--feature-layer", "block the feature crops enter (default: -1, the last)")
    max_descriptions: int = setting(50, "--max-descriptions", "first M descriptions per class (default: 50)")
    centres: Literal["independent", "shared"] = setting(
        "independent", "--centres",
        "independent draws for pixel/feature crops (reference code, default) or shared (paper)")
    feature_mapping: Literal["reference", "aligned"] = setting(
        "reference", "--feature-mapping",
        "attention→CLIP grid mapping: reference index scaling (default) or aligned via pixels")
    token_keep: float = 1.0

    def __post_init__(self) -> None:
        if self.pixel_crops < 0 or self.feature_crops < 0 or self.pixel_crops + self.feature_crops == 0:
            raise AbsclipError("ABS needs at least one crop: set pixel_crops and/or feature_crops above 0.")
        if self.top_k < 1:
            raise AbsclipError(f"top_k must be at least 1, got {self.top_k}.")
        if self.sample_temperature <= 0 or self.score_temperature <= 0:
            raise AbsclipError("sample_temperature and score_temperature must be positive.")
        for name in ("pixel_crop_ratio", "feature_crop_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise AbsclipError(f"{name} must satisfy 0 < lo <= hi <= 1, got ({lo}, {hi}).")
        if self.max_descriptions < 1:
            raise AbsclipError(f"max_descriptions must be at least 1, got {self.max_descriptions}.")
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

    cli_title: ClassVar[str] = "WCA"

    crops: int = setting(50, "--wca-crops", "random square crops for wca (default: 50)")
    min_ratio: float = setting(0.5, "--wca-alpha", "smallest crop side ratio for wca (default: 0.5)")
    max_ratio: float = 0.9
    image_weight_scale: float = 54.598150033144236  # e**4
    text_weight_scale: float = 7.38905609893065  # e**2
    max_descriptions: int = setting(50, "--max-descriptions", "first M descriptions per class (default: 50)")

    def __post_init__(self) -> None:
        if self.crops < 0:
            raise AbsclipError(f"crops must be >= 0, got {self.crops}.")
        if not 0 < self.min_ratio <= self.max_ratio <= 1:
            raise AbsclipError(f"min_ratio and max_ratio must satisfy 0 < min_ratio <= max_ratio <= 1, got "
                               f"({self.min_ratio}, {self.max_ratio}).")
        if self.max_descriptions < 1:
            raise AbsclipError(f"max_descriptions must be at least 1, got {self.max_descriptions}.")


@dataclass(frozen=True)
class WaffleSettings:
    """Settings of WaffleCLIP.

    Attributes:
        count: random descriptors per class (words and character strings, the same for every class).
    """

    cli_title: ClassVar[str] = "WaffleCLIP"

    count: int = setting(15, "--waffle-count", "random descriptors per class for waffle (default: 15)")

    def __post_init__(self) -> None:
        if self.count < 1:
            raise AbsclipError(f"count (WaffleCLIP random descriptors) must be at least 1, got {self.count}.")


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
