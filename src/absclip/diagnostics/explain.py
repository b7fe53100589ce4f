"""Explanations: what ABS looked at for one image, as data (:class:`Explanation`) and as one PNG.

The explanation reuses the prediction's own work: the attention map, crop boxes and token
windows are those :meth:`absclip.methods.abs.ABSMethod.views` returns when classifying the image,
so the picture shows exactly the views that produced the scores.

Example:
    >>> import absclip                                                            # doctest: +SKIP
    >>> from absclip.diagnostics.explain import explain                                       # doctest: +SKIP
    >>> clf = absclip.load("ViT-B-16", "openai").set_classes(["cat", "dog"])      # doctest: +SKIP
    >>> ex = explain(clf, "cat.jpg", top=2)                                       # doctest: +SKIP
    >>> ex.top[0].label, ex.top[0].descriptions[0]                                # doctest: +SKIP
    ('cat', ('a photo of a cat.', 1.0))
    >>> drawn = ex.save("explain.png")                                            # doctest: +SKIP"""

from __future__ import annotations

import io
import logging
import os
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from absclip.core import views
from absclip.core.settings import MAP_KINDS as MAP_KINDS  # torch-free home, for the CLI
from absclip.errors import AbsclipError
from absclip.io.images import ImageItem, make_item

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from absclip.api import Classifier
    from absclip.attention.sources import AttentionSource
    from absclip.backbones.base import Backbone

log = logging.getLogger(__name__)

#: Okabe & Ito (2008) colour-blind-safe palette
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
    "black": "#000000",
}
CLASS_COLOURS = ("blue", "orange", "green", "purple", "vermillion", "sky")
HEATMAP_CMAP = "viridis"  # perceptually uniform, readable with colour-vision deficiency and in grey
FIGSIZE = (16.0, 10.0)  # inches; times ``dpi`` gives the PNG size
MAX_BARS = 10  # class bars drawn in the score panel; the rest are counted in its title


@dataclass
class ClassEvidence:
    """One of the top classes and the descriptions that carried its evidence.

    Attributes:
        label: class name; index: its label index.
        score: the reported probability (as ``absclip classify``).
        mass: this class's share of all soft-matching mass of the image (0..1).
        descriptions: ``(text, share)`` pairs, descending: each description's share of the
            class's soft-matching mass (shares of all descriptions of a class sum to 1).
    """

    label: str
    index: int
    score: float
    mass: float
    descriptions: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Drawn:
    """What the renderer actually drew, read back from the figure (for tests and callers).

    Attributes:
        size: ``(width, height)`` of the PNG in pixels.
        boxes: pixel-crop boxes drawn, half-open ``(x0, y0, x1, y1)`` in original pixels.
        windows: feature windows drawn, half-open ``(row0, row1, col0, col1)`` on the CLIP grid.
        overlay_box: where panel (a)'s image lies in the PNG, half-open ``(x0, y0, x1, y1)`` pixels.
        titles: the panel titles, in order (each starts with its unique letter).
        class_labels / score_labels: the score panel's class tick labels and bar values, best first.
        description_labels / share_labels: the description panel's tick labels and bar values, top row first.
    """

    size: tuple[int, int]
    boxes: list[views.Box]
    windows: list[views.Window]
    overlay_box: tuple[int, int, int, int]
    titles: list[str] = field(default_factory=list)
    class_labels: list[str] = field(default_factory=list)
    score_labels: list[str] = field(default_factory=list)
    description_labels: list[str] = field(default_factory=list)
    share_labels: list[str] = field(default_factory=list)


