"""Math spans of a text and their masking: what augmentation must never touch.

Every math span — `$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]`, `\\begin{env}…\\end{env}`, a bare LaTeX
command with its brace groups, every number-like token ("3.14", "-2", "1/2", "10^5", "x2") and
every one-letter variable —
is swapped for one placeholder word before nlpaug sees the text, and swapped back afterwards.
A placeholder is upper-case ASCII letters only (nlpaug's tokenizer splits on non-word
characters and its spelling augmenter rewrites digits), it matches every augmenter's
`stopwords_regex` (`text.augmenters`), and `restore` re-checks the result: the child must hold
the parent's spans, byte-identical and in the same order, or it is dropped — never emitted broken.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence

PREFIX = "QXZJ"  # a letter run no English word or LaTeX command contains
PLACEHOLDER = re.compile(PREFIX + r"([A-Z]+)")
STOPWORDS_REGEX = r"^\s*" + PREFIX + r"[A-Z]+\s*$"

_BEGIN = re.compile(r"\\begin\{([^{}]+)\}")
_COMMAND = re.compile(r"\\(?:[A-Za-z]+\*?|.)", re.S)
# A number-like token: a run of word characters, dots, slashes and carets holding a digit
# ("3.14", "1/2", "10^5", "x2", "a_1"), with a sign when the sign is not a binary operator.
_NUMBER = re.compile(r"(?:(?<![\w)\]}.^/])[-+])?(?<![\w.^/])[\w.^/]*\d[\w.^/]*")
# A lone letter outside `$…$` is a variable ("when x = 7"): spelling or synonym noise must not
# turn it into "ex" or "by".
_VARIABLE = re.compile(r"(?<![\w\\])[A-Za-z](?!\w)")


# ---------------------------------------------------------------- finding math spans


def _unescaped(text: str, needle: str, start: int) -> int:
    """Index of the first `needle` at or after `start` not preceded by a backslash, or -1."""
    i = text.find(needle, start)
    while i != -1:
        backslashes = len(text[:i]) - len(text[:i].rstrip("\\"))
        if backslashes % 2 == 0:
            return i
        i = text.find(needle, i + 1)
    return -1


def _groups_end(text: str, i: int) -> int:
    """End of the `{…}`/`[…]` groups and `^`/`_` scripts that follow a command ending at i."""
    n = len(text)
    while i < n:
        if text[i] in "{[":
            close = "}" if text[i] == "{" else "]"
            depth, j = 0, i
            while j < n:
                if text[j] == "\\":
                    j += 2
                    continue
                if text[j] == text[i]:
                    depth += 1
                elif text[j] == close:
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:
                return i  # unbalanced: the group is not part of the command
            i = j + 1
        elif text[i] in "^_" and i + 1 < n and not text[i + 1].isspace():
            i += 1
            if text[i] not in "{[":
                i += 1
        else:
            return i
    return i


def _env_end(text: str, i: int, name: str) -> int:
    """End of the `\\end{name}` matching the `\\begin{name}` at i (nesting counted), or -1."""
    pattern = re.compile(r"\\(begin|end)\{" + re.escape(name) + r"\}")
    depth = 0
    for m in pattern.finditer(text, i):
        depth += 1 if m.group(1) == "begin" else -1
        if depth == 0:
            return m.end()
    return -1


def _math_span_at(text: str, i: int) -> int:
    """End of the math span starting at i, or -1 when none starts there."""
    c = text[i]
    if c == "$":
        if text.startswith("$$", i):
            j = _unescaped(text, "$$", i + 2)
            return j + 2 if j != -1 else -1
        j = _unescaped(text, "$", i + 1)
        return j + 1 if j != -1 else -1
    if c != "\\":
        return -1
    if text.startswith("\\(", i) or text.startswith("\\[", i):
        j = text.find("\\)" if text[i + 1] == "(" else "\\]", i + 2)
        return j + 2 if j != -1 else -1
    m = _BEGIN.match(text, i)
    if m:
        end = _env_end(text, i, m.group(1))
        if end != -1:
            return end
    m = _COMMAND.match(text, i)
    return _groups_end(text, m.end()) if m else -1


def find_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every protected span, in order, non-overlapping."""
    spans: list[tuple[int, int]] = []
    gap_start, i, n = 0, 0, len(text)

    def numbers(a: int, b: int) -> None:
        found = []
        for m in _NUMBER.finditer(text, a, b):
            s, e = m.start(), m.end()
            while e > s and text[e - 1] in "./^":  # a sentence's full stop is not the number's
                e -= 1
            if any(ch.isdigit() for ch in text[s:e]):
                found.append((s, e))
        taken = {i for s, e in found for i in range(s, e)}
        found += [m.span() for m in _VARIABLE.finditer(text, a, b) if m.start() not in taken]
        spans.extend(sorted(found))

    while i < n:
        if text[i] in "$\\":
            end = _math_span_at(text, i)
            if end > i:
                numbers(gap_start, i)
                spans.append((i, end))
                i = gap_start = end
                continue
        i += 1
    numbers(gap_start, n)
    return spans


def math_spans(text: str) -> list[str]:
    """The protected spans of `text` as strings, in order."""
    return [text[s:e] for s, e in find_spans(text)]


# ---------------------------------------------------------------- mask / restore


def _code(i: int) -> str:
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def _index(code: str) -> int:
    i = 0
    for ch in code:
        i = i * 26 + ord(ch) - 64
    return i - 1


@dataclasses.dataclass(frozen=True)
class Masked:
    text: str  # the text nlpaug sees
    spans: tuple[str, ...]  # what each placeholder stands for, in order


def mask(text: str) -> Masked | None:
    """Replace each span by a space-padded placeholder; None if the text already holds PREFIX."""
    if PREFIX.lower() in text.lower():
        return None
    parts, spans, last = [], [], 0
    for s, e in find_spans(text):
        parts.append(text[last:s])
        parts.append(f" {PREFIX}{_code(len(spans))} ")
        spans.append(text[s:e])
        last = e
    parts.append(text[last:])
    return Masked("".join(parts), tuple(spans))


def restore(augmented: str, masked: Masked) -> str | None:
    """Put the spans back; None unless every placeholder survived once, intact, in order."""
    found = PLACEHOLDER.findall(augmented)
    if [_index(c) for c in found] != list(range(len(masked.spans))):
        return None
    if len(re.findall(PREFIX, augmented, flags=re.I)) != len(found):
        return None  # a placeholder was split, re-cased or glued to another word
    if _math_chars(augmented) > _math_chars(masked.text):
        return None  # an augmenter wrote a digit, `$` or backslash of its own
    augmented = re.sub(r"[ \t]+", " ", augmented).strip()
    out = PLACEHOLDER.sub(lambda m: masked.spans[_index(m.group(1))], augmented)
    return out if holds_in_order(out, masked.spans) else None


def _math_chars(text: str) -> int:
    return sum(ch.isdigit() or ch in "$\\" for ch in text)


def holds_in_order(text: str, spans: Sequence[str]) -> bool:
    """True when `text` contains every span, byte-identical, one after another."""
    pos = 0
    for span in spans:
        i = text.find(span, pos)
        if i == -1:
            return False
        pos = i + len(span)
    return True
