"""Scale-out engine: ``absclip eval/label --engine ray`` on a Ray cluster, through Ray Data.

This is the only package that imports Ray (lazily: ``import absclip.engines.ray`` works without it,
and running without it raises one sentence naming the ``absclip[ray]`` extra). There is no
scheduler, queue or worker pool of our own; the job is one Ray Data pipeline:

1. **listing** — a folder, or a CSV/TSV/JSONL/Parquet listing of paths (with labels for eval),
   read with Ray Data's readers, so ``s3://``, ``gs://`` and ``hdfs://`` work wherever pyarrow's
   filesystems reach; images already in the output are dropped (``--resume``).
2. **decode** (CPU map task) — read and decode each image exactly as the local engine does
   (:func:`absclip.io.images.decode_image`), content key; unreadable images become rows with a reason.
3. **attention** (CPU actor pool, when a method needs an attention model other than CLIP's own) —
   the attention maps and, for every method that draws per-image randomness from them (ABS's
   crops), each image's draws from its own generator (``Method.draw``).
4. **encode + score** (actor pool) — actors load the model once and receive the text side
   prepared once by a single task (never encoded per actor or per batch), then run
   :func:`absclip.engines.local.predict_batch`, the same function the local engine calls.
5. **write** — one Parquet row per (image, method) (:data:`absclip.io.records.ROW_FIELDS`).

Every random draw is seeded per image by content, so predictions do not depend on the number
of actors, blocks or the batch size. Dead actors are restarted and their batch retried by Ray."""

from __future__ import annotations

from absclip.engines.ray.driver import RayRun, run_pipeline
from absclip.engines.ray.engine import evaluate_ray, label_ray
from absclip.engines.ray.inputs import LISTING_SUFFIXES, read_listing, resolve_labels
from absclip.engines.ray.options import ClassifierRecipe, RayOptions
from absclip.engines.ray.plan import ATTENTION_CPUS, DECODE_CPUS, WRITE_CPUS, Plan, make_plan
from absclip.engines.ray.session import RAY_HINT, import_ray, ray_session
from absclip.engines.ray.stages import AttentionMaps, EncodeAndScore, GivenAttention, decode_images, prepare_text
from absclip.io.shards import OutputDir, row_schema
from absclip.io.uris import read_bytes, split_uri

__all__ = [
    "ATTENTION_CPUS", "DECODE_CPUS", "LISTING_SUFFIXES", "RAY_HINT", "WRITE_CPUS",
    "AttentionMaps", "ClassifierRecipe", "EncodeAndScore", "GivenAttention", "OutputDir", "Plan", "RayOptions",
    "RayRun", "decode_images", "evaluate_ray", "import_ray", "label_ray", "make_plan", "prepare_text", "ray_session",
    "read_bytes", "read_listing", "resolve_labels", "row_schema", "run_pipeline", "split_uri",
]
