"""Tiny image fixtures shared by the image-family tests: three shape classes that a horizontal or
vertical flip leaves in their class (a disc, a horizontal bar, a vertical bar), drawn with random
colours, sizes and noise into small PNG files — no network, well under a second to build."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SHAPES = ["disc", "hbar", "vbar"]


def draw(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of `shape`, centred, on a noisy background."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = size * rng.uniform(0.22, 0.32)
    w = size * rng.uniform(0.08, 0.14)
    mask = {"disc": xx ** 2 + yy ** 2 <= r ** 2,
            "hbar": (np.abs(yy) <= w) & (np.abs(xx) <= r * 1.3),
            "vbar": (np.abs(xx) <= w) & (np.abs(yy) <= r * 1.3)}[shape]
    bg, fg = rng.integers(0, 90, 3), rng.integers(150, 256, 3)
    img = np.where(mask[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_images(root: Path, n: int, seed: int, prefix: str, size: int = 20) -> tuple[pd.DataFrame, np.ndarray]:
    """n rows (id, image: an absolute PNG path) with labels cycling through SHAPES."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids, paths, labels = [], [], []
    for i in range(n):
        y = i % len(SHAPES)
        path = root / f"{prefix}{i}.png"
        Image.fromarray(draw(SHAPES[y], size, rng)).save(path)
        ids.append(f"{prefix}{i}")
        paths.append(str(path))
        labels.append(y)
    return pd.DataFrame({"id": ids, "image": paths}), np.array(labels)


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A decompression bomb: a black 1-bit PNG of width × height written row by row, so building
    it never holds the pixels (30,000 × 30,000 is 110 kB on disk, 900 M pixels decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path, size: int = 32) -> Path:
    """A JPEG cut off halfway: its header reads, its pixels do not."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(draw("disc", size, np.random.default_rng(0))).save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path
