"""Drawing helpers shared by the pictures ferfast draws (confusion matrices, the demo's charts and grids): a font
that works with or without FreeType, text cut to a width or placed by an edge or its middle, PNG files written
atomically."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ferfast._io import write_atomic

__all__ = ["draw_text", "fit_text", "load_font", "png_path", "save_png"]


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, fill: Any, align: str) -> None:
    """Draw ``text`` with ``xy`` at its left/middle/right (``align[0]``) and top/middle/bottom (``align[1]``) edge;
    placed from its bounding box, so that bitmap fonts (which have no ``anchor``) work too."""
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    x = xy[0] - {"l": x0, "m": (x0 + x1) / 2, "r": x1}[align[0]]
    y = xy[1] - {"t": y0, "m": (y0 + y1) / 2, "b": y1}[align[1]]
    draw.text((x, y), text, fill=fill, font=font)


def png_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or a ValueError naming ``path`` when it is not a file name ending in ``.png``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).lower().endswith(".png"):
        raise ValueError(f"path must be a file name ending in .png, got {path!r}")
    return Path(path)


def save_png(img: Image.Image, path: Path) -> Path:
    """Write ``img`` as a PNG file at ``path`` atomically (a reader never sees half a file); returns ``path``."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return write_atomic(path, lambda fh: fh.write(buf.getvalue()))
