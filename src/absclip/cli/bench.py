"""CLI command ``absclip bench``: ABS speed against a naive reference-style pipeline, same images, same crops."""

from __future__ import annotations

import argparse
from typing import Any

from absclip.errors import AbsclipError
from absclip.io.files import json_text

EPILOG = """\
examples:
  # real-size ViT-B/16 + DINO ViT-B/16 with random weights (speed does not depend on weights)
  absclip bench --images ../shared/data/imagenet-sample --limit 5 --model ViT-B-16 --method abs --json
  # bf16 next to fp32, and the fast mode, in one run (ratios from one run are comparable)
  absclip bench --images DIR --method abs,abs-fast --precision fp32,bf16
  # the cost of the training-free peers next to ABS on the same images (each with its authors' defaults)
  absclip bench --images DIR --method awt,zero,mta,abs

what is reported, per run (method@precision) and for the naive pipeline:
  images/s, s/image, stage breakdown (decode, attention, crop geometry + resize, image encoding,
  feature crops, scoring), peak RSS, image-encoder GFLOP per image, speedup_vs_naive and the max
  abs logit difference from the naive fp32 pipeline (same crop draws; abs and abs-fast only; other
  methods report images/s, stages and image_views_per_image x one image-tower forward as GFLOP/image;
  the naive pipeline runs only next to abs or abs-fast). Text encoding is measured
  once on --text-sample sentences and reported apart (it is once per run and cached).
  With --json the last stdout line is the report as one JSON object.
  Random weights get the activation of the model's default weights (ViT-B-16 + openai: QuickGELU);
  the report names it (`activation`).

text banks (--text): sentences/s of open_clip's full-length encode_text against absclip's text path
  (length-sorted batches cut at their longest end-of-text) on the same sentences, their ratio and the
  max abs difference of the embeddings; by default the first 200 classes of susx:imagenet (SuS-X CuPL):
  absclip bench --text --descriptions-dir ../shared/data/descriptions --json
"""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _precisions(text: str) -> tuple[str, ...]:
    out = _csv(text)
    bad = [p for p in out if p not in ("auto", "fp32", "bf16", "fp16")]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"precisions are auto, fp32, bf16, fp16 (comma-separated); got {text!r}")
    return out


def cmd_bench(args: argparse.Namespace) -> int:
    """absclip bench: run the benchmark and print the report (JSON last with --json)."""
    if args.text:
        return _cmd_text_bench(args)
    if not args.images:
        raise AbsclipError("absclip bench needs `images` DIR (or `text` to measure text encoding).")
    from absclip.cli.options import settings_from_args
    from absclip.diagnostics.bench import BenchSettings, run_benchmark
    from absclip.methods import create_method

    abs_cfg = create_method("abs", pixel_crops=args.crops, feature_crops=args.feature_crops, top_k=args.top_k,
                            feature_layer=args.feature_layer, token_keep=args.token_keep).settings
    pretrained = None if args.pretrained in (None, "", "none") else args.pretrained
    settings = BenchSettings(
        images=args.images, limit=args.limit, model=args.model, pretrained=pretrained, quick_gelu=args.quick_gelu,
        attention_model=args.attention_model, methods=_csv(args.method), precisions=args.precision,
        device=args.device, batch_size=args.batch_size, view_batch=args.view_batch, workers=args.workers,
        crop_workers=args.crop_workers, seed=args.seed, classes=args.classes,
        descriptions_per_class=args.descriptions_per_class, descriptions=args.descriptions,
        classes_file=args.classes_file, text_sample=args.text_sample, naive=not args.no_naive, repeat=args.repeat,
        warmup=not args.no_warmup, threads=args.threads,
        abs_config=abs_cfg,
        method_settings=tuple(x for x in settings_from_args(args) if type(x) is not type(abs_cfg)),
    )
    report = run_benchmark(settings)
    print(format_report(report))
    if args.json:
        print(json_text(report, default=str))
    return 0


def _cmd_text_bench(args: argparse.Namespace) -> int:
    """absclip bench --text: text-bank encoding, naive full length against absclip's path."""
    from absclip.diagnostics.text_bench import (
        DEFAULT_DESCRIPTIONS,
        TextBenchSettings,
        format_text_report,
        run_text_benchmark,
    )

    if len(args.precision) != 1:
        raise AbsclipError("absclip bench --text measures one `precision` at a time.")
    pretrained = None if args.pretrained in (None, "", "none") else args.pretrained
    report = run_text_benchmark(TextBenchSettings(
        model=args.model, pretrained=pretrained, quick_gelu=args.quick_gelu, device=args.device,
        precision=args.precision[0], descriptions=args.descriptions or DEFAULT_DESCRIPTIONS,
        descriptions_dir=args.descriptions_dir, classes=args.text_classes, repeat=args.repeat,
        warmup=not args.no_warmup, threads=args.threads))
    print(format_text_report(report))
    if args.json:
        print(json_text(report, default=str))
    return 0


