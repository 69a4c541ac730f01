"""Train rows that must share a fold (correctness rule 2): the one grouping `folds` assigns folds
by and `check` reports, so the report describes the folds exactly.

- text: `text.dedup.near_duplicate_groups` on the cleaned text — every pair of texts whose
  character 5-gram Jaccard reaches `folds.near_dup_threshold` shares a group, chained (A~B, B~C
  put A, B and C together);
- images: `image.dedup.find_duplicates` — exact copies, and confirmed near copies as cliques;
- a competition with both joins the two, and the join chains ACROSS modalities (CHAINING).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CHAINING = ("Text and image groups chain across modalities: a row shares its fold with its text near "
            "duplicates and with its image duplicates, and theirs in turn, so two rows that share "
            "nothing can meet in one fold through a third.")


@dataclass(frozen=True)
class Groups:
    group: np.ndarray  # a group id per row
    readable: np.ndarray  # the row's image decodes (all True without images)


def joined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One grouping from two: rows share a group when either grouping puts them together."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(a)
    edges = np.r_[a, b]
    m = coo_matrix((np.ones(2 * n), (np.r_[np.arange(n), np.arange(n)], edges)), shape=(n, n))
    return connected_components(m, directed=False)[1]


def row_groups(texts: Sequence[str] | None, images: Sequence[str] | None, threshold: float) -> Groups:
    """texts: cleaned train texts (None: no text input); images: their paths relative to the project
    root (None: no image input)."""
    from medalist.image.dedup import find_duplicates
    from medalist.text.dedup import near_duplicate_groups

    n = len(texts if texts is not None else images)
    group, readable = None, np.ones(n, dtype=bool)
    if texts is not None:
        group = near_duplicate_groups(list(texts), threshold=threshold)
    if images is not None:
        dup = find_duplicates(list(images))
        readable = dup.readable
        group = dup.group if group is None else joined(group, dup.group)
    return Groups(group=group, readable=readable)


def summary(groups: np.ndarray) -> dict[str, int]:
    """What checks.md says of a grouping."""
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    return {"groups of 2 or more rows": int((sizes > 1).sum()), "rows in them": int(sizes[sizes > 1].sum()),
            "largest group": int(sizes.max()) if len(sizes) else 0}
