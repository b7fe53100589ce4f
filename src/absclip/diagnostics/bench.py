"""``absclip bench``: measure ABS against a naive, reference-style pipeline on the same images.

Both pipelines run in one process on the same images with the same crop draws, so the ratio
of their times and the difference of their logits are meaningful even on a noisy machine.

The **naive pipeline** is :func:`absclip.diagnostics.naive.naive_abs_logits` (what it mirrors of the
reference is listed there). The **optimised pipeline** is the library's own path
(:func:`absclip.methods.abs.abs_views` and :class:`absclip.methods.abs.ABSMethod`), with decoding in
DataLoader workers. Each run is timed by :mod:`absclip.diagnostics.bench_runs`; FLOP estimates
come from :mod:`absclip.diagnostics.flops`.

Without ``pretrained`` weights the CLIP model is built from its config with random weights, and
without an attention model a DINO ViT-B/16 is built from its config with random weights (speed
does not depend on weights); the report says so."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from absclip._version import __version__
from absclip.attention.factory import load_attention
from absclip.attention.sources import ClipSelfAttention, HFAttention
from absclip.backbones.base import Backbone, resolve_device, resolve_precision
from absclip.backbones.registry import load_clip
from absclip.core.settings import ABSConfig, fast_abs_config
from absclip.core.timer import StageTimer
from absclip.diagnostics.bench_runs import (
    RunResult,
    merge_runs,
    method_run,
    naive_run,
    optimised_run,
    sync_device,
)
from absclip.diagnostics.flops import abs_image_flops, attention_pass_flops, naive_image_flops, views_image_flops
from absclip.diagnostics.naive import naive_abs_logits
from absclip.diagnostics.timing import peak_rss_mb
from absclip.errors import AbsclipError
from absclip.io.images import make_item
from absclip.io.loader import default_workers
from absclip.io.sources import list_images
from absclip.methods.base import Method, TextInputs, create_method, get_method_class
from absclip.methods.batch import default_crop_workers, default_view_batch
from absclip.text.encoder import EncodedBank, TextEncoder

log = logging.getLogger(__name__)

#: stage names, in pipeline order (per-image seconds are reported for each)
STAGES = ("decode", "attention", "crop geometry + resize", "image encoding", "feature crops", "scoring")
#: the methods measured by ABS's own path (next to the naive pipeline); every other registered method runs
#: through its ``logits`` (:func:`method_run`) with its settings from ``BenchSettings.method_settings``
BENCH_METHODS = ("abs", "abs-fast")
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class BenchSettings:
    """What ``absclip bench`` runs (the CLI options, one field each).

    Attributes:
        images: a directory of images (searched recursively, sorted); the first ``limit`` are used.
        model / pretrained / quick_gelu: the CLIP model (``pretrained=None``: random weights).
        attention_model: HF name or directory of the attention ViT, or ``clip``; None builds a
            DINO ViT-B/16 with random weights.
        methods: registered method names: ``abs`` (faithful) and/or ``abs-fast`` (fast mode; changes results)
            next to the naive pipeline, any other (``awt``, ``wca``, ``clip``...) with ``method_settings``.
        precisions: compute precisions of the optimised runs (``auto``, ``fp32``, ``bf16``, ``fp16``);
            the naive pipeline is always fp32.
        device: ``cpu``, ``cuda`` or ``auto``.
        batch_size: images per batch of the optimised pipeline; view_batch: views per encoder call
            (None: :func:`absclip.methods.batch.default_view_batch`).
        workers: decode worker processes (None: one per spare core, at most 4).
        crop_workers: threads making pixel crops (None: one per CPU core, at most 4).
        classes / descriptions_per_class: size of the synthetic description bank (random unit
            vectors) used for scoring when ``descriptions`` is None.
        descriptions / classes_file: a real CuPL-style description file (encoded once, cached).
        text_sample: sentences encoded to measure text-encoder throughput (0 to skip).
        naive: also run the naive pipeline; repeat: runs of everything (the fastest is reported).
        warmup: first run every pipeline once on the first image, untimed (first calls allocate
            memory and create kernels).
        threads: torch intra-op threads for the whole run (None: torch's default, one per core).
        abs_config: ABS settings of the faithful run (``abs-fast`` derives its own).
        method_settings: the other methods' settings instances (``AWTConfig(views=8)``); others use defaults.
    """

    images: str
    limit: int = 5
    model: str = "ViT-B-16"
    pretrained: str | None = None
    quick_gelu: bool | None = None
    attention_model: str | None = None
    methods: tuple[str, ...] = ("abs",)
    precisions: tuple[str, ...] = ("auto",)
    device: str = "auto"
    batch_size: int = 4
    view_batch: int | None = None
    workers: int | None = None
    crop_workers: int | None = None
    seed: int = 0
    classes: int = 1000
    descriptions_per_class: int = 50
    descriptions: str | None = None
    classes_file: str | None = None
    text_sample: int = 64
    naive: bool = True
    repeat: int = 1
    warmup: bool = True
    threads: int | None = None
    abs_config: ABSConfig = field(default_factory=ABSConfig)
    #: settings of the other methods (one instance per settings type; missing types: their defaults)
    method_settings: tuple[Any, ...] = ()


# -------------------------------------------------------------------------------------------
# models
# -------------------------------------------------------------------------------------------

#: the weights absclip loads when none are named (``absclip.load``, the CLI's ``--pretrained``)
DEFAULT_WEIGHTS_TAG = "openai"


def bench_quick_gelu(model: str, pretrained: str | None, quick_gelu: bool | None) -> tuple[bool | None, list[str]]:
    """Return the ``quick_gelu`` to load a benchmarked model with, and notes for the report.

    Random weights (``pretrained`` None) get the activation of the weights users get by default:
    ``ViT-B-16`` with OpenAI's weights runs QuickGELU, so that is what is measured, not the
    config's GELU. Named weights and an explicit ``quick_gelu`` are left to the loader.
    """
    from absclip.backbones.open_clip_loaders import tag_needs_quick_gelu

    if quick_gelu is None and pretrained is None and tag_needs_quick_gelu(model, DEFAULT_WEIGHTS_TAG):
        return True, [f"random weights with QuickGELU, the activation of {model}'s default "
                      f"`{DEFAULT_WEIGHTS_TAG}` weights (`quick_gelu` False measures GELU)"]
    return quick_gelu, []


def random_dino_vitb16(device: torch.device) -> HFAttention:
    """Return a DINO ViT-B/16-shaped attention source with random weights (no download).

    ``transformers`` ``ViTConfig``: hidden 768, 12 layers, 12 heads, MLP 3072, patch 16, input
    224, with ``facebook/dino-vitb16``'s preprocessing (224×224 bilinear squash, mean = std = 0.5).
    """
    from transformers import ViTConfig, ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cfg = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    patch_size=16, image_size=224, qkv_bias=True, layer_norm_eps=1e-12)
    with tempfile.TemporaryDirectory(prefix="absclip-dino-") as d:
        torch.manual_seed(0)
        model = ViTModel(cfg)
        model.save_pretrained(d)
        del model
        with open(os.path.join(d, "preprocessor_config.json"), "w", encoding="utf-8") as f:
            json.dump({"do_resize": True, "size": 224, "resample": 2, "do_normalize": True,
                       "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, f, allow_nan=False)
        src = HFAttention(d, device=device)
    src.name = "random DINO ViT-B/16"
    src.identity = "random-dino-vitb16"
    return src


# -------------------------------------------------------------------------------------------
# text
# -------------------------------------------------------------------------------------------


class SyntheticTextEncoder(TextEncoder):
    """A :class:`TextEncoder` whose "embeddings" are random unit vectors, one per distinct text (seeded by it).

    Lets ``absclip bench`` prepare any method's text side at the size of a real bank (``classes`` x
    ``descriptions_per_class``) without running the text tower: the scoring cost, not the accuracy.
    """

    def __init__(self, backbone: Backbone, seed: int) -> None:
        super().__init__(backbone, use_cache=False)
        self.seed = seed

    def _encode(self, texts: Sequence[str]) -> torch.Tensor:
        import hashlib

        out = []
        for t in texts:
            h = int.from_bytes(hashlib.sha256(f"{self.seed}|{t}".encode()).digest()[:8], "little")
            out.append(torch.randn(self.backbone.facts.embed_dim, generator=torch.Generator().manual_seed(h)))
        return F.normalize(torch.stack(out), dim=-1)


def _prepared_method(name: str, bb: Backbone, s: BenchSettings) -> Method:
    """Return method ``name`` (its settings from ``method_settings``) with its text side built from the bench's bank."""
    from absclip.text.classes import load_classes

    cls = get_method_class(name)
    method = create_method(name, next((x for x in s.method_settings if type(x) is cls.settings_type), None))
    if s.descriptions:
        classes, desc = _real_texts(s)
        method.prepare(TextInputs(classes, descriptions=desc, seed=s.seed), TextEncoder(bb))
    else:
        classes = load_classes([f"class {i}" for i in range(s.classes)])
        desc = {n: [f"a description {j} of {n}." for j in range(s.descriptions_per_class)] for n in classes.names}
        method.prepare(TextInputs(classes, descriptions=desc, seed=s.seed), SyntheticTextEncoder(bb, s.seed))
    return method


