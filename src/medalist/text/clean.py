"""Text detectors, the cleaning the competition config turns on, and the one normaliser that
decides "same text" everywhere (checks, folds, generate, augment, the ensemble's exact match).
Near duplicates are `text.dedup`'s.
"""
from __future__ import annotations

import ast
import html
import re
import warnings

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


def normalise(text: str, ignore_spacing: bool = False) -> str:
    """Key for 'same text after normalisation': case, spacing and punctuation ignored. With
    ignore_spacing, where words break is ignored too: nlpaug re-spaces tokens ("x+1" → "x + 1"),
    so generated text is compared that way."""
    text = decode_bytes_literal(str(text)).lower()
    key = _RE_SPACE.sub(" ", _RE_NORM.sub(" ", text)).strip()
    return key.replace(" ", "") if ignore_spacing else key


def looks_english(text: str) -> bool:
    """Cheap language guess: non-ASCII letters dominate, or no common English word appears."""
    letters = [c for c in text if c.isalpha()]
    if letters and sum(not c.isascii() for c in letters) / len(letters) > 0.3:
        return False
    words = set(re.findall(r"[a-z]{2,}", _RE_MATH.sub(" ", text).lower()))
    return len(words) < 4 or bool(words & _ENGLISH)
