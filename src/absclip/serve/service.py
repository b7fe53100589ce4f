"""The model side of the service: one loaded classifier, class sets given per request, batches, pictures.

No web framework here: :class:`Service` takes decoded images and returns ranked labels (or a PNG),
so the local server and the Ray Serve replicas run the same code. Every call runs on one thread
at a time (the batcher's), which is what keeps the shared model and caches simple.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from absclip.errors import AbsclipError

if TYPE_CHECKING:
    from absclip.api import Classifier, ClassifierSpec
    from absclip.io.images import ImageItem
    from absclip.text.sources import Texts

log = logging.getLogger("absclip")

#: class sets given per request whose prepared text side is kept (least recently used dropped first)
DEFAULT_CLASS_SETS = 16

ClassEntry = str | tuple[str, ...]  # a name, or synonyms (first = canonical)


def parse_classes(text: str) -> tuple[ClassEntry, ...]:
    """Return the class entries of a request's ``classes`` field: a JSON list, or names separated by commas/lines.

    A JSON entry may be a list of synonyms. Checking (empty list, duplicates) is left to
    :meth:`absclip.text.classes.ClassList.from_names`, which says what is wrong in one sentence.
    """
    text = text.strip()
    if text.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise AbsclipError(f"`classes` looks like JSON but is not valid JSON ({e.msg}).") from e
        out: list[ClassEntry] = []
        for x in data:
            if isinstance(x, str):
                out.append(x.strip())
            elif isinstance(x, list) and x and all(isinstance(s, str) for s in x):
                out.append(tuple(s.strip() for s in x))
            else:
                raise AbsclipError("`classes` as JSON must be a list of names or of lists of synonyms.")
        return tuple(out)
    return tuple(c.strip() for c in text.replace("\n", ",").split(",") if c.strip())


@dataclass(frozen=True)
class Job:
    """One image to classify: ``classes`` None means the server's own class set."""

    item: ImageItem
    method: str
    top: int
    classes: tuple[ClassEntry, ...] | None = None


class Service:
    """A classifier for the server's classes plus, sharing its model and attention, one per class set asked for.

    Args:
        clf: a classifier with the server's classes set.
        texts: the texts (descriptions, descriptors, templates) of the server; class sets given per
            request use them too.
        class_sets: how many per-request class sets stay prepared (LRU).
        max_batch: images per model call (the classifier's batch size by default).
    """

    def __init__(self, clf: Classifier, texts: Texts, *, class_sets: int = DEFAULT_CLASS_SETS,
                 max_batch: int | None = None) -> None:
        from absclip.methods import list_methods

        self.clf = clf
        self.texts = texts
        self.class_sets = class_sets
        self.max_batch = max_batch or clf.batch_size
        self.methods = list_methods()
        self._sets: OrderedDict[tuple[ClassEntry, ...], Classifier] = OrderedDict()

    @classmethod
    def build(cls, spec: ClassifierSpec, classes: Any, texts: Texts, *, warm: Sequence[str] = ("abs",),
              **kwargs: Any) -> Service:
        """Load the model of ``spec``, set ``classes`` and ``texts``, encode the texts of the ``warm`` methods."""
        clf = spec.build()
        clf.encoder.progress = False
        clf.set_classes(classes, texts=texts)
        for m in warm:
            clf.method(m)
        return cls(clf, texts, **kwargs)

    @property
    def model(self) -> str:
        """The model's name as the backbone reports it."""
        return self.clf.backbone.name

    def classifier(self, classes: tuple[ClassEntry, ...] | None) -> Classifier:
        """Return the classifier of a class set (None: the server's), encoding its texts on first use."""
        if classes is None:
            return self.clf
        hit = self._sets.get(classes)
        if hit is not None:
            self._sets.move_to_end(classes)
            return hit
        from absclip.api import Classifier
        from absclip.text.classes import ClassList

        base = self.clf
        cl = ClassList.from_names([list(c) if isinstance(c, tuple) else c for c in classes])  # empty/duplicates raise
        clf = Classifier(base.backbone, attention_model=base.attention, settings=base.settings.values(),
                         seed=base.seed, batch_size=base.batch_size, view_batch=base.view_batch,
                         crop_workers=base.crop_workers, attention_layer=base.attention_layer,
                         text_cache_dir=base.encoder.cache_dir, use_cache=base.encoder.use_cache,
                         attention_rollout=base.attention_rollout, sink_threshold=base.sink_threshold)
        clf.encoder.progress = False
        clf.set_classes(cl, texts=self.texts)
        self._sets[classes] = clf
        while len(self._sets) > self.class_sets:
            self._sets.popitem(last=False)
        return clf

    def run_batch(self, jobs: Sequence[Job]) -> list[list[dict[str, Any]] | Exception]:
        """Return, per job, its ranked ``[{label, score}]`` or the exception that stopped it (never raises).

        Jobs sharing a class set and a method go through the model together, ``max_batch`` images
        at a time; per-image seeding keeps each answer the one ``absclip classify`` gives.
        """
        out: list[Any] = [None] * len(jobs)
        groups: dict[tuple[Any, str], list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault((j.classes, j.method), []).append(i)
        for (classes, method), idx in groups.items():
            try:
                clf = self.classifier(classes)
                for s in range(0, len(idx), self.max_batch):
                    part = idx[s : s + self.max_batch]
                    logits = clf.logits_batch([jobs[i].item for i in part], [method])[method]
                    ranked = clf.ranked(logits, method, top=max(jobs[i].top for i in part))
                    for i, rows in zip(part, ranked):
                        out[i] = [{"label": r["label"], "score": r["score"]} for r in rows[: jobs[i].top]]
            except Exception as e:  # noqa: BLE001 - handed to each request of the group, which reports it
                if not isinstance(e, AbsclipError):
                    log.exception("classifying a batch failed")
                for i in idx:
                    if out[i] is None:
                        out[i] = e
        return out

    def explain_png(self, job: Job, *, dpi: int = 100) -> bytes:
        """Return the explanation picture (PNG) of ABS's prediction for ``job``'s image and class set."""
        from absclip.diagnostics.explain import explain

        ex = explain(self.classifier(job.classes), job.item, top=job.top)
        return ex.to_png(dpi=dpi)