@dataclass
class Explanation:
    """Everything the explanation picture shows, for one image.

    Attributes:
        image: the RGB image; source: where it came from; model: the CLIP model's name.
        map: ``[rows, cols]`` the map shown in panel (a); map_kind: ``attention``, ``rollout`` or ``text``;
            map_label: what the map is; map_region: the pixel box ``(x0, y0, x1, y1)`` its grid spans.
        attention_label: the attention source ABS used.
        boxes: pixel-crop boxes used by the prediction; windows: feature-crop windows (CLIP grid).
        centres: ``(x, y, count)`` pixel-crop centres and how many crops were drawn there.
        clip_grid: ``(rows, cols)`` of the CLIP token grid; clip_region: the pixel box the CLIP
            input covers (its centre crop).
        top: the top classes with their description evidence.
        settings: ABS settings and seed (provenance for the caption).
        num_classes: how many classes the image was scored against (0: unknown).
    """

    image: Image.Image
    source: str
    model: str
    map: np.ndarray
    map_kind: str
    map_label: str
    map_region: views.Box
    attention_label: str
    boxes: list[views.Box]
    windows: list[views.Window]
    centres: list[tuple[int, int, int]]
    clip_grid: tuple[int, int]
    clip_region: views.Box
    top: list[ClassEvidence]
    settings: dict[str, Any]
    num_classes: int = 0

    def figure(self, *, dpi: int = 100) -> tuple[Figure, Drawn]:
        """Return the explanation figure and what was drawn on it (see :func:`render`)."""
        return render(self, dpi=dpi)

    def save(self, path: str | os.PathLike, *, dpi: int = 100) -> Drawn:
        """Write the picture as PNG to ``path``; return what was drawn (boxes, windows, size)."""
        fig, drawn = render(self, dpi=dpi)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png")
        return drawn

    def to_png(self, *, dpi: int = 100) -> bytes:
        """Return the picture as PNG bytes."""
        fig, _ = render(self, dpi=dpi)
        buf = io.BytesIO()
        fig.savefig(buf, dpi=dpi, format="png")
        return buf.getvalue()

    def summary(self) -> dict[str, Any]:
        """Return a JSON-able summary: top classes with scores and description shares, and the map used."""
        return {
            "image": self.source,
            "map": self.map_kind,
            "map_label": self.map_label,
            "attention": self.attention_label,
            "pixel_crops": len(self.boxes),
            "feature_crops": len(self.windows),
            "classes": self.num_classes,
            "top": [{"label": c.label, "score": c.score, "mass": c.mass,
                     "descriptions": [{"text": t, "share": s} for t, s in c.descriptions]} for c in self.top],
        }


# -----------------------------------------------------------------------------------------------
# Computing an explanation
# -----------------------------------------------------------------------------------------------


def source_label(src: AttentionSource) -> str:
    """Return a short description of an attention source for titles (e.g. ``dino-vitb16: CLS attention ...``)."""
    from absclip.attention.sources import ClipSelfAttention

    label = getattr(src, "label", None)
    if isinstance(label, str) and label:
        return label
    layer = getattr(src, "layer", -1)
    kind = "CLIP self-attention" if isinstance(src, ClipSelfAttention) else Path(str(src.name)).name
    return f"{kind}: CLS attention, layer {layer}, head mean"


def clip_input_region(backbone: Backbone, width: int, height: int) -> views.Box:
    """Return the pixel box ``(x0, y0, x1, y1)`` of a ``width`` × ``height`` image that the CLIP input covers.

    Read from the backbone's torchvision preprocessing: ``Resize`` (shorter side or fixed size)
    followed by ``CenterCrop`` covers a centred box; without a centre crop the whole image.
    """
    from torchvision import transforms as T

    steps = list(getattr(backbone.preprocess, "transforms", []))
    resize = next((t for t in steps if isinstance(t, T.Resize)), None)
    crop = next((t for t in steps if isinstance(t, T.CenterCrop)), None)
    if crop is None:
        return 0, 0, width, height
    ch, cw = (crop.size, crop.size) if isinstance(crop.size, int) else tuple(crop.size)[:2]
    size = resize.size if resize is not None else None
    if isinstance(size, (list, tuple)) and len(size) == 2:
        sx, sy = size[1] / width, size[0] / height
    else:
        side = size[0] if isinstance(size, (list, tuple)) else size
        s = (side / min(width, height)) if side else 1.0
        sx = sy = s
    bw, bh = min(width, cw / sx), min(height, ch / sy)
    x0, y0 = (width - bw) / 2, (height - bh) / 2
    return int(round(x0)), int(round(y0)), int(round(x0 + bw)), int(round(y0 + bh))


