"""Augmented views of a text with its mathematics protected (used by `augment` and by TTA).

Every math span — `$…$`, `$$…$$`, `\\(…\\)`, `\\[…\\]`, `\\begin{env}…\\end{env}`, a bare LaTeX
command with its brace groups, every number-like token ("3.14", "-2", "1/2", "10^5", "x2") and
every one-letter variable —
is swapped for one placeholder word before nlpaug sees the text, and swapped back afterwards.
A placeholder is upper-case ASCII letters only (nlpaug's tokenizer splits on non-word
characters and its spelling augmenter rewrites digits), it matches every augmenter's
`stopwords_regex`, and `restore` re-checks the result: the child must hold the parent's spans,
byte-identical and in the same order, or it is dropped — never emitted broken.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

PREFIX = "QXZJ"  # a letter run no English word or LaTeX command contains
_PLACEHOLDER = re.compile(PREFIX + r"([A-Z]+)")
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
    found = _PLACEHOLDER.findall(augmented)
    if [_index(c) for c in found] != list(range(len(masked.spans))):
        return None
    if len(re.findall(PREFIX, augmented, flags=re.I)) != len(found):
        return None  # a placeholder was split, re-cased or glued to another word
    if _math_chars(augmented) > _math_chars(masked.text):
        return None  # an augmenter wrote a digit, `$` or backslash of its own
    augmented = re.sub(r"[ \t]+", " ", augmented).strip()
    out = _PLACEHOLDER.sub(lambda m: masked.spans[_index(m.group(1))], augmented)
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


# ---------------------------------------------------------------- augmenters


def protect(augmenter):
    """Make `augmenter` (and a Sequential's children) skip placeholders: returns it."""
    children = getattr(augmenter, "flow", None)
    for child in children or []:
        protect(child)
    if hasattr(augmenter, "stopwords_regex"):
        old = augmenter.stopwords_regex
        if old is None or STOPWORDS_REGEX not in old.pattern:
            pattern = STOPWORDS_REGEX if old is None else f"(?:{old.pattern})|(?:{STOPWORDS_REGEX})"
            augmenter.stopwords_regex = re.compile(pattern)
    return augmenter


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
    a view no try could make intact is the text itself."""
    views = []
    for i, text in enumerate(texts):
        row = []
        for j in range(k):
            child = augment_text(text, augmenters, child_seed(seed, i, j), tries)
            row.append(text if child is None else child)
        views.append(row)
    return views


# ---------------------------------------------------------------- building augmenters

WORDNET_SRC = Path("/usr/share/wordnet")  # Debian: wordnet-base + wordnet-sense-index


def ensure_wordnet(nltk_dir: Path, src: Path = WORDNET_SRC) -> bool:
    """Copy Debian's WordNet files into `nltk_dir/corpora/wordnet/` (nltk wants real files and
    a `lexnames` file Debian lacks) and put `nltk_dir` on nltk's path. False where absent."""
    import nltk

    if not (src / "data.noun").is_file() or not (src / "index.sense").is_file():
        return False
    dest = Path(nltk_dir) / "corpora" / "wordnet"
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and not (dest / f.name).exists():
            shutil.copyfile(f, dest / f.name)
    lexnames = dest / "lexnames"
    if not lexnames.exists():
        lexnames.write_text("".join(f"{i:02d}\t{n}\t{_LEX_POS[n.split('.')[0]]}\n"
                                    for i, n in enumerate(_LEXNAMES)))
    if str(nltk_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(nltk_dir))
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        return bool(wordnet.synsets("triangle"))
    except (LookupError, OSError, ValueError):
        return False


_LEX_POS = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession "
    "noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time "
    "verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption "
    "verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl"
).split()


def _untagged_synonym_aug():
    """nlpaug's WordNet synonym augmenter with POS tagging switched off: no tagger model exists
    offline, so every token gets an empty tag and synonyms come from all parts of speech.
    Call `ensure_wordnet` first."""
    import nlpaug.augmenter.word as naw
    import nlpaug.model.word_dict as nmw

    class UntaggedWordNet(nmw.WordNet):
        def read(self):  # nlpaug's read() downloads when missing: never here
            from nltk.corpus import wordnet

            return wordnet

        @classmethod
        def pos_tag(cls, tokens):
            return [(t, "") for t in tokens]

    class UntaggedSynonymAug(naw.SynonymAug):
        def __init__(self, **kwargs):
            super().__init__(aug_src="wordnet", name="Synonym_Aug", **kwargs)

        @classmethod
        def get_model(cls, aug_src, lang, dict_path, force_reload):
            return UntaggedWordNet(lang=lang, is_synonym=True)

    return UntaggedSynonymAug


def _protected_crop():
    import nlpaug.augmenter.word as naw

    class ProtectedCropAug(naw.RandomWordAug):
        """Crop that never removes a placeholder (nlpaug's crop ignores stopwords)."""

        def _get_aug_range_idxes(self, tokens):
            cnt = self.generate_aug_cnt(len(tokens))
            if cnt == 0 or len(tokens) == 0:
                return []
            free = set(self.pre_skip_aug(tokens)) | {i for i, t in enumerate(tokens) if not t.isalnum()}
            free -= {i for i, t in enumerate(tokens) if _PLACEHOLDER.fullmatch(t)}
            starts = [s for s in range(len(tokens) - cnt + 1) if all(s + d in free for d in range(cnt))]
            if not starts:
                return []
            s = self.sample(starts, 1)[0]
            return list(range(s, s + cnt))

    return ProtectedCropAug


def build_augmenter(name: str, aug_p: float, aug_max: int, model_path: str | None = None):
    """One protected nlpaug augmenter by name (see configs/augment.yaml)."""
    import nlpaug.augmenter.char as nac
    import nlpaug.augmenter.word as naw

    common = dict(aug_p=aug_p, aug_min=1, aug_max=aug_max, stopwords_regex=STOPWORDS_REGEX)
    if name in ("swap", "delete"):
        aug = naw.RandomWordAug(action=name, **common)
    elif name == "crop":
        aug = _protected_crop()(action="crop", **common)
    elif name == "spelling":
        aug = naw.SpellingAug(**common)
    elif name == "keyboard":
        aug = nac.KeyboardAug(aug_word_p=aug_p, aug_word_max=aug_max, aug_char_max=1,
                              stopwords_regex=STOPWORDS_REGEX, include_special_char=False,
                              include_numeric=False, include_upper_case=False)
    elif name == "synonym":
        aug = _untagged_synonym_aug()(**common)
    elif name == "contextual":
        aug = naw.ContextualWordEmbsAug(model_path=model_path, action="substitute", **common)
    else:
        raise ValueError(f"unknown augmenter {name!r}")
    return protect(aug)
