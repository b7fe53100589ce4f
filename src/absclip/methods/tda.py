"""TDA: online positive and negative key-value caches of earlier test images, added to CLIP's logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from absclip.core.settings import setting
from absclip.errors import AbsclipError
from absclip.methods.base import Method, TextInputs, register_method
from absclip.text import banks as text

if TYPE_CHECKING:  # torch and the model side are imported inside functions (a fast CLI parser)
    import torch

    from absclip.core.cache import KeyValueCache
    from absclip.methods.batch import BatchContext
    from absclip.text.encoder import TextEncoder

#: TDA's ImageNet templates (Tip-Adapter's seven; its ``datasets/imagenet.py``)
TDA_IMAGENET_TEMPLATES = (
    "itap of a {c}.",
    "a bad photo of the {c}.",
    "a origami {c}.",
    "a photo of the large {c}.",
    "a {c} in a video game.",
    "art of the {c}.",
    "a photo of the small {c}.",
)


@dataclass(frozen=True)
class TDASettings:
    """Settings of TDA: the authors' ImageNet configuration (``configs/imagenet.yaml``, ``tda_runner.py``).

    The authors tune these per data set (their ``configs/*.yaml``); these are the ImageNet ones.

    Attributes:
        positive_shots / positive_alpha / positive_beta: the positive cache's capacity per class,
            weight and sharpness.
        negative_shots / negative_alpha / negative_beta: the same for the negative cache.
        negative_entropy: an image enters the negative cache when ``lo < entropy / log2(C) < hi``.
        negative_mask: the negative cache's values mark the classes with ``lo < p < hi``.
        logit_scale: CLIP's logits are ``logit_scale * cosine`` (TDA's literal ``100.``).
        templates: the prompt ensemble when no ``templates`` are given (TDA's ImageNet seven).
        positive / negative: use that cache.
    """

    cli_title: ClassVar[str] = "TDA"

    positive_shots: int = setting(3, "--tda-positive-shots", "tda positive cache entries per class (default: 3)")
    positive_alpha: float = setting(2.0, "--tda-positive-alpha", "tda positive cache weight (default: 2.0)")
    positive_beta: float = setting(5.0, "--tda-positive-beta", "tda positive cache sharpness (default: 5.0)")
    negative_shots: int = setting(2, "--tda-negative-shots", "tda negative cache entries per class (default: 2)")
    negative_alpha: float = setting(0.117, "--tda-negative-alpha", "tda negative cache weight (default: 0.117)")
    negative_beta: float = setting(1.0, "--tda-negative-beta", "tda negative cache sharpness (default: 1.0)")
    negative_entropy: tuple[float, float] = setting(
        (0.2, 0.5), "--tda-negative-entropy", "LO,HI entropy ratio of tda negative-cache images (default: 0.2,0.5)")
    negative_mask: tuple[float, float] = setting(
        (0.03, 1.0), "--tda-negative-mask", "LO,HI probabilities tda's negative cache marks (default: 0.03,1.0)")
    logit_scale: float = 100.0
    templates: tuple[str, ...] = TDA_IMAGENET_TEMPLATES
    positive: bool = True
    negative: bool = True

    def __post_init__(self) -> None:
        if self.positive_shots < 1 or self.negative_shots < 1:
            raise AbsclipError("positive_shots and negative_shots must be at least 1.")
        if not self.templates:
            raise AbsclipError("TDA needs at least one template.")


@dataclass
class TDAState:
    """What TDA carries from one test image to the next: its two caches."""

    positive: KeyValueCache
    negative: KeyValueCache
    images: int = 0


@register_method("tda")
class TDAMethod(Method):
    """TDA (online): positive/negative caches of earlier test images added to CLIP's logits; order-dependent."""

    stateful = True
    settings_type = TDASettings
    settings: TDASettings
    classifier: torch.Tensor
    state: TDAState

    def __init__(self, settings: TDASettings | None = None) -> None:
        super().__init__(settings)
        self.reset()

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        from absclip.core import scoring

        self.bank = encoder.encode_bank(text.template_bank(inputs.classes, inputs.templates or
                                                           list(self.settings.templates)))
        self.classifier = scoring.masked_mean_classifier(self.bank.emb, self.bank.mask).float()
        self.reset()

    def reset(self) -> None:
        from absclip.core.cache import KeyValueCache

        self.state = TDAState(KeyValueCache(self.settings.positive_shots), KeyValueCache(self.settings.negative_shots))

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        """Return the batch's logits, one image after another: each sees the caches of all earlier images."""
        import torch

        full = ctx.full.cpu().float()
        return torch.stack([self.step(f) for f in full])

    def step(self, feature: torch.Tensor) -> torch.Tensor:
        """Update the caches with one image's unit-norm feature ``[D]`` and return its logits ``[C]``."""
        from absclip.core.cache import CacheEntry, entropy, normalised_entropy

        s, state = self.settings, self.state
        clip_logits = (s.logit_scale * feature) @ self.classifier.T  # TDA: 100. * features @ weights
        loss = entropy(clip_logits)
        label = int(clip_logits.argmax())
        classes = clip_logits.shape[-1]
        if s.positive:
            state.positive.update(label, CacheEntry(feature, loss))
        if s.negative and s.negative_entropy[0] < normalised_entropy(loss, classes) < s.negative_entropy[1]:
            state.negative.update(label, CacheEntry(feature, loss, clip_logits.softmax(-1)))
        out = clip_logits.clone()
        if s.positive and len(state.positive):
            out += state.positive.logits(feature, s.positive_alpha, s.positive_beta, classes)
        if s.negative and len(state.negative):
            out -= state.negative.logits(feature, s.negative_alpha, s.negative_beta, classes, s.negative_mask)
        state.images += 1
        return out

    def probabilities(self, logits: torch.Tensor, logit_scale: float) -> torch.Tensor:
        # TDA's logits are already scaled (``logit_scale`` of its settings)
        import torch

        return torch.softmax(logits, dim=-1)
