"""Images in, uint8 RGB arrays out: every format and mode a Kaggle download holds (JPEG, PNG,
WebP; RGB, grayscale, palette, RGBA, CMYK, 16-bit) becomes what a backbone takes, and an
unreadable file is None, never an exception.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def open_rgb(path: str | Path):
    """A PIL RGB image, or None when the file is missing, truncated or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL warns on odd palettes and huge files; a bad file is None
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None


def to_rgb(im):
    """RGB, whatever the mode: transparency over white (product photos sit on white), CMYK and
    16-bit grayscale converted, palette images through their palette."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = a.max() or 1.0
        im = Image.fromarray((a / top * 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def square(im, size: int) -> np.ndarray:
    """The whole image, padded to a square with its border colour's mean, resized to size×size
    (antialiased): nothing is cropped away and aspect ratios are kept."""
    from PIL import Image

    w, h = im.size
    if w != h:
        a = np.asarray(im)
        border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0).astype(np.uint8)
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), tuple(int(c) for c in border))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        im = canvas
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8)