def synthetic_bank(classes: int, per_class: int, dim: int, seed: int) -> EncodedBank:
    """Return ``classes × per_class`` random unit vectors as a description bank (scoring cost only)."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(classes, per_class, dim, generator=g), dim=-1)
    mask = torch.ones(classes, per_class, dtype=torch.bool)
    return EncodedBank(emb, mask, f"synthetic:{classes}x{per_class}:{seed}", [])


def _real_texts(s: BenchSettings) -> tuple[Any, dict[str, list[str]]]:
    """Return the class list and the ``{class: [sentences]}`` of ``s.descriptions``."""
    from absclip.text.classes import load_classes
    from absclip.text.sources import read_text_source

    desc = read_text_source(s.descriptions)
    if not isinstance(desc, dict):
        raise AbsclipError(f"{s.descriptions} holds templates, not per-class descriptions.")
    classes = load_classes(classes_file=s.classes_file) if s.classes_file else load_classes(list(desc))
    return classes, desc


def _real_bank(bb: Backbone, s: BenchSettings, cfg: ABSConfig) -> EncodedBank:
    from absclip.text.banks import match_bank

    classes, desc = _real_texts(s)
    return TextEncoder(bb).encode_bank(match_bank(classes, desc), cfg.max_descriptions)


def _text_throughput(bb: Backbone, n: int, per_class: int) -> dict[str, float]:
    """Return sentences/s of batched encoding and of the reference's one-class-at-a-time encoding."""
    texts = [f"a photo of a thing number {i}, which has a distinctive shape and colour." for i in range(n)]
    t0 = time.perf_counter()
    bb.encode_texts(texts, batch_size=256)
    sync_device(bb.device)
    t1 = time.perf_counter()
    for i in range(0, n, per_class):  # the reference encodes one class's descriptions per call
        bb.encode_texts(texts[i : i + per_class], batch_size=per_class)
    sync_device(bb.device)
    t2 = time.perf_counter()
    return {"sentences": n, "batched_per_s": n / (t1 - t0), "per_class_per_s": n / (t2 - t1)}


