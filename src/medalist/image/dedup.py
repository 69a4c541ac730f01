"""Duplicate images: the one definition `folds` groups by and `check` counts.

- exact: the same file bytes (SHA-256), or the same decoded pixels at HASH_SIZE (a re-save of
  the same picture under another name or format).
- near: a perceptual-hash (pHash) Hamming distance of at most MAX_PHASH_DISTANCE, confirmed by
  the grey pixels themselves (each less its mean brightness): their mean absolute difference at
  most MAX_PIXEL_MAE and at most MAX_RELATIVE_MAE of the images' own contrast (on flat pictures
  everything differs little). pHash alone is too
  loose on uniform data (on fashion-products, distance ≤ 10 links most of train), so it only
  proposes pairs.

Near pairs are never chained: exact copies form one node, and two groups merge only when every
member of one is a confirmed near duplicate of every member of the other (complete linkage,
closest pairs first). So a group is a clique of mutually near images, never a path A~B~C…
through ever more different pictures.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medalist.core.cache import file_digests
from medalist.image.cache import images

HASH_SIZE = 32  # the standard pHash input: a 32×32 grey image, its 8×8 lowest DCT frequencies
# pHash proposes: re-encodes, small resizes, noise and brightness shifts stay within ~6 bits of 64
MAX_PHASH_DISTANCE = 10
# and pixels confirm: a mean absolute grey difference (0–255) that re-encoding, mild noise and
# resizing stay under (demo-images' planted copies: ≤ 3.7), while two different trousers of
# fashion-products mostly sit above it
MAX_PIXEL_MAE = 5.0
# relative to the pair's mean absolute deviation from their mean grey: planted copies ≤ 0.15,
# two different small shapes on a plain background ≥ 0.2 although their plain MAE is small
MAX_RELATIVE_MAE = 0.15
_CHUNK = 1024  # rows of the pairwise distance computed at once: 1024 × n bytes of memory


def grey(pixels: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) uint8 → (n, s, s) float32 luma (ITU-R 601, as PIL's "L")."""
    return pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def phash(grey_images: np.ndarray) -> np.ndarray:
    """64-bit perceptual hashes of (n, 32, 32) grey images: the signs of the 8×8 lowest 2-D DCT
    frequencies against their median, packed into uint64."""
    from scipy.fft import dctn

    low = dctn(grey_images.astype(np.float64), axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(grey_images), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def candidate_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j whose hashes differ in at most `max_distance` bits: (i, j, distance)."""
    n = len(hashes)
    rows, cols, dist = [], [], []
    for start in range(0, n, _CHUNK):
        block = np.bitwise_count(hashes[start:start + _CHUNK, None] ^ hashes[None, :])
        i, j = np.nonzero(block <= max_distance)
        keep = j > start + i
        rows.append(start + i[keep])
        cols.append(j[keep])
        dist.append(block[i[keep], j[keep]])
    if not rows:
        return (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.uint8),)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(dist)


@dataclasses.dataclass
class Duplicates:
    """What `find_duplicates` learnt about a list of images (index = position in that list)."""

    readable: np.ndarray  # bool per image
    file_hash: list[str]  # SHA-256 per image
    exact: np.ndarray  # group id per image: same bytes or same decoded pixels (an unreadable image alone)
    group: np.ndarray  # group id per image: exact copies plus mutually near duplicates
    near_pairs: np.ndarray  # (m, 2) confirmed near pairs i < j of different exact groups
    pair_mae: np.ndarray  # their mean absolute grey difference

    def sizes(self) -> np.ndarray:
        """The size of each image's group."""
        _, inverse, counts = np.unique(self.group, return_inverse=True, return_counts=True)
        return counts[inverse]


def _exact_groups(hashes: list[str], pixels: np.ndarray, readable: np.ndarray) -> np.ndarray:
    """Group id = first index with the same bytes or the same decoded pixels. A file that does not
    decode stays alone: two copies of a broken download share bytes, not a picture."""
    n = len(hashes)
    parent = np.arange(n)
    first: dict[tuple[str, bytes | str], int] = {}
    for i in np.flatnonzero(readable):
        keys = [("f", hashes[i]), ("p", hashlib.sha256(pixels[i].tobytes()).digest())]
        roots = {parent[first[k]] for k in keys if k in first}
        root = min(roots | {i})
        for r in roots:  # identity is transitive: merging exact groups is no chaining
            parent[parent == r] = root
        parent[i] = root
        for k in keys:
            first.setdefault(k, root)
    return parent


def _complete_linkage(n: int, pairs: np.ndarray, order: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Merge along `pairs` (in `order`) only when every cross pair of the two groups is a pair."""
    linked = {(int(a), int(b)) for a, b in pairs}
    group = start.copy()
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(int(group[i]), []).append(i)
    for k in order:
        a, b = int(group[pairs[k, 0]]), int(group[pairs[k, 1]])
        if a == b:
            continue
        reps_a = {int(r) for r in start[members[a]]}  # exact copies are one node: test one of each
        reps_b = {int(r) for r in start[members[b]]}
        if all((min(x, y), max(x, y)) in linked for x in reps_a for y in reps_b):
            keep, gone = min(a, b), max(a, b)
            members[keep] += members.pop(gone)
            group[members[keep]] = keep
    return group


def find_duplicates(image_paths: Sequence[str], processed_dir: Path | None = None,
                    max_distance: int = MAX_PHASH_DISTANCE, max_mae: float = MAX_PIXEL_MAE,
                    max_relative: float = MAX_RELATIVE_MAE,
                    decoded: tuple[np.ndarray, np.ndarray] | None = None) -> Duplicates:
    """Exact and near duplicates among these images (paths relative to the project root);
    `decoded` = `images(image_paths, HASH_SIZE)` when the caller has them already."""
    paths = list(image_paths)
    pixels, readable = decoded if decoded is not None else images(paths, HASH_SIZE, processed_dir)
    hashes = file_digests(paths)  # SHA-256 of the bytes, "" for a missing file
    exact = _exact_groups(hashes, pixels, readable)
    # one node per exact group: near pairs between its representatives
    reps = np.flatnonzero(readable & (exact == np.arange(len(paths))))
    g = grey(pixels[reps])
    i, j, _ = candidate_pairs(phash(g), max_distance)
    g -= g.mean(axis=(1, 2), keepdims=True)  # a brightened copy is still a copy
    contrast = np.abs(g).mean(axis=(1, 2))
    mae = np.concatenate([np.abs(g[i[s:s + 4096]] - g[j[s:s + 4096]]).mean(axis=(1, 2))
                          for s in range(0, len(i), 4096)]) if len(i) else np.zeros(0, np.float32)
    ok = (mae <= max_mae) & (mae <= max_relative * (contrast[i] + contrast[j]) / 2)
    pairs = np.stack([reps[i[ok]], reps[j[ok]]], axis=1) if ok.any() else np.zeros((0, 2), np.int64)
    mae = mae[ok]
    order = np.lexsort((pairs[:, 1], pairs[:, 0], mae)) if len(pairs) else np.zeros(0, np.int64)
    group = _complete_linkage(len(paths), pairs, order, exact)
    return Duplicates(readable=readable, file_hash=hashes, exact=exact, group=group, near_pairs=pairs, pair_mae=mae)
