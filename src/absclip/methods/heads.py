"""Zero-shot head methods: clip, clip-e, cupl, dclip, waffle (mean of class text embeddings, cosine with the image)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from absclip.core.settings import WaffleSettings
from absclip.methods.base import Method, TextInputs, register_method
from absclip.text import banks as text

if TYPE_CHECKING:  # torch and the model side are imported inside functions (a fast CLI parser)
    import torch

    from absclip.methods.batch import BatchContext
    from absclip.text.encoder import TextEncoder

log = logging.getLogger(__name__)


class _ClassifierHead(Method):
    """Zero-shot head: mean of each class's text embeddings; logits = cosine with the full image."""

    classifier: torch.Tensor

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        raise NotImplementedError

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        from absclip.core import scoring

        self.bank = encoder.encode_bank(self.texts(inputs))
        self.classifier = scoring.masked_mean_classifier(self.bank.emb, self.bank.mask)

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        from absclip.core import scoring

        return scoring.cosine_logits(ctx.full.cpu(), self.classifier)


@register_method("clip")
class ClipMethod(_ClassifierHead):
    """CLIP with the single prompt "a photo of a {c}."."""

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        return text.template_bank(inputs.classes, [text.DEFAULT_TEMPLATE])


@register_method("clip-e")
class ClipEnsembleMethod(_ClassifierHead):
    """CLIP with a template ensemble (``--templates``, default: the CLIP paper's 80 ImageNet templates)."""

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        return text.template_bank(inputs.classes, inputs.templates or text.openai_imagenet_templates())


@register_method("cupl")
class CuplMethod(_ClassifierHead):
    """CuPL: the mean of each class's LLM-written description embeddings."""

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        return inputs.description_texts()


@register_method("dclip")
class DclipMethod(_ClassifierHead):
    """DCLIP (classification by description): mean over "{c}, which (is/has) {descriptor}" sentences."""

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        if inputs.descriptors is None:
            return inputs.fallback("descriptors")
        return text.descriptor_bank(inputs.classes, inputs.descriptors)


@register_method("waffle")
class WaffleMethod(_ClassifierHead):
    """WaffleCLIP: random word and character descriptors, the same for every class (seeded)."""

    settings_type = WaffleSettings
    settings: WaffleSettings

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        return text.waffle_bank(inputs.classes, text.tokenizer_vocabulary(), count=self.settings.count,
                                seed=inputs.seed)


class AugmentedClipMethod(ClipMethod):
    """CLIP's single prompt against the image and its seeded random resized crops/flips (ZERO, MTA).

    The settings carry ``views`` (the original included), ``crop_scale``, ``crop_ratio`` and ``flip_p``.
    Methods with the same settings share one encoding of the views (``BatchContext.augmented``).
    """

    def image_views(self) -> float:
        """Whole images the image tower sees per input image: the original and the augmented views."""
        return self.settings.views

    def view_embeddings(self, ctx: BatchContext, seed: int) -> list[torch.Tensor]:
        """Return, per image of the batch, its view embeddings ``[views, D]`` (the original first)."""
        s = self.settings
        return ctx.augmented(seed, s.views - 1, s.crop_scale, s.crop_ratio, s.flip_p)
