"""Crop geometry: exact cases from the spec and property tests over image and grid sizes."""

from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from absclip.core import views

GRIDS = st.sampled_from([7, 14, 16])
SIZES = st.integers(1, 4000)
RATIOS = st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)).map(lambda t: (min(t), max(t)))


def test_views_is_pure():
    """views imports no torch/numpy/PIL: geometry stays a pure function of ints."""
    tree = ast.parse(Path(views.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "collections"}


def test_patch_box_exact_integer_arithmetic():
    # W=454, col 7: exact floor(7*454/14) = 227 (the reference's float32 gives 226)
    assert views.patch_box(7, 454, 300, 14, 14)[0] == 227
    assert views.patch_box(0, 451, 300, 14, 14) == (0, 0, 32, 21)
    assert views.patch_box(195, 451, 300, 14, 14) == (418, 278, 450, 299)


def test_centred_box_clips_not_shifts():
    assert views.centred_box(10, 10, 100, 50, 451, 300) == (0, 0, 60, 35)
    # odd width: 2*(w//2) wide
    assert views.centred_box(200, 150, 235, 235, 451, 300) == (83, 33, 317, 267)


def test_feature_window_is_odd_and_clipped():
    assert views.feature_window(7 * 14 + 7, 8, 14, 14) == (3, 12, 3, 12)
    assert views.feature_window(7 * 14 + 7, 9, 14, 14) == (3, 12, 3, 12)
    assert views.feature_window(0, 12, 14, 14) == (0, 7, 0, 7)
    assert views.window_bounds(14, 0.6, 0.9) == (8, 12)
    assert views.window_bounds(7, 0.6, 0.9) == (4, 6)
    assert views.window_bounds(16, 0.6, 0.9) == (9, 14)
    assert views.window_bounds(2, 0.6, 0.9) == (1, 2)  # equal bounds: upper + 1


def test_map_index_to_grid_reference_rules():
    for r in range(14):
        for c in range(14):
            i = r * 14 + c
            assert views.map_index_to_grid(i, 14, 14, 14, 14) == i
            assert views.map_index_to_grid(i, 14, 14, 7, 7) == (r // 2) * 7 + c // 2
            assert views.map_index_to_grid(i, 14, 14, 16, 16) == (r * 16 // 14) * 16 + c * 16 // 14


@settings(max_examples=300, deadline=None)
@given(w=SIZES, h=SIZES, grid=GRIDS, ratio=RATIOS, data=st.data())
def test_pixel_boxes_nonempty_and_inside(w, h, grid, ratio, data):
    index = data.draw(st.integers(0, grid * grid - 1))
    wlo, whi = views.ratio_bounds(w, *ratio)
    hlo, hhi = views.ratio_bounds(h, *ratio)
    assert 1 <= wlo <= whi <= w and 1 <= hlo <= hhi <= h
    cw = data.draw(st.integers(wlo, whi))
    ch = data.draw(st.integers(hlo, hhi))
    x0, y0, x1, y1 = views.pixel_crop_box(index, cw, ch, w, h, grid, grid)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    px0, py0, px1, py1 = views.patch_box(index, w, h, grid, grid)
    assert 0 <= px0 < px1 <= w and 0 <= py0 < py1 <= h


@settings(max_examples=300, deadline=None)
@given(grid=GRIDS, src=GRIDS, ratio=RATIOS, data=st.data())
def test_feature_windows_inside_grid(grid, src, ratio, data):
    index = data.draw(st.integers(0, src * src - 1))
    mapped = views.map_index_to_grid(index, src, src, grid, grid)
    assert 0 <= mapped < grid * grid
    lo, hi = views.window_bounds(grid, *ratio)
    size = data.draw(st.integers(lo, hi))
    r0, r1, c0, c1 = views.feature_window(mapped, size, grid, grid)
    assert 0 <= r0 < r1 <= grid and 0 <= c0 < c1 <= grid
    r, c = divmod(mapped, grid)
    assert r0 <= r < r1 and c0 <= c < c1


@settings(max_examples=200, deadline=None)
@given(w=SIZES, h=SIZES, grid=GRIDS, data=st.data())
def test_aligned_mapping_inside_grid(w, h, grid, data):
    index = data.draw(st.integers(0, 14 * 14 - 1))
    mapped = views.map_index_aligned(index, 14, 14, w, h, 224, grid, grid)
    assert 0 <= mapped < grid * grid


def test_aligned_mapping_square_image_matches_reference():
    for i in range(196):
        assert views.map_index_aligned(i, 14, 14, 448, 448, 224, 14, 14) == i


@settings(max_examples=200, deadline=None)
@given(w=SIZES, h=SIZES, x=st.integers(-10, 4000), y=st.integers(-10, 4000), side=st.integers(1, 5000))
def test_square_crops_inside(w, h, x, y, side):
    x0, y0, x1, y1 = views.square_crop_box(x, y, side, w, h)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and x1 - x0 == y1 - y0
