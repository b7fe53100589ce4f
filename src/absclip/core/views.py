"""Crop geometry for ABS: pure functions of integers.

Nothing here touches tensors, random numbers, devices or files, so every function can be
tested exactly against the golden fixture and by property tests.

Conventions (the same as the golden fixture and PIL):

* pixel boxes are half-open ``(x0, y0, x1, y1)`` in original-image pixels (``x1``/``y1``
  exclusive), exactly what ``PIL.Image.crop`` takes;
* grid windows are half-open ``(row0, row1, col0, col1)`` on a token grid;
* a flat grid index is row-major: ``index = row * grid_w + col``."""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[int, int, int, int]
Window = tuple[int, int, int, int]


def ratio_bounds(length: int, lo: float, hi: float) -> tuple[int, int]:
    """Return inclusive integer bounds ``(int(lo*length), int(hi*length))`` for a crop side.

    This is the reference's ``random.randint(int(W*0.6), int(W*0.9))`` range. Both bounds are
    clamped to ``[1, length]`` so that tiny images still give a non-empty crop.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    a = max(1, min(length, int(lo * length)))
    b = max(a, min(length, int(hi * length)))
    return a, b


def window_bounds(grid: int, lo: float, hi: float) -> tuple[int, int]:
    """Return inclusive bounds for the feature-window side ``c`` on a ``grid``-sized grid.

    The reference draws ``randint(int(lo*G), int(hi*G))`` and, when both bounds are equal,
    widens the upper one by 1 (spec §4). Bounds are clamped to at least 1.
    """
    a = max(1, int(lo * grid))
    b = max(1, int(hi * grid))
    if b < a:
        b = a
    if a == b:
        b = a + 1
    return a, b


def patch_box(index: int, width: int, height: int, grid_h: int, grid_w: int) -> Box:
    """Return the pixel box ``(x0, y0, x1, y1)`` of attention-grid cell ``index``.

    The attention grid (``grid_h`` × ``grid_w``) spans the whole original image (the attention
    model sees it squashed). ``x0 = floor(col*W/grid_w)`` with exact integer arithmetic; the
    reference evaluates this in float32 and is one pixel lower for some widths (e.g. W=454,
    col=7) — a documented, deliberate difference. The box is clipped to the image and is never
    empty (for images narrower than the grid a cell is widened to one pixel).
    """
    row, col = divmod(int(index), grid_w)
    if not 0 <= row < grid_h:
        raise ValueError(f"index {index} is outside a {grid_h}x{grid_w} grid")
    x0 = min(col * width // grid_w, width - 1)
    y0 = min(row * height // grid_h, height - 1)
    x1 = min(x0 + max(width // grid_w, 1), width)
    y1 = min(y0 + max(height // grid_h, 1), height)
    return x0, y0, x1, y1


def box_centre(box: Box) -> tuple[int, int]:
    """Return the integer midpoint ``((x0+x1)//2, (y0+y1)//2)`` of a box."""
    x0, y0, x1, y1 = box
    return (x0 + x1) // 2, (y0 + y1) // 2


def centred_box(cx: int, cy: int, w: int, h: int, width: int, height: int) -> Box:
    """Return the crop box of size about ``w`` × ``h`` centred at ``(cx, cy)``, clipped to the image.

    The reference box is ``[cx - w//2, cx + w//2) × [cy - h//2, cy + h//2)``: clipped, not shifted
    back inside, so crops near a border are smaller, and an odd ``w`` gives a box one pixel
    narrower. For ``w`` or ``h`` of 1 (tiny images) the box is widened to one pixel so that it
    is never empty.
    """
    x0 = max(cx - w // 2, 0)
    y0 = max(cy - h // 2, 0)
    x1 = min(cx + w // 2, width)
    y1 = min(cy + h // 2, height)
    if x1 <= x0:  # w == 1, or a centre on the right edge of a 1-pixel-wide image
        x0 = min(max(cx, 0), width - 1)
        x1 = x0 + 1
    if y1 <= y0:
        y0 = min(max(cy, 0), height - 1)
        y1 = y0 + 1
    return x0, y0, x1, y1


def pixel_crop_box(index: int, w: int, h: int, width: int, height: int, grid_h: int, grid_w: int) -> Box:
    """Return the ABS pixel-crop box for attention cell ``index`` and crop size ``w`` × ``h`` (spec §3)."""
    cx, cy = box_centre(patch_box(index, width, height, grid_h, grid_w))
    return centred_box(cx, cy, w, h, width, height)


def pixel_crop_boxes(
    indices: Sequence[int],
    widths: Sequence[int],
    heights: Sequence[int],
    width: int,
    height: int,
    grid_h: int,
    grid_w: int,
) -> list[Box]:
    """Return one pixel-crop box per (index, w, h) triple; see :func:`pixel_crop_box`."""
    return [
        pixel_crop_box(int(i), int(w), int(h), width, height, grid_h, grid_w)
        for i, w, h in zip(indices, widths, heights, strict=True)
    ]


def map_index_to_grid(index: int, src_h: int, src_w: int, dst_h: int, dst_w: int) -> int:
    """Map a flat index on a ``src`` grid to the cell containing it on a ``dst`` grid.

    ``row' = floor(row * dst_h / src_h)`` (likewise columns): identity for equal grids,
    ``row // 2`` for 14 → 7, ``floor(row * 16 / 14)`` for 14 → 16, as the reference does; the same
    rule for every model's grid (24, 27, 32 ... rows, non-square grids) and every attention grid.
    """
    row, col = divmod(int(index), src_w)
    return (row * dst_h // src_h) * dst_w + col * dst_w // src_w


def map_index_aligned(
    index: int,
    src_h: int,
    src_w: int,
    width: int,
    height: int,
    crop_size: int,
    dst_h: int,
    dst_w: int,
    *,
    squash: bool = False,
) -> int:
    """Map an attention-grid index to the CLIP token grid *through pixel space* (option "aligned").

    The attention grid covers the whole (squashed) image; the CLIP grid covers the centre crop
    of the image resized so that its shorter side is ``crop_size`` (OpenAI CLIP's preprocessing),
    or, with ``squash`` (SigLIP's resize without centre crop), the whole image. The centre of the
    source cell is mapped into that region and clamped to the grid. For square images (and always
    with ``squash``) this is the cell containing the source cell's centre.
    """
    row, col = divmod(int(index), src_w)
    if squash:  # both grids span the whole image: bin the cell centre, (col + 0.5) / src_w, on dst
        return min((2 * row + 1) * dst_h // (2 * src_h), dst_h - 1) * dst_w + \
            min((2 * col + 1) * dst_w // (2 * src_w), dst_w - 1)
    # centre of the source cell, in original pixels (float, exact for the purpose of binning)
    px = (col + 0.5) * width / src_w
    py = (row + 0.5) * height / src_h
    scale = crop_size / min(width, height)
    # resized image, then centre crop of crop_size
    rx = px * scale - (width * scale - crop_size) / 2
    ry = py * scale - (height * scale - crop_size) / 2
    c = min(max(int(rx * dst_w // crop_size), 0), dst_w - 1)
    r = min(max(int(ry * dst_h // crop_size), 0), dst_h - 1)
    return r * dst_w + c


def feature_window(index: int, size: int, grid_h: int, grid_w: int) -> Window:
    """Return the token window ``(row0, row1, col0, col1)`` (half-open) for centre ``index`` (spec §4).

    ``half = size // 2``; rows ``[max(0, r-half), min(G, r+half+1))``, likewise columns. The
    window side is therefore odd (``2*half + 1``) before clipping at the grid border.
    """
    row, col = divmod(int(index), grid_w)
    half = int(size) // 2
    return (
        max(0, row - half),
        min(grid_h, row + half + 1),
        max(0, col - half),
        min(grid_w, col + half + 1),
    )


def feature_windows(indices: Sequence[int], sizes: Sequence[int], grid_h: int, grid_w: int) -> list[Window]:
    """Return one window per (index, size) pair; see :func:`feature_window`."""
    return [feature_window(int(i), int(s), grid_h, grid_w) for i, s in zip(indices, sizes, strict=True)]


def square_crop_box(x0: int, y0: int, side: int, width: int, height: int) -> Box:
    """Return the square box of ``side`` px at top-left ``(x0, y0)``, clipped and never empty (WCA crops)."""
    side = max(1, min(side, width, height))
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return x0, y0, x0 + side, y0 + side


def crop_token_cells(
    box: Box,
    width: int,
    height: int,
    grid_h: int,
    grid_w: int,
    attn_h: int,
    attn_w: int,
) -> list[int]:
    """Return, for each token of a pixel crop (row-major CLIP grid), the attention-grid cell under its centre.

    The crop is preprocessed the CLIP way (shorter side resized, centre square cropped), so the
    model sees the centred square of side ``min(box width, box height)``; the CLIP token grid
    (``grid_h`` × ``grid_w``) tiles that square. The attention grid (``attn_h`` × ``attn_w``)
    spans the whole ``width`` × ``height`` image. Used by ABS's fast mode to rank a crop's tokens
    by the image's attention map (token dropping); centre-crop rounding (< 1 px) is ignored.
    """
    x0, y0, x1, y1 = box
    side = min(x1 - x0, y1 - y0)
    left = x0 + (x1 - x0 - side) / 2
    top = y0 + (y1 - y0 - side) / 2
    cells = []
    for r in range(grid_h):
        y = top + (r + 0.5) * side / grid_h
        ar = min(max(int(y * attn_h / height), 0), attn_h - 1)
        for c in range(grid_w):
            x = left + (c + 0.5) * side / grid_w
            ac = min(max(int(x * attn_w / width), 0), attn_w - 1)
            cells.append(ar * attn_w + ac)
    return cells
