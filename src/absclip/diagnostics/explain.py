"""Explanations: what ABS looked at for one image, as data (:class:`Explanation`) and as one PNG.

The explanation reuses the prediction's own work: the attention map, crop boxes and token
windows are those :meth:`absclip.methods.abs.ABSMethod.views` returns when classifying the image,
so the picture shows exactly the views that produced the scores. The picture itself is drawn by
:mod:`absclip.diagnostics.explain_figure`.

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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from absclip.core import views
from absclip.core.settings import MAP_KINDS as MAP_KINDS  # torch-free home, for the CLI
from absclip.diagnostics.explain_figure import Drawn, render
from absclip.errors import AbsclipError
from absclip.io.images import ImageItem, make_item

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from absclip.api import Classifier
    from absclip.attention.sources import AttentionSource
    from absclip.backbones.base import Backbone

log = logging.getLogger(__name__)


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
