"""Decode once: every image of a competition decoded and resized once per size into one uint8
array that every epoch, fold and image run of that size reuses (memory-mapped, so several
processes share the pages).

Files: data/processed/<comp>/images/<size>.npy (n, size, size, 3) uint8, <size>.json (the image
paths in row order, which of them decoded, and a fingerprint (`core.cache`) of the path list, the
files' bytes, the pixel limit and the decoding code: new rows, an image replaced under the same
name or a new limit decode again). Paths are the `image` column of the processed tables
(relative to the project root).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from medalist.core import config as C
from medalist.core.cache import file_digests, key, source_digest
from medalist.core.io import atomic_path, write_text
from medalist.core.progress import progress
from medalist.image.decode import max_pixels, open_rgb, square


def _fingerprint(image_paths: Sequence[str]) -> str:
    # the pixel limit decides which files are readable: a new one decodes again
    return key("decoded", max_pixels(), list(image_paths), file_digests(image_paths), source_digest(__name__))


def decode_all(image_paths: Sequence[str], size: int, desc: str = "decoding images") -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, 3) uint8 and a readable mask; an unreadable image is all zeros."""
    out = np.zeros((len(image_paths), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(image_paths), dtype=bool)
    root = C.root()
    for i, p in enumerate(progress(image_paths, desc=f"{desc} at {size}px", unit="img", disable=len(image_paths) < 500)):
        if not p:
            continue
        im = open_rgb(root / p)
        if im is not None:
            out[i], ok[i] = square(im, size), True
    return out, ok


class ImageCache:
    """The decoded images of one competition (processed train.csv + test.csv) at one size."""

    def __init__(self, processed_dir: Path, size: int):
        import pandas as pd

        self.size = size
        processed_dir = Path(processed_dir)
        cols = []
        for name in ("train.csv", "test.csv"):
            df = pd.read_csv(processed_dir / name, dtype=str, keep_default_na=False, usecols=lambda c: c == "image")
            cols += df["image"].tolist() if "image" in df else []
        paths = list(dict.fromkeys(p for p in cols if p))  # unique, first-seen order
        npy, meta = processed_dir / "images" / f"{size}.npy", processed_dir / "images" / f"{size}.json"
        self.fingerprint = fp = _fingerprint(paths)
        if not (npy.exists() and meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fp):
            arr, ok = decode_all(paths, size)
            with atomic_path(npy) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arr)
            write_text(meta, json.dumps({"fingerprint": fp, "size": size, "paths": paths,
                                         "readable": ok.tolist()}))
        info = json.loads(meta.read_text())
        self.array = np.load(npy, mmap_mode="r")
        self.index = {p: i for i, p in enumerate(info["paths"])}
        self.readable_all = np.asarray(info["readable"], dtype=bool)

    def get(self, image_paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, size, size, 3) uint8 copies and a readable mask, in the order given; a path the
        cache does not hold (new rows) is decoded directly."""
        idx = np.array([self.index.get(p, -1) if p else -1 for p in image_paths], dtype=np.int64)
        out = np.zeros((len(idx), self.size, self.size, 3), dtype=np.uint8)
        ok = np.zeros(len(idx), dtype=bool)
        have = idx >= 0
        out[have] = self.array[idx[have]]
        ok[have] = self.readable_all[idx[have]]
        new = [i for i, p in enumerate(image_paths) if p and idx[i] < 0]
        if new:
            arr, good = decode_all([image_paths[i] for i in new], self.size)
            out[new], ok[new] = arr, good
        return out, ok


_OPEN: dict[tuple[str, int], ImageCache] = {}


def images(image_paths: Sequence[str], size: int, processed_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The images of these rows at `size` as (n, size, size, 3) uint8 and a readable mask: from the
    competition's decode-once cache where its processed folder is given, decoded directly otherwise."""
    if processed_dir is None:
        return decode_all(list(image_paths), size)
    at = (str(Path(processed_dir).resolve()), size)
    cache = _OPEN.get(at)
    # a file replaced since this process opened the cache (same name, other bytes) makes it stale
    if cache is None or cache.fingerprint != _fingerprint(list(cache.index)):
        cache = _OPEN[at] = ImageCache(Path(processed_dir), size)
    return cache.get(list(image_paths))
