"""Near-duplicate texts: the one shingling and the one Jaccard that `folds`, `generate` and
`augment` use, and the two ways of searching with them.

Two texts are near duplicates when the Jaccard similarity of their character 5-gram sets (taken
on `clean.normalise`d text) reaches a threshold.
- `near_duplicate_groups` groups a whole table (folds: duplicates share a fold). MinHash LSH
  proposes candidate pairs — an exact pairwise product would be quadratic on 10k+ texts full of
  shared 5-grams — and each candidate is verified by its true Jaccard. The LSH bands are sized for
  thresholds near 0.8.
- `near_duplicates` / `near_duplicates_within` filter new rows (generated text) against reference
  rows, or against each other, exactly: sparse matrix products give every pair's intersection.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from medalist.text.clean import normalise


def shingles(text: str, n: int = 5) -> set[int]:
    """Hashed character n-grams of the normalised text (a short text is one shingle)."""
    t = normalise(text)
    if len(t) <= n:
        return {zlib.crc32(t.encode())}
    return {zlib.crc32(t[i:i + n].encode()) for i in range(len(t) - n + 1)}


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# ---------------------------------------------------------------- grouping a table


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def near_duplicate_groups(texts: list[str], threshold: float = 0.8, n_hashes: int = 64,
                          bands: int = 16, seed: int = 0) -> np.ndarray:
    """Group ids such that exact, normalised and near duplicates (5-gram Jaccard ≥ threshold)
    share a group. MinHash LSH proposes candidates; each is verified by its true Jaccard."""
    n = len(texts)
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    for i, t in enumerate(texts):
        key = normalise(t)
        if key in first:
            uf.union(first[key], i)
        else:
            first[key] = i
    sh = [shingles(t) for t in texts]
    rng = np.random.default_rng(seed)
    prime = np.uint64((1 << 61) - 1)
    a = rng.integers(1, 1 << 31, size=n_hashes, dtype=np.uint64)
    b = rng.integers(0, 1 << 31, size=n_hashes, dtype=np.uint64)
    sig = np.empty((n, n_hashes), dtype=np.uint64)
    for i, s in enumerate(sh):
        x = np.fromiter(s, dtype=np.uint64, count=len(s))
        sig[i] = ((np.outer(x, a) + b) % prime).min(axis=0)
    rows = n_hashes // bands
    for band in range(bands):
        buckets: dict[bytes, int] = {}
        block = sig[:, band * rows:(band + 1) * rows]
        for i in range(n):
            key = block[i].tobytes()
            j = buckets.setdefault(key, i)
            if j != i and uf.find(i) != uf.find(j) and jaccard(sh[i], sh[j]) >= threshold:
                uf.union(i, j)
    return np.array([uf.find(i) for i in range(n)])


# ---------------------------------------------------------------- filtering new rows


def _shingle_matrix(sets: list[set[int]], vocab: dict[int, int]) -> sp.csr_matrix:
    rows, cols = [], []
    for i, s in enumerate(sets):
        for h in s:
            rows.append(i)
            cols.append(vocab.setdefault(h, len(vocab)))
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sets), max(len(vocab), 1)))


def _jaccard_of(inter: sp.coo_matrix, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """`jaccard` for every stored pair of a shingle-count product: |a ∩ b| / |a ∪ b|."""
    return inter.data / np.maximum(size_a[inter.row] + size_b[inter.col] - inter.data, 1)


def near_duplicates(texts: Sequence[str], refs: Sequence[str], threshold: float, n: int = 5) -> np.ndarray:
    """For each text: does some ref share a character n-gram Jaccard >= threshold with it?"""
    if not len(texts) or not len(refs):
        return np.zeros(len(texts), dtype=bool)
    a = [shingles(t, n) for t in texts]
    b = [shingles(t, n) for t in refs]
    vocab: dict[int, int] = {}
    ma, mb = _shingle_matrix(a, vocab), _shingle_matrix(b, vocab)
    ma.resize((ma.shape[0], len(vocab)))
    mb.resize((mb.shape[0], len(vocab)))
    size_a = np.array([len(s) for s in a], dtype=np.float32)
    size_b = np.array([len(s) for s in b], dtype=np.float32)
    out = np.zeros(len(texts), dtype=bool)
    for start in range(0, len(texts), 512):  # bounded memory for big reference sets
        inter = (ma[start:start + 512] @ mb.T).tocoo()
        hit = _jaccard_of(inter, size_a[start:], size_b) >= threshold
        out[start + inter.row[hit]] = True
    return out


def near_duplicates_within(texts: Sequence[str], threshold: float, n: int = 5) -> np.ndarray:
    """True for each text that near-duplicates an earlier kept one (a group's first is kept)."""
    out = np.zeros(len(texts), dtype=bool)
    if not len(texts):
        return out
    sets = [shingles(t, n) for t in texts]
    m = _shingle_matrix(sets, {})
    size = np.array([len(s) for s in sets], dtype=np.float32)
    inter = sp.triu(m @ m.T, k=1).tocoo()  # pairs (i, j) with i < j
    hit = _jaccard_of(inter, size, size) >= threshold
    earlier: dict[int, list[int]] = {}
    for i, j in zip(inter.row[hit], inter.col[hit]):
        earlier.setdefault(int(j), []).append(int(i))
    for j in range(len(texts)):
        out[j] = any(not out[i] for i in earlier.get(j, ()))
    return out
