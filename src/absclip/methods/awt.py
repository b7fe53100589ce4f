"""AWT (NeurIPS 2024): augmented views and described classes, weighted by entropy, matched by optimal transport.

Per image: the full image and ``views`` random resized crops (with random flips); per class: the
class prompt and the prompt followed by each LLM description. Views and descriptions get
entropy-based importance weights; an entropic optimal transport plan (Sinkhorn) between the two
weighted sets gives each class ``sum(T * cos)`` = 1 - the transport cost (``T`` sums to 1).
Matches the authors' ``AWT_zero_shot/evaluate.py`` (MCG-NJU/AWT @ b2b49a8, see docs/methods.md)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from absclip.core.augment import DEFAULT_RATIO, DEFAULT_SCALE, check_view_settings
from absclip.core.settings import setting
from absclip.errors import AbsclipError
from absclip.methods.base import Method, TextInputs, register_method
from absclip.text import banks as text
from absclip.text.sources import is_template

if TYPE_CHECKING:  # torch and the model side are imported inside functions (a fast CLI parser)
    import torch

    from absclip.io.images import ImageItem
    from absclip.methods.batch import BatchContext
    from absclip.text.encoder import TextEncoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AWTConfig:
    """Settings of AWT; every default is the authors' (MCG-NJU/AWT, ``AWT_zero_shot``).

    Attributes:
        views: augmented views per image besides the full image (``pre_extract.sh``: ``BS=50``).
        max_descriptions: the first M descriptions of each class (``--num_descriptor 50``).
        template: the class prompt each description follows (their ImageNet ``CUSTOM_TEMPLATES`` entry);
            a class's texts are ``"{prompt}."`` and ``"{prompt}. {description}"``.
        image_temperature: views are weighted ``softmax(-entropy / t)`` (``img_t = 0.5``).
        text_temperature: descriptions are weighted ``softmax(-entropy / t)`` per class (``text_t = 0.5``).
        epsilon: entropic regularisation of the transport, ``K = exp(-(1 - cos) / eps)`` (``eps = 0.1``).
        sinkhorn_iterations: at most this many Sinkhorn iterations (100) ...
        sinkhorn_threshold: ... stopping when the mean change of the row scaling is below this (1e-2).
        crop_scale: area fraction range of the random resized crops (torchvision's default).
        crop_ratio: aspect-ratio range (w/h) of the crops (torchvision's default).
        flip_p: probability of a horizontal flip per view (torchvision's default).
    """

    cli_title: ClassVar[str] = "AWT"

    views: int = setting(50, "--awt-views", "augmented views per image for awt, besides the full image (default: 50)")
    max_descriptions: int = setting(50, "--max-descriptions", "first M descriptions per class (default: 50)")
    template: str = setting("a photo of a {c}", "--awt-template",
                            "class prompt awt's descriptions follow, with {c} (default: 'a photo of a {c}')")
    image_temperature: float = setting(0.5, "--awt-image-temperature",
                                       "temperature of awt's view weights softmax(-entropy/t) (default: 0.5)")
    text_temperature: float = setting(0.5, "--awt-text-temperature",
                                      "temperature of awt's description weights (default: 0.5)")
    epsilon: float = setting(0.1, "--awt-epsilon", "entropic regularisation of awt's transport (default: 0.1)")
    sinkhorn_iterations: int = 100
    sinkhorn_threshold: float = 1e-2
    crop_scale: tuple[float, float] = DEFAULT_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_RATIO
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.views < 0:
            raise AbsclipError(f"views must be >= 0, got {self.views}.")
        check_view_settings(self.views + 1, self.crop_scale, self.crop_ratio, self.flip_p)  # + the full image
        if self.max_descriptions < 1:
            raise AbsclipError(f"max_descriptions must be at least 1, got {self.max_descriptions}.")
        if not is_template(self.template):
            raise AbsclipError(f"template {self.template!r} has no {{c}} or {{}} placeholder.")
        if min(self.image_temperature, self.text_temperature, self.epsilon) <= 0:
            raise AbsclipError("image_temperature, text_temperature and epsilon must be positive.")
        if self.sinkhorn_iterations < 1:
            raise AbsclipError(f"sinkhorn_iterations must be at least 1, got {self.sinkhorn_iterations}.")


def awt_texts(names: Sequence[str], template: str, descriptions: Sequence[Sequence[str]] | None,
              max_descriptions: int) -> list[list[str]]:
    """Return each class's texts in the authors' format: ``"{prompt}."`` then ``"{prompt}. {description}"``."""
    out = []
    for i, name in enumerate(names):
        prompt = text.fill_template(template, name)
        descs = list(descriptions[i][:max_descriptions]) if descriptions is not None else []
        out.append([prompt + "."] + [f"{prompt}. {d}" for d in descs])
    return out


# -------------------------------------------------------------------------------------------
# scoring: pure functions of embeddings
# -------------------------------------------------------------------------------------------


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)


def awt_weights(logits: torch.Tensor, mask: torch.Tensor, image_temperature: float,
                text_temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return AWT's importance weights: views ``[V]`` and each class's texts ``[C, N]``.

    Args:
        logits: ``[V, C, N]`` = logit scale x cosine of view ``v`` and text ``n`` of class ``c``;
            view 0 is the full image.
        mask: ``[C, N]`` valid texts (classes may have fewer descriptions than ``N``).

    A view's weight falls with the entropy of its class distribution (the mean over each class's
    texts). Text ``n`` of class ``c`` is weighted by the entropy of the full image's class
    distribution with class ``c``'s mean replaced by that text's logit: a text that makes the
    image's prediction more confident weighs more. Both are ``softmax(-entropy / temperature)``.
    """
    import torch

    m = mask.to(logits.dtype)
    mean = (logits * m).sum(-1) / m.sum(-1).clamp_min(1)  # [V, C]
    image_w = torch.softmax(-_entropy(mean) / image_temperature, dim=0)
    # entropy of softmax(mean[0] with entry c replaced by x), for every (c, n), in O(C N) (float64: the
    # replaced class may hold almost all the mass, and E - e_c must not cancel)
    base = mean[0].double()
    x = logits[0].double()  # [C, N]
    top = torch.maximum(base.max(), x.max())
    e, ex = (base - top).exp(), (x - top).exp()
    big_e = e.sum() - e[:, None] + ex
    big_s = (e * base).sum() - (e * base)[:, None] + ex * x
    text_entropy = (big_e.log() + top - big_s / big_e).to(logits.dtype)
    text_entropy = text_entropy.masked_fill(~mask, float("inf"))
    text_w = torch.softmax(-text_entropy / text_temperature, dim=-1)
    return image_w, text_w


def sinkhorn(kernel: torch.Tensor, u: torch.Tensor, v: torch.Tensor, iterations: int = 100,
             threshold: float = 1e-2) -> torch.Tensor:
    """Return the entropic transport plans ``[C, V, N]`` of kernels ``[C, V, N]``, marginals ``u [V]``, ``v [C, N]``.

    The authors' loop: scale rows and columns alternately, stopping after ``iterations`` or once the
    mean absolute change of the row scaling (over all classes together) is below ``threshold``.
    """
    import torch

    r = torch.ones_like(u)
    c = torch.ones_like(v)
    kt = kernel.transpose(1, 2)
    for _ in range(iterations):
        r0 = r
        r = u / torch.matmul(kernel, c.unsqueeze(-1)).squeeze(-1)
        c = v / torch.matmul(kt, r.unsqueeze(-1)).squeeze(-1)
        if float((r - r0).abs().mean()) < threshold:
            break
    return r.unsqueeze(-1) * c.unsqueeze(-2) * kernel


def awt_scores(views: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, logit_scale: float,
               cfg: AWTConfig) -> torch.Tensor:
    """Return one image's AWT class scores ``[C]``: ``sum(T * cos)`` over views and texts.

    Args:
        views: ``[V, D]`` normalised view embeddings, the full image first.
        text: ``[C, N, D]`` normalised class texts (zero rows where ``mask`` is false).
        mask: ``[C, N]`` valid texts.
        logit_scale: the model's logit scale (the entropies are of ``logit_scale * cos``).
        cfg: temperatures, epsilon and Sinkhorn limits.

    The authors' score is ``logit_scale`` times this (their ``sum(T * logits)``); probabilities
    (``softmax(logit_scale * score)``) are the same.
    """
    import torch

    cos = torch.einsum("vd,cnd->cvn", views.float(), text.float())  # [C, V, N]
    logits = cos.permute(1, 0, 2) * logit_scale
    image_w, text_w = awt_weights(logits, mask, cfg.image_temperature, cfg.text_temperature)
    kernel = torch.exp(-(1.0 - cos) / cfg.epsilon)
    plan = sinkhorn(kernel, image_w, text_w, cfg.sinkhorn_iterations, cfg.sinkhorn_threshold)
    return (plan * cos).sum(dim=(1, 2))


# -------------------------------------------------------------------------------------------
# the method
# -------------------------------------------------------------------------------------------


@register_method("awt")
class AWTMethod(Method):
    """AWT: the image and 50 augmented views against prompted descriptions, entropy-weighted, optimal transport."""

    settings_type = AWTConfig
    settings: AWTConfig

    def image_views(self) -> float:
        return 1 + self.settings.views

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        s = self.settings
        descriptions = inputs.description_texts() if inputs.descriptions is not None else None
        if descriptions is None:
            log.warning("No descriptions given: awt uses only the class prompt %r per class.", s.template)
        self.bank = encoder.encode_bank(awt_texts(inputs.classes.names, s.template, descriptions,
                                                  s.max_descriptions))

    def view_params(self, item: ImageItem, seed: int) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
        """Return one image's augmented views: crop boxes ``(left, top, w, h)`` and flips.

        The draws of :meth:`absclip.methods.batch.BatchContext.augmented` (the image's own generator,
        shared with ZERO and MTA).
        """
        from absclip.core import augment
        from absclip.core.sampling import image_rng

        s = self.settings
        rng = image_rng(seed, item.key, "augment")
        boxes = augment.random_resized_crop_boxes(rng, *item.size, s.views, s.crop_scale, s.crop_ratio)
        return boxes, augment.flips(rng, s.views, s.flip_p)

    def view_embeddings(self, ctx: BatchContext, seed: int) -> list[torch.Tensor]:
        """Return each image's view embeddings ``[1 + views, D]`` (fp32, CPU): the full image, then the views.

        The full image is the model's own preprocessing (the authors' resize + centre crop); each
        view is a random resized crop to the model's input size (bilinear), then a random flip.
        """
        s = self.settings
        return ctx.augmented(seed, s.views, s.crop_scale, s.crop_ratio, s.flip_p)

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        import torch

        views = self.view_embeddings(ctx, seed)
        scale = float(ctx.backbone.logit_scale)
        with ctx.timer("scoring"):
            return torch.stack([awt_scores(v, self.bank.emb, self.bank.mask, scale, self.settings) for v in views])
