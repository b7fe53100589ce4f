"""Generated scenes for the ``absclip-demo`` model: one red or blue shape on a cluttered, desaturated background.

The ten classes are {red, blue} x {circle, square, triangle, star, cross}. Every scene is a pure
function of ``(seed, index)`` and records its object's box, so tests can ask where attention and
crops fall. The clutter (lines and blobs) is grey-ish (saturation <= 0.2), so the one saturated
object carries the class: a small one is easy to miss in the global view and easy to see in a crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS = ("red", "blue")
SHAPES = ("circle", "square", "triangle", "star", "cross")
#: class names in label order: ``red circle``, ..., ``blue cross``
CLASSES = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)

#: object side as a fraction of the image side
TRAIN_SIZES = (0.15, 0.80)
SMALL_SIZES = (0.08, 0.20)
LARGE_SIZES = (0.40, 0.80)


@dataclass(frozen=True)
class Scene:
    """One generated scene.

    Attributes:
        image: the RGB picture (``size`` x ``size``).
        label: index into :data:`CLASSES`.
        box: the object's pixel box ``(x0, y0, x1, y1)``, x1/y1 exclusive.
    """

    image: Image.Image
    label: int
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return CLASSES[self.label]


def shape_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Return the polygon of ``shape`` centred at ``(cx, cy)`` with outer radius ``r``, rotated by ``angle``."""
    if shape == "circle":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]
    elif shape == "square":
        pts = [(math.cos(t), math.sin(t)) for t in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(math.cos(t), math.sin(t)) for t in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.42) * math.cos(t), (1.0 if i % 2 == 0 else 0.42) * math.sin(t))
               for i, t in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)]
    elif shape == "cross":
        a, b = 0.32, 0.95  # arm half-width, arm length (corners within the unit circle)
        pts = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a),
               (-a, -a)]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _grey(rng: np.random.Generator) -> tuple[int, int, int]:
    """A desaturated colour: a random grey with at most 20% saturation towards a random hue."""
    v = rng.uniform(40, 230)
    tint = rng.uniform(-0.2, 0.2, size=3) * v * 0.5
    return tuple(int(np.clip(v + t, 0, 255)) for t in tint)


def _object_colour(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    hi, lo1, lo2 = rng.uniform(170, 255), rng.uniform(0, 70), rng.uniform(0, 90)
    return (int(hi), int(lo1), int(lo2)) if colour == "red" else (int(lo1), int(lo2), int(hi))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A grey gradient with desaturated clutter (lines and blobs) and faint noise."""
    base = np.array(_grey(rng), dtype=np.float32)
    other = np.array(_grey(rng), dtype=np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(angle) * t[None, :] + math.sin(angle) * t[:, None])
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    arr = base + ramp[..., None] * (other - base)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(12, 30))):
        kind = rng.integers(0, 2)
        x, y = rng.uniform(-0.1, 1.1, size=2) * size
        r = rng.uniform(0.03, 0.25) * size
        if kind == 0:
            x2, y2 = rng.uniform(0, 1, size=2) * size
            draw.line([(x, y), (x2, y2)], fill=_grey(rng), width=int(rng.integers(1, max(2, size // 40))))
        else:
            draw.ellipse([x - r, y - r * rng.uniform(0.3, 1), x + r, y + r], fill=_grey(rng))
    noise = rng.normal(0, 6, size=(size, size, 1)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def make_scene(seed: int, index: int, *, sizes: tuple[float, float] = TRAIN_SIZES, size: int = 224,
               label: int | None = None) -> Scene:
    """Return scene ``index`` of the set ``seed``: a pure function of its arguments.

    Args:
        seed, index: which scene (each pair has its own generator).
        sizes: the object's side as a fraction of the image side, drawn log-uniformly in this range.
        size: the image side in pixels.
        label: the class (None: ``index`` modulo 10, so any 10 consecutive scenes are balanced).
    """
    rng = np.random.default_rng([int(seed), int(index), 0x5CE9E])
    label = int(index) % len(CLASSES) if label is None else int(label)
    colour, shape = CLASSES[label].split(" ")
    img = _background(rng, size)
    side = math.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1]))) * size
    r = side / 2
    cx, cy = rng.uniform(r, size - r, size=2)
    pts = shape_points(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
    ImageDraw.Draw(img).polygon(pts, fill=_object_colour(rng, colour), outline=_grey(rng))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    box = (max(0, math.floor(min(xs))), max(0, math.floor(min(ys))),
           min(size, math.ceil(max(xs)) + 1), min(size, math.ceil(max(ys)) + 1))
    if rng.uniform() < 0.3:  # slight blur: crops of the real scenes are upscaled, hence soft
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return Scene(img, label, box)


def make_scenes(seed: int, count: int, *, sizes: tuple[float, float], size: int = 224) -> list[Scene]:
    """Return scenes ``0..count-1`` of the set ``seed`` (balanced classes in label order, cycling)."""
    return [make_scene(seed, i, sizes=sizes, size=size) for i in range(count)]


#: the named scene sets of the tests and docs: (seed, object sizes); a set's scenes never meet another's
SETS = {"small": (101, SMALL_SIZES), "large": (102, LARGE_SIZES)}


def write_scenes(out: str | Path, name: str, count: int, *, size: int = 224) -> Path:
    """Write ``count`` scenes of the named set to ``out/name/``: PNGs and ``labels.csv`` (path, label, box).

    ``labels.csv`` is a listing ``absclip eval --data out/name`` reads (labels are class names);
    the box columns ``x0,y0,x1,y1`` say where the object is.
    """
    seed, sizes = SETS[name]
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,x0,y0,x1,y1"]
    for i in range(count):
        s = make_scene(seed, i, sizes=sizes, size=size)
        s.image.save(folder / f"{i:05d}.png")
        rows.append(f"{i:05d}.png,{s.name}," + ",".join(str(v) for v in s.box))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder
