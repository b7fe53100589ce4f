"""Method base class and registry: every method builds its text side once and maps a batch to logits.

Every method builds its text side once (:meth:`Method.prepare`) and then maps a batch to logits
``[B, C]`` (:meth:`Method.logits`). CLI choices and tests come from :func:`list_methods`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from absclip.core.settings import replace_config
from absclip.errors import AbsclipError
from absclip.text import banks as text
from absclip.text.classes import ClassList

if TYPE_CHECKING:  # method modules import torch only inside functions: the CLI's parser reads the registry fast
    import torch

    from absclip.methods.batch import BatchContext
    from absclip.text.encoder import EncodedBank, TextEncoder

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


def settings_types() -> list[type]:
    """Return the distinct settings types of the registered methods, in registration order."""
    out: list[type] = []
    for cls in _REGISTRY.values():
        if cls.settings_type is not None and cls.settings_type not in out:
            out.append(cls.settings_type)
    return out


def unregister_method(name: str) -> None:
    """Remove method ``name`` from the registry (tests and plug-ins that register temporarily)."""
    _REGISTRY.pop(name, None)


def get_method_class(name: str) -> type[Method]:
    """Return the class of method ``name``; unknown names raise with the valid ones listed."""
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
        templates_source: where the templates came from when they were given as the descriptions
            (a ``.txt`` given to ``descriptions``), to say so when they are used as descriptions.
    """

    classes: ClassList
    descriptions: dict[str, list[str]] | None = None
    descriptors: dict[str, list[str]] | None = None
    templates: list[str] | None = None
    seed: int = 0
    templates_source: str | None = None
    _warned: set[str] = field(default_factory=set)

    def fallback(self, what: str) -> list[list[str]]:
        """Return template texts used when ``what`` were not given, saying so once per run."""
        templates = self.templates or [text.DEFAULT_TEMPLATE]
        if what not in self._warned:
            self._warned.add(what)
            if what == "descriptions" and self.templates_source:
                log.warning("%s holds templates, not per-class descriptions; using them (%s) as each class's "
                            "descriptions.", self.templates_source, ", ".join(repr(t) for t in templates[:3]))
                return text.template_bank(self.classes, templates)
            log.warning("No %s file given: using the template(s) %s as each class's %s.",
                        what, ", ".join(repr(t) for t in templates[:3]), what)
        return text.template_bank(self.classes, templates)

    def description_texts(self) -> list[list[str]]:
        """Return per-class description sentences (or the template fallback)."""
        if self.descriptions is None:
            return self.fallback("descriptions")
        return text.match_bank(self.classes, self.descriptions)


class Method:
    """Base class. Subclasses set ``needs_attention`` and implement ``prepare`` and ``logits``.

    A method with settings names their frozen dataclass in ``settings_type``; its instance is
    ``self.settings``. Methods keep only their prepared text side between batches: whatever a
    caller needs besides logits (views, geometry) is returned, never left on the object. The one
    exception is a ``stateful`` (online) method such as TDA: its predictions depend on the images
    before it in the stream, which it remembers until :meth:`reset`. Engines that run one stream
    call :meth:`reset` first and feed the images in one recorded, seeded order
    (:func:`absclip.engines.local.stream_order`); engines that cannot keep one order refuse it.
    """

    name: ClassVar[str] = ""
    needs_attention: ClassVar[bool] = False
    needs_tokens: ClassVar[bool] = False
    #: predictions depend on the earlier images of the stream (state kept across batches until :meth:`reset`)
    stateful: ClassVar[bool] = False
    settings_type: ClassVar[type | None] = None

    def __init__(self, settings: Any = None) -> None:
        if self.settings_type is None:
            if settings is not None:
                raise AbsclipError(f"Method {self.name!r} takes no settings.")
        elif settings is None:
            settings = self.settings_type()
        elif not isinstance(settings, self.settings_type):
            raise AbsclipError(f"Method {self.name!r} takes {self.settings_type.__name__} settings, "
                               f"not {type(settings).__name__}.")
        self.settings = settings
        self.bank: EncodedBank | None = None

    @property
    def token_layer(self) -> int:
        """The image-tower block whose input tokens this method reads (``needs_tokens`` methods)."""
        return int(getattr(self.settings, "feature_layer", -1))

    @classmethod
    def create(cls, settings: Any = None, **fields: Any) -> Method:
        """Return a new instance with ``settings`` (None: defaults) and ``fields`` replaced."""
        if fields:
            if cls.settings_type is None:
                raise AbsclipError(f"Method {cls.name!r} takes no settings; got {', '.join(sorted(fields))}.")
            settings = replace_config(settings if settings is not None else cls.settings_type(), **fields)
        return cls(settings)

    @classmethod
    def summary(cls) -> str:
        """Return the method's one-line description (the first line of its docstring)."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def has_draws(cls) -> bool:
        """Whether the method draws per-image randomness from the attention map (:meth:`draw`).

        A scale-out stage that computes attention maps then computes the draws too, and hands them
        to the method in ``BatchContext.draws[name]``.
        """
        return cls.draw is not Method.draw

    def draw(self, attention: torch.Tensor, size: tuple[int, int], key: str, seed: int,
             attn_grid: tuple[int, int], facts: Any) -> Any:
        """Return one image's random draws from its attention map ``[A]`` (methods with :meth:`has_draws`).

        Args:
            attention: head-averaged attention on the attention grid (row-major).
            size: the image's (width, height).
            key: the image's content key (its random generator's key).
            seed: the run seed.
            attn_grid: (rows, cols) of the attention grid.
            facts: the backbone's :class:`~absclip.backbones.base.BackboneFacts`.
        """
        raise NotImplementedError

    def prepare(self, inputs: TextInputs, encoder: TextEncoder) -> None:
        """Build and encode the text side once (stored on the method)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Start a new stream: forget what a ``stateful`` method learnt from earlier images (others: nothing)."""

    def logits(self, ctx: BatchContext, seed: int) -> torch.Tensor:
        """Return logits ``[B, C]`` for the batch."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor, logit_scale: float) -> torch.Tensor:
        """Return class probabilities ``[B, C]`` (the ``score`` reported to users)."""
        import torch

        return torch.softmax(logits * logit_scale, dim=-1)

    def config(self) -> dict[str, Any]:
        """Return the method's settings (JSON-able) for results provenance."""
        return dataclasses.asdict(self.settings) if self.settings is not None else {}

    @property
    def bank_digest(self) -> str | None:
        """sha256 of the exact texts used (None before :meth:`prepare`)."""
        return self.bank.digest if self.bank is not None else None


def create_method(name: str, settings: Any = None, /, **fields: Any) -> Method:
    """Return a new method instance by registry name.

    Args:
        name: a registered method name (:func:`list_methods`).
        settings: an instance of the method's ``settings_type`` (None: its defaults).
        fields: settings fields to override (unknown names raise; None keeps the value).
    """
    return get_method_class(name).create(settings, **fields)