def explain(
    clf: Classifier,
    image: str | os.PathLike | Image.Image | ImageItem,
    *,
    top: int = 5,
    map: str = "attention",  # shadows the builtin on purpose: it is the CLI option's name
    map_class: str | None = None,
    classes_shown: int = 3,
    descriptions_shown: int = 3,
) -> Explanation:
    """Return the :class:`Explanation` of ABS's prediction for one image.

    Classifies the image with the classifier's ABS method (same model, attention source, ABS
    settings and seed as ``classify``) and keeps the views it used.

    Args:
        clf: a classifier with classes set.
        image: a path, PIL image or :class:`ImageItem`.
        top: number of classes in the score chart.
        map: the map shown in panel (a): ``attention`` (the attention source ABS used),
            ``rollout`` (attention rollout of the same attention model; ABS's own source is
            unchanged unless it is a rollout already) or ``text`` (patch–description similarity
            of ``map_class``, by default the predicted class).
        map_class: class of the text map (default: the top-1 class).
        classes_shown: top classes whose descriptions are listed.
        descriptions_shown: descriptions listed per class.

    Raises:
        AbsclipError: unknown map kind or class, no classes set.
    """
    from absclip.attention.layered import LayeredAttention, layered_attention
    from absclip.attention.maps import text_similarity_map
    from absclip.core.scoring import soft_match_description_mass

    if map not in MAP_KINDS:
        raise AbsclipError(f"Unknown map {map!r}; choose from {', '.join(MAP_KINDS)}.")
    item = image if isinstance(image, ImageItem) else make_item(image)
    method = clf.method("abs")
    ctx = clf.context([item], ["abs"])
    v = method.views(ctx, clf.seed)[0]
    logits = method.score([v]).float()
    ranked = clf.ranked(logits, "abs", top=max(top, 1))[0]
    bank = method.bank
    cfg = method.settings
    mass = soft_match_description_mass(v.embeddings[None], bank.emb, bank.mask, cfg.score_temperature)[0]  # [C, M]
    total = float(mass.sum()) or 1.0
    evidence = []
    for rank, r in enumerate(ranked):
        c = r["index"]
        cm = mass[c]
        descs: list[tuple[str, float]] = []
        if rank < classes_shown:
            share = cm / cm.sum().clamp_min(1e-30)
            order = [int(m) for m in _argsort_desc(share) if bool(bank.mask[c, int(m)])]
            descs = [(bank.texts[c][m], float(share[m])) for m in order[:descriptions_shown]]
        evidence.append(ClassEvidence(r["label"], c, float(r["score"]), float(cm.sum()) / total, descs))

    src = clf.attention
    bb = clf.backbone
    w, h = item.size
    clip_region = clip_input_region(bb, w, h)
    if map == "attention":
        grid_map = v.attention.reshape(src.grid)
        label, region = f"attention used by ABS — {source_label(src)}", (0, 0, w, h)
    elif map == "rollout":
        if isinstance(src, LayeredAttention) and src.rollout:
            rsrc: AttentionSource = src
            grid_map = v.attention.reshape(src.grid)
        else:
            rsrc = layered_attention(src, bb, rollout=clf.attention_rollout or "mean",
                                     sink_threshold=clf.sink_threshold)
            grid_map = rsrc([item.image])[0].reshape(rsrc.grid)
        label, region = f"{source_label(rsrc)} (ABS used: {source_label(src)})", (0, 0, w, h)
    else:
        cidx = clf.inputs.classes.index(map_class) if map_class else ranked[0]["index"]
        patches = bb.patch_embeddings(ctx.tokens, ctx.feature_layer)
        sim = text_similarity_map(patches, bank.emb[cidx], bank.mask[cidx])[0]
        grid_map = sim.reshape(bb.facts.grid)
        label = f"patch–description cosine for '{clf.classes[cidx]}' (CLIP last layer; display only)"
        region = clip_region

    aw = src.grid[1]
    counts = Counter(int(i) for i in v.topk_idx.numpy()[v.draws.pix_pos])
    centres = []
    for idx, n in sorted(counts.items()):
        cx, cy = views.box_centre(views.patch_box(idx, w, h, src.grid[0], aw))
        centres.append((cx, cy, n))
    return Explanation(
        image=item.image, source=item.source, model=bb.name, map=np.asarray(grid_map, dtype=np.float32),
        map_kind=map, map_label=label, map_region=tuple(region), attention_label=source_label(src),
        boxes=[tuple(int(x) for x in b) for b in v.boxes], windows=[tuple(int(x) for x in wd) for wd in v.windows],
        centres=centres, clip_grid=tuple(bb.facts.grid), clip_region=clip_region, top=evidence,
        settings={"pixel_crops": cfg.pixel_crops, "feature_crops": cfg.feature_crops, "top_k": cfg.top_k,
                  "seed": clf.seed},
        num_classes=len(clf.classes),
    )


