"""Generated rows shared by `augment` and `generate`: the generated_train.csv contract, its
rebuild from aug.csv / llm.csv, and the duplicate tests both commands filter with.

Reads:  data/generated/<comp>/aug.csv, llm.csv (whichever exist)
Writes: data/generated/<comp>/generated_train.csv (id, text, label, source, parent_id, folds)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from medalist.core.config import Paths
from medalist.core.io import write_csv
from medalist.text.clean import normalise, shingles

COLUMNS = ["id", "text", "label", "source", "parent_id", "folds"]
PARTS = ("aug.csv", "llm.csv")


def dup_key(text: str) -> str:
    """Exact-duplicate key: normalised text with spacing ignored too (nlpaug re-spaces tokens)."""
    return normalise(text).replace(" ", "")


def folds_str(folds: Sequence[int]) -> str:
    return ";".join(str(int(k)) for k in sorted(folds))


def parse_folds(value: str) -> list[int]:
    return [int(k) for k in str(value).split(";") if k != ""]


def read_part(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str, "text": str, "source": str, "parent_id": str, "folds": str},
                       keep_default_na=False)


def rebuild(paths: Paths) -> Path:
    """generated_train.csv = the rows of whichever of aug.csv / llm.csv exist, in that order."""
    frames = [read_part(paths.generated / p)[COLUMNS] for p in PARTS if (paths.generated / p).exists()]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    out = out[out["folds"].astype(str) != ""]
    return write_csv(paths.generated / "generated_train.csv", out)


def _shingle_matrix(sets: list[set[int]], vocab: dict[int, int]) -> sp.csr_matrix:
    rows, cols = [], []
    for i, s in enumerate(sets):
        for h in s:
            rows.append(i)
            cols.append(vocab.setdefault(h, len(vocab)))
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sets), max(len(vocab), 1)))


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
        union = size_a[start + inter.row] + size_b[inter.col] - inter.data
        hit = inter.data / np.maximum(union, 1) >= threshold
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
    hit = inter.data / np.maximum(size[inter.row] + size[inter.col] - inter.data, 1) >= threshold
    earlier: dict[int, list[int]] = {}
    for i, j in zip(inter.row[hit], inter.col[hit]):
        earlier.setdefault(int(j), []).append(int(i))
    for j in range(len(texts)):
        out[j] = any(not out[i] for i in earlier.get(j, ()))
    return out
