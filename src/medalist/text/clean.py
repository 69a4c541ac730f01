"""Ground floor: text detectors, the cleaning the competition config turns on, normalisation
for duplicate detection, and near-duplicate grouping (MinHash LSH over character 5-grams).
"""
from __future__ import annotations

import ast
import html
import re
import warnings
import zlib

import numpy as np

RE_HTML = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>|&(?:[a-z]+|#\d+);")
RE_LATEX = re.compile(r"\$[^$]+\$|\\\(|\\\[|\\begin\{|\\(?:frac|sqrt|sum|int|lim|angle|cdot|times|le|ge|pi|theta|alpha)\b")
RE_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", re.I)
RE_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
RE_CODE = re.compile(r"```|\bdef \w+\(|\bprint\(|\bimport \w+|#include|;\s*$", re.M)
RE_BYTES = re.compile(r"""^\s*b(['"])(.*)\1\s*$""", re.S)
_RE_SPACE = re.compile(r"\s+")
_RE_NORM = re.compile(r"[^\w$\\^{}()+\-*/=<>]+")
_ENGLISH = {"the", "of", "and", "a", "is", "find", "what", "if", "to", "in", "that", "for", "how", "many",
            "are", "with", "be", "let", "compute", "show", "value", "all", "number", "which", "evaluate",
            "solve", "calculate", "determine", "given", "prove", "does", "do", "an", "it", "has", "when"}
_RE_MATH = re.compile(r"\$\$.*?\$\$|\$[^$]*\$|\\[a-zA-Z]+", re.S)


def decode_bytes_literal(text: str) -> str:
    """`b'Solve …\\n'` (a Python bytes repr that leaked into the CSV) → `Solve …`."""
    m = RE_BYTES.match(text)
    if not m:
        return text
    try:
        with warnings.catch_warnings():  # LaTeX backslashes are "invalid escapes" to Python
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return m.group(2)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return text


def clean(text: str, cleaning) -> str:
    """Apply the cleaning a competition config turns on (`cleaning:` block)."""
    text = "" if text is None else str(text)
    if cleaning.decode_bytes:
        text = decode_bytes_literal(text)
    if cleaning.strip_html:
        text = html.unescape(RE_HTML.sub(" ", text))
    if cleaning.replace_urls:
        text = RE_URL.sub("[URL]", text)
    if cleaning.replace_emails:
        text = RE_EMAIL.sub("[EMAIL]", text)
    return "\n".join(_RE_SPACE.sub(" ", line).strip() for line in text.strip().splitlines()).strip()


def normalise(text: str) -> str:
    """Key for 'same text after normalisation': case, spacing and punctuation ignored."""
    text = decode_bytes_literal(str(text)).lower()
    return _RE_SPACE.sub(" ", _RE_NORM.sub(" ", text)).strip()


def looks_english(text: str) -> bool:
    """Cheap language guess: non-ASCII letters dominate, or no common English word appears."""
    letters = [c for c in text if c.isalpha()]
    if letters and sum(not c.isascii() for c in letters) / len(letters) > 0.3:
        return False
    words = set(re.findall(r"[a-z]{2,}", _RE_MATH.sub(" ", text).lower()))
    return len(words) < 4 or bool(words & _ENGLISH)


def shingles(text: str, n: int = 5) -> set[int]:
    t = normalise(text)
    if len(t) <= n:
        return {zlib.crc32(t.encode())}
    return {zlib.crc32(t[i:i + n].encode()) for i in range(len(t) - n + 1)}


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


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
