"""Words on image grids: a figure whose rows say what they are can be read without its caption.

Grids are drawn at the data's resolution (28 or 64 pixels a tile), too small to read on a
screen, so a labelled figure is first enlarged by an integer factor (nearest neighbour: pixels
stay pixels), then given a white left margin with one label per row band.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

FONT_SIZE = 14


def enlarged(image: Tensor, factor: int) -> Tensor:
    """(3, H, W) → (3, factor·H, factor·W), each pixel a factor × factor block."""
    return image.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def row_bands(n_rows: int, tile: int, padding: int = 2, top: int = 0) -> list[tuple[int, int]]:
    """(first, last) pixel row of each tile row of a ``make_grid`` image, from ``top`` down."""
    return [
        (top + padding + r * (tile + padding), top + padding + r * (tile + padding) + tile)
        for r in range(n_rows)
    ]


def with_row_labels(image: Tensor, labels: list[tuple[tuple[int, int], str]], scale: int = 1) -> Tensor:
    """``image`` enlarged ``scale`` times with a left margin holding each text at the middle of
    its (first, last) band of pixel rows (in the unenlarged image's pixels)."""
    big = enlarged(image, scale)
    font = ImageFont.load_default(size=FONT_SIZE)
    width = max((int(font.getlength(text)) for _, text in labels), default=0) + 12
    canvas = Image.new("RGB", (width + big.shape[2], big.shape[1]), "white")
    pixels = (big.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    canvas.paste(Image.fromarray(np.ascontiguousarray(pixels)), (width, 0))
    draw = ImageDraw.Draw(canvas)
    for (first, last), text in labels:
        draw.text((6, scale * (first + last) / 2), text, fill="black", font=font, anchor="lm")
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0