def _argsort_desc(x: Any) -> list[int]:
    """Return the indices of ``x`` (a 1-D tensor or array) sorted by descending value (stable)."""
    arr = np.asarray(x, dtype=np.float64)
    return [int(i) for i in np.argsort(-arr, kind="stable")]


# -----------------------------------------------------------------------------------------------
# Rendering
# -----------------------------------------------------------------------------------------------


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise AbsclipError("Pictures need matplotlib: pip install 'absclip[viz]'.") from e


def heatmap_overlay(
    image: np.ndarray, grid_map: np.ndarray, region: views.Box, *, cmap: str = HEATMAP_CMAP, max_alpha: float = 0.7
) -> np.ndarray:
    """Return ``image`` with ``grid_map`` blended in as a heat map: ``[H, W, 3]`` uint8.

    The map is min-max normalised to [0, 1], resized bilinearly onto ``region`` and coloured
    with ``cmap``; its opacity grows with the value (``max_alpha * sqrt(value)``: ``max_alpha``
    at the maximum, 0 at the minimum), so low-attention areas stay as they were.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        grid_map: ``[rows, cols]`` map on a grid spanning ``region``.
        region: half-open pixel box ``(x0, y0, x1, y1)`` the grid spans.
    """
    from matplotlib import colormaps

    m = np.asarray(grid_map, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    norm = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    x0, y0, x1, y1 = region
    up = np.asarray(Image.fromarray(norm, mode="F").resize((x1 - x0, y1 - y0), Image.BILINEAR), dtype=np.float32)
    up = np.clip(up, 0.0, 1.0)
    colour = colormaps[cmap](up)[..., :3] * 255.0  # [h, w, 3]
    alpha = (max_alpha * np.sqrt(up))[..., None]  # sqrt: mid values stay visible, the minimum stays clear
    out = image.astype(np.float32).copy()
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _short(text: str, width: int) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder="…")


def format_distinct(
    values: list[float], *, percent: bool = False, decimals: int = 1, max_decimals: int = 10
) -> list[str]:
    """Return ``values`` formatted with as few decimals as tell them apart (at least ``decimals``).

    Decimals are added until values that differ get different strings and no non-zero value reads
    as zero, so that a ranking of 1000 classes with scores near 0.1% still reads as a ranking
    (``0.1012%``, ``0.1009%`` rather than ``0.1%`` twice). ``percent``: formatted as ``%``.
    """
    scaled = [100.0 * v if percent else float(v) for v in values]
    suffix = "%" if percent else ""
    for d in range(decimals, max_decimals + 1):
        out = [f"{v:.{d}f}" for v in scaled]
        seen: dict[str, set[float]] = {}
        for v, s in zip(scaled, out):
            seen.setdefault(s, set()).add(v)
        if all(len(vs) == 1 for vs in seen.values()) and not any(v != 0 and float(s) == 0 for v, s in zip(scaled, out)):
            break
    return [s + suffix for s in out]


