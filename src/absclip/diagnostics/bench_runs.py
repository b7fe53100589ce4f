"""The timed runs of ``absclip bench``: the naive pipeline, ABS's own path and any method's ``logits``.

Each run times one pass over the same image paths (decoding included) with wall and CPU clocks,
peak RSS and CUDA memory reset at its start, and per-stage seconds from a
:class:`~absclip.core.timer.StageTimer`; :func:`merge_runs` joins the batches of one run.
:mod:`absclip.diagnostics.bench` decides what runs in which order and reports the ratios."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from absclip.attention.sources import AttentionSource
from absclip.backbones.base import Backbone
from absclip.core.sampling import ABSDraws
from absclip.core.settings import ABSConfig
from absclip.core.timer import StageTimer
from absclip.diagnostics.naive import naive_abs_logits
from absclip.diagnostics.timing import peak_rss_mb, reset_peak_rss
from absclip.io.images import make_item
from absclip.io.loader import iter_image_batches
from absclip.methods.abs import ABSMethod
from absclip.methods.base import Method
from absclip.methods.batch import BatchContext
from absclip.text.encoder import EncodedBank

if TYPE_CHECKING:
    from absclip.diagnostics.bench import BenchSettings

@dataclass
class RunResult:
    key: str
    method: str
    precision: str
    logits: torch.Tensor
    seconds: float
    stages: dict[str, float]
    peak_rss_mb: float
    feature_views: float
    draws: dict[str, tuple[ABSDraws, torch.Tensor]]
    peak_gpu_mb: float | None = None
    cpu_seconds: float = 0.0
    images_encoded: float = 0.0  # whole images through the image tower, per image (BatchContext.images_encoded)


def merge_runs(parts: Sequence[RunResult]) -> RunResult:
    """Return one result for consecutive batches of the same run (times and stages summed)."""
    stages: dict[str, float] = {}
    draws: dict[str, tuple[ABSDraws, torch.Tensor]] = {}
    for p in parts:
        for k, v in p.stages.items():
            stages[k] = stages.get(k, 0.0) + v
        draws.update(p.draws)
    n = sum(len(p.logits) for p in parts)
    gpu = [p.peak_gpu_mb for p in parts if p.peak_gpu_mb is not None]
    return RunResult(parts[0].key, parts[0].method, parts[0].precision, torch.cat([p.logits for p in parts]),
                      sum(p.seconds for p in parts), stages, max(p.peak_rss_mb for p in parts),
                      sum(p.feature_views * len(p.logits) for p in parts) / max(1, n), draws,
                      max(gpu) if gpu else None, sum(p.cpu_seconds for p in parts),
                      sum(p.images_encoded * len(p.logits) for p in parts) / max(1, n))


def naive_run(
    paths: Sequence[str], bb: Backbone, attention: AttentionSource, cfg: ABSConfig, seed: int,
    bank: EncodedBank, draws: dict[str, tuple[ABSDraws, torch.Tensor]] | None,
) -> dict[str, Any]:
    """Time the naive pipeline (decoding included) on ``paths``; return seconds, stages, logits, peak RSS."""
    timer = StageTimer()
    clock = Clock(bb.device)
    with timer("decode"):
        items = [make_item(p) for p in paths]
    logits, mism = naive_abs_logits(items, bb, attention, cfg, seed, bank, timer, draws)
    seconds, cpu, _ = clock.stop()
    return {"seconds": seconds, "cpu_seconds": cpu, "stages": dict(timer.seconds), "logits": logits,
            "peak_rss_mb": peak_rss_mb(), "topk_mismatches": mism}


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall and CPU time of one timed run, peak RSS and CUDA memory reset at its start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync_device(device)
        self.start, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float, float | None]:
        """Return ``(seconds, cpu_seconds, peak_gpu_mib or None)`` since the start."""
        sync_device(self.device)
        seconds, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return seconds, cpu, gpu


def timed_batches(paths: Sequence[str], s: BenchSettings, timer: StageTimer) -> Iterator[list]:
    """Yield decoded image batches of ``paths``, the decoding timed as stage ``decode``."""
    batches = iter_image_batches(paths, s.batch_size, workers=s.workers)
    while True:
        with timer("decode"):
            items = next(batches, None)
        if items is None:
            return
        yield items


def optimised_run(
    key: str, method_name: str, precision: str, paths: Sequence[str], bb: Backbone, attention: AttentionSource,
    cfg: ABSConfig, bank: EncodedBank, s: BenchSettings,
) -> RunResult:
    method = ABSMethod(cfg)
    method.bank = bank
    timer = StageTimer()
    logits, draws = [], {}
    feat_views = 0
    clock = Clock(bb.device)
    for items in timed_batches(paths, s, timer):
        ctx = BatchContext(items, bb, attention, feature_layer=cfg.feature_layer, view_batch=s.view_batch,
                           crop_workers=s.crop_workers, timer=timer)
        with torch.inference_mode():
            views = method.views(ctx, s.seed)
            logits.append(method.score(views, timer).float().cpu())
        feat_views += ctx.feature_crops_encoded
        for it, v in zip(items, views):
            draws[it.key] = (v.draws, v.topk_idx)
    seconds, cpu, gpu = clock.stop()
    return RunResult(key, method_name, precision, torch.cat(logits), seconds, dict(timer.seconds), peak_rss_mb(),
                      feat_views / max(1, len(paths)), draws, gpu, cpu)


def method_run(key: str, method: Method, precision: str, paths: Sequence[str], bb: Backbone,
                attention: AttentionSource | None, s: BenchSettings) -> RunResult:
    """Time any registered method (decoding included) through its own ``logits`` on ``paths``.

    The method object is kept across the batches of a repeat, as in eval: a method with state across
    images (TDA's caches) carries it on, which is what its speed in a run is; each repeat starts anew.
    """
    timer = StageTimer()
    logits, encoded = [], 0
    clock = Clock(bb.device)
    for items in timed_batches(paths, s, timer):
        ctx = BatchContext(items, bb, attention if method.needs_attention else None, feature_layer=method.token_layer,
                           view_batch=s.view_batch, crop_workers=s.crop_workers, timer=timer)
        with torch.inference_mode():
            logits.append(method.logits(ctx, s.seed).float().cpu())
        encoded += ctx.images_encoded
    seconds, cpu, gpu = clock.stop()
    return RunResult(key, method.name, precision, torch.cat(logits), seconds, dict(timer.seconds), peak_rss_mb(),
                      0.0, {}, gpu, cpu, encoded / max(1, len(paths)))
