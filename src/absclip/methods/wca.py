"""WCA: random square crops weighted by similarity, scored against weighted descriptions."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from absclip.core.settings import WCAConfig
from absclip.methods.base import Method, TextInputs, register_method
from absclip.text import banks as text

if TYPE_CHECKING:  # torch and the model side are imported inside functions (a fast CLI parser)
    import torch

    from absclip.methods.batch import BatchContext
    from absclip.text.encoder import TextEncoder

log = logging.getLogger(__name__)


@register_method("wca")
class WCAMethod(Method):
    """WCA: the full image and random square crops, weighted by similarity, against weighted descriptions."""

    settings_type = WCAConfig
    settings: WCAConfig

    def image_views(self) -> float:
        return 1 + self.settings.crops

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        self.bank = encoder.encode_bank(inputs.description_texts(), self.settings.max_descriptions)
        self.prompt = encoder.encode([text.fill_template(text.DEFAULT_TEMPLATE, n) for n in inputs.classes.names])

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        import torch

        from absclip.core import scoring
        from absclip.core.sampling import draw_wca_boxes, image_rng

        bb = ctx.backbone
        crops, counts = [], []
        for item in ctx.items:
            boxes = draw_wca_boxes(image_rng(seed, item.key, "wca"), self.settings, *item.size)
            crops += [bb.preprocess(item.image.crop(b)) for b in boxes]
            counts.append(len(boxes))
        emb = ctx.encode_crops(crops)
        full = ctx.full.cpu()
        out, off = [], 0
        for b, n in enumerate(counts):
            views = torch.cat([full[b : b + 1], emb[off : off + n]]).unsqueeze(0)
            off += n
            out.append(scoring.wca_logits(views, full[b : b + 1], self.bank.emb, self.bank.mask, self.prompt,
                                          self.settings.image_weight_scale, self.settings.text_weight_scale))
        return torch.cat(out)

