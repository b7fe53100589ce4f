"""Draw the example images of the README (``python examples/make_examples.py`` writes them next to this file).

The pictures are simple drawings made here, so the repository ships no third-party photos: a red
ball on grass, a sunset over the sea, and a chessboard."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 224


def ball() -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (70, 150, 60))
    d = ImageDraw.Draw(im)
    for y in range(0, SIZE, 6):  # blades of grass
        d.line([(0, y), (SIZE, y + 3)], fill=(60, 135 + (y % 30), 50), width=2)
    d.ellipse([52, 52, 172, 172], fill=(205, 30, 35), outline=(120, 10, 15), width=3)
    d.ellipse([80, 75, 110, 100], fill=(240, 120, 120))  # highlight
    return im


def sunset() -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(im)
    for y in range(SIZE // 2 + 20):  # sky: orange to purple
        t = y / (SIZE // 2 + 20)
        d.line([(0, y), (SIZE, y)], fill=(int(120 + 130 * t), int(60 + 90 * t), int(140 - 100 * t)))
    d.pieslice([62, 92, 162, 192], 180, 360, fill=(255, 215, 80))  # the sun on the horizon
    for y in range(SIZE // 2 + 20, SIZE):  # sea
        d.line([(0, y), (SIZE, y)], fill=(20, 40 + (y % 9) * 4, 90))
    return im


def chessboard() -> Image.Image:
    im = Image.new("RGB", (SIZE, SIZE), (240, 230, 210))
    d = ImageDraw.Draw(im)
    cell = SIZE // 8
    for r in range(8):
        for c in range(8):
            if (r + c) % 2:
                d.rectangle([c * cell, r * cell, (c + 1) * cell - 1, (r + 1) * cell - 1], fill=(90, 60, 40))
    return im


def main() -> None:
    for name, draw in (("ball", ball), ("sunset", sunset), ("chessboard", chessboard)):
        draw().save(HERE / f"{name}.png", optimize=True)


if __name__ == "__main__":
    main()
