"""MTA: MeanShift mode of augmented view embeddings with inlierness scores; classify the mode."""

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
class MTASettings:
    """Settings of MTA (defaults: the authors' ``mta.py`` and ``main.py``: batch size 64, no AugMix).

    Attributes:
        views: views per image, the original included (MTA's ``--batch-size``).
        lambda_y: weight of the entropic term of the inlierness objective (``--lambda_y``).
        lambda_q: weight of its quadratic prediction-agreement term (``--lambda_q``).
        iterations: outer alternations, and the most steps of each inner loop (``max_iter``).
        tolerance: an inner loop stops when its variable moves less than this (``th``).
        neighbours: fraction of the other views in each view's bandwidth (``0.3``).
        temperature: softmax temperature of the agreement's predictions (``temperature``).
        crop_scale / crop_ratio / flip_p: the augmented views, as ZERO's.
    """

    cli_title: ClassVar[str] = "MTA"

    views: int = setting(64, "--mta-views", "views per image for mta, the original included (default: 64)")
    lambda_y: float = setting(0.2, "--mta-lambda-y", "entropic term weight of mta's inlierness (default: 0.2)")
    lambda_q: float = setting(4.0, "--mta-lambda-q", "quadratic term weight of mta's inlierness (default: 4)")
    iterations: int = 5
    tolerance: float = 1e-6
    neighbours: float = 0.3
    temperature: float = 1.0
    crop_scale: tuple[float, float] = DEFAULT_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_RATIO
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        check_view_settings(self.views, self.crop_scale, self.crop_ratio, self.flip_p)
        if self.lambda_y <= 0 or self.temperature <= 0:
            raise AbsclipError("lambda_y and temperature must be positive.")
        if self.iterations < 1:
            raise AbsclipError(f"iterations must be at least 1, got {self.iterations}.")
        if int(self.neighbours * (self.views - 1)) < 1:
            raise AbsclipError(f"neighbours * (views - 1) must be at least 1 for mta's bandwidths; got "
                               f"{self.neighbours} * {self.views - 1}.")


@register_method("mta")
class MTAMethod(AugmentedClipMethod):
    """MTA: the MeanShift mode of 64 views (image + random resized crops/flips), weighted by inlierness.

    The text side is CLIP's single prompt "a photo of a {c}." (MTA's ``ctx_init``), as method ``clip``.
    """

    settings_type = MTASettings
    settings: MTASettings

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        import torch

        from absclip.core.meanshift import mta_mode

        s = self.settings
        views = self.view_embeddings(ctx, seed)
        scale = float(ctx.backbone.logit_scale)
        modes = [mta_mode(v, v @ self.classifier.float().T * scale, lambda_y=s.lambda_y, lambda_q=s.lambda_q,
                          iterations=s.iterations, inner_iterations=s.iterations, tolerance=s.tolerance,
                          neighbours=s.neighbours, temperature=s.temperature).mode for v in views]
        return torch.stack(modes) @ self.classifier.float().T