# -------------------------------------------------------------------------------------------
# the benchmark
# -------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _per_image(stages: dict[str, float], n: int) -> dict[str, float]:
    return {k: stages.get(k, 0.0) / n for k in STAGES}


def run_benchmark(s: BenchSettings) -> dict[str, Any]:
    """Run the benchmark; return the report (the JSON ``absclip bench --json`` prints last).

    Raises:
        AbsclipError: no images, an unknown method or precision, unreadable files.
    """
    for m in s.methods:
        get_method_class(m)  # unknown names raise with the registered ones listed
    if not any(m in BENCH_METHODS for m in s.methods):  # the naive pipeline is ABS's reference
        s = dataclasses.replace(s, naive=False)
    if s.limit < 1 or s.repeat < 1:
        raise AbsclipError("`limit` and `repeat` must be at least 1.")
    paths = [str(p) for p in list_images(s.images)][: s.limit]
    if not paths:
        raise AbsclipError(f"No images found under {s.images}.")
    device = resolve_device(s.device)
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    if s.crop_workers is None:
        s = dataclasses.replace(s, crop_workers=default_crop_workers())
    if s.view_batch is None:
        s = dataclasses.replace(s, view_batch=default_view_batch(device))
    dtypes = [resolve_precision(p, device) for p in s.precisions]

    quick_gelu, notes = bench_quick_gelu(s.model, s.pretrained, s.quick_gelu)
    base = load_clip(s.model, s.pretrained, device=device, precision="fp32", quick_gelu=quick_gelu)
    weights = s.pretrained or "random (built from the model config; speed does not depend on weights)"
    if not any(get_method_class(m).needs_attention for m in s.methods):
        attention = None  # e.g. awt, wca, clip: no attention model to load
    elif s.attention_model is None:
        attention = random_dino_vitb16(device)
        notes.append("attention model: DINO ViT-B/16 built from its config with random weights "
                     "(pass `attention_model` DIR for real weights)")
    else:
        attention = load_attention(s.attention_model, base, device=device)
    if s.pretrained is None:
        notes.append(f"CLIP {s.model}: random weights built from its config")
    if not s.naive and len(set(dtypes)) == 1:  # one precision and no fp32 baseline: cast without a copy
        backbones = {dtypes[0]: base.cast(dtypes[0], inplace=True)}
    else:
        backbones = {dt: base.cast(dt) for dt in dict.fromkeys(dtypes)}
    cfg_faithful = s.abs_config
    cfgs = {"abs": cfg_faithful, "abs-fast": fast_abs_config(cfg_faithful)}

    if s.descriptions:
        banks = {dt: _real_bank(bb, s, cfg_faithful) for dt, bb in backbones.items()}
        base_bank = banks.get(torch.float32) or _real_bank(base, s, cfg_faithful)
        text_info: dict[str, Any] = {"source": s.descriptions}
    else:
        base_bank = synthetic_bank(s.classes, s.descriptions_per_class, base.facts.embed_dim, s.seed)
        banks = dict.fromkeys(backbones, base_bank)
        text_info = {"source": "synthetic random unit vectors (scoring cost only)"}
    c, m, _ = base_bank.emb.shape
    text_info.update({"classes": c, "descriptions_per_class": m})
    if s.text_sample > 0:
        log.info("measuring text-encoder throughput on %d sentences", s.text_sample)
        tp = _text_throughput(backbones[dtypes[0]], s.text_sample, max(1, min(m, s.text_sample)))
        text_info.update(tp)
        text_info["bank_encode_s_estimate"] = c * m / tp["batched_per_s"]
        text_info["note"] = ("once per run and cached on disk (absclip.text.encoder.TextEncoder); "
                             "not part of per-image time")

    others = {(m, dt): _prepared_method(m, bb, s) for m in s.methods if m not in BENCH_METHODS
              for dt, bb in backbones.items()}
    load_peak = peak_rss_mb()
    if s.warmup:
        log.info("warm-up on %s", paths[0])
        for meth in s.methods:
            for dt in dict.fromkeys(dtypes):
                if meth not in BENCH_METHODS:
                    method_run("warmup", others[meth, dt], DTYPE_NAMES[dt], paths[:1], backbones[dt], attention,
                                dataclasses.replace(s, workers=0))
                    continue
                optimised_run("warmup", meth, DTYPE_NAMES[dt], paths[:1], backbones[dt], attention, cfgs[meth],
                               banks[dt], dataclasses.replace(s, workers=0))
        if s.naive:
            naive_abs_logits([make_item(paths[0])], base, attention, cfg_faithful, s.seed, base_bank, StageTimer())
    n = len(paths)
    chunks = [paths[i : i + s.batch_size] for i in range(0, n, s.batch_size)]
    keys = [(meth, dt) for meth in s.methods for dt in dict.fromkeys(dtypes)]
    runs: dict[str, RunResult] = {}
    naive: dict[str, Any] | None = None
    naive_logits: torch.Tensor | None = None
    for r in range(s.repeat):
        # interleave at batch granularity: every pipeline sees the same machine load
        parts: dict[str, list[RunResult]] = {f"{m}@{DTYPE_NAMES[dt]}": [] for m, dt in keys}
        naive_parts: list[dict[str, Any]] = []
        for m in others.values():  # a stateful (online) method starts each repeat from an empty stream
            m.reset()
        for ci, chunk in enumerate(chunks):
            log.info("repeat %d/%d, batch %d/%d", r + 1, s.repeat, ci + 1, len(chunks))
            for meth, dt in keys:
                key = f"{meth}@{DTYPE_NAMES[dt]}"
                if meth not in BENCH_METHODS:
                    parts[key].append(method_run(key, others[meth, dt], DTYPE_NAMES[dt], chunk, backbones[dt],
                                                  attention, s))
                    continue
                parts[key].append(optimised_run(key, meth, DTYPE_NAMES[dt], chunk, backbones[dt], attention,
                                                 cfgs[meth], banks[dt], s))
            if s.naive:
                donor = next((parts[k][-1] for k in parts if k.startswith("abs@")), None)
                naive_parts.append(naive_run(chunk, base, attention, cfg_faithful, s.seed, base_bank,
                                              donor.draws if donor else None))
        for key, ps in parts.items():
            res = merge_runs(ps)
            if key not in runs or res.seconds < runs[key].seconds:
                runs[key] = res
            log.info("repeat %d: %s %.2f s/image", r + 1, key, res.seconds / n)
        if naive_parts:
            secs = sum(x["seconds"] for x in naive_parts)
            log.info("repeat %d: naive %.2f s/image", r + 1, secs / n)
            if naive is None or secs < naive["seconds"]:
                stages: dict[str, float] = {}
                for x in naive_parts:
                    for k, v in x["stages"].items():
                        stages[k] = stages.get(k, 0.0) + v
                naive = {"seconds": secs, "stages": stages, "peak_rss_mb": max(x["peak_rss_mb"] for x in naive_parts),
                         "cpu_seconds": sum(x["cpu_seconds"] for x in naive_parts),
                         "topk_mismatches": sum(x["topk_mismatches"] for x in naive_parts)}
                naive_logits = torch.cat([x["logits"] for x in naive_parts])

    fused = base.fused_path
    attn_pass = attention_pass_flops(attention, base)
    reuse = isinstance(attention, ClipSelfAttention) and attention.layer == cfg_faithful.feature_layer
    faithful_run = next((x for x in runs.values() if x.method == "abs"), None)
    faithful_feat = faithful_run.feature_views if faithful_run else float(cfg_faithful.feature_crops)
    flops = {
        "naive": {"image_encoder_gflop": naive_image_flops(base, cfg_faithful) / 1e9,
                  "attention_gflop": 2 * attn_pass / 1e9},
        "abs": {"image_encoder_gflop": abs_image_flops(base, cfg_faithful, faithful_feat, fused=fused) / 1e9,
                "attention_gflop": (0.0 if reuse else attn_pass) / 1e9},
    }
    results = []
    for res in runs.values():
        if res.method in BENCH_METHODS:
            cfg = cfgs[res.method]
            f_img = abs_image_flops(base, cfg, res.feature_views, fused=fused) / 1e9
            views = cfg.pixel_crops + 1.0
        else:  # the views the method says it encodes, each one image-tower forward
            views = float(others[res.method, next(iter(backbones))].image_views())
            if res.images_encoded != views:  # a method that encodes outside BatchContext counts fewer
                notes.append(f"{res.method} declares {views:g} image views per image and encoded "
                             f"{res.images_encoded:g} through BatchContext; FLOPs count the larger")
                views = max(views, res.images_encoded)
            f_img = views_image_flops(base, views, fused=fused) / 1e9
        entry: dict[str, Any] = {
            "method": res.method, "precision": res.precision,
            "images_per_s": n / res.seconds, "seconds_per_image": res.seconds / n,
            "cpu_seconds_per_image": res.cpu_seconds / n,
            "stages_s_per_image": _per_image(res.stages, n),
            "scoring_share": res.stages.get("scoring", 0.0) / res.seconds,
            "peak_rss_mb": res.peak_rss_mb,
            "feature_crops_encoded_per_image": res.feature_views,
            "image_encoder_gflop_per_image": f_img,
            "image_views_per_image": views,
            "image_encoder_flops_vs_faithful": flops["abs"]["image_encoder_gflop"] / f_img,
            "image_encoder_flops_vs_naive": flops["naive"]["image_encoder_gflop"] / f_img,
            "changes_results": res.method != "abs" or res.precision != "fp32",
        }
        if res.method not in BENCH_METHODS:
            entry["images_encoded_per_image"] = res.images_encoded
        if res.peak_gpu_mb is not None:
            entry["peak_gpu_mb"] = res.peak_gpu_mb
        if naive is not None and naive_logits is not None and res.method in BENCH_METHODS:
            diff = (res.logits - naive_logits).abs()
            entry.update({
                "naive_images_per_s": n / naive["seconds"],
                "speedup_vs_naive": naive["seconds"] / res.seconds,
                "cpu_speedup_vs_naive": naive["cpu_seconds"] / res.cpu_seconds if res.cpu_seconds > 0 else None,
                "max_abs_logit_diff": float(diff.max()),
                "top1_agreement_vs_naive": float((res.logits.argmax(1) == naive_logits.argmax(1)).float().mean()),
            })
        results.append(entry)
    primary = results[0]
    report: dict[str, Any] = {
        "method": primary["method"],
        "model": s.model,
        "weights": weights,
        "activation": getattr(base, "activation", None),  # the image tower's MLP activation (open_clip towers)
        "attention_model": getattr(attention, "name", str(s.attention_model)),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "precision": primary["precision"],
        "images": n,
        "images_dir": s.images,
        "images_per_s": primary["images_per_s"],
        "seconds_per_image": primary["seconds_per_image"],
        "cpu_seconds_per_image": primary["cpu_seconds_per_image"],
        "naive_cpu_seconds_per_image": naive["cpu_seconds"] / n if naive else None,
        "cpu_speedup_vs_naive": primary.get("cpu_speedup_vs_naive"),
        "naive_images_per_s": n / naive["seconds"] if naive else None,
        "speedup_vs_naive": primary.get("speedup_vs_naive"),
        "max_abs_logit_diff": primary.get("max_abs_logit_diff"),
        "max_abs_logit": float(naive_logits.abs().max()) if naive_logits is not None else None,
        "peak_rss_mb": primary["peak_rss_mb"],
        "process_peak_rss_mb": max([load_peak, primary["peak_rss_mb"]] + [x["peak_rss_mb"] for x in results]
                                   + ([naive["peak_rss_mb"]] if naive else [])),
        "scoring_share": primary["scoring_share"],
        "stages_s_per_image": primary["stages_s_per_image"],
        "naive_stages_s_per_image": _per_image(naive["stages"], n) if naive else None,
        "naive_topk_mismatches": naive["topk_mismatches"] if naive else None,
        "runs": results,
        "flops": flops,
        "text": text_info,
        "settings": {
            "batch_size": s.batch_size, "view_batch": s.view_batch,
            "workers": default_workers() if s.workers is None else s.workers, "crop_workers": s.crop_workers,
            "repeat": s.repeat, "seed": s.seed, "torch_threads": torch.get_num_threads(),
            "abs": dataclasses.asdict(cfg_faithful), "fused_vit": fused,
        },
        "versions": {"absclip": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "notes": notes,
    }
    return report
