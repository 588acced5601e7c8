"""FigStep's typographic images: a text plus an empty numbered list, black on white, 760x760, cached on disk.

Rendering uses Pillow's bundled scalable font (`ImageFont.load_default(size=...)`, Pillow >= 10.1), so no
font file is needed. The same text gives the same PNG bytes; images are cached under
`$UNMIRAGE_CACHE_DIR/typography/` (default `~/.cache/unmirage/typography/`), named by a hash of the text
and the rendering settings.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from unmirage.errors import UnmirageError
from unmirage.runs import atomic_open

SIZE = 760
MARGIN = 40
LIST_SUFFIX = "\n1.\n2.\n3."
FONT_SIZES = (80, 64, 56, 48, 40, 34, 28, 24, 20)
"""Largest first: the first size at which the wrapped text fits the image is used."""
CACHE_ENV = "UNMIRAGE_CACHE_DIR"
VERSION = "1"
"""Part of every cache key: bump it when the drawing changes."""


def cache_dir() -> Path:
    """Where rendered images are kept: `$UNMIRAGE_CACHE_DIR/typography`, else `~/.cache/unmirage/typography`."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root) if root else Path.home() / ".cache" / "unmirage"
    return base / "typography"


def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise UnmirageError("typography needs Pillow >= 10.1 built with FreeType (pip install -U pillow)")
    return font


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap of each line of `text` to `width` pixels (a word longer than a line is split)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            while font.getlength(word) > width:  # split a word that alone is too wide
                cut = max(1, max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width))
                if line:
                    lines.append(line)
                    line = ""
                lines.append(word[:cut])
                word = word[cut:]
            candidate = f"{line} {word}".strip()
            if font.getlength(candidate) <= width:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


def layout(text: str) -> tuple[int, list[str]]:
    """(font size, wrapped lines) of `text` plus the numbered list: the largest size whose lines fit."""
    full = text.strip() + LIST_SUFFIX
    inner = SIZE - 2 * MARGIN
    for size in FONT_SIZES:
        font = _font(size)
        lines = wrap(full, font, inner)
        if len(lines) * _line_height(size) <= inner:
            return size, lines
    raise UnmirageError(f"text too long to draw on a {SIZE}x{SIZE} image ({len(full)} characters)")


def _line_height(size: int) -> int:
    return int(size * 1.25)


def render(text: str) -> Image.Image:
    """The image: `text` and "1. 2. 3." on separate lines, black on white."""
    size, lines = layout(text)
    font = _font(size)
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * _line_height(size)), line, fill="black", font=font)
    return image


def image_path(text: str, folder: str | os.PathLike | None = None) -> Path:
    """The cache path of `text`'s image (not drawn)."""
    key = hashlib.sha256(f"{VERSION}\0{SIZE}\0{text}".encode()).hexdigest()[:24]
    return Path(folder or cache_dir()) / f"{key}.png"


def render_cached(text: str, folder: str | os.PathLike | None = None) -> Path:
    """The path of `text`'s image, drawn and written atomically on first use."""
    path = image_path(text, folder)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb", encoding=None) as out:
            render(text).save(out, format="PNG")
    return path
