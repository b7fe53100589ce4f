"""ZERO: augmented views, the most confident ones vote with their argmax (zero temperature)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from absclip.core.augment import DEFAULT_RATIO, DEFAULT_SCALE, check_view_settings
from absclip.core.settings import setting
from absclip.errors import AbsclipError
from absclip.methods.base import register_method
from absclip.methods.heads import AugmentedClipMethod

if TYPE_CHECKING:  # torch and the model side are imported inside functions (a fast CLI parser)
    import torch

    from absclip.methods.batch import BatchContext


@dataclass(frozen=True)
class ZeroSettings:
    """Settings of ZERO (defaults: the authors' ``ttas/zero.py`` and ``data/augs.py``).

    Attributes:
        views: views per image, the original image included (ZERO's ``num_views``).
        keep: fraction of views kept by confidence, ``int(views * keep)`` (ZERO's ``gamma``).
        crop_scale / crop_ratio: ``RandomResizedCrop`` area and aspect-ratio ranges (torchvision's).
        flip_p: probability of a horizontal flip of each augmented view.
    """

    cli_title: ClassVar[str] = "ZERO"

    views: int = setting(64, "--zero-views", "views per image for zero, the original included (default: 64)")
    keep: float = setting(0.3, "--zero-keep", "fraction of most confident views that vote (default: 0.3)")
    crop_scale: tuple[float, float] = DEFAULT_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_RATIO
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        check_view_settings(self.views, self.crop_scale, self.crop_ratio, self.flip_p)
        if not 0 < self.keep <= 1 or int(self.views * self.keep) < 1:
            raise AbsclipError(f"keep must be in (0, 1] and keep at least one of the {self.views} views, "
                               f"got {self.keep}.")


@register_method("zero")
class ZeroMethod(AugmentedClipMethod):
    """ZERO: 64 views (image + random resized crops/flips); the 30% most confident vote with their argmax.

    The text side is CLIP's single prompt "a photo of a {c}." (ZERO's ``ctx_init``), as method ``clip``.
    """

    settings_type = ZeroSettings
    settings: ZeroSettings

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        import torch

        from absclip.core.voting import zero_votes

        s = self.settings
        views = self.view_embeddings(ctx, seed)
        scale = float(ctx.backbone.logit_scale)
        return torch.stack([zero_votes(v @ self.classifier.float().T, scale, s.keep) for v in views])

    def probabilities(self, logits: torch.Tensor, logit_scale: float, logit_bias: float | None = None) -> torch.Tensor:
        # the logits are vote counts: the score is a class's share of the votes (whatever the model's bias)
        return logits / logits.sum(-1, keepdim=True).clamp_min(1e-12)
