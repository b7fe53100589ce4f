"""The Python API: load a model, give it classes (and descriptions), classify images.

Example:
    >>> import absclip                                                      # doctest: +SKIP
    >>> clf = absclip.load("ViT-B-16", pretrained="openai")                 # doctest: +SKIP
    >>> clf.set_classes(["cat", "dog"], descriptions="cupl.json")           # doctest: +SKIP
    >>> clf.classify("photo.jpg", top=2)                                    # doctest: +SKIP
    [{'label': 'cat', 'score': 0.93}, {'label': 'dog', 'score': 0.07}]"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from absclip.attention.factory import load_attention
from absclip.attention.sources import AttentionSource
from absclip.backbones.base import DEFAULT_DEVICE, DEFAULT_PRECISION, Backbone
from absclip.backbones.registry import load_clip
from absclip.errors import AbsclipError
from absclip.io.images import ImageItem, make_item
from absclip.methods.base import Method, TextInputs, create_method, get_method_class
from absclip.methods.batch import BatchContext, default_crop_workers, default_view_batch
from absclip.text.classes import ClassList, load_classes
from absclip.text.encoder import TextEncoder
from absclip.text.sources import Texts, read_texts

ImageLike = str | os.PathLike | Image.Image | ImageItem | np.ndarray


class Classifier:
    """A CLIP backbone, an attention source (loaded when a method needs it) and a class text bank.

    Args:
        backbone: from :func:`absclip.backbones.registry.load_clip`.
        attention_model: ``facebook/dino-vitb16`` (default), a local transformers directory, or
            ``clip`` to use the CLIP model's own last-layer attention.
        settings: method settings, one frozen dataclass instance per settings type (e.g.
            ``[ABSConfig(pixel_crops=20), WCAConfig(crops=30)]``); every method whose
            ``settings_type`` is one of them uses it, the others their defaults (the reference's).
        abs_config / wca_config: shorthands kept for existing callers: more instances for ``settings``.
        seed: run seed; every image draws its crops from (seed, image content).
        batch_size: images per batch (never changes results).
        view_batch: views per image-encoder call (None: 32 on the CPU, where larger batches only
            add activation memory, 256 on a GPU).
        crop_workers: threads making ABS pixel crops (None: one per CPU core, at most 4); never
            changes results.
        text_cache_dir / use_cache: the text-embedding cache folder (None: ``<cache root>/text``,
            :func:`absclip.io.files.cache_root`) and whether to use it.
        attention_rollout: ``mean`` or ``max`` to use attention rollout (that head fusion) as the
            attention source; None (default) uses the single ``attention_layer``.
        sink_threshold: suppress attention-sink tokens above this robust z-score (None: keep them).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        attention_model: str | AttentionSource | None = None,
        settings: Iterable[Any] = (),
        abs_config: Any = None,
        wca_config: Any = None,
        seed: int = 0,
        batch_size: int = 8,
        view_batch: int | None = None,
        crop_workers: int | None = None,
        attention_layer: int = -1,
        text_cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        attention_rollout: str | None = None,
        sink_threshold: float | None = None,
    ) -> None:
        self.backbone = backbone
        self._attention_spec = attention_model
        self._attention: AttentionSource | None = attention_model if isinstance(attention_model, AttentionSource) \
            else None
        self.attention_layer = attention_layer
        self.attention_rollout = attention_rollout
        self.sink_threshold = sink_threshold
        self.settings: dict[type, Any] = {}
        for s in (*settings, abs_config, wca_config):
            if s is None:
                continue
            if not dataclasses.is_dataclass(s) or isinstance(s, type):
                raise AbsclipError(f"Method settings must be dataclass instances, got {s!r}.")
            self.settings[type(s)] = s
        self.seed = int(seed)
        if view_batch is None:
            view_batch = default_view_batch(backbone.device)
        if batch_size < 1 or view_batch < 1:
            raise AbsclipError("`batch_size` must be at least 1.")
        self.batch_size = batch_size
        self.view_batch = view_batch
        self.crop_workers = default_crop_workers() if crop_workers is None else crop_workers
        self.encoder = TextEncoder(backbone, cache_dir=text_cache_dir, use_cache=use_cache)
        self.inputs: TextInputs | None = None
        self._methods: dict[str, Method] = {}

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        pretrained: str | None = None,
        **kwargs: Any,
    ) -> Classifier:
        """Return a classifier for a model (names as :func:`absclip.backbones.registry.load_clip`).

        ``kwargs`` are the fields of :class:`ClassifierSpec` (device, precision, attention_model,
        settings, seed, ...), plus the ``abs_config`` / ``wca_config`` shorthands.
        """
        return ClassifierSpec.of(model, pretrained, **kwargs).build()

    # -- text side -----------------------------------------------------------------------------
    def set_classes(
        self,
        classes: Sequence[str | Sequence[str]] | ClassList | str,
        descriptions: str | os.PathLike | dict[str, list[str]] | None = None,
        *,
        descriptors: str | os.PathLike | dict[str, list[str]] | None = None,
        templates: str | os.PathLike | Sequence[str] | None = None,
        descriptions_dir: str | os.PathLike | None = None,
        texts: Texts | None = None,
    ) -> Classifier:
        """Set the classes and their texts; returns ``self``.

        Args:
            classes: a list of names (or synonym lists), a :class:`ClassList`, or a path to a class file.
            descriptions: CuPL ``{class: [sentences]}`` dict or JSON file. Without it, ABS and the
                description methods use the templates as each class's descriptions.
            descriptors: DCLIP ``{class: [phrases]}`` dict or JSON file (for ``dclip``).
            templates: ``{c}`` templates (list, JSON list, CLIP_benchmark file or .txt) for ``clip-e``
                and the fallback.
            descriptions_dir: local copy of the public description sets named as ``cupl:pets`` etc.
                (default: ``$ABSCLIP_DESCRIPTIONS_DIR``).
            texts: the texts already read (:func:`absclip.text.sources.read_texts`), instead of the
                three above: a caller that checks the user's files before loading a model.

        Files may also be public set names (:func:`absclip.text.sources.read_text_source`).
        """
        if isinstance(classes, ClassList):
            cl = classes
        elif isinstance(classes, (str, os.PathLike)) and Path(classes).suffix and Path(classes).exists():
            cl = load_classes(classes_file=classes)
        elif isinstance(classes, str):
            cl = load_classes(classes=classes)
        else:
            cl = ClassList.from_names(list(classes))
        if texts is None:
            texts = read_texts(descriptions, descriptors, templates, descriptions_dir=descriptions_dir)
        source = texts.descriptions_source if texts.descriptions_are_templates else None
        self.inputs = TextInputs(cl, texts.descriptions, texts.descriptors, texts.templates, seed=self.seed,
                                 templates_source=os.path.basename(source) if source else None)
        self._methods = {}
        return self

    @property
    def classes(self) -> list[str]:
        """The class labels in label order: canonical names, those shared told apart (``ClassList.labels``)."""
        if self.inputs is None:
            raise AbsclipError("No classes set: call set_classes(...) first.")
        return list(self.inputs.classes.labels)

    def method(self, name: str) -> Method:
        """Return the prepared method ``name`` (text side encoded once and kept)."""
        if self.inputs is None:
            raise AbsclipError("No classes set: call set_classes(...) first.")
        if name not in self._methods:
            cls = get_method_class(name)
            m = create_method(name, self.settings.get(cls.settings_type) if cls.settings_type else None)
            m.prepare(self.inputs, self.encoder)
            self._methods[name] = m
        return self._methods[name]

    def prepared_methods(self) -> dict[str, Method]:
        """Return the methods prepared so far, ``{name: method}`` (their text embeddings included)."""
        return dict(self._methods)

    def adopt_methods(self, methods: dict[str, Method]) -> Classifier:
        """Use methods prepared by another process from the same classes and an identical backbone; returns ``self``.

        Scale-out workers receive the text side this way instead of encoding it again.
        """
        if self.inputs is None:
            raise AbsclipError("No classes set: call set_classes(...) first.")
        self._methods.update(methods)
        return self

    @property
    def attention(self) -> AttentionSource:
        """The attention source (loaded on first use)."""
        if self._attention is None:
            self._attention = load_attention(
                self._attention_spec if isinstance(self._attention_spec, str) else None,
                self.backbone, device=self.backbone.device, layer=self.attention_layer,
                rollout=self.attention_rollout, sink_threshold=self.sink_threshold,
            )
        return self._attention

    # -- image side ----------------------------------------------------------------------------
    def context(self, items: list[ImageItem], methods: Iterable[str],
                attention: AttentionSource | None = None, draws: dict[str, Any] | None = None) -> BatchContext:
        """Return a :class:`BatchContext` for a batch, with the attention source if a method needs it.

        ``attention`` replaces the classifier's own source for this batch and ``draws`` gives
        per-image random draws by method (both computed by an earlier scale-out stage).
        """
        methods = list(methods)
        need_attn = any(get_method_class(m).needs_attention for m in methods)
        src = (self.attention if attention is None else attention) if need_attn else None
        layers = {self.method(m).token_layer for m in methods if get_method_class(m).needs_tokens}
        if len(layers) > 1:
            raise AbsclipError(f"Methods of one run must use the same feature layer; got {sorted(layers)}.")
        return BatchContext(items, self.backbone, src, feature_layer=layers.pop() if layers else -1,
                            view_batch=self.view_batch, crop_workers=self.crop_workers, draws=dict(draws or {}))

    def logits_batch(self, items: list[ImageItem], methods: Sequence[str]) -> dict[str, torch.Tensor]:
        """Return ``{method: logits [B, C]}`` for one batch, sharing the full-image work across methods."""
        prepared = {m: self.method(m) for m in methods}
        ctx = self.context(items, methods)
        return {m: meth.logits(ctx, self.seed).float() for m, meth in prepared.items()}

    def logits(self, images: ImageLike | Sequence[ImageLike], method: str = "abs") -> torch.Tensor:
        """Return logits ``[N, C]`` of ``method`` for images (paths or PIL images)."""
        items = [_item(x) for x in _as_list(images)]
        out = [self.logits_batch(items[i : i + self.batch_size], [method])[method]
               for i in range(0, len(items), self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def views(self, images: ImageLike | Sequence[ImageLike], method: str = "abs") -> list[Any]:
        """Return what a view-based method (``abs``, ``abs-fast``) looked at, one record per image.

        Each record holds the attention map, the draws, the pixel boxes, the token windows and the
        view embeddings (:class:`absclip.methods.abs.ABSViews`); the same as classifying computes.
        """
        meth = self.method(method)
        if not hasattr(meth, "views"):
            raise AbsclipError(f"Method {method!r} has no attention-guided views.")
        items = [_item(x) for x in _as_list(images)]
        out: list[Any] = []
        for i in range(0, len(items), self.batch_size):
            out += meth.views(self.context(items[i : i + self.batch_size], [method]), self.seed)
        return out

    def ranked(self, logits: torch.Tensor, method: str, top: int = 5) -> list[list[dict[str, Any]]]:
        """Return, per row of ``logits``, the ``top`` classes as ``[{label, score, logit, index}]``."""
        if top < 1:
            raise AbsclipError(f"`top` must be at least 1, got {top}.")
        probs = self.method(method).probabilities(logits, self.logit_scale, self.backbone.logit_bias)
        k = min(top, logits.shape[-1])
        val, idx = torch.topk(probs, k, dim=-1)
        return [
            [{"label": self.classes[int(i)], "score": float(v), "logit": float(logits[r, int(i)]), "index": int(i)}
             for v, i in zip(val[r], idx[r])]
            for r in range(logits.shape[0])
        ]

    def classify(self, images: ImageLike | Sequence[ImageLike], method: str = "abs", top: int = 5) -> Any:
        """Return ranked ``[{label, score}]`` for one image, or a list of them for a list of images.

        ``score`` is a probability: the softmax of the method's logits (per-view averaged for ABS);
        for SigLIP-family models and cosine-logit methods each class's ``sigmoid(scale * cos + bias)``.
        """
        single = not isinstance(images, (list, tuple))
        res = self.ranked(self.logits(images, method), method, top)
        return res[0] if single else res

    @property
    def logit_scale(self) -> float:
        """The CLIP model's learned logit scale (exp), used to turn cosine logits into probabilities."""
        return self.backbone.logit_scale


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything needed to build a :class:`Classifier` (classes not set), as plain picklable data.

    Scale-out workers receive a spec and call :meth:`build`; the CLI builds one from its options.

    Attributes:
        model / pretrained / device / precision / quick_gelu / weights_dir: as for
            :func:`absclip.backbones.registry.load_clip` (``weights_dir``: downloaded weights).
        attention_model / attention_layer / attention_rollout / sink_threshold: the attention source.
        settings: method settings, one dataclass instance per settings type.
        seed / batch_size / view_batch / crop_workers: as for :class:`Classifier`.
        cache_dir / use_cache: absclip's cache folder (text embeddings under ``text/``; None:
            :func:`absclip.io.files.cache_root`) and whether to use it.
    """

    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    device: str | None = DEFAULT_DEVICE
    precision: str | None = DEFAULT_PRECISION
    quick_gelu: bool | None = None
    weights_dir: str | None = None
    attention_model: str | None = None
    attention_layer: int = -1
    attention_rollout: str | None = None
    sink_threshold: float | None = None
    settings: tuple[Any, ...] = ()
    seed: int = 0
    batch_size: int = 8
    view_batch: int | None = None
    crop_workers: int | None = None
    cache_dir: str | None = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", tuple(self.settings))

    @classmethod
    def of(cls, model: str, pretrained: str | None = None, *, abs_config: Any = None, wca_config: Any = None,
           **fields: Any) -> ClassifierSpec:
        """Return a spec from :func:`load`'s arguments (``abs_config`` / ``wca_config`` join ``settings``)."""
        extra = tuple(s for s in (abs_config, wca_config) if s is not None)
        if extra:
            fields["settings"] = (*fields.get("settings", ()), *extra)
        try:
            return cls(model=model, pretrained=pretrained, **fields)
        except TypeError as e:
            raise AbsclipError(f"Unknown classifier option: {str(e).split('argument', 1)[-1].strip()}.") from e

    def setting(self, settings_type: type) -> Any:
        """Return the spec's instance of ``settings_type`` (None when it has none)."""
        return next((s for s in self.settings if type(s) is settings_type), None)

    def build(self) -> Classifier:
        """Return a new :class:`Classifier` (model loaded, classes not set)."""
        backbone = load_clip(self.model, self.pretrained, device=self.device, precision=self.precision,
                             quick_gelu=self.quick_gelu, weights_dir=self.weights_dir)
        return Classifier(backbone, attention_model=self.attention_model, settings=self.settings, seed=self.seed,
                          batch_size=self.batch_size, view_batch=self.view_batch, crop_workers=self.crop_workers,
                          attention_layer=self.attention_layer,
                          text_cache_dir=os.path.join(self.cache_dir, "text") if self.cache_dir else None,
                          use_cache=self.use_cache, attention_rollout=self.attention_rollout,
                          sink_threshold=self.sink_threshold)


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:  # a numpy array is one image
    return list(images) if isinstance(images, (list, tuple)) else [images]


def _item(x: ImageLike) -> ImageItem:
    return x if isinstance(x, ImageItem) else make_item(x)


def load(model: str, pretrained: str | None = None, **kwargs: Any) -> Classifier:
    """Return a :class:`Classifier`: ``absclip.load("ViT-B-16", "openai", attention_model="clip")``.

    Model names as :func:`absclip.backbones.registry.load_clip`; ``kwargs`` are the fields of
    :class:`ClassifierSpec` (device and precision default to ``auto``), plus the ``abs_config`` /
    ``wca_config`` shorthands.
    """
    return ClassifierSpec.of(model, pretrained, **kwargs).build()


#: the classifier of the last :func:`classify` call, keyed by its spec (one model held at a time)
_PIPELINE: dict[ClassifierSpec, Classifier] = {}
#: ... and the texts its classes were set from
_PIPELINE_TEXTS: dict[ClassifierSpec, str] = {}


def classify(
    images: ImageLike | Sequence[ImageLike],
    candidate_labels: Sequence[str | Sequence[str]],
    *,
    method: str = "abs",
    model: str = "ViT-B-16",
    pretrained: str | None = "openai",
    attention_model: str | None = None,
    descriptions: str | os.PathLike | dict[str, list[str]] | None = None,
    descriptors: str | os.PathLike | dict[str, list[str]] | None = None,
    templates: str | os.PathLike | Sequence[str] | None = None,
    top: int | None = None,
    **options: Any,
) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """Classify images in one call, like a Hugging Face zero-shot image-classification pipeline.

    Example:
        >>> absclip.classify("photo.jpg", candidate_labels=["cat", "dog"])       # doctest: +SKIP
        [{'label': 'cat', 'score': 0.93}, {'label': 'dog', 'score': 0.07}]

    The classifier is loaded on the first call and kept for the next ones with the same model
    options (one at a time); the classes' texts are encoded again only when the labels or texts change.

    Args:
        images: a path, a PIL image, a numpy array (``[H, W, 3]`` uint8 RGB or ``[H, W]`` gray),
            or a list of them.
        candidate_labels: the class names (or synonym lists).
        method: a registered method (``absclip.list_methods()``).
        model / pretrained / attention_model: as for :func:`load`.
        descriptions / descriptors / templates: as for :meth:`Classifier.set_classes`.
        top: how many labels per image (default: all).
        options: more fields of :class:`ClassifierSpec` (device, settings, seed, ...).

    Returns:
        ``[{"label", "score"}]`` best first for one image; a list of those for a list of images.
    """
    spec = ClassifierSpec.of(model, pretrained, attention_model=attention_model, **options)
    clf = _PIPELINE.get(spec)
    if clf is None:
        _PIPELINE.clear()
        _PIPELINE_TEXTS.clear()
        clf = _PIPELINE[spec] = spec.build()
    labels = [x if isinstance(x, str) else list(x) for x in candidate_labels]
    texts = repr((labels, descriptions, descriptors, templates))
    if _PIPELINE_TEXTS.get(spec) != texts:
        clf.set_classes(labels, descriptions, descriptors=descriptors, templates=templates)
        _PIPELINE_TEXTS[spec] = texts
    single = not isinstance(images, (list, tuple))
    ranked = clf.classify(images, method, top=len(clf.classes) if top is None else top)
    rows = [[{"label": r["label"], "score": r["score"]} for r in one] for one in ([ranked] if single else ranked)]
    return rows[0] if single else rows
