"""Scale-out engine: ``absclip eval/label --engine ray`` on a Ray cluster, through Ray Data.

This is the only module that imports Ray (lazily: ``import absclip.scaleout`` works without it,
and running without it raises one sentence naming the ``absclip[ray]`` extra). There is no
scheduler, queue or worker pool of our own; the job is one Ray Data pipeline:

1. **listing** — a folder, or a CSV/TSV/JSONL/Parquet listing of paths (with labels for eval),
   read with Ray Data's readers, so ``s3://``, ``gs://`` and ``hdfs://`` work wherever pyarrow's
   filesystems reach; images already in the output are dropped (``--resume``).
2. **decode** (CPU map task) — read and decode each image exactly as the local engine does
   (:func:`absclip.data.decode_image`), content key; unreadable images become rows with a reason.
3. **attention** (CPU actor pool, when a method needs an attention model other than CLIP's own) —
   the attention maps and, for ABS, each image's crop draws from its own generator
   ``image_rng(seed, image key, "abs")`` (:func:`absclip.pipeline.abs_geometry`).
4. **encode + score** (actor pool) — actors load the model once and receive the text side
   prepared once by a single task (never encoded per actor or per batch), then run
   :func:`absclip.evaluate.predict_batch`, the same function the local engine calls.
5. **write** — one Parquet row per (image, method) (:data:`absclip.labelling.ROW_FIELDS`).

Every random draw is seeded per image by content, so predictions do not depend on the number
of actors, blocks or the batch size. Dead actors are restarted and their batch retried by Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .api import Classifier
from .config import ABSConfig
from .data import IMAGE_EXTENSIONS, LISTING_NAMES, listing_columns
from .errors import AbsclipError, BadImageError
from .models import AttentionSource
from .text import ClassList

log = logging.getLogger(__name__)

RAY_HINT = "Ray is not installed; install the extra with pip install 'absclip[ray]'."
LISTING_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
#: logical CPUs reserved by the light stages (decode, write) and by one attention actor
DECODE_CPUS = 0.25
WRITE_CPUS = 0.1
ATTENTION_CPUS = 0.25


def import_ray() -> Any:
    """Return the ``ray`` module (with Ray Data loaded); raise :class:`AbsclipError` naming the extra if missing."""
    try:
        import pyarrow  # noqa: F401
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise AbsclipError(RAY_HINT) from e
    return ray


# -----------------------------------------------------------------------------------------------
# Options and the resolved plan
# -----------------------------------------------------------------------------------------------


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
            raise AbsclipError(f"--actors must be at least 1, got {self.actors}.")
        if self.cpus_per_actor is not None and self.cpus_per_actor <= 0:
            raise AbsclipError(f"--cpus-per-actor must be positive, got {self.cpus_per_actor}.")
        if self.gpus_per_actor < 0:
            raise AbsclipError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}.")
        if self.attention not in (None, "stage", "actor"):
            raise AbsclipError(f"attention placement must be 'stage' or 'actor', got {self.attention!r}.")
        for name in ("batch_size", "decode_batch_size", "attention_actors"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise AbsclipError(f"{name.replace('_', '-')} must be at least 1, got {v}.")


@dataclass(frozen=True)
class Plan:
    """Resolved actor counts, resources and batch sizes of one run (printed at start)."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads_per_actor: int
    attention_stage: bool
    attention_actors: int
    batch_size: int
    decode_batch_size: int
    cluster_cpus: float
    cluster_gpus: float

    def describe(self) -> str:
        """Return one line: the knobs and their values."""
        gpu = f", {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        att = f"attention stage {self.attention_actors} actor(s) x {ATTENTION_CPUS:g} CPU" if self.attention_stage \
            else "attention in the actors (if needed)"
        return (f"ray: {self.actors} actor(s) x ({self.cpus_per_actor:g} CPU{gpu}, {self.threads_per_actor} torch "
                f"thread(s)); {att}; batch {self.batch_size}, decode batch {self.decode_batch_size}; cluster "
                f"{self.cluster_cpus:g} CPU, {self.cluster_gpus:g} GPU")


