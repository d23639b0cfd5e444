"""Sample grids for people to look at: images in [-1,1] as a captioned PNG, and the captions again as text."""

import os
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1,1] floats -> uint8 [0,255]."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_grid(images: np.ndarray, captions: Sequence[str], path: str, columns: int) -> None:
    """A PNG grid with each image's caption under it, and the captions again in <path>.txt, row by row."""
    pixels = to_uint8(images)
    n, h, w, _ = pixels.shape
    scale = max(1, 96 // w)
    cell_w, text_h = w * scale, 36
    rows = -(-n // columns)
    grid = Image.new("RGB", (columns * (cell_w + 4), rows * (h * scale + text_h + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (img, caption) in enumerate(zip(pixels, captions, strict=True)):
        x, y = (i % columns) * (cell_w + 4), (i // columns) * (h * scale + text_h + 4)
        grid.paste(Image.fromarray(img).resize((cell_w, h * scale), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, width=max(8, cell_w // 6))[:3]
        draw.multiline_text((x + 1, y + h * scale + 1), "\n".join(lines), fill=(0, 0, 0), spacing=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
        for r in range(rows):
            f.write(" | ".join(captions[r * columns : (r + 1) * columns]) + "\n")
