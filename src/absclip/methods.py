"""Method registry: ABS and its baselines behind one signature.

Every method builds its text side once (:meth:`Method.prepare`) and then maps a batch to logits
``[B, C]`` (:meth:`Method.logits`). CLI choices and tests come from :func:`list_methods`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from . import scoring, text
from .config import ABSConfig, WCAConfig, fast_abs_config
from .pipeline import BatchContext, abs_views
from .sampling import ABSDraws, draw_wca_boxes, image_rng
from .text import ClassList, EncodedBank, TextEncoder

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    """Return the registered method names, in registration order."""
    return list(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    """Return the class of method ``name``; unknown names raise with the valid ones listed."""
    from .errors import AbsclipError

    if name not in _REGISTRY:
        raise AbsclipError(f"Unknown method {name!r}; choose from {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


@dataclass
class TextInputs:
    """What the user gave for the text side. ``None`` means "not given".

    Attributes:
        classes: class names in label order.
        descriptions: CuPL-style ``{class: [sentences]}``.
        descriptors: DCLIP-style ``{class: [phrases]}``.
        templates: ``{c}`` templates (clip-e, and the fallback of description methods).
        seed: run seed (WaffleCLIP's random descriptors).
    """

    classes: ClassList
    descriptions: dict[str, list[str]] | None = None
    descriptors: dict[str, list[str]] | None = None
    templates: list[str] | None = None
    seed: int = 0
    _warned: set[str] = field(default_factory=set)

    def fallback(self, what: str) -> list[list[str]]:
        """Return template texts used when ``what`` were not given, saying so once per run."""
        templates = self.templates or [text.DEFAULT_TEMPLATE]
        if what not in self._warned:
            self._warned.add(what)
            log.warning("No %s file given: using the template(s) %s as each class's %s.",
                        what, ", ".join(repr(t) for t in templates[:3]), what)
        return text.template_bank(self.classes, templates)

    def description_texts(self) -> list[list[str]]:
        """Return per-class description sentences (or the template fallback)."""
        if self.descriptions is None:
            return self.fallback("descriptions")
        return text.match_bank(self.classes, self.descriptions)


class Method:
    """Base class. Subclasses set ``needs_attention`` and implement ``prepare`` and ``logits``."""

    name: ClassVar[str] = ""
    needs_attention: ClassVar[bool] = False
    needs_tokens: ClassVar[bool] = False

    def __init__(self, **settings: Any) -> None:
        if settings:
            raise TypeError(f"{type(self).__name__} takes no settings; got {sorted(settings)}")
        self.bank: EncodedBank | None = None

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        """Build and encode the text side once (stored on the method)."""
        raise NotImplementedError

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        """Return logits ``[B, C]`` for the batch."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor, logit_scale: float) -> torch.Tensor:
        """Return class probabilities ``[B, C]`` (the ``score`` reported to users)."""
        return torch.softmax(logits * logit_scale, dim=-1)

    def config(self) -> dict[str, Any]:
        """Return the method's settings (JSON-able) for results provenance."""
        return {}

    @property
    def bank_digest(self) -> str | None:
        """sha256 of the exact texts used (None before :meth:`prepare`)."""
        return self.bank.digest if self.bank is not None else None


class _ClassifierHead(Method):
    """Zero-shot head: mean of each class's text embeddings; logits = cosine with the full image."""

    classifier: torch.Tensor

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        raise NotImplementedError

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        self.bank = encoder.encode_bank(self.texts(inputs))
        self.classifier = scoring.masked_mean_classifier(self.bank.emb, self.bank.mask)

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
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

    def __init__(self, count: int = 15) -> None:
        super().__init__()
        self.count = count

    def texts(self, inputs: TextInputs) -> list[list[str]]:
        return text.waffle_bank(inputs.classes, text.tokenizer_vocabulary(), count=self.count, seed=inputs.seed)

    def config(self) -> dict[str, Any]:
        return {"count": self.count}


@register_method("wca")
class WCAMethod(Method):
    """WCA: the full image and random square crops, weighted by similarity, against weighted descriptions."""

    def __init__(self, config: WCAConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or WCAConfig()

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        self.bank = encoder.encode_bank(inputs.description_texts(), self.cfg.max_descriptions)
        self.prompt = encoder.encode([text.fill_template(text.DEFAULT_TEMPLATE, n) for n in inputs.classes.names])

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        bb = ctx.backbone
        crops, counts = [], []
        for item in ctx.items:
            boxes = draw_wca_boxes(image_rng(seed, item.key, "wca"), self.cfg, *item.size)
            crops += [bb.preprocess(item.image.crop(b)) for b in boxes]
            counts.append(len(boxes))
        emb = ctx.encode_crops(crops)
        full = ctx.full.cpu()
        out, off = [], 0
        for b, n in enumerate(counts):
            views = torch.cat([full[b : b + 1], emb[off : off + n]]).unsqueeze(0)
            off += n
            out.append(scoring.wca_logits(views, full[b : b + 1], self.bank.emb, self.bank.mask, self.prompt,
                                          self.cfg.image_weight_scale, self.cfg.text_weight_scale))
        return torch.cat(out)

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)


@register_method("abs")
class ABSMethod(Method):
    """ABS: attention-guided pixel and feature crops, soft-matched against descriptions (spec §1–§6)."""

    needs_attention = True
    needs_tokens = True

    def __init__(self, config: ABSConfig | None = None) -> None:
        super().__init__()
        self.cfg = config or ABSConfig()
        self.last_views: list[Any] = []

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        self.bank = encoder.encode_bank(inputs.description_texts(), self.cfg.max_descriptions)

    def logits(self, ctx: BatchContext, seed: int, draws: Sequence[ABSDraws | None] | None = None) -> torch.Tensor:
        """Return logits ``[B, C]``; ``draws`` injects per-image crop draws computed elsewhere (None: draw here)."""
        vs = abs_views(ctx, self.cfg, seed, draws)
        self.last_views = vs
        with ctx.timer("scoring"):
            emb = torch.stack([v.embeddings for v in vs])  # [B, V, D]
            return scoring.soft_match_logits(emb, self.bank.emb, self.bank.mask, self.cfg.score_temperature)

    def probabilities(self, logits: torch.Tensor, logit_scale: float) -> torch.Tensor:
        # ABS logits are sums over V views of scores in units of 1/tau: average per view first
        views = max(1, self.cfg.pixel_crops + self.cfg.feature_crops)
        return torch.softmax(logits / views, dim=-1)

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)


@register_method("abs-fast")
class ABSFastMethod(ABSMethod):
    """ABS fast mode (changes results): at most 16 pixel crops, each keeping half its tokens by attention."""

    def __init__(self, config: ABSConfig | None = None) -> None:
        super().__init__(fast_abs_config(config or ABSConfig()))


def create_method(name: str, *, abs_config: ABSConfig | None = None, wca_config: WCAConfig | None = None) -> Method:
    """Return a new method instance by registry name, with its config where it has one."""
    cls = get_method_class(name)
    if issubclass(cls, ABSMethod):
        return cls(abs_config)
    if cls is WCAMethod:
        return WCAMethod(wca_config)
    return cls()