def make_plan(options: RayOptions, cluster_cpus: float, cluster_gpus: float, *, batch_size: int,
              attention_separable: bool, fixed: bool = False) -> Plan:
    """Return the plan for ``options`` on a cluster with these resources (defaults filled in).

    Defaults: with GPUs, one actor per ``gpus_per_actor`` share of the cluster's GPUs and the
    attention inside the actors; without, 1 CPU per actor, attention in a CPU stage and as many
    actors as fit next to the light stages. ``attention_separable`` is False for CLIP's own
    attention, which always runs inside the actors.

    Raises:
        AbsclipError: the plan does not fit a ``fixed`` cluster (one that cannot grow, such as the
            local instance absclip started), where Ray Data would wait for resources forever.
    """
    gpus = float(options.gpus_per_actor or 0.0)
    cpus = float(options.cpus_per_actor or 1.0)
    placement = options.attention or ("actor" if gpus else "stage")
    stage = placement == "stage" and attention_separable
    att_actors = (options.attention_actors or 1) if stage else 0
    light = DECODE_CPUS + WRITE_CPUS + att_actors * ATTENTION_CPUS
    if options.actors is not None:
        actors = options.actors
    elif gpus:
        actors = max(1, int(cluster_gpus // gpus))
    else:
        actors = max(1, int((cluster_cpus - light) // cpus))
    problems = []
    if actors * cpus + light > cluster_cpus + 1e-9:
        problems.append(f"{actors} actor(s) x {cpus:g} CPU plus {light:g} CPU for the decode/attention/write stages "
                        f"exceed the cluster's {cluster_cpus:g} CPUs (fractions such as --cpus-per-actor 0.5 work)")
    if gpus and actors * gpus > cluster_gpus + 1e-9:
        problems.append(f"{actors} actor(s) x {gpus:g} GPU exceed the cluster's {cluster_gpus:g} GPUs")
    if problems and fixed:
        raise AbsclipError("; ".join(problems) + "; lower --actors or the per-actor resources.")
    for p in problems:
        log.warning("%s; the run waits for resources unless the cluster grows.", p)
    bs = options.batch_size or batch_size
    return Plan(actors, cpus, gpus, max(1, math.ceil(cpus)), stage, att_actors, bs, options.decode_batch_size or bs,
                float(cluster_cpus), float(cluster_gpus))


# -----------------------------------------------------------------------------------------------
# What every worker needs to build the same classifier
# -----------------------------------------------------------------------------------------------


@dataclass
class ClassifierRecipe:
    """How every worker builds the same classifier: a picklable loader plus the classes and texts as data.

    Texts are read on the driver (:meth:`from_sources`), so workers on other machines never need
    the driver's files; only the model weights must be reachable from every node.

    Attributes:
        build: returns a :class:`Classifier` without classes (e.g. ``functools.partial(
            absclip.cli.build_classifier, args)``); called once per worker.
        classes: the classes.
        descriptions / descriptors / templates: as for :meth:`Classifier.set_classes`, already read.
    """

    build: Callable[[], Classifier]
    classes: ClassList
    descriptions: dict[str, list[str]] | None = None
    descriptors: dict[str, list[str]] | None = None
    templates: list[str] | None = None

    @classmethod
    def from_sources(cls, build: Callable[[], Classifier], classes: ClassList, descriptions: Any = None,
                     descriptors: Any = None, templates: Any = None) -> ClassifierRecipe:
        """Return a recipe with text files (or public set names) read here, as ``set_classes`` reads them."""
        from .text import read_text_source

        def read(src: Any) -> Any:
            return read_text_source(src) if isinstance(src, (str, os.PathLike)) else src

        desc, dscr, tmpl = read(descriptions), read(descriptors), read(templates)
        if isinstance(tmpl, dict):
            raise AbsclipError(f"{templates} holds per-class descriptions, not templates.")
        if isinstance(dscr, list):
            raise AbsclipError(f"{descriptors} holds templates, not per-class descriptors.")
        if isinstance(desc, list):  # a template file given as --descriptions: the templates become the descriptions
            tmpl, desc = tmpl or desc, None
        return cls(build, classes, desc, dscr, list(tmpl) if tmpl is not None else None)

    def classifier(self) -> Classifier:
        """Return a new classifier with the classes and texts set (text not yet encoded)."""
        clf = self.build()
        clf.set_classes(self.classes, self.descriptions, descriptors=self.descriptors, templates=self.templates)
        return clf


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


def prepare_text(recipe: ClassifierRecipe, methods: Sequence[str], top: int,
                 threads: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(meta, prepared methods)``: the run spec and facts, and every method with its text encoded.

    Runs once per job (as a Ray task with the actors' resources, so the text is encoded on the
    same kind of device and precision as the images).
    """
    from .attention_maps import HFLayeredAttention
    from .evaluate import run_spec
    from .models import HFAttention

    _set_threads(threads)
    clf = recipe.classifier()
    spec = run_spec(clf, methods, top)
    prepared = clf.prepared_methods()
    att: dict[str, Any] | None = None
    if spec["attention"] is not None:
        src = clf.attention
        base = src.base if isinstance(src, HFLayeredAttention) else src
        att = {"identity": src.identity, "grid": tuple(src.grid), "separable": isinstance(base, HFAttention),
               "name": base.name, "layer": getattr(base, "layer", -1), "rollout": clf.attention_rollout,
               "sink_threshold": clf.sink_threshold}
    # the CPU stage draws the crops of the first ABS-like method; others draw in the actors (same generator)
    abs_name = next((n for n, m in prepared.items() if isinstance(getattr(m, "cfg", None), ABSConfig)
                     and m.needs_attention), None)
    meta = {
        "spec": spec, "model": clf.backbone.name, "pretrained": clf.backbone.pretrained, "attention": att,
        "abs_method": abs_name, "abs_config": prepared[abs_name].cfg if abs_name else None,
        "clip_grid": tuple(clf.backbone.facts.grid), "clip_input": int(clf.backbone.facts.image_size[0]),
        "seed": clf.seed, "batch_size": clf.batch_size, "device": str(clf.backbone.device),
    }
    return meta, prepared


# -----------------------------------------------------------------------------------------------
# Pipeline stages (run in Ray workers; plain functions and classes, testable without Ray)
# -----------------------------------------------------------------------------------------------

_FILESYSTEMS: dict[str, Any] = {}


def split_uri(uri: str) -> tuple[Any, str, str]:
    """Return ``(pyarrow filesystem, path inside it, prefix)`` so that ``prefix + path`` is the URI again.

    Local paths (no ``scheme://``) get the local filesystem, an absolute path and an empty prefix.
    """
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri), ""
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises several types for unknown schemes or bad URIs
        raise AbsclipError(f"{uri}: pyarrow cannot open this URI ({str(e).splitlines()[0]}).") from e
    prefix = uri[: len(uri) - len(path)] if uri.endswith(path) else uri.split("://", 1)[0] + "://"
    return fs, path, prefix


def read_bytes(path: str) -> bytes:
    """Return the bytes of a local file or a pyarrow-reachable URI; a missing file raises :class:`BadImageError`.

    Other I/O errors propagate, so that Ray retries a transient failure instead of skipping the image.
    """
    from .data import read_image_bytes

    if "://" not in path:
        return read_image_bytes(path)
    scheme, rest = path.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}"  # one filesystem object per scheme and bucket/host
    if key not in _FILESYSTEMS:
        fs, _, prefix = split_uri(path)
        _FILESYSTEMS[key] = (fs, prefix)
    fs, prefix = _FILESYSTEMS[key]
    inner = path[len(prefix):]
    try:
        with fs.open_input_file(inner) as f:
            return f.read()
    except FileNotFoundError as e:
        raise BadImageError(f"{path}: no such file.") from e
    except IsADirectoryError as e:
        raise BadImageError(f"{path}: is a directory, not an image.") from e


def decode_images(batch: Any, max_pixels: int | None = None) -> Any:
    """Decode a batch of listed images: pyarrow table ``(path, label)`` → ``(path, label, key, width, height,
    image, skip_reason)``; ``image`` is the RGB pixels as bytes (``H*W*3``), empty for a skipped image."""
    import pyarrow as pa

    from .data import DEFAULT_MAX_PIXELS, decode_image, image_key

    cols: dict[str, list[Any]] = {k: [] for k in ("path", "label", "key", "width", "height", "image", "skip_reason")}
    for path, label in zip(batch.column("path").to_pylist(), batch.column("label").to_pylist()):
        try:
            im = decode_image(read_bytes(path), path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
            row = (image_key(im), im.width, im.height, im.tobytes(), None)
        except BadImageError as e:
            row = (None, 0, 0, b"", str(e))
        for k, v in zip(("path", "label", "key", "width", "height", "image", "skip_reason"), (path, label, *row)):
            cols[k].append(v)
    return pa.table({
        "path": pa.array(cols["path"], pa.string()), "label": pa.array(cols["label"], pa.int64()),
        "key": pa.array(cols["key"], pa.string()), "width": pa.array(cols["width"], pa.int64()),
        "height": pa.array(cols["height"], pa.int64()), "image": pa.array(cols["image"], pa.binary()),
        "skip_reason": pa.array(cols["skip_reason"], pa.string()),
    })


def _items(batch: Any) -> tuple[list[int], list[Any]]:
    """Return (row indices, :class:`ImageItem` list) of the decoded (not skipped) rows of a batch."""
    from PIL import Image

    from .data import ImageItem

    rows, items = [], []
    cols = batch.select(["path", "key", "width", "height", "image", "skip_reason"]).to_pydict()
    for i, reason in enumerate(cols["skip_reason"]):
        if reason is None:
            im = Image.frombytes("RGB", (cols["width"][i], cols["height"][i]), cols["image"][i])
            rows.append(i)
            items.append(ImageItem(im, cols["key"][i], cols["path"][i]))
    return rows, items


DRAW_FIELDS = ("pix_pos", "pix_w", "pix_h", "feat_pos", "feat_size")


class AttentionMaps:
    """CPU stage: attention maps ``[A]`` and ABS crop draws per image (adds columns ``attention`` and draws).

    Loads the attention model once per actor, on the CPU; checks it is the model the run was
    planned with (same identity).
    """

    def __init__(self, attention: dict[str, Any], abs_config: ABSConfig | None, seed: int,
                 clip_grid: tuple[int, int], clip_input: int, threads: int = 1) -> None:
        from .models import load_attention

        _set_threads(threads)
        self.src = load_attention(attention["name"], None, device="cpu", layer=attention["layer"],  # type: ignore[arg-type]
                                  rollout=attention["rollout"], sink_threshold=attention["sink_threshold"])
        if self.src.identity != attention["identity"]:
            raise AbsclipError(f"The attention model loaded on this worker ({self.src.identity}) differs from the "
                               f"planned one ({attention['identity']}); every node needs the same files.")
        self.cfg, self.seed, self.clip_grid, self.clip_input = abs_config, seed, tuple(clip_grid), clip_input

    def __call__(self, batch: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        from .pipeline import abs_geometry
        from .sampling import image_rng

        n = batch.num_rows
        rows, items = _items(batch)
        maps: list[list[float]] = [[] for _ in range(n)]
        draws: dict[str, list[list[int]]] = {f: [[] for _ in range(n)] for f in DRAW_FIELDS}
        if items:
            att = self.src([it.image for it in items])  # [B, A] fp32
            for b, (r, it) in enumerate(zip(rows, items)):
                maps[r] = att[b].numpy().astype(np.float32).tolist()
                if self.cfg is not None:
                    w, h = it.size
                    d = abs_geometry(att[b], None, self.cfg, w, h, self.src.grid, self.clip_grid, self.clip_input,
                                     image_rng(self.seed, it.key, "abs"))[2]
                    for f in DRAW_FIELDS:
                        draws[f][r] = np.asarray(getattr(d, f), dtype=np.int64).tolist()
        out = batch.append_column("attention", pa.array(maps, pa.list_(pa.float32())))
        for f in DRAW_FIELDS:
            out = out.append_column(f, pa.array(draws[f], pa.list_(pa.int64())))
        return out


class GivenAttention(AttentionSource):
    """Attention maps computed by an earlier stage, served to one batch's :class:`BatchContext`.

    Args:
        maps: ``[B, A]`` head-averaged CLS→patch attention of the batch's images (fp32, CPU).
        grid / identity / name: those of the source that computed them.
    """

    def __init__(self, maps: Any, grid: tuple[int, int], identity: str, name: str = "attention") -> None:
        self.maps, self.grid, self.identity, self.name = maps, tuple(grid), identity, name

    def __call__(self, images: list[Any]) -> Any:
        """Return the given ``[B, A]`` maps (``images`` must be the batch they were computed for)."""
        if len(images) != self.maps.shape[0]:
            raise RuntimeError(f"{len(images)} images but {self.maps.shape[0]} attention maps")
        return self.maps

    def heads(self, images: list[Any]) -> Any:
        """Per-head maps are not kept by the stage; only the head mean is served."""
        raise NotImplementedError("GivenAttention serves head-averaged maps only")


def row_schema() -> Any:
    """Return the Parquet schema of prediction rows (:data:`absclip.labelling.ROW_FIELDS`)."""
    import pyarrow as pa

    from .labelling import ROW_FIELDS

    types = {
        "path": pa.string(), "label": pa.int64(), "method": pa.string(), "pred": pa.int64(),
        "pred_label": pa.string(), "score": pa.float64(), "topk": pa.list_(pa.int64()),
        "topk_labels": pa.list_(pa.string()), "topk_scores": pa.list_(pa.float64()),
        "topk_logits": pa.list_(pa.float64()), "seed": pa.int64(), "key": pa.string(), "skip_reason": pa.string(),
        "run": pa.string(), "attempt": pa.string(), "seconds": pa.float64(),
    }
    return pa.schema([(f, types[f]) for f in ROW_FIELDS])


class EncodeAndScore:
    """Actor stage: encode images and score them with every method; returns prediction rows.

    The model is loaded once per actor; the text side arrives prepared (``methods``, an object
    reference or the dict itself) and is never encoded here.
    """

    def __init__(self, recipe: ClassifierRecipe, methods: Any, meta: dict[str, Any], method_names: Sequence[str],
                 top: int, attempt: str, threads: int = 1, fault: str | None = None) -> None:
        _set_threads(threads)
        try:
            import ray

            if isinstance(methods, ray.ObjectRef):
                methods = ray.get(methods)
        except ImportError:  # used without Ray (tests)
            pass
        self.clf = recipe.classifier().adopt_methods(methods)
        if self.clf.backbone.identity != meta["spec"]["backbone"]:
            raise AbsclipError(f"This worker loaded a different model ({self.clf.backbone.identity}) from the one "
                               f"the text was encoded with ({meta['spec']['backbone']}); every node needs the same "
                               "weights.")
        self.meta, self.methods, self.top, self.attempt = meta, list(method_names), top, attempt
        from .evaluate import run_id_for

        self.run_id = run_id_for(meta["spec"])
        self.fault = fault
        self.calls = 0

    def _maybe_fault(self) -> None:
        if not self.fault:
            return
        kind, n, marker = self.fault.split(":", 2)
        if self.calls != int(n) or os.path.exists(marker):
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        if kind == "exit":
            log.warning("fault injection: actor process %d exits on its batch %d", os.getpid(), self.calls)
            os._exit(1)
        raise RuntimeError(f"fault injection: error raised on batch {self.calls}")

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import torch

        from .evaluate import predict_batch
        from .labelling import prediction_rows
        from .sampling import ABSDraws

        self.calls += 1
        self._maybe_fault()
        clf, methods = self.clf, self.methods
        rows_idx, items = _items(batch)
        cols = batch.select(["path", "label", "skip_reason"]).to_pydict()
        common = {"seed": clf.seed, "run": self.run_id, "attempt": self.attempt, "top": self.top}
        ranked: dict[str, list[Any]] = {}
        share: dict[str, float] = {}
        if items:
            given, draws = None, None
            if "attention" in batch.column_names:
                att = batch.column("attention").to_pylist()
                info = self.meta["attention"]
                given = GivenAttention(torch.tensor([att[r] for r in rows_idx], dtype=torch.float32), info["grid"],
                                       info["identity"], info["name"])
                if self.meta["abs_method"] is not None:
                    import numpy as np

                    d = {f: batch.column(f).to_pylist() for f in DRAW_FIELDS}
                    draws = {self.meta["abs_method"]: [ABSDraws(*(np.asarray(d[f][r], dtype=np.int64)
                                                                  for f in DRAW_FIELDS)) for r in rows_idx]}
            ctx = clf.context(items, methods, attention=given)
            ranked, secs = predict_batch(clf, ctx, methods, self.top, draws=draws)
            share = {m: s / len(items) for m, s in secs.items()}
        out: list[dict[str, Any]] = []
        pos = {r: b for b, r in enumerate(rows_idx)}
        for i, path in enumerate(cols["path"]):
            label = cols["label"][i]
            if i in pos:
                b = pos[i]
                out += prediction_rows(path, label, items[b].key, {m: ranked[m][b] for m in methods}, methods,
                                       seconds=share, **common)
            else:
                out += prediction_rows(path, label, None, None, methods, skip_reason=cols["skip_reason"][i], **common)
        return pa.Table.from_pylist(out, schema=row_schema())


# -----------------------------------------------------------------------------------------------
# Listing, output folder, driver
# -----------------------------------------------------------------------------------------------


def resolve_labels(batch: Any, image_column: str, label_column: str | None, base: str,
                   classes: ClassList | None, where: str) -> Any:
    """Map a listing table to ``(path, label)``: paths resolved against ``base``, labels to class indices."""
    from .data import label_index, resolve_listed_path

    paths = [resolve_listed_path(base, str(v)) for v in batch.column(image_column).to_pylist()]
    if label_column is None or classes is None:
        labels: list[int | None] = [None] * len(paths)
    else:
        labels = [label_index(v, classes, f"{where} ({p})")
                  for v, p in zip(batch.column(label_column).to_pylist(), paths)]
    return _path_label_table(paths, labels)


def _csv_header(fs: Any, path: str, delimiter: str) -> list[str]:
    import csv
    import io

    with fs.open_input_stream(path) as f:
        head = f.read(1 << 16).decode("utf-8-sig", errors="replace")
    return next(csv.reader(io.StringIO(head.splitlines()[0] if head else ""), delimiter=delimiter), [])


def read_listing(data: str, *, classes: ClassList | None, image_column: str | None = None,
                 label_column: str | None = None, limit: int | None = None) -> Any:
    """Return the images to process as a pyarrow table ``(path, label)``, in listing order.

    ``data`` is a folder (its ``labels.*`` listing, else its images: for eval an ImageFolder tree
    ``DIR/<class>/...``) or a CSV/TSV/JSONL/Parquet listing; local path or URI. Listings are read
    with Ray Data's readers; paths and labels are resolved here (a listing is small next to its
    images). ``classes`` None means unlabelled (``label`` null). ``limit`` keeps the first N rows.

    Raises:
        AbsclipError: a missing path, unknown columns or labels, no images.
    """
    ray = import_ray()
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs

    from .data import label_index

    fs, root, prefix = split_uri(data)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise AbsclipError(f"Data path {data} does not exist.")
    listing = None
    if info.type == pafs.FileType.Directory:
        for name in (*LISTING_NAMES, "labels.parquet"):
            if fs.get_file_info(f"{root.rstrip('/')}/{name}").type == pafs.FileType.File:
                listing = f"{root.rstrip('/')}/{name}"
                break
    elif root.lower().endswith(LISTING_SUFFIXES):
        listing = root
    elif classes is None and root.lower().endswith(IMAGE_EXTENSIONS):
        return _path_label_table([prefix + root], [None])
    else:
        raise AbsclipError(f"{data}: expected a folder or a {'/'.join(LISTING_SUFFIXES)} listing.")

    if listing is None:  # a folder of images
        files = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        paths, labels = [], []
        for p in sorted(f.path for f in files if f.type == pafs.FileType.File
                        and f.path.lower().endswith(IMAGE_EXTENSIONS)):
            rel = p[len(root.rstrip("/")) + 1:]
            if classes is None:
                paths.append(prefix + p)
                labels.append(None)
            elif "/" in rel:  # ImageFolder: the first folder below DATA names the class
                cls_name = rel.split("/", 1)[0]
                paths.append(prefix + p)
                labels.append(label_index(cls_name, classes, f"folder {cls_name}"))
        if not paths:
            hint = "" if classes is None else " in class sub-folders, and it has no labels.csv"
            raise AbsclipError(f"No images found under {data}{hint}.")
        table = _path_label_table(paths, labels)
        return table if limit is None else table.slice(0, limit)

    uri = prefix + listing
    low = listing.lower()
    ctx = ray.data.DataContext.get_current()
    old_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # rows in file order (--limit keeps the first N)
    try:
        if low.endswith((".csv", ".tsv")):
            delim = "\t" if low.endswith(".tsv") else ","
            # every column as text, as Python's csv module reads it for the local engine
            types = dict.fromkeys(_csv_header(fs, listing, delim), "string")
            ds = ray.data.read_csv(uri, parse_options=pacsv.ParseOptions(delimiter=delim),
                                   convert_options=pacsv.ConvertOptions(column_types=types))
        elif low.endswith((".jsonl", ".json")):
            ds = ray.data.read_json(uri, lines=low.endswith(".jsonl"))
        else:
            ds = ray.data.read_parquet(uri)
        blocks = [b for b in _unwrapped(lambda: ray.get(ds.to_arrow_refs())) if b.num_rows]
    finally:
        ctx.execution_options.preserve_order = old_order
    if not blocks:
        raise AbsclipError(f"The listing {uri} has no rows.")
    raw = pa.concat_tables(blocks, promote_options="permissive")
    if limit is not None:
        raw = raw.slice(0, limit)
    icol, lcol = listing_columns(raw.column_names, uri, image_column, label_column, labelled=classes is not None)
    return resolve_labels(raw, icol, lcol, uri.rsplit("/", 1)[0] if "/" in uri else ".", classes,
                          os.path.basename(listing))


def _path_label_table(paths: list[str], labels: list[int | None]) -> Any:
    import pyarrow as pa

    return pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.int64())})


def _find_absclip_error(e: BaseException) -> AbsclipError | None:
    """Return the :class:`AbsclipError` behind ``e``, looking through Ray's wrappers (which carry a traceback)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, AbsclipError) and not hasattr(x, "traceback_str"):
            return x
        stack += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return None


def _unwrapped(fn: Callable[[], Any]) -> Any:
    """Call ``fn``; an :class:`AbsclipError` raised in a Ray worker comes back as itself (one sentence)."""
    try:
        return fn()
    except Exception as e:
        inner = _find_absclip_error(e)
        if inner is e:
            raise
        if inner is not None:
            raise type(inner)(str(inner)) from e
        raise


@dataclass
class OutputDir:
    """A folder of Parquet prediction shards (local path or URI) plus ``_run.json``."""

    uri: str

    def __post_init__(self) -> None:
        self.fs, self.root, self.prefix = split_uri(self.uri)

    def shards(self) -> list[str]:
        """Return the Parquet files in the folder (paths inside its filesystem), sorted."""
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return []
        files = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(f.path for f in files if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                      and not os.path.basename(f.path).startswith((".", "_")))

    def read(self, columns: Sequence[str] | None = None, *, drop_broken: bool = False) -> Any:
        """Return all rows as one pyarrow table (``columns`` only). A shard that cannot be read (torn by a
        kill) is deleted when ``drop_broken`` (its images are then predicted again), else raises."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for f in self.shards():
            try:
                tables.append(pq.read_table(f, filesystem=self.fs, columns=list(columns) if columns else None))
            except Exception as e:
                if not drop_broken:
                    raise AbsclipError(f"{self.prefix + f} is not a readable Parquet file ({e}).") from e
                log.warning("Deleting the unreadable shard %s (%s); its images are predicted again.",
                            self.prefix + f, str(e).splitlines()[0])
                self.fs.delete_file(f)
        schema = row_schema()
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()

    def clear(self) -> None:
        """Delete the shards and ``_run.json`` (only files absclip writes)."""
        for f in self.shards():
            self.fs.delete_file(f)
        self._delete_if_exists("_run.json")
        self._delete_if_exists("_summary.json")

    def _delete_if_exists(self, name: str) -> None:
        import pyarrow.fs as pafs

        p = f"{self.root.rstrip('/')}/{name}"
        if self.fs.get_file_info(p).type == pafs.FileType.File:
            self.fs.delete_file(p)

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``name`` in the folder (atomically for local folders)."""
        import json

        if not self.prefix:
            from .files import atomic_write_json

            atomic_write_json(os.path.join(self.root, name), obj)
            return
        self.fs.create_dir(self.root, recursive=True)
        with self.fs.open_output_stream(f"{self.root.rstrip('/')}/{name}") as f:
            f.write((json.dumps(obj, indent=2) + "\n").encode())


@dataclass
class RayRun:
    """What one scale-out run produced (the driver reads it back to write results).

    Attributes:
        meta: run spec and model facts (:func:`prepare_text`).
        plan: the resolved plan.
        paths: every listed image path, in listing order.
        labels: their labels (None when unlabelled).
        rows: every prediction row in the output folder for these paths (pyarrow table).
        attempt: this invocation's id (rows written now carry it).
        seconds: wall time of the pipeline (0 when nothing was left to do).
        output: the output folder URI.
    """

    meta: dict[str, Any]
    plan: Plan
    paths: list[str]
    labels: list[int | None]
    rows: Any
    attempt: str
    seconds: float
    output: str

    @property
    def run_id(self) -> str:
        """The settings hash of the run."""
        from .evaluate import run_id_for

        return run_id_for(self.meta["spec"])


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[tuple[Any, bool]]:
    """Yield ``(ray, started)``: Ray connected to a cluster — the one already connected, ``address``
    (``auto``, ``ray://HOST:PORT``), ``$RAY_ADDRESS``, or a new local instance (``started``, shut down on exit)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
        if address in (None, "local") and not os.environ.get("RAY_ADDRESS"):
            kwargs.update(address=None, include_dashboard=False)
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise AbsclipError(f"Could not connect to the Ray cluster at {address} ({str(e).splitlines()[0]}); "
                               "start one with 'ray start --head' or leave out --address.") from e
        started = True
    try:
        yield ray, started
    finally:
        if started:
            ray.shutdown()


def run_pipeline(
    recipe: ClassifierRecipe,
    data: str,
    methods: Sequence[str],
    *,
    output: str,
    labelled: bool,
    top: int,
    keep: int | None = None,
    options: RayOptions | None = None,
    resume: bool = True,
    overwrite: bool = False,
    max_pixels: int | None = None,
    limit: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    announce: Callable[[str], None] | None = None,
) -> RayRun:
    """Run the scale-out pipeline and return what is in the output folder afterwards.

    Args:
        recipe: how workers build the classifier.
        data: folder or listing (path or URI).
        methods: method names.
        output: folder (path or URI) for the Parquet shards.
        labelled: read labels (eval) or not (label).
        top: the ``top`` setting recorded in the run spec.
        keep: classes kept per row (default ``top``).
        options: Ray options (None: defaults).
        resume: keep rows already in ``output`` and predict only the missing images.
        overwrite: delete ``output``'s shards first.
        max_pixels / limit / image_column / label_column: as for the local engine.
        announce: called with the plan line before the pipeline starts (the CLI prints it).

    Raises:
        AbsclipError: bad input, an output folder from other settings, a missing Ray.
    """
    import pyarrow as pa

    options = options or RayOptions()
    methods = list(dict.fromkeys(methods))
    with ray_session(options.address) as (ray, started):
        out = OutputDir(output)
        if overwrite:
            out.clear()
        resources = ray.cluster_resources()
        gpus = float(options.gpus_per_actor or 0.0)
        cpus_text = float(options.cpus_per_actor or 1.0)
        task = ray.remote(prepare_text).options(num_cpus=min(cpus_text, resources.get("CPU", 1.0)), num_gpus=gpus,
                                                num_returns=2, max_retries=options.retries)
        meta_ref, methods_ref = task.remote(recipe, methods, top, max(1, math.ceil(cpus_text)))  # while we list
        listed = read_listing(data, classes=recipe.classes if labelled else None, image_column=image_column,
                              label_column=label_column, limit=limit)
        paths = listed.column("path").to_pylist()
        labels = listed.column("label").to_pylist()
        if not paths:
            raise AbsclipError(f"There are no images in {data}.")
        meta = _unwrapped(lambda: ray.get(meta_ref))
        if "random-init" in meta["spec"]["backbone"]:
            raise AbsclipError("The model has random weights, which differ in every Ray worker; save them once "
                               "(torch.save(model.state_dict(), F)) and pass --pretrained F.")
        from .evaluate import run_id_for

        run_id = run_id_for(meta["spec"])
        done_rows = out.read(["path", "method", "run", "skip_reason"], drop_broken=True)
        if done_rows.num_rows:
            if not resume:
                raise AbsclipError(f"{output} already holds predictions; pass --resume to continue or --overwrite to "
                                   "start over.")
            runs = set(done_rows.column("run").to_pylist())
            if runs != {run_id}:
                other = sorted(runs - {run_id})[0]
                raise AbsclipError(f"{output} was written with different settings (run {other} vs {run_id}); use "
                                   "another --output or --overwrite instead of mixing results.")
        have: dict[str, set[str]] = {}
        for p, m, reason in zip(done_rows.column("path").to_pylist(), done_rows.column("method").to_pylist(),
                                done_rows.column("skip_reason").to_pylist()):
            have.setdefault(p, set()).update(methods if reason else [m])
        done = [p for p, ms in have.items() if set(methods) <= ms]
        n_done = len(set(done) & set(paths))
        if n_done:
            log.warning("Resuming: %d of %d images already done in %s.", n_done, len(set(paths)), output)
        out.write_json("_run.json", {"run": run_id, "spec": meta["spec"]})

        attention = meta["attention"]
        plan = make_plan(options, resources.get("CPU", 0.0), resources.get("GPU", 0.0), batch_size=meta["batch_size"],
                         attention_separable=bool(attention and attention["separable"]), fixed=started)
        if announce:
            announce(plan.describe())
        attempt = f"{time.time_ns():x}"
        seconds = 0.0
        skip = set(done)  # already written, or listed twice: each image is predicted once
        todo = listed.take(pa.array([i for i, p in enumerate(paths) if not (p in skip or skip.add(p))], pa.int64()))
        if todo.num_rows:
            seconds = _execute(ray, todo, recipe, methods_ref, meta, methods, keep or top, attempt, plan, options,
                               max_pixels, out)
        rows = out.read()
        listed_rows = rows.filter(_is_in(rows.column("path"), paths))
        return RayRun(meta, plan, paths, labels, listed_rows, attempt, seconds, output)


def _is_in(column: Any, values: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.is_in(column, value_set=pa.array(values, pa.string()))


def _map_batches(ds: Any, fn: Any, retry_args: dict[str, Any], **kwargs: Any) -> Any:
    """``ds.map_batches(fn, **kwargs)`` with bounded retries (``retry_args``: Ray remote options).

    Ray 2.60 deprecates passing remote options this way and names no replacement for retry
    counts; where they are refused, Ray Data's own defaults apply (actors restart, tasks retry).
    """
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            return ds.map_batches(fn, **kwargs, **retry_args)
    except TypeError as e:
        log.info("Ray refused %s (%s); using its default retries", sorted(retry_args), e)
        return ds.map_batches(fn, **kwargs)


def _execute(ray: Any, todo: Any, recipe: ClassifierRecipe, methods_ref: Any,
             meta: dict[str, Any], methods: list[str], top: int, attempt: str, plan: Plan, options: RayOptions,
             max_pixels: int | None, out: OutputDir) -> float:
    """Build and run the Ray Data pipeline over the ``(path, label)`` table ``todo``; return its wall time (s)."""
    ctx = ray.data.DataContext.get_current()  # datasets take these settings when they are created
    saved = (ctx.enable_progress_bars, ctx.actor_task_retry_on_errors, ctx.execution_options.preserve_order)
    ctx.enable_progress_bars = options.progress
    ctx.actor_task_retry_on_errors = True  # an error raised in one batch is retried (max_task_retries times)
    ctx.execution_options.preserve_order = False
    try:
        return _run_stages(ray, todo, recipe, methods_ref, meta, methods, top, attempt, plan, options, max_pixels,
                           out)
    finally:
        ctx.enable_progress_bars, ctx.actor_task_retry_on_errors, ctx.execution_options.preserve_order = saved


def _run_stages(ray: Any, todo: Any, recipe: ClassifierRecipe, methods_ref: Any, meta: dict[str, Any],
                methods: list[str], top: int, attempt: str, plan: Plan, options: RayOptions, max_pixels: int | None,
                out: OutputDir) -> float:
    bs = plan.decode_batch_size  # one block per batch, so that every actor gets work from the first batch on
    source = ray.data.from_arrow([todo.slice(i, bs) for i in range(0, todo.num_rows, bs)])
    ds = _map_batches(source, decode_images, {"max_retries": options.retries, "retry_exceptions": [OSError]},
                      batch_format="pyarrow", batch_size=plan.decode_batch_size, fn_kwargs={"max_pixels": max_pixels},
                      num_cpus=DECODE_CPUS)
    actor_retries = {"max_restarts": -1, "max_task_retries": options.retries}
    if plan.attention_stage:
        ds = _map_batches(
            ds, AttentionMaps, actor_retries, batch_format="pyarrow", batch_size=plan.decode_batch_size,
            compute=ray.data.ActorPoolStrategy(size=plan.attention_actors), num_cpus=ATTENTION_CPUS,
            fn_constructor_kwargs={"attention": meta["attention"], "abs_config": meta["abs_config"],
                                   "seed": meta["seed"], "clip_grid": meta["clip_grid"],
                                   "clip_input": meta["clip_input"], "threads": 1},
        )
    ds = _map_batches(
        ds, EncodeAndScore, actor_retries, batch_format="pyarrow", batch_size=plan.batch_size,
        compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus_per_actor,
        num_gpus=plan.gpus_per_actor or None,
        fn_constructor_kwargs={"recipe": recipe, "methods": methods_ref, "meta": meta, "method_names": methods,
                               "top": top, "attempt": attempt, "threads": plan.threads_per_actor,
                               "fault": options.fault},
    )
    t0 = time.perf_counter()
    _unwrapped(lambda: ds.write_parquet(out.uri if out.prefix else out.root, ray_remote_args={"num_cpus": WRITE_CPUS}))
    return time.perf_counter() - t0


# -----------------------------------------------------------------------------------------------
# The two commands
# -----------------------------------------------------------------------------------------------


def _dedup(rows: Any) -> list[dict[str, Any]]:
    """Return rows as dicts, one per (path, method) (the first), warning if there were duplicates."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in rows.to_pylist():
        k = (r["path"], r["method"])
        if k in seen:
            continue
        seen.add(k)
        out.append(r)
    if len(out) < rows.num_rows:
        log.warning("%d duplicate prediction rows ignored (each (image, method) counted once).",
                    rows.num_rows - len(out))
    return out


def evaluate_ray(
    recipe: ClassifierRecipe,
    data: str,
    methods: Sequence[str],
    *,
    output: str | os.PathLike,
    predictions: str | None = None,
    dataset: str = "custom",
    top: int = 5,
    extra_config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Evaluate on Ray; write Parquet predictions and the same results JSON as :func:`absclip.evaluate.evaluate`.

    Returns the results document. ``predictions`` is the Parquet folder (default: next to
    ``output``, ``<name>.predictions``); other keyword arguments go to :func:`run_pipeline`.
    """
    from .evaluate import results_document, write_results

    out_path = str(output)
    pred_dir = predictions or out_path.replace("{method}", "all").rsplit(".json", 1)[0] + ".predictions"
    t0 = time.perf_counter()
    run = run_pipeline(recipe, data, methods, output=pred_dir, labelled=True, top=top, keep=max(top, 5), **kwargs)
    methods = list(dict.fromkeys(methods))
    rows = _dedup(run.rows)
    by_key = {(r["path"], r["method"]): r for r in rows}
    skipped: dict[str, str] = {}
    for r in rows:
        if r["skip_reason"]:
            skipped.setdefault(r["path"], r["skip_reason"])
    order = list(dict.fromkeys(run.paths))
    records = {m: [(by_key[(p, m)]["label"], by_key[(p, m)]["topk"]) for p in order
                   if (p, m) in by_key and not by_key[(p, m)]["skip_reason"]] for m in methods}
    mine = [r for r in rows if r["attempt"] == run.attempt]
    method_seconds = {m: sum(r["seconds"] for r in mine if r["method"] == m) for m in methods}
    doc = results_document(
        run.meta["spec"], records, model=run.meta["model"], pretrained=run.meta["pretrained"], dataset=dataset,
        images=len(order), skipped=[{"file": p, "reason": skipped[p]} for p in order if p in skipped],
        predictions=pred_dir, seconds=run.seconds, images_this_run=len({r["path"] for r in mine}),
        method_seconds=method_seconds,
        extra_config={**(extra_config or {}), "engine": "ray", "ray": dataclasses.asdict(run.plan),
                      "seconds_total": round(time.perf_counter() - t0, 3)},
    )
    return write_results(doc, out_path)


def label_ray(
    recipe: ClassifierRecipe,
    data: str,
    methods: Sequence[str],
    *,
    output: str,
    top: int = 5,
    extra_config: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Label images on Ray: Parquet prediction rows in ``output`` plus ``output/_summary.json``.

    Returns the summary (the same keys as :func:`absclip.labelling.label_images`).
    """
    from .labelling import SUMMARY

    t0 = time.perf_counter()
    run = run_pipeline(recipe, data, methods, output=output, labelled=False, top=top, **kwargs)
    rows = _dedup(run.rows)
    skipped: dict[str, str] = {}
    for r in rows:
        if r["skip_reason"]:
            skipped.setdefault(r["path"], r["skip_reason"])
    order = list(dict.fromkeys(run.paths))
    mine = {r["path"] for r in rows if r["attempt"] == run.attempt}
    summary = {
        "run": run.run_id, "engine": "ray", "images": len(order), "labelled": len(order) - len(skipped),
        "skipped": [{"file": p, "reason": skipped[p]} for p in order if p in skipped], "predictions": output,
        "config": {**run.meta["spec"], **(extra_config or {}), "ray": dataclasses.asdict(run.plan)},
        "timing": {"seconds": round(run.seconds, 3),
                   "images_per_s": round(len(mine) / run.seconds, 4) if run.seconds else None,
                   "seconds_total": round(time.perf_counter() - t0, 3)},
    }
    OutputDir(output).write_json(SUMMARY, summary)
    return summary
