"""Images in, uint8 RGB arrays out: every format and mode a Kaggle download holds (JPEG, PNG,
WebP; RGB, grayscale, palette, RGBA, CMYK, 16-bit) becomes what a backbone takes, and an
unreadable file is None, never an exception.

Unreadable: missing, not an image, truncated, any decoder error, or more pixels than the
competition's `inputs.image.max_pixels` — a decompression bomb (a 0.9 MB PNG can declare
30,000 × 30,000 pixels, 2.7 GB once decoded) is refused from its header, before a pixel is
decoded. Every image the pipeline opens, header or pixels, goes through `_opened`.

The limit is the loaded competition's (`core.competition.load_competition` sets it): each stage
process works on one competition, the processes accelerate starts included, so every family's
decoding honours it without an argument threaded through each of them.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from medalist.core.competition import ImageInput

_max_pixels = ImageInput.max_pixels


def limit_pixels(n: int) -> None:
    """From now on an image of more than n pixels (width × height) is unreadable in this process."""
    global _max_pixels
    _max_pixels = n


def max_pixels() -> int:
    return _max_pixels


class Unreadable(Exception):
    """A file that is no usable image; the message says why, in a few words."""


@contextlib.contextmanager
def _opened(path: str | Path):
    """The image with its header read and no pixels decoded yet. Anything the block raises while
    decoding, and everything that makes a file no image, is Unreadable: a decoder's error on a
    user's file (PIL raises OSError, ValueError, SyntaxError, struct.error, IndexError, …) is
    the file's fault, never a reason to stop a stage."""
    from PIL import Image, UnidentifiedImageError

    # PIL refuses more than twice its own global limit inside Image.open; kept at ours, so a
    # raised limit is not refused by PIL first (every opener sets the same value: thread-safe)
    Image.MAX_IMAGE_PIXELS = _max_pixels
    try:
        with warnings.catch_warnings():  # PIL warns on odd palettes and on sizes up to twice its limit
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                if w * h > _max_pixels:
                    raise Unreadable(f"{w:,} × {h:,} pixels, more than inputs.image.max_pixels ({_max_pixels:,}): "
                                     "a decompression bomb?")
                yield im
    except Unreadable:
        raise
    except Image.DecompressionBombError:
        raise Unreadable(f"more pixels than inputs.image.max_pixels ({_max_pixels:,}): a decompression bomb?") from None
    except FileNotFoundError:
        raise Unreadable("no such file") from None
    except UnidentifiedImageError:
        raise Unreadable("not an image") from None
    except Exception as e:  # noqa: BLE001 — see the docstring
        raise Unreadable(f"does not decode ({type(e).__name__}: {e})") from None


def open_rgb(path: str | Path):
    """A PIL RGB image, or None when the file is unreadable (see the module's docstring)."""
    try:
        return _rgb(path)
    except Unreadable:
        return None


def why_unreadable(path: str | Path) -> str | None:
    """None when the file decodes; else what is wrong with it, in a few words."""
    try:
        _rgb(path)
    except Unreadable as e:
        return str(e)
    return None


def _rgb(path: str | Path):
    with _opened(path) as im:
        im.load()
        return to_rgb(im)


def header(path: str | Path) -> tuple[str, str, int, int] | None:
    """(format, mode, width, height) from the file's header alone, or None when it is unreadable
    there (a truncated file can pass here and fail to decode)."""
    try:
        with _opened(path) as im:
            return im.format or "?", im.mode, im.size[0], im.size[1]
    except Unreadable:
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
