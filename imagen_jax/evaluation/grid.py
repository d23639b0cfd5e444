"""Sample grids for people to look at: images in [-1,1] as a captioned PNG, and the captions again as text."""

import os
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

CAPTION_HEIGHT, GAP = 36, 4  # pixels under each image for its caption; between cells


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1,1] floats -> uint8 [0,255]."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _scale(image_size: int) -> int:
    """How many times small images are enlarged (nearest neighbour), so that a cell is ~96 pixels wide."""
    return max(1, 96 // image_size)


def grid_shape(num_images: int, columns: int, image_size: int) -> tuple[int, int]:
    """(width, height) in pixels of write_grid's PNG for num_images square images of image_size pixels."""
    cell = image_size * _scale(image_size)
    rows = -(-num_images // columns)
    return columns * (cell + GAP), rows * (cell + CAPTION_HEIGHT + GAP)


def write_grid(images: np.ndarray, captions: Sequence[str], path: str, columns: int) -> None:
    """A PNG grid with each image's caption under it, and the captions again in <path>.txt, row by row. Both
    are written to a temporary name and renamed into place, so a reader never sees half a file."""
    pixels = to_uint8(images)
    n, h, w, _ = pixels.shape
    scale = _scale(w)
    cell_w, text_h = w * scale, CAPTION_HEIGHT
    rows = -(-n // columns)
    grid = Image.new("RGB", grid_shape(n, columns, w), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (img, caption) in enumerate(zip(pixels, captions, strict=True)):
        x, y = (i % columns) * (cell_w + GAP), (i // columns) * (h * scale + text_h + GAP)
        grid.paste(Image.fromarray(img).resize((cell_w, h * scale), Image.NEAREST), (x, y))
        lines = textwrap.wrap(caption, width=max(8, cell_w // 6))[:3]
        draw.multiline_text((x + 1, y + h * scale + 1), "\n".join(lines), fill=(0, 0, 0), spacing=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    grid.save(tmp, format="PNG")
    os.replace(tmp, path)
    text_path = os.path.splitext(path)[0] + ".txt"
    with open(f"{text_path}.tmp{os.getpid()}", "w", encoding="utf-8") as f:
        for r in range(rows):
            f.write(" | ".join(captions[r * columns : (r + 1) * columns]) + "\n")
    os.replace(f"{text_path}.tmp{os.getpid()}", text_path)
