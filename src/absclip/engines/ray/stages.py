"""The pipeline stages, run in Ray workers (plain functions and classes, testable without Ray): the
one-off text task :func:`prepare_text`, :func:`decode_images`, the CPU attention stage
:class:`AttentionMaps` (with :class:`GivenAttention` serving its maps) and the actor :class:`EncodeAndScore`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from absclip.attention.sources import AttentionSource
from absclip.engines.ray.options import ClassifierRecipe
from absclip.errors import AbsclipError, BadImageError
from absclip.io.images import DEFAULT_MAX_PIXELS
from absclip.io.uris import read_bytes

log = logging.getLogger(__package__)  # "absclip.engines.ray", the logger of the module before the split


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))


def prepare_text(recipe: ClassifierRecipe, methods: Sequence[str], top: int,
                 threads: int = 1) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(meta, prepared methods)``: the run spec and facts, and every method with its text encoded.

    Runs once per job (as a Ray task with the actors' resources, so the text is encoded on the
    same kind of device and precision as the images).
    """
    from absclip.attention.layered import HFLayeredAttention
    from absclip.attention.sources import HFAttention
    from absclip.engines.local import run_spec

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
    # a CPU attention stage also draws each image's randomness for the methods that draw from attention
    draws = {n: m.settings for n, m in prepared.items() if m.needs_attention and type(m).has_draws()}
    meta = {
        "spec": spec, "model": clf.backbone.name, "pretrained": clf.backbone.pretrained, "attention": att,
        "draws": draws, "backbone_facts": clf.backbone.facts,
        "clip_grid": tuple(clf.backbone.facts.grid), "clip_input": int(clf.backbone.facts.image_size[0]),
        "seed": clf.seed, "batch_size": clf.batch_size, "device": str(clf.backbone.device),
    }
    return meta, prepared


def decode_images(batch: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """Decode a batch of listed images: pyarrow table ``(path, label)`` (plus ``data`` and ``error`` for
    streamed sources: the encoded bytes, or why there are none) → ``(path, label, key, width, height,
    image, skip_reason)``; ``image`` is the RGB pixels as bytes (``H*W*3``), empty for a skipped image."""
    import pyarrow as pa

    from absclip.io.images import decode_image, image_key

    cols: dict[str, list[Any]] = {k: [] for k in ("path", "label", "key", "width", "height", "image", "skip_reason")}
    none = [None] * batch.num_rows  # streamed sources carry the bytes (data) or why there are none (error)
    datas = batch.column("data").to_pylist() if "data" in batch.column_names else none
    errors = batch.column("error").to_pylist() if "error" in batch.column_names else none
    for path, label, data, error in zip(batch.column("path").to_pylist(), batch.column("label").to_pylist(), datas,
                                        errors):
        try:
            if error is not None:
                raise BadImageError(error)
            im = decode_image(read_bytes(path) if data is None else data, path, max_pixels=max_pixels)
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

    from absclip.io.images import ImageItem

    rows, items = [], []
    cols = batch.select(["path", "key", "width", "height", "image", "skip_reason"]).to_pydict()
    for i, reason in enumerate(cols["skip_reason"]):
        if reason is None:
            im = Image.frombytes("RGB", (cols["width"][i], cols["height"][i]), cols["image"][i])
            rows.append(i)
            items.append(ImageItem(im, cols["key"][i], cols["path"][i]))
    return rows, items


class AttentionMaps:
    """CPU stage: attention maps ``[A]`` and per-image random draws (adds columns ``attention`` and ``draws``).

    Loads the attention model once per actor, on the CPU; checks it is the model the run was
    planned with (same identity). ``draws`` is ``{method name: settings}`` of the methods that draw
    per-image randomness from the attention map (:meth:`Method.draw`); each row's ``draws`` cell
    holds ``{method name: draw}`` pickled (empty for a skipped image).

    Args:
        attention: the attention facts of :func:`prepare_text` (``meta["attention"]``).
        draws: ``meta["draws"]``.
        seed: the run seed.
        facts: the CLIP backbone's facts (``meta["backbone_facts"]``).
        threads: torch threads.
    """

    def __init__(self, attention: dict[str, Any], draws: dict[str, Any], seed: int, facts: Any,
                 threads: int = 1) -> None:
        from absclip.attention.factory import load_attention
        from absclip.methods import create_method

        _set_threads(threads)
        self.src = load_attention(attention["name"], None, device="cpu", layer=attention["layer"],  # type: ignore[arg-type]
                                  rollout=attention["rollout"], sink_threshold=attention["sink_threshold"])
        if self.src.identity != attention["identity"]:
            raise AbsclipError(f"The attention model loaded on this worker ({self.src.identity}) differs from the "
                               f"planned one ({attention['identity']}); every node needs the same files.")
        self.methods = {name: create_method(name, settings) for name, settings in draws.items()}
        self.seed, self.facts = seed, facts

    def __call__(self, batch: Any) -> Any:
        import pickle

        import numpy as np
        import pyarrow as pa

        n = batch.num_rows
        rows, items = _items(batch)
        maps: list[list[float]] = [[] for _ in range(n)]
        draws: list[bytes] = [b""] * n
        if items:
            att = self.src([it.image for it in items])  # [B, A] fp32
            for b, (r, it) in enumerate(zip(rows, items)):
                maps[r] = att[b].numpy().astype(np.float32).tolist()
                drawn = {name: m.draw(att[b], it.size, it.key, self.seed, self.src.grid, self.facts)
                         for name, m in self.methods.items()}
                draws[r] = pickle.dumps(drawn, protocol=pickle.HIGHEST_PROTOCOL)
        out = batch.append_column("attention", pa.array(maps, pa.list_(pa.float32())))
        return out.append_column("draws", pa.array(draws, pa.binary()))


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


class EncodeAndScore:
    """Actor stage: encode images and score them with every method; returns prediction records (a table).

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
        from absclip.engines.results import run_id_for

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
        import torch

        from absclip.engines.local import predict_batch
        from absclip.io.records import make_records, records_table

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
                if "draws" in batch.column_names:  # {method: [draw per image]}, from the attention stage
                    import pickle

                    cells = batch.column("draws").to_pylist()
                    per_row = [pickle.loads(cells[r]) if cells[r] else {} for r in rows_idx]
                    draws = {m: [d.get(m) for d in per_row] for m in set().union(*per_row)}
            ctx = clf.context(items, methods, attention=given, draws=draws)
            ranked, secs = predict_batch(clf, ctx, methods, self.top)
            share = {m: s / len(items) for m, s in secs.items()}
        out: list[dict[str, Any]] = []
        pos = {r: b for b, r in enumerate(rows_idx)}
        for i, path in enumerate(cols["path"]):
            label = cols["label"][i]
            if i in pos:
                b = pos[i]
                out += make_records(path, label, items[b].key, {m: ranked[m][b] for m in methods}, methods,
                                    seconds=share, **common)
            else:
                out += make_records(path, label, None, None, methods, skip_reason=cols["skip_reason"][i], **common)
        return records_table(out)