def shorten_distinct(texts: list[str], width: int) -> list[str]:
    """Return ``texts`` shortened to about ``width`` characters, distinct where the texts are.

    A text is shortened at its end; texts that would then read alike are shortened in the middle
    instead (keeping their distinct endings), and any still alike get `` [2]``, `` [3]`` ….
    """
    clean = [" ".join(t.split()) for t in texts]
    out = [_short(t, width) for t in clean]

    def clashes(xs: list[str]) -> set[int]:
        seen: dict[str, set[str]] = {}
        for x, t in zip(xs, clean):
            seen.setdefault(x, set()).add(t)
        return {i for i, x in enumerate(xs) if len(seen[x]) > 1}

    for i in clashes(out):
        t = clean[i]
        if len(t) > width:
            tail = max(8, (width - 1) // 2)
            out[i] = t[: width - 1 - tail].rstrip() + "…" + t[-tail:].lstrip()
    count: dict[str, int] = {}
    for i in sorted(clashes(out)):
        count[out[i]] = count.get(out[i], 0) + 1
        if count[out[i]] > 1:
            out[i] = f"{out[i]} [{count[out[i]]}]"
    return out


def render(expl: Explanation, *, dpi: int = 100) -> tuple[Figure, Drawn]:
    """Return the explanation figure (matplotlib, Agg canvas) and what was drawn on it.

    Panels: (a) the map as a heat-map overlay; (b) the pixel-crop boxes and their centres on the
    image; (c) the feature-crop windows on the CLIP token grid; (d) the top class scores (at most
    :data:`MAX_BARS` bars; the title counts the classes not shown), with as many decimals as tell
    the shown scores apart; (e) the descriptions with the most soft-matching mass for the top
    classes. Shortened class names and descriptions stay distinct (:func:`shorten_distinct`).
    """
    _require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    img = np.asarray(expl.image.convert("RGB"))
    h, w = img.shape[:2]
    gh, gw = expl.clip_grid
    fig = Figure(figsize=FIGSIZE, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    top_row, bottom_row = fig.subfigures(2, 1, height_ratios=[1.15, 1.0])
    ax_a, ax_b, ax_g = top_row.subplots(1, 3, width_ratios=[1.2, 1.0, 0.8])
    ax_c, ax_d = bottom_row.subplots(1, 2, width_ratios=[1.0, 2.2])

    best = expl.top[0] if expl.top else None
    name = Path(expl.source).name if expl.source and not expl.source.startswith("<") else "image"
    shown = expl.top[:MAX_BARS]
    score_text = format_distinct([c.score for c in shown], percent=True)
    head = f"{name}: ABS predicts '{best.label}' ({score_text[0]})" if best else name
    fig.suptitle(f"{head}\nmodel {expl.model} · attention: {expl.attention_label} · "
                 f"{expl.settings.get('pixel_crops')} pixel + {expl.settings.get('feature_crops')} feature crops · "
                 f"seed {expl.settings.get('seed')}", fontsize=12)

    # (a) heat-map overlay
    ax_a.imshow(heatmap_overlay(img, expl.map, expl.map_region), extent=(0, w, h, 0), interpolation="antialiased")
    x0, y0, x1, y1 = expl.map_region
    if (x0, y0, x1, y1) != (0, 0, w, h):
        ax_a.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.2, ls="--"))
    sm = ScalarMappable(norm=Normalize(float(expl.map.min()), float(expl.map.max())), cmap=colormaps[HEATMAP_CMAP])
    top_row.colorbar(sm, ax=ax_a, shrink=0.8, label="cosine" if expl.map_kind == "text" else "attention")
    ax_a.set_title("(a) " + "\n".join(textwrap.wrap(expl.map_label, 48)), fontsize=10)
    ax_a.set_xlabel("x (pixels)")
    ax_a.set_ylabel("y (pixels)")

    # (b) pixel crops and their centres
    ax_b.imshow(img, extent=(0, w, h, 0))
    box_alpha = _outline_alpha(len(expl.boxes))
    for bx0, by0, bx1, by1 in expl.boxes:
        ax_b.add_patch(Rectangle((bx0, by0), bx1 - bx0, by1 - by0, fill=False, ec=OKABE_ITO["orange"], lw=1.0,
                                 alpha=box_alpha, gid="pixel-crop"))
    if expl.centres:
        cx, cy, cn = zip(*expl.centres)
        ax_b.scatter(cx, cy, s=[20 + 12 * n for n in cn], c=OKABE_ITO["sky"], edgecolors="black", linewidths=0.8,
                     zorder=3)
    rx0, ry0, rx1, ry1 = expl.clip_region
    ax_b.add_patch(Rectangle((rx0, ry0), rx1 - rx0, ry1 - ry0, fill=False, ec="white", lw=1.2, ls="--",
                             gid="clip-region"))
    ax_b.set_xlim(0, w)
    ax_b.set_ylim(h, 0)
    ax_b.legend(handles=[Patch(fill=False, ec=OKABE_ITO["orange"], label=f"pixel crop ({len(expl.boxes)})"),
                         Line2D([], [], ls="", marker="o", mfc=OKABE_ITO["sky"], mec="black",
                                label="crop centre (size: draws)"),
                         Patch(fill=False, ec="black", ls="--", label="CLIP input (centre crop)")],
                loc="lower right", fontsize=7, framealpha=0.85)
    ax_b.set_title(f"(b) {len(expl.boxes)} pixel crops used for the prediction", fontsize=10)
    ax_b.set_xlabel("x (pixels)")
    ax_b.set_ylabel("y (pixels)")

    # (b) feature windows on the CLIP token grid
    region_img = expl.image.crop(expl.clip_region).convert("RGB")
    ax_g.imshow(np.asarray(region_img), extent=(0, gw, gh, 0))
    for r in range(1, gh):
        ax_g.axhline(r, color="white", lw=0.3, alpha=0.5)
    for c in range(1, gw):
        ax_g.axvline(c, color="white", lw=0.3, alpha=0.5)
    win_alpha = _outline_alpha(len(expl.windows))
    for r0, r1, c0, c1 in expl.windows:
        ax_g.add_patch(Rectangle((c0, r0), c1 - c0, r1 - r0, fill=False, ec=OKABE_ITO["vermillion"], lw=1.0,
                                 alpha=win_alpha, gid="feature-window"))
    ax_g.set_xlim(0, gw)
    ax_g.set_ylim(gh, 0)
    ax_g.set_title(f"(c) {len(expl.windows)} feature-crop windows\non the {gh}×{gw} CLIP token grid", fontsize=10)
    ax_g.set_xlabel("token column")
    ax_g.set_ylabel("token row")

    # (d) top-k scores: at most MAX_BARS bars, values with enough decimals to rank them
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    labels = shorten_distinct([c.label for c in shown], 28)[::-1]
    scores = [c.score for c in shown][::-1]
    colours = [OKABE_ITO["sky"]] * (len(scores) - 1) + [OKABE_ITO["blue"]] if scores else []
    ax_c.barh(range(len(scores)), scores, color=colours)
    ax_c.set_yticks(range(len(scores)), labels)
    for i, s in enumerate(score_text[::-1]):
        ax_c.text(scores[i], i, f" {s}", va="center", fontsize=9, gid="score")
    ax_c.set_xlim(0, max(scores + [1e-6]) * 1.35)
    ax_c.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax_c.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax_c.set_xlabel("probability (ABS score)")
    ax_c.set_ylabel("class")
    total = max(expl.num_classes, len(expl.top))
    more = f" (+ {total - len(shown)} more not shown)" if total > len(shown) else ""
    ax_c.set_title(f"(d) top-{len(scores)} of {total} class scores{more}", fontsize=10)

    # (e) description evidence
    rows, row_colours, handles = [], [], []
    with_desc = [cl for cl in expl.top if cl.descriptions]
    class_names = shorten_distinct([c.label for c in with_desc], 30)
    texts = shorten_distinct([t for c in with_desc for t, _ in c.descriptions], 70)
    for k, c in enumerate(with_desc):
        colour = OKABE_ITO[CLASS_COLOURS[k % len(CLASS_COLOURS)]]
        handles.append(Patch(color=colour, label=f"{class_names[k]} ({c.mass:.0%} of all matching mass)"))
        for _, share in c.descriptions:
            rows.append((texts[len(rows)], share))
            row_colours.append(colour)
    share_text = format_distinct([s for _, s in rows], percent=True, decimals=0)[::-1]
    rows, row_colours = rows[::-1], row_colours[::-1]
    ax_d.barh(range(len(rows)), [s for _, s in rows], color=row_colours)
    ax_d.set_yticks(range(len(rows)), [t for t, _ in rows], fontsize=8)
    for i, (_, s) in enumerate(rows):
        ax_d.text(s, i, f" {share_text[i]}", va="center", fontsize=8, gid="share")
    ax_d.set_xlim(0, 1.12)
    ax_d.set_xlabel("share of the class's soft-matching mass")
    ax_d.set_ylabel("description")
    if handles:
        ax_d.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.85)
    ax_d.set_title("(e) descriptions that received the most soft-matching mass", fontsize=10)

    fig.canvas.draw()
    drawn = Drawn(
        size=(int(round(FIGSIZE[0] * dpi)), int(round(FIGSIZE[1] * dpi))),
        boxes=[_box_of(p) for p in ax_b.patches if p.get_gid() == "pixel-crop"],
        windows=[_window_of(p) for p in ax_g.patches if p.get_gid() == "feature-window"],
        overlay_box=_png_box(ax_a, fig, w, h),
        titles=[ax.get_title() for ax in (ax_a, ax_b, ax_g, ax_c, ax_d)],
        class_labels=[t.get_text() for t in ax_c.get_yticklabels()][::-1],
        score_labels=[t.get_text().strip() for t in ax_c.texts if t.get_gid() == "score"][::-1],
        description_labels=[t.get_text() for t in ax_d.get_yticklabels()][::-1],
        share_labels=[t.get_text().strip() for t in ax_d.texts if t.get_gid() == "share"][::-1],
    )
    return fig, drawn


def _outline_alpha(n: int) -> float:
    """Return the opacity of ``n`` overlapping outlines: solid for a few, lighter for many (overlaps add up)."""
    return float(min(0.9, max(0.3, 3.0 / max(n, 1) ** 0.5)))


def _box_of(rect: Any) -> views.Box:
    x, y = rect.get_xy()
    return int(round(x)), int(round(y)), int(round(x + rect.get_width())), int(round(y + rect.get_height()))


def _window_of(rect: Any) -> views.Window:
    x, y = rect.get_xy()
    return int(round(y)), int(round(y + rect.get_height())), int(round(x)), int(round(x + rect.get_width()))


def _png_box(ax: Any, fig: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """Return the PNG pixel box of data rectangle ``[0, width] × [0, height]`` of ``ax`` (rounded inwards)."""
    fig_h = fig.get_size_inches()[1] * fig.dpi
    (dx0, dy0), (dx1, dy1) = ax.transData.transform([(0, 0), (width, height)])
    left, right = sorted((dx0, dx1))
    top, bottom = sorted((fig_h - dy0, fig_h - dy1))
    return int(np.ceil(left)), int(np.ceil(top)), int(np.floor(right)), int(np.floor(bottom))
