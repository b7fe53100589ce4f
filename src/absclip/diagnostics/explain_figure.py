"""The explanation picture: one PNG of an :class:`~absclip.diagnostics.explain.Explanation`.

Panels: (a) the map ABS used as a heat map, (b) the pixel crops and their centres, (c) the
feature-crop windows on the CLIP token grid, (d) the top class scores, (e) the descriptions that
took the soft-matching mass. Colour-blind-safe colours (viridis, Okabe-Ito); labels shortened so
that they stay distinct. Drawing only: what is drawn is computed in :mod:`absclip.diagnostics.explain`."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from absclip.core import views
from absclip.errors import AbsclipError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from absclip.diagnostics.explain import Explanation

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


def require_matplotlib() -> None:
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
    require_matplotlib()
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
