"""Evaluation report: one self-contained HTML file from a results document and its prediction records
(the JSONL file of the local engine or the Parquet folder of Ray, read by :func:`absclip.io.records.read_records`).

The report has the metrics table per method, per-class accuracy sorted worst first, the most
confused class pairs, and a gallery of misclassified images with their explanation pictures
(:mod:`absclip.diagnostics.explain`). Plots are matplotlib PNGs and every image is embedded as base64, so
the file can be mailed or archived on its own; there is no JavaScript.

Example:
    >>> doc = evaluate(clf, samples, ["clip", "abs"], output="results.json")     # doctest: +SKIP
    >>> write_report(doc, "report.html", clf=clf, max_images=24)                  # doctest: +SKIP"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from absclip.errors import AbsclipError, BadImageError
from absclip.io.files import atomic_write_text
from absclip.io.progress import progress_bar
from absclip.io.records import read_records, unique_records

if TYPE_CHECKING:  # pragma: no cover
    from absclip.api import Classifier

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 24
GALLERY_DPI = 60  # explanation pictures in the gallery: 960x600 px
THUMBNAIL_SIDE = 320
WORST_CLASSES_PLOTTED = 20
CONFUSED_PAIRS_SHOWN = 10
METRICS = (("acc1", "acc@1"), ("acc5", "acc@5"), ("mean_per_class_recall", "mean per-class recall"))


@dataclass
class ReportData:
    """What the report is made of, read from a results document.

    Attributes:
        results: one CLIP_benchmark-style result per method (``metrics``, ``absclip.method`` ...).
        classes: class names in label order.
        records: ``{method: [prediction records]}`` in stored order (this run's, skipped images left out;
            see :class:`absclip.io.records.Prediction`).
        info: dataset, model, pretrained, run id, counts and timing for the header.
    """

    results: list[dict[str, Any]]
    classes: list[str]
    records: dict[str, list[dict[str, Any]]]
    info: dict[str, Any]

    @property
    def methods(self) -> list[str]:
        """The evaluated methods, in results order."""
        return [r["absclip"]["method"] for r in self.results]


def load_report_data(
    doc: dict[str, Any] | str | os.PathLike, predictions: str | os.PathLike | None = None
) -> ReportData:
    """Return :class:`ReportData` from a results document (as either engine's ``evaluate`` returns) or its file.

    Accepts the combined results document and the one-file-per-method shape (a single
    CLIP_benchmark result with an ``absclip`` key).

    Args:
        doc: the document or a path to the results JSON.
        predictions: the prediction records, a JSONL file or a Parquet folder (default: the one recorded in
            the document).

    Raises:
        AbsclipError: unreadable files, no class names, no predictions.
    """
    if not isinstance(doc, dict):
        try:
            doc = json.loads(Path(doc).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise AbsclipError(f"Cannot read the results file {doc}: {e}") from e
    if "results" in doc:
        results, config, run = list(doc["results"]), doc.get("config", {}), doc.get("run")
        pred_path = predictions or doc.get("predictions")
        info = {k: doc.get(k) for k in ("dataset", "model", "pretrained", "images", "evaluated", "absclip_version")}
        timing = doc.get("timing") or {}
        info.update(skipped=len(doc.get("skipped", [])), run=run, seconds=timing.get("seconds"),
                    parts=timing.get("parts"))
    elif "metrics" in doc and "absclip" in doc:
        extra = doc["absclip"]
        results, config, run = [doc], extra.get("config", {}), extra.get("run")
        pred_path = predictions or extra.get("predictions")
        info = {k: doc.get(k) for k in ("dataset", "model", "pretrained")}
        info.update(images=extra.get("images"), evaluated=extra.get("images"), skipped=len(extra.get("skipped", [])),
                    run=run, seconds=(extra.get("timing") or {}).get("seconds", extra.get("seconds_this_run")),
                    parts=(extra.get("timing") or {}).get("parts"), absclip_version=extra.get("version"))
    else:
        raise AbsclipError("Not an absclip results document (no 'results' or 'metrics').")
    classes = list(config.get("classes") or [])
    if not classes:
        raise AbsclipError("The results document lists no class names (config.classes).")
    if not pred_path:
        raise AbsclipError("The results document names no predictions file (predictions).")
    methods = [r["absclip"]["method"] for r in results]
    latest = [r for r in unique_records(read_records(pred_path, run=run))
              if not r["skip_reason"] and r["method"] in methods]
    records = {m: [r for r in latest if r["method"] == m] for m in methods}
    return ReportData(results, classes, records, info)


# -----------------------------------------------------------------------------------------------
# Tables (pure functions of prediction records)
# -----------------------------------------------------------------------------------------------


def per_class_accuracy(records: Sequence[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """Return ``{label: (correct, total)}`` for the labels that occur in ``records`` (top-1)."""
    out: dict[int, list[int]] = {}
    for r in records:
        c = out.setdefault(int(r["label"]), [0, 0])
        c[0] += int(r["pred"] == r["label"])
        c[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def confused_pairs(records: Sequence[dict[str, Any]], top: int = CONFUSED_PAIRS_SHOWN) -> list[tuple[int, int, int]]:
    """Return the ``top`` most frequent ``(true label, predicted label, count)`` errors, most frequent first."""
    counts = Counter((int(r["label"]), int(r["pred"])) for r in records if r["pred"] != r["label"])
    return [(t, p, n) for (t, p), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]


def worst_classes(data: ReportData, method: str) -> list[tuple[int, dict[str, float], int]]:
    """Return ``(label, {method: accuracy}, images)`` for every label seen, worst first for ``method``.

    Ties are broken by the mean accuracy over all methods, then by label.
    """
    acc = {m: per_class_accuracy(data.records[m]) for m in data.methods}
    labels = sorted(set().union(*(a.keys() for a in acc.values())))
    rows = []
    for y in labels:
        per = {m: (acc[m][y][0] / acc[m][y][1]) for m in data.methods if y in acc[m]}
        n = max(acc[m][y][1] for m in data.methods if y in acc[m])
        rows.append((y, per, n))
    return sorted(rows, key=lambda r: (r[1].get(method, math.inf), sum(r[1].values()) / len(r[1]), r[0]))


# -----------------------------------------------------------------------------------------------
# Plots
# -----------------------------------------------------------------------------------------------


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_png(fig: Any, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    return buf.getvalue()


def metrics_plot(data: ReportData) -> bytes:
    """Return a PNG bar chart of acc@1, acc@5 and mean per-class recall per method (percent)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from absclip.diagnostics.explain_figure import OKABE_ITO

    colours = (OKABE_ITO["blue"], OKABE_ITO["orange"], OKABE_ITO["green"])
    fig = Figure(figsize=(max(5.0, 1.3 * len(data.methods) + 2.5), 3.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(METRICS)
    for k, ((key, name), colour) in enumerate(zip(METRICS, colours)):
        vals = [r["metrics"].get(key) for r in data.results]
        xs = [i + (k - (len(METRICS) - 1) / 2) * width for i in range(len(vals))]
        ax.bar(xs, [0 if v is None or math.isnan(v) else 100 * v for v in vals], width, color=colour, label=name)
    ax.set_xticks(range(len(data.methods)), data.methods)
    ax.set_ylim(0, 100)
    ax.set_xlabel("method")
    ax.set_ylabel("percent")
    ax.set_title("Metrics per method")
    ax.legend(fontsize=8, loc="upper left", ncols=len(METRICS))
    return _figure_png(fig)


def worst_classes_plot(data: ReportData, method: str, rows: Sequence[tuple[int, dict[str, float], int]]) -> bytes:
    """Return a PNG bar chart of the worst classes' top-1 accuracy for ``method`` (percent)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from absclip.diagnostics.explain_figure import OKABE_ITO

    shown = [r for r in rows if method in r[1]][:WORST_CLASSES_PLOTTED][::-1]
    fig = Figure(figsize=(7.5, 0.25 * len(shown) + 1.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vals = [100 * r[1][method] for r in shown]
    ax.barh(range(len(shown)), vals, color=OKABE_ITO["vermillion"])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.0f}%", va="center", fontsize=8)
    ax.set_yticks(range(len(shown)), [f"{data.classes[r[0]][:40]} (n={r[2]})" for r in shown], fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"top-1 accuracy of {method} (percent)")
    ax.set_ylabel("class")
    ax.set_title(f"Top-1 accuracy of the {len(shown)} worst classes for {method}")
    return _figure_png(fig)


def _thumbnail(path: str) -> bytes | None:
    from PIL import Image

    from absclip.io.images import load_image

    try:
        im = load_image(path)
    except BadImageError as e:
        log.warning("report: no thumbnail for %s (%s)", path, e)
        return None
    im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# -----------------------------------------------------------------------------------------------
# HTML
# -----------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #111; background: #fff; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #0072B2; padding-bottom: 4px; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: right; }
th { background: #e8f1f8; }
td.name, th.name { text-align: left; }
.meta { color: #444; font-size: 0.92em; }
.scroll { max-height: 420px; overflow-y: auto; display: inline-block; border: 1px solid #ddd; }
.gallery { display: flex; flex-wrap: wrap; gap: 16px; }
.card { border: 1px solid #bbb; border-radius: 6px; padding: 8px; max-width: 980px; }
.card img { max-width: 100%; height: auto; display: block; }
.wrong { color: #D55E00; font-weight: 600; }
.right { color: #009E73; font-weight: 600; }
.note { color: #555; font-style: italic; }
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{100 * float(v):.2f}"


def build_report(
    data: ReportData,
    *,
    explain_png: Callable[[str], bytes | None] | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    gallery_method: str | None = None,
    title: str | None = None,
    progress: bool = False,
) -> str:
    """Return the report as one self-contained HTML string.

    Args:
        data: from :func:`load_report_data`.
        explain_png: returns the explanation PNG of an image path (or None); without it the
            gallery shows thumbnails.
        max_images: at most this many misclassified images in the gallery.
        gallery_method: whose mistakes the gallery shows (default: ``abs`` if evaluated, else the first).
        progress: show a progress bar on stderr for the gallery (when it is a terminal).
    """
    from absclip.diagnostics.explain_figure import require_matplotlib

    require_matplotlib()
    methods = data.methods
    gm = gallery_method or ("abs" if "abs" in methods else methods[0])
    if gm not in methods:
        raise AbsclipError(f"Method {gm!r} was not evaluated; the report can show {', '.join(methods)}.")
    info = data.info
    cls = data.classes
    out: list[str] = []
    w = out.append
    w("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>")
    heading = title or f"absclip evaluation: {info.get('dataset')}"
    w(f"<title>{_e(heading)}</title><style>{CSS}</style></head><body>")
    w(f"<h1>{_e(heading)}</h1>")
    w(f"<p class='meta'>model <b>{_e(info.get('model'))}</b> ({_e(info.get('pretrained'))}) · "
      f"{_e(info.get('evaluated'))} of {_e(info.get('images'))} images evaluated, {_e(info.get('skipped'))} skipped · "
      f"{len(cls)} classes · run {_e(info.get('run'))} · absclip {_e(info.get('absclip_version'))}"
      + (f" · {float(info['seconds']):.1f} s" if info.get("seconds") is not None else "")
      + (f" in {int(info['parts'])} resumed parts" if (info.get("parts") or 0) > 1 else "") + "</p>")
    w("<p class='meta'><a href='#metrics'>metrics</a> · <a href='#classes'>per-class accuracy</a> · "
      "<a href='#confusions'>most confused pairs</a> · <a href='#gallery'>misclassified images</a></p>")

    # metrics
    w("<h2 id='metrics'>Metrics per method</h2><table id='metrics-table'><tr><th class='name'>method</th>"
      + "".join(f"<th>{_e(name)} (%)</th>" for _, name in METRICS) + "<th>images</th><th>seconds</th></tr>")
    for r in data.results:
        m, met = r["absclip"]["method"], r["metrics"]
        attrs = " ".join(f"data-{k.replace('_', '-')}='{_e(met.get(k))}'" for k, _ in METRICS)
        w(f"<tr data-method='{_e(m)}' {attrs}><td class='name'>{_e(m)}</td>"
          + "".join(f"<td>{_pct(met.get(k))}</td>" for k, _ in METRICS)
          + f"<td>{_e(r['absclip'].get('images'))}</td><td>{_e(r['absclip'].get('seconds_this_run'))}</td></tr>")
    w("</table>")
    if any(_pct(r["metrics"].get("acc5")) == "n/a" for r in data.results):
        w("<p class='note'>acc@5 is n/a with fewer than five classes.</p>")
    w(f"<img alt='metrics per method' src='{_png_data_uri(metrics_plot(data))}'>")

    # per-class accuracy
    rows = worst_classes(data, gm)
    w(f"<h2 id='classes'>Per-class top-1 accuracy, worst first (by {_e(gm)})</h2>")
    if rows:
        w(f"<img alt='worst classes' src='{_png_data_uri(worst_classes_plot(data, gm, rows))}'><br>")
    w("<div class='scroll'><table id='class-table'><tr><th class='name'>class</th><th>images</th>"
      + "".join(f"<th>{_e(m)} (%)</th>" for m in methods) + "</tr>")
    for y, per, n in rows:
        w(f"<tr><td class='name'>{_e(cls[y])}</td><td>{n}</td>"
          + "".join(f"<td>{_pct(per.get(m))}</td>" for m in methods) + "</tr>")
    w("</table></div>")

    # confusions
    w("<h2 id='confusions'>Most confused class pairs</h2>")
    for m in methods:
        pairs = confused_pairs(data.records[m])
        support = {y: t for y, (_, t) in per_class_accuracy(data.records[m]).items()}
        w(f"<h3>{_e(m)}</h3>")
        if not pairs:
            w("<p class='note'>no errors</p>")
            continue
        w("<table><tr><th class='name'>true class</th><th class='name'>predicted as</th><th>images</th>"
          "<th>% of the true class</th></tr>")
        for t, p, n in pairs:
            w(f"<tr><td class='name'>{_e(cls[t])}</td><td class='name'>{_e(cls[p])}</td><td>{n}</td>"
              f"<td>{100 * n / support[t]:.1f}</td></tr>")
        w("</table>")

    # gallery
    wrong = [r for r in data.records[gm] if r["pred"] != r["label"]]
    shown = wrong[: max(0, max_images)]
    others = {m: {r["path"]: r for r in data.records[m]} for m in methods if m != gm}
    w(f"<h2 id='gallery'>Misclassified by {_e(gm)}: {len(shown)} of {len(wrong)} shown</h2>")
    if len(wrong) > len(shown):
        w(f"<p class='note'>capped at {max_images} images (--report-max-images).</p>")
    w("<div class='gallery'>")
    for r in progress_bar(shown, progress, desc="report gallery", unit="img"):
        png = explain_png(r["path"]) if explain_png is not None else None
        kind = "explanation" if png is not None else "image"
        if png is None:
            png = _thumbnail(r["path"])
        preds = ", ".join(f"{_e(lab)} {100 * s:.1f}%" for lab, s in zip(r["topk_labels"][:3], r["topk_scores"][:3]))
        w(f"<div class='card'><div><b>{_e(Path(r['path']).name)}</b> · true <span class='right'>"
          f"{_e(cls[r['label']])}</span> · {_e(gm)} predicts <span class='wrong'>{_e(cls[r['pred']])}</span></div>")
        w(f"<div class='meta'>top-3: {preds}</div>")
        if others:
            w("<div class='meta'>" + " · ".join(
                f"{_e(m)}: {_e(cls[o[r['path']]['pred']])}" for m, o in others.items() if r["path"] in o) + "</div>")
        if png is not None:
            w(f"<img alt='{kind} of {_e(Path(r['path']).name)}' src='{_png_data_uri(png)}'>")
        else:
            w("<p class='note'>image unavailable</p>")
        w("</div>")
    w("</div></body></html>")
    return "\n".join(out)


def write_report(
    doc: dict[str, Any] | str | os.PathLike,
    out: str | os.PathLike,
    *,
    clf: Classifier | None = None,
    predictions: str | os.PathLike | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    explain_map: str = "attention",
    progress: bool = False,
) -> Path:
    """Write the HTML report of an evaluation to ``out``; return its path.

    Args:
        doc: the results document (or its file).
        out: the HTML file to write.
        clf: the classifier used for the evaluation; when given, the gallery shows each image's
            ABS explanation picture (computed again with the same model, settings and seed).
        predictions: the prediction records, JSONL file or Parquet folder (default: the one recorded in ``doc``).
        max_images: cap on the gallery.
        explain_map: map of the explanation pictures (``attention``, ``rollout`` or ``text``).
        progress: show a progress bar on stderr for the gallery (when it is a terminal).
    """
    data = load_report_data(doc, predictions)
    explain_png = None
    if clf is not None:
        from absclip.diagnostics.explain import explain

        failed: list[str] = []

        def explain_png(path: str) -> bytes | None:
            if failed:
                return None
            try:
                return explain(clf, path, map=explain_map).to_png(dpi=GALLERY_DPI)
            except BadImageError as e:  # this image only
                log.warning("report: no explanation for %s (%s)", path, e)
                return None
            except AbsclipError as e:  # e.g. the attention model is unavailable: stop trying
                failed.append(str(e))
                log.warning("report: explanation pictures unavailable (%s); showing thumbnails instead.", e)
                return None

    text = build_report(data, explain_png=explain_png, max_images=max_images, progress=progress)
    return atomic_write_text(out, text)
