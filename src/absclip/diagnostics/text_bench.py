"""``absclip bench --text``: text-bank encoding, absclip's path against the naive full-length one.

Both paths encode the same CuPL sentences (by default the first 200 classes of the SuS-X CuPL
ImageNet file, ``susx:imagenet``) with the same model in one process, alternating when repeated:

* **naive**: open_clip's ``encode_text`` over the full context (77 positions) in batches of
  :data:`NAIVE_BATCH` in file order: what absclip did before, and what reference code does;
* **absclip**: :class:`absclip.text.encoder.TextEncoder` without its disk cache, i.e.
  :meth:`absclip.backbones.open_clip.ClipBackbone.encode_texts`: length-sorted batches, each run
  only up to its longest end-of-text position where the tower is causal (exact).

The report gives sentences/s of both, their ratio (wall-clock and process CPU time) and the largest
difference of the normalised embeddings."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from absclip._version import __version__
from absclip.backbones.base import resolve_device, resolve_precision
from absclip.backbones.open_clip import CPU_TEXT_BATCH, ClipBackbone
from absclip.backbones.registry import load_clip
from absclip.diagnostics.bench import DTYPE_NAMES, _cpu_name, bench_quick_gelu
from absclip.diagnostics.bench_runs import sync_device
from absclip.errors import AbsclipError
from absclip.text.encoder import TextEncoder
from absclip.text.sources import read_text_source

#: the default sentences: SuS-X's CuPL ImageNet descriptions (1000 classes, ~23 per class)
DEFAULT_DESCRIPTIONS = "susx:imagenet"
#: texts per ``encode_text`` call of the naive path (absclip's own batch size before truncation)
NAIVE_BATCH = 256


@dataclass
class TextBenchSettings:
    """What ``absclip bench --text`` runs.

    Attributes:
        model / pretrained / quick_gelu: the CLIP model (``pretrained=None``: random weights with the
            activation of the default weights, see :func:`absclip.diagnostics.bench.bench_quick_gelu`).
        device / precision: where and in which dtype both paths run.
        descriptions: a CuPL-style ``{class: [sentences]}`` file or public set name.
        descriptions_dir: local copy of the public sets (default ``$ABSCLIP_DESCRIPTIONS_DIR``).
        classes: the first N classes of the file are encoded.
        repeat: both paths N times, alternating; the fastest of each is reported.
        warmup: encode a few sentences with both paths first, untimed.
        threads: torch intra-op threads (None: torch's default).
    """

    model: str = "ViT-B-16"
    pretrained: str | None = None
    quick_gelu: bool | None = None
    device: str = "auto"
    precision: str = "auto"
    descriptions: str = DEFAULT_DESCRIPTIONS
    descriptions_dir: str | None = None
    classes: int = 200
    repeat: int = 1
    warmup: bool = True
    threads: int | None = None


def cupl_sentences(descriptions: str, classes: int, descriptions_dir: str | None = None) -> list[list[str]]:
    """Return the sentences of the first ``classes`` classes of a CuPL-style file, per class in file order."""
    data = read_text_source(descriptions, descriptions_dir=descriptions_dir)
    if not isinstance(data, dict):
        raise AbsclipError(f"{descriptions} holds templates, not per-class descriptions.")
    return [data[name] for name in list(data)[:classes]]


def full_length(bb: ClipBackbone, texts: list[str], batch_size: int = NAIVE_BATCH) -> torch.Tensor:
    """Return normalised embeddings ``[T, D]`` (fp32, CPU) from open_clip's ``encode_text`` on the full context."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            tokens = bb.tokenizer(texts[i : i + batch_size]).to(bb.device)
            out.append(F.normalize(bb.model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(out)


def _timed(fn: Any, device: torch.device) -> tuple[torch.Tensor, float, float]:
    sync_device(device)
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    sync_device(device)
    return out, time.perf_counter() - t, time.process_time() - c


def _absclip_batch(bb: ClipBackbone, truncated: bool) -> int:
    """Texts per text-tower call on absclip's path (``encode_texts`` caps truncated batches on the CPU)."""
    size = TextEncoder(bb).batch_size
    return min(size, CPU_TEXT_BATCH) if truncated and bb.device.type == "cpu" else size


def run_text_benchmark(s: TextBenchSettings) -> dict[str, Any]:
    """Run the text benchmark; return the report (the JSON ``absclip bench --text --json`` prints last).

    Raises:
        AbsclipError: bad counts, an unreadable descriptions file, a model without an open_clip text tower.
    """
    if s.classes < 1 or s.repeat < 1:
        raise AbsclipError("`text_classes` and `repeat` must be at least 1.")
    groups = cupl_sentences(s.descriptions, s.classes, s.descriptions_dir)
    texts = [t for g in groups for t in g]
    if not texts:
        raise AbsclipError(f"{s.descriptions} has no sentences.")
    device = resolve_device(s.device)
    dtype = resolve_precision(s.precision, device)
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    quick_gelu, notes = bench_quick_gelu(s.model, s.pretrained, s.quick_gelu)
    bb = load_clip(s.model, s.pretrained, device=device, precision=DTYPE_NAMES[dtype], quick_gelu=quick_gelu)
    if not isinstance(bb, ClipBackbone):
        raise AbsclipError(f"absclip bench --text measures open_clip text towers; {s.model} is not one.")
    tokens = bb.tokenizer(texts)
    ends = bb.text_ends(tokens)
    if ends is None:
        notes.append("this text tower reads every position (no causal mask or another pooling): absclip keeps "
                     "the full context, so both paths do the same work")

    def naive() -> torch.Tensor:
        return full_length(bb, texts)

    def absclip() -> torch.Tensor:
        return TextEncoder(bb, use_cache=False).encode(texts)

    if s.warmup:  # first calls allocate memory and create kernels
        full_length(bb, texts[:8])
        TextEncoder(bb, use_cache=False).encode(texts[:8])
    best: dict[str, tuple[torch.Tensor, float, float]] = {}
    for _ in range(s.repeat):
        for name, fn in (("naive", naive), ("absclip", absclip)):
            res = _timed(fn, device)
            if name not in best or res[1] < best[name][1]:
                best[name] = res
    (ref, nv_s, nv_cpu), (got, ab_s, ab_cpu) = best["naive"], best["absclip"]
    n = len(texts)
    ctx = int(tokens.shape[1])
    return {
        "mode": "text",
        "model": s.model,
        "weights": s.pretrained or "random (built from the model config; speed does not depend on weights)",
        "activation": bb.activation,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "precision": DTYPE_NAMES[dtype],
        "descriptions": s.descriptions,
        "classes": len(groups),
        "sentences": n,
        "context_length": ctx,
        "truncated": ends is not None,
        "median_end_of_text": int(torch.median(ends)) if ends is not None else ctx - 1,
        "naive_sentences_per_s": n / nv_s,
        "sentences_per_s": n / ab_s,
        "speedup_vs_naive": nv_s / ab_s,
        "cpu_speedup_vs_naive": nv_cpu / ab_cpu if ab_cpu > 0 else None,
        "naive_seconds": nv_s,
        "seconds": ab_s,
        "naive_cpu_seconds": nv_cpu,
        "cpu_seconds": ab_cpu,
        "max_abs_diff": float((got - ref).abs().max()),
        "bank_1000x50_encode_s_estimate": 50_000 * ab_s / n,
        "naive_bank_1000x50_encode_s_estimate": 50_000 * nv_s / n,
        "settings": {"naive_batch_size": NAIVE_BATCH, "absclip_batch_size": _absclip_batch(bb, ends is not None),
                     "repeat": s.repeat, "torch_threads": torch.get_num_threads()},
        "versions": {"absclip": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "notes": notes,
    }


def format_text_report(rep: dict[str, Any]) -> str:
    """Return a human-readable summary of a :func:`run_text_benchmark` report."""
    act = rep["activation"] or "other"
    lines = [f"absclip bench --text: {rep['sentences']} sentences of the first {rep['classes']} classes of "
             f"{rep['descriptions']}, {rep['model']} ({rep['weights']}), activation {act}, {rep['device']} "
             f"({rep['device_name']}), {rep['precision']}"]
    lines += [f"note: {x}" for x in rep["notes"]]
    cut = (f"length-sorted batches cut at their longest end-of-text (median position {rep['median_end_of_text']} "
           f"of {rep['context_length']})" if rep["truncated"] else "full context (not truncated)")
    cs = f"{rep['cpu_speedup_vs_naive']:.2f}x" if rep["cpu_speedup_vs_naive"] else "-"
    lines += [
        "",
        f"{'path':<10}{'sentences/s':>13}{'seconds':>10}{'speedup':>10}{'cpu speedup':>13}  how",
        f"{'naive':<10}{rep['naive_sentences_per_s']:>13.1f}{rep['naive_seconds']:>10.1f}{'1.00x':>10}{'1.00x':>13}"
        f"  open_clip encode_text, full {rep['context_length']} positions, batches of "
        f"{rep['settings']['naive_batch_size']}",
        f"{'absclip':<10}{rep['sentences_per_s']:>13.1f}{rep['seconds']:>10.1f}{rep['speedup_vs_naive']:>9.2f}x"
        f"{cs:>13}  {cut}",
        "",
        f"max abs difference of the normalised embeddings: {rep['max_abs_diff']:.1e}",
        f"a 1000-class x 50-description bank: ~{rep['bank_1000x50_encode_s_estimate'] / 60:.1f} min once "
        f"(naive ~{rep['naive_bank_1000x50_encode_s_estimate'] / 60:.1f} min), then cached",
    ]
    return "\n".join(lines)
