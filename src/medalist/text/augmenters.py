"""The nlpaug augmenters by name (configs/augment.yaml, TTA's nlpaug views), each made to skip
math placeholders (`text.math_spans`), and the offline WordNet the synonym step needs.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from medalist.text.math_spans import PLACEHOLDER, STOPWORDS_REGEX


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
            free -= {i for i, t in enumerate(tokens) if PLACEHOLDER.fullmatch(t)}
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
