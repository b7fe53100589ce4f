"""What a run is given: :class:`RayOptions` (how to run on Ray) and :class:`ClassifierRecipe`
(how every worker builds the same classifier: a :class:`~absclip.api.ClassifierSpec` and the texts
read on the driver, all plain data)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from absclip.api import Classifier, ClassifierSpec
from absclip.errors import AbsclipError
from absclip.text.classes import ClassList


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray. ``None`` means "choose from the cluster's resources" (see :func:`make_plan`).

    Attributes:
        address: ``auto`` (a running cluster), ``ray://HOST:PORT`` (Ray Client), or None (use an
            already connected Ray, ``$RAY_ADDRESS``, or start a local instance).
        actors: encode/score actors.
        cpus_per_actor: logical CPUs per actor; its torch threads are ``ceil(cpus_per_actor)``.
        gpus_per_actor: GPUs per actor (fractions share a GPU).
        attention: ``stage`` (a separate CPU actor pool computes attention and draws; default
            without GPUs) or ``actor`` (inside the encode actors, on their device; default with GPUs).
        attention_actors: actors of the attention stage.
        batch_size: images per encode batch (None: the classifier's batch size).
        decode_batch_size: images per decode/attention batch (None: ``batch_size``).
        retries: retries of a failed batch (an actor that died, or an error raised in it).
        progress: show Ray Data's progress bars.
        fault: test hook, ``exit:N:MARKER`` or ``raise:N:MARKER``: the first encode actor to reach
            its N-th batch while MARKER does not exist creates MARKER and dies (``os._exit``) or raises.
    """

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float | None = None
    gpus_per_actor: float = 0.0
    attention: str | None = None
    attention_actors: int | None = None
    batch_size: int | None = None
    decode_batch_size: int | None = None
    retries: int = 3
    progress: bool = True
    fault: str | None = None

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise AbsclipError(f"`actors` must be at least 1, got {self.actors}.")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise AbsclipError(f"`cpus_per_actor` must be positive, got {self.cpus_per_actor}.")
        if self.gpus_per_actor < 0:
            raise AbsclipError(f"`gpus_per_actor` must be >= 0, got {self.gpus_per_actor}.")
        if self.attention not in (None, "stage", "actor"):
            raise AbsclipError(f"attention placement must be 'stage' or 'actor', got {self.attention!r}.")
        for name in ("batch_size", "decode_batch_size", "attention_actors"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise AbsclipError(f"{name.replace('_', '-')} must be at least 1, got {v}.")


@dataclass
class ClassifierRecipe:
    """How every worker builds the same classifier: a classifier spec plus the classes and texts, all data.

    Texts are read on the driver (:meth:`from_sources`), so workers on other machines never need
    the driver's files; only the model weights must be reachable from every node.

    Attributes:
        spec: the classifier (without classes); :meth:`ClassifierSpec.build` runs once per worker.
        classes: the classes.
        descriptions / descriptors / templates: as for :meth:`Classifier.set_classes`, already read.
    """

    spec: ClassifierSpec
    classes: ClassList
    descriptions: dict[str, list[str]] | None = None
    descriptors: dict[str, list[str]] | None = None
    templates: list[str] | None = None

    @classmethod
    def from_sources(cls, spec: ClassifierSpec, classes: ClassList, descriptions: Any = None,
                     descriptors: Any = None, templates: Any = None, *,
                     descriptions_dir: str | os.PathLike | None = None) -> ClassifierRecipe:
        """Return a recipe with text files (or public set names) read here, as ``set_classes`` reads them."""
        from absclip.text.sources import read_texts

        if not isinstance(spec, ClassifierSpec):
            raise AbsclipError(f"A recipe needs a ClassifierSpec (plain data for the workers), not "
                               f"{type(spec).__name__}.")
        texts = read_texts(descriptions, descriptors, templates, descriptions_dir=descriptions_dir)
        return cls(spec, classes, texts.descriptions, texts.descriptors, texts.templates)

    def classifier(self) -> Classifier:
        """Return a new classifier with the classes and texts set (text not yet encoded)."""
        clf = self.spec.build()
        clf.set_classes(self.classes, self.descriptions, descriptors=self.descriptors, templates=self.templates)
        return clf
