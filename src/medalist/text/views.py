"""Augmented children and views of a text, math protected (used by `augment` and by TTA):
mask the math (`text.math_spans`), run the augmenters (`text.augmenters`), restore and check.
"""
from __future__ import annotations

import hashlib
import random
from typing import Sequence

import numpy as np

from medalist.core.progress import progress
from medalist.text.augmenters import protect
from medalist.text.math_spans import mask, restore


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))


def child_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (row id, copy index, global seed…)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def augment_text(text: str, augmenters: Sequence, seed: int, tries: int = 3) -> str | None:
    """One child of `text` through `augmenters` in order, math protected; None if no try kept
    every span intact or every try left the text unchanged."""
    masked = mask(text)
    if masked is None:
        return None
    for t in range(tries):
        _seed_all(child_seed(seed, t))
        out = masked.text
        for aug in augmenters:
            res = protect(aug).augment(out)
            out = res[0] if isinstance(res, list) else res
            if not out:
                break
        child = restore(out or "", masked)
        if child is not None and child != text:
            return child
    return None


def augment_views(texts: Sequence[str], augmenters: Sequence, k: int, seed: int,
                  tries: int = 3) -> list[list[str]]:
    """k augmented views per text (math protected). For TTA every text gets exactly k views:
    a view no try could make intact is the text itself. Each view is seeded by the text itself,
    never by its position, so a row's views (and its prediction) do not depend on which other
    rows are predicted with it or in which order — a hidden test set gets the same views."""
    views = []
    for text in progress(texts, desc=f"nlpaug views (k={k})", unit="text", disable=len(texts) < 200):
        row = []
        for j in range(k):
            child = augment_text(text, augmenters, child_seed(seed, "text", text, j), tries)
            row.append(text if child is None else child)
        views.append(row)
    return views