def format_report(rep: dict[str, Any]) -> str:
    """Return a human-readable summary of an :func:`absclip.diagnostics.bench.run_benchmark` report."""
    lines = [f"absclip bench: {rep['images']} images from {rep['images_dir']}, {rep['model']} ({rep['weights']}), "
             f"attention {rep['attention_model']}, {rep['device']} ({rep['device_name']})"]
    if rep.get("activation"):
        lines.append(f"MLP activation: {rep['activation']} (fused: {rep['settings']['fused_vit']})")
    lines += [f"note: {x}" for x in rep["notes"]]
    head = f"{'run':<16}{'img/s':>8}{'s/img':>9}{'vs naive':>10}{'cpu s/img':>11}{'vs naive':>10}" \
           f"{'max|dlogit|':>13}{'top1 agree':>12}{'GFLOP/img':>11}{'peak RSS MB':>13}"
    lines += ["", head]
    if rep["naive_images_per_s"] is not None:
        lines.append(f"{'naive@fp32':<16}{rep['naive_images_per_s']:>8.3f}{1 / rep['naive_images_per_s']:>9.2f}"
                     f"{'1.00x':>10}{rep['naive_cpu_seconds_per_image']:>11.2f}{'1.00x':>10}{'':>13}{'':>12}"
                     f"{rep['flops']['naive']['image_encoder_gflop']:>11.0f}")
    for r in rep["runs"]:
        sp = f"{r['speedup_vs_naive']:.2f}x" if "speedup_vs_naive" in r else "-"
        cs = f"{r['cpu_speedup_vs_naive']:.2f}x" if r.get("cpu_speedup_vs_naive") else "-"
        dl = f"{r['max_abs_logit_diff']:.2e}" if "max_abs_logit_diff" in r else "-"
        ag = f"{r['top1_agreement_vs_naive']:.2f}" if "top1_agreement_vs_naive" in r else "-"
        lines.append(f"{r['method'] + '@' + r['precision']:<16}{r['images_per_s']:>8.3f}{r['seconds_per_image']:>9.2f}"
                     f"{sp:>10}{r['cpu_seconds_per_image']:>11.2f}{cs:>10}{dl:>13}{ag:>12}"
                     f"{r['image_encoder_gflop_per_image']:>11.0f}{r['peak_rss_mb']:>13.0f}")
    if rep.get("load_average"):
        lines.append(f"(load average at the end: {', '.join(f'{x:.1f}' for x in rep['load_average'])}; cpu s = "
                     "process CPU time, less sensitive to other processes than wall-clock time)")
    lines += ["", "stage breakdown (s per image):", f"{'stage':<24}{'naive':>9}" +
              "".join(f"{r['method'] + '@' + r['precision']:>16}" for r in rep["runs"])]
    for st in rep["stages_s_per_image"]:  # pipeline order (absclip.diagnostics.bench.STAGES)
        nv = rep["naive_stages_s_per_image"][st] if rep["naive_stages_s_per_image"] else float("nan")
        lines.append(f"{st:<24}{nv:>9.3f}" + "".join(f"{r['stages_s_per_image'][st]:>16.3f}" for r in rep["runs"]))
    t = rep["text"]
    if "batched_per_s" in t:
        lines.append(f"{'text encoding (once)':<24} {t['sentences']} sentences: {t['batched_per_s']:.1f}/s batched, "
                     f"{t['per_class_per_s']:.1f}/s one class per call; the {t['classes']}x"
                     f"{t['descriptions_per_class']} bank ~{t['bank_encode_s_estimate']:.0f} s once, then cached")
    lines.append(f"scoring against {t['classes']} classes x {t['descriptions_per_class']} descriptions: "
                 f"{100 * rep['scoring_share']:.1f}% of per-image time ({t['source']})")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add ``absclip bench`` to the ``absclip`` parser (own options: random weights by default)."""
    p = sub.add_parser(
        "bench", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="measure ABS speed against a naive pipeline",
        description="Measure ABS on a directory of images against a naive, reference-style pipeline run in the same "
                    "process on the same images with the same crop draws (see docs/benchmarks.md).",
        epilog=EPILOG,
    )
    p.add_argument("--images", metavar="DIR", help="directory of images (recursive, sorted); required unless --text")
    p.add_argument("--limit", type=int, default=5, help="use the first N images (default: %(default)s)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ViT-B-16", help="open_clip model name or config (default: %(default)s)")
    g.add_argument("--pretrained", default=None,
                   help="pretrained tag or checkpoint; default: none, the model is built from its config with random "
                        "weights (speed does not depend on weights)")
    g.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="force QuickGELU (OpenAI weights need it)")
    g.add_argument("--attention-model", default=None,
                   help="HF name or local dir of the attention ViT, or 'clip'; default: a DINO ViT-B/16 built from "
                        "its config with random weights")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    g.add_argument("--precision", type=_precisions, default=("auto",), metavar="P[,P]",
                   help="precision(s) of the optimised runs: auto (fp16 on CUDA, fp32 on CPU), fp32, bf16, fp16; "
                        "comma-separated to compare in one run. The naive pipeline is always fp32 (default: auto)")
    r = p.add_argument_group("run")
    r.add_argument("--method", default="abs",
                   help="registered method(s), comma-separated: abs (faithful), abs-fast (fast mode, changes "
                        "results), awt, wca, clip... (settings from the method options below, as in eval) "
                        "(default: %(default)s)")
    r.add_argument("--batch-size", type=int, default=4, help="images per batch (default: %(default)s)")
    r.add_argument("--view-batch", type=int, default=None,
                   help="views per image-encoder call (default: as absclip eval: 256 on CUDA; on CPU two per torch "
                        "thread, 4 to 32)")
    r.add_argument("--workers", type=int, default=None,
                   help="decode worker processes (default: one per spare CPU core, at most 4)")
    r.add_argument("--crop-workers", type=int, default=None,
                   help="threads making pixel crops (default: one per CPU core, at most 4)")
    r.add_argument("--seed", type=int, default=0, help="run seed (default: 0)")
    r.add_argument("--repeat", type=int, default=1,
                   help="run everything N times, alternating pipelines; the fastest of each is reported (default: 1)")
    r.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core); 1 is less sensitive to other "
                        "processes on a shared machine")
    r.add_argument("--no-naive", action="store_true", help="skip the naive pipeline")
    r.add_argument("--no-warmup", action="store_true",
                   help="do not run every pipeline once on the first image before timing")
    t = p.add_argument_group("text")
    t.add_argument("--classes", type=int, default=1000,
                   help="classes of the synthetic description bank used for scoring (default: %(default)s)")
    t.add_argument("--descriptions-per-class", type=int, default=50,
                   help="descriptions per class of the synthetic bank (default: %(default)s)")
    t.add_argument("--descriptions", help="real CuPL-style {class: [sentences]} file instead of the synthetic bank "
                                          "(encoded once, cached)")
    t.add_argument("--classes-file", help="class names for --descriptions (default: its keys)")
    t.add_argument("--text-sample", type=int, default=64,
                   help="sentences encoded to measure text-encoder throughput; 0 skips (default: %(default)s)")
    t.add_argument("--text", action="store_true",
                   help="measure text-bank encoding instead of images: naive full-length against absclip's path on "
                        "--descriptions (default: susx:imagenet, SuS-X's CuPL ImageNet sentences)")
    t.add_argument("--text-classes", type=int, default=200,
                   help="with --text: encode the first N classes of the descriptions (default: %(default)s)")
    t.add_argument("--descriptions-dir",
                   help="local copy of the public description sets (default: $ABSCLIP_DESCRIPTIONS_DIR)")
    a = p.add_argument_group("ABS")
    a.add_argument("--crops", type=int, help="pixel-space crops per image (default: 50; abs-fast: at most 16)")
    a.add_argument("--feature-crops", type=int, help="feature-space crops per image (default: 50)")
    a.add_argument("--top-k", type=int, help="attention cells the centres are drawn from (default: 20)")
    a.add_argument("--feature-layer", type=int, help="block the feature crops enter (default: -1)")
    a.add_argument("--token-keep", type=float,
                   help="fraction of each pixel crop's tokens kept (default: 1 = faithful; abs-fast: at most 0.5)")
    from absclip.cli.options import add_settings_options
    from absclip.core.settings import ABSConfig

    add_settings_options(p, skip=(ABSConfig,))  # the other methods' settings, as in eval (ABS has its own above)
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.set_defaults(func=cmd_bench)
