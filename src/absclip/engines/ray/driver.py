"""The driver side of one run: :func:`run_pipeline` (text prepared once, listing, resume checks,
the plan) builds and runs the Ray Data pipeline decode → attention → encode + score → Parquet,
and returns a :class:`RayRun`."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from absclip.engines.ray.inputs import read_listing, stream_dataset, streamed_order
from absclip.engines.ray.options import ClassifierRecipe, RayOptions
from absclip.engines.ray.plan import ATTENTION_CPUS, DECODE_CPUS, WRITE_CPUS, Plan, make_plan
from absclip.engines.ray.session import _unwrapped, ray_session
from absclip.engines.ray.stages import AttentionMaps, EncodeAndScore, decode_images, prepare_text
from absclip.errors import AbsclipError
from absclip.io.images import DEFAULT_MAX_PIXELS
from absclip.io.records import settings_differences
from absclip.io.shards import OutputDir
from absclip.io.sources import open_data
from absclip.methods.base import get_method_class

log = logging.getLogger(__package__)  # "absclip.engines.ray", the logger of the module before the split


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
        from absclip.engines.results import run_id_for

        return run_id_for(self.meta["spec"])


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
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
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
    online = [m for m in methods if get_method_class(m).stateful]
    if online:  # actors see images in no fixed order, so one stream (one set of caches) cannot be kept
        raise AbsclipError(f"Method {online[0]!r} learns from the stream of earlier images, which the Ray engine "
                           "processes in no fixed order; run it with the local engine.")
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
        dset = open_data(data, image_column=image_column, label_column=label_column)
        streamed = dset.kind != "files"  # shards and datasets are read by the pipeline itself, not listed here
        if streamed:
            listed, paths, labels = None, [], []
        else:
            listed = read_listing(data, classes=recipe.classes if labelled else None, image_column=image_column,
                                  label_column=label_column, limit=limit)
            paths = listed.column("path").to_pylist()
            labels = listed.column("label").to_pylist()
            if not paths:
                raise AbsclipError(f"There are no images in {data}.")
        meta = _unwrapped(lambda: ray.get(meta_ref))
        if "random-init" in meta["spec"]["backbone"]:
            raise AbsclipError("The model has random weights, which differ in every Ray worker; save them once "
                               "(torch.save(model.state_dict(), F)) and pass `pretrained` F.")
        from absclip.engines.results import run_id_for

        run_id = run_id_for(meta["spec"])
        done_rows = out.read(["path", "method", "run", "skip_reason"], drop_broken=True)
        if done_rows.num_rows:
            if not resume:
                raise AbsclipError(f"{output} already holds predictions; pass `resume` to continue or `overwrite` "
                                   "to start over.")
            runs = set(done_rows.column("run").to_pylist())
            if runs != {run_id}:
                other = sorted(runs - {run_id})[0]
                changed = settings_differences(out.read_run_spec(), meta["spec"]) or f"run {other} vs {run_id}"
                raise AbsclipError(f"{output} was written with different settings ({changed}); use "
                                   "another `output` or `overwrite` instead of mixing results.")
        have: dict[str, set[str]] = {}
        for p, m, reason in zip(done_rows.column("path").to_pylist(), done_rows.column("method").to_pylist(),
                                done_rows.column("skip_reason").to_pylist()):
            have.setdefault(p, set()).update(methods if reason else [m])
        done = [p for p, ms in have.items() if set(methods) <= ms]
        n_done = len(streamed_order(done, dset) if streamed else set(done) & set(paths))
        if n_done:
            of = "" if streamed else f" of {len(set(paths))}"
            log.warning("Resuming: %d%s images already done in %s.", n_done, of, output)
        out.write_json("_run.json", {"run": run_id, "spec": meta["spec"]})

        attention = meta["attention"]
        plan = make_plan(options, resources.get("CPU", 0.0), resources.get("GPU", 0.0), batch_size=meta["batch_size"],
                         attention_separable=bool(attention and attention["separable"]), fixed=started)
        if announce:
            announce(plan.describe())
        attempt = f"{time.time_ns():x}"
        seconds = 0.0
        if streamed:
            classes = recipe.classes if labelled else None
            def source() -> Any:
                return stream_dataset(ray, dset, classes, limit=limit, done=frozenset(done))

            seconds = _execute(ray, source, recipe, methods_ref, meta, methods, keep or top, attempt, plan, options,
                               max_pixels, out, ordered=limit is not None)
        else:
            skip = set(done)  # already written, or listed twice: each image is predicted once
            todo = listed.take(pa.array([i for i, p in enumerate(paths) if not (p in skip or skip.add(p))],
                                        pa.int64()))
            if todo.num_rows:
                bs = plan.decode_batch_size  # one block per batch: every actor gets work from the first batch on

                def source() -> Any:
                    return ray.data.from_arrow([todo.slice(i, bs) for i in range(0, todo.num_rows, bs)])

                seconds = _execute(ray, source, recipe, methods_ref, meta, methods, keep or top, attempt, plan,
                                   options, max_pixels, out)
        rows = out.read()
        if streamed:  # the samples are what the pipeline read: the output's rows of these shards or files
            paths = streamed_order(rows.column("path").to_pylist(), dset)
            if limit is not None:
                paths = paths[:limit]
            if not paths:
                raise AbsclipError(f"There are no images in {data}.")
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


def _execute(ray: Any, source: Callable[[], Any], recipe: ClassifierRecipe, methods_ref: Any,
             meta: dict[str, Any], methods: list[str], top: int, attempt: str, plan: Plan, options: RayOptions,
             max_pixels: int | None, out: OutputDir, ordered: bool = False) -> float:
    """Build and run the Ray Data pipeline over the dataset ``source()`` makes (rows ``path, label`` and, for
    streamed sources, ``data, error``; made here, after the context settings, which datasets take when they
    are created); return its wall time (s). ``ordered``: keep the source's order (``--limit``)."""
    ctx = ray.data.DataContext.get_current()  # datasets take these settings when they are created
    saved = (ctx.enable_progress_bars, ctx.actor_task_retry_on_errors, ctx.execution_options.preserve_order)
    ctx.enable_progress_bars = options.progress
    ctx.actor_task_retry_on_errors = True  # an error raised in one batch is retried (max_task_retries times)
    ctx.execution_options.preserve_order = ordered
    try:
        return _run_stages(ray, source, recipe, methods_ref, meta, methods, top, attempt, plan, options, max_pixels,
                           out)
    finally:
        ctx.enable_progress_bars, ctx.actor_task_retry_on_errors, ctx.execution_options.preserve_order = saved


def _run_stages(ray: Any, source: Callable[[], Any], recipe: ClassifierRecipe, methods_ref: Any, meta: dict[str, Any],
                methods: list[str], top: int, attempt: str, plan: Plan, options: RayOptions, max_pixels: int | None,
                out: OutputDir) -> float:
    ds = _map_batches(source(), decode_images, {"max_retries": options.retries, "retry_exceptions": [OSError]},
                      batch_format="pyarrow", batch_size=plan.decode_batch_size, fn_kwargs={"max_pixels": max_pixels},
                      num_cpus=DECODE_CPUS)
    actor_retries = {"max_restarts": -1, "max_task_retries": options.retries}
    if plan.attention_stage:
        ds = _map_batches(
            ds, AttentionMaps, actor_retries, batch_format="pyarrow", batch_size=plan.decode_batch_size,
            compute=ray.data.ActorPoolStrategy(size=plan.attention_actors), num_cpus=ATTENTION_CPUS,
            fn_constructor_kwargs={"attention": meta["attention"], "draws": meta["draws"], "seed": meta["seed"],
                                   "facts": meta["backbone_facts"], "threads": 1},
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
