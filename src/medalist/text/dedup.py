"""Near-duplicate texts: the one shingling and the one Jaccard that `folds`, `augment`, `generate`,
`pseudo` and `train` use, and one exact search with them.

Two texts are near duplicates when the Jaccard similarity of their character n-gram sets (hashed
5-grams of `clean.normalise`d text by default) reaches a threshold. Every search here is exact on
those sets — no pair at or above the threshold is ever missed:
- candidates come from a prefix filter: order the shingles rarest first; a set of size s keeps
  its first s - ceil(t·s) + 1. Two sets with Jaccard ≥ t share at least ceil(t·max size)
  shingles, so their kept prefixes meet (Chaudhuri et al. 2006, Bayardo et al. 2007). Rare
  shingles make few candidates, where a product over all shingles pairs every text that holds
  "find " or "\\frac" with every other;
- each candidate is then checked by its true Jaccard.
- `near_duplicate_groups` groups a whole table (folds: every pair at the threshold shares a
  group, so groups chain: A~B and B~C put A and C together).
- `near_duplicates` / `near_duplicates_within` filter new rows (generated text) against reference
  rows, or against each other.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from medalist.text.clean import normalise

_ROWS = 1024  # rows of candidates made at once: bounded memory on large tables
_PAIRS = 200_000  # candidate pairs verified at once


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


def _matrix(sets: list[set[int]], vocab: dict[int, int]) -> sp.csr_matrix:
    """One row per set, one column per shingle (columns numbered in `vocab`, grown here)."""
    cols = [vocab.setdefault(h, len(vocab)) for s in sets for h in s]
    indptr = np.r_[0, np.cumsum([len(s) for s in sets])]
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), np.asarray(cols, dtype=np.int64), indptr),
                         shape=(len(sets), 0 if not cols else max(cols) + 1))


def _prefixes(m: sp.csr_matrix, rank: np.ndarray, threshold: float) -> sp.csr_matrix:
    """Each row's rarest size - ceil(t·size) + 1 shingles."""
    size = np.diff(m.indptr)
    row = np.repeat(np.arange(m.shape[0]), size)
    order = np.lexsort((rank[m.indices], row))  # row by row, rarest first
    pos = np.arange(len(order)) - np.repeat(m.indptr[:-1], size)
    # a hair under t·size, so float rounding never shortens a prefix below what the bound needs
    keep_n = size - np.ceil(threshold * size - 1e-9).astype(np.int64) + 1
    keep = pos < keep_n[row]
    cols = m.indices[order][keep]
    rows = row[keep]
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=m.shape)


def similar_pairs(a: Sequence[set[int]], b: Sequence[set[int]] | None, threshold: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (i in a, j in b) whose Jaccard ≥ threshold, exactly, with that Jaccard. b=None
    pairs a with itself (i < j)."""
    self_join = b is None
    vocab: dict[int, int] = {}
    ma = _matrix(list(a), vocab)
    mb = ma if self_join else _matrix(list(b), vocab)
    empty = (np.zeros(0, dtype=np.int64),) * 2 + (np.zeros(0),)
    if not ma.shape[0] or not mb.shape[0]:
        return empty
    ma.resize((ma.shape[0], len(vocab)))
    mb.resize((mb.shape[0], len(vocab)))
    df = np.asarray(ma.sum(axis=0)).ravel() + (0 if self_join else np.asarray(mb.sum(axis=0)).ravel())
    rank = np.empty(len(vocab), dtype=np.int64)
    rank[np.lexsort((np.arange(len(vocab)), df))] = np.arange(len(vocab))
    pa = _prefixes(ma, rank, threshold)
    pb = pa if self_join else _prefixes(mb, rank, threshold)
    size_a, size_b = np.diff(ma.indptr).astype(np.float64), np.diff(mb.indptr).astype(np.float64)
    out_i, out_j, out_s = [], [], []
    pbt = pb.T.tocsr()
    for start in range(0, ma.shape[0], _ROWS):
        cand = (pa[start:start + _ROWS] @ pbt).tocoo()
        i, j = cand.row.astype(np.int64) + start, cand.col.astype(np.int64)
        # a pair needs sizes within a factor t of each other (|a ∩ b| ≤ min, |a ∪ b| ≥ max)
        ok = (np.minimum(size_a[i], size_b[j]) >= threshold * np.maximum(size_a[i], size_b[j]) - 1e-9)
        if self_join:
            ok &= i < j
        i, j = i[ok], j[ok]
        for s in range(0, len(i), _PAIRS):
            ii, jj = i[s:s + _PAIRS], j[s:s + _PAIRS]
            inter = np.asarray(ma[ii].multiply(mb[jj]).sum(axis=1)).ravel()
            sim = inter / np.maximum(size_a[ii] + size_b[jj] - inter, 1)
            hit = sim >= threshold - 1e-9
            out_i.append(ii[hit]), out_j.append(jj[hit]), out_s.append(sim[hit])
    if not out_i:
        return empty
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


# ---------------------------------------------------------------- grouping a table


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.8, n: int = 5) -> np.ndarray:
    """Group ids (each row's smallest row number in its group) such that every pair of texts with
    n-gram Jaccard ≥ threshold — exact and normalised duplicates among them — shares a group."""
    size = len(texts)
    i, j, _ = similar_pairs([shingles(t, n) for t in texts], None, threshold)
    graph = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(size, size))
    label = connected_components(graph, directed=False)[1]
    first = np.full(label.max() + 1 if size else 0, size, dtype=np.int64)
    np.minimum.at(first, label, np.arange(size))
    return first[label]


# ---------------------------------------------------------------- filtering new rows


def near_duplicates(texts: Sequence[str], refs: Sequence[str], threshold: float, n: int = 5) -> np.ndarray:
    """For each text: does some ref share a character n-gram Jaccard ≥ threshold with it?"""
    out = np.zeros(len(texts), dtype=bool)
    i, _, _ = similar_pairs([shingles(t, n) for t in texts], [shingles(t, n) for t in refs], threshold)
    out[i] = True
    return out


def near_duplicates_within(texts: Sequence[str], threshold: float, n: int = 5) -> np.ndarray:
    """True for each text that near-duplicates an earlier kept one (a group's first is kept)."""
    out = np.zeros(len(texts), dtype=bool)
    i, j, _ = similar_pairs([shingles(t, n) for t in texts], None, threshold)
    earlier: dict[int, list[int]] = {}
    for a, b in zip(i.tolist(), j.tolist()):
        earlier.setdefault(b, []).append(a)
    for b in range(len(texts)):
        out[b] = any(not out[a] for a in earlier.get(b, ()))
    return out
