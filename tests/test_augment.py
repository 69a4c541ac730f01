"""Augmentation keeps math intact and labels fixed; children never train in their parent's fold."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medalist.core import generated
from medalist.core.config import Paths
from medalist.stages import augment
from medalist.text import augmenters as textaug
from medalist.text import views as textviews
from medalist.text.clean import normalise
from medalist.text.dedup import near_duplicates
from medalist.text.math_spans import PREFIX, math_spans

# (text, its protected spans in order) — the cases math-heavy Kaggle text is known for
HARD = [
    (r"Let $f(x) = \frac{1}{\sqrt{x^{2}+1}}$ for every value x2 > 0.",
     [r"$f(x) = \frac{1}{\sqrt{x^{2}+1}}$", "x2", "0"]),
    (r"Compute $$\int_{0}^{1} t\,dt$$ and then $y$ next$$z$$ please.",
     [r"$$\int_{0}^{1} t\,dt$$", "$y$", "$$z$$"]),
    (r"Show that \begin{align*} a &= b + 1 \\ c &= \{2\} \end{align*} holds for these values.",
     [r"\begin{align*} a &= b + 1 \\ c &= \{2\} \end{align*}"]),
    ("Numbers like 3.14, -2, 1/2 and 10^5 appear in this question about sums.",
     ["3.14", "-2", "1/2", "10^5"]),
    (r"Solve \( u + 1 = 2 \) and also \[ v = 3 \] for the unknown values now.",
     [r"\( u + 1 = 2 \)", r"\[ v = 3 \]"]),
    (r"The matrix $\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$ is invertible, find its inverse.",
     [r"$\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}$"]),
    (r"Nested \begin{matrix} \begin{matrix} 1 \end{matrix} \end{matrix} blocks stay whole here.",
     [r"\begin{matrix} \begin{matrix} 1 \end{matrix} \end{matrix}"]),
    (r"It costs \$5 when $q = 5$ and the bare \frac{a}{b^{2}} stays too, find the total.",
     [r"\$", "5", "$q = 5$", r"\frac{a}{b^{2}}"]),
    ("Find the value of x-2 when x = 7 and y is twice that number.",
     ["x", "2", "x", "7", "y"]),
    (r"A die with $ 6 $ faces, spaced   $x  +  y$ LaTeX, is rolled twice.",
     ["A", "$ 6 $", "$x  +  y$"]),
]
STEPS = ["swap", "delete", "crop", "spelling", "keyboard"]


def holds_in_order(text: str, spans: list[str]) -> bool:
    """Independent of text.math_spans: every span occurs, byte-identical, after the previous one."""
    pos = 0
    for s in spans:
        i = text.find(s, pos)
        if i < 0:
            return False
        pos = i + len(s)
    return True


@pytest.fixture(scope="module")
def augmenters():
    return {name: textaug.build_augmenter(name, aug_p=0.5, aug_max=5) for name in STEPS}


@pytest.mark.parametrize("text,spans", HARD)
def test_spans_of_hard_cases(text, spans):
    assert math_spans(text) == spans


@pytest.mark.parametrize("text,spans", HARD)
def test_every_augmenter_keeps_hard_math(text, spans, augmenters):
    made = 0
    for name, aug in augmenters.items():
        for seed in range(8):
            child = textviews.augment_text(text, [aug], seed)
            if child is not None:
                made += 1
                assert child != text and holds_in_order(child, spans), (name, child)
    assert made >= 20  # protection must not simply drop everything


MATH_ATOMS = [a for _, spans in HARD for a in spans] + ["$a_{n+1}$", r"\sqrt{2}", "x^2", "42", "0.5"]
WORDS = ["find", "the", "probability", "that", "triangle", "Compute", "sum", "of", "all", "integers",
         "when", "is", "prime", "roots", "circle", "area", "matrix", "what", "value"]


@st.composite
def texts(draw):
    parts = draw(st.lists(st.one_of(st.sampled_from(MATH_ATOMS), st.sampled_from(WORDS),
                                    st.integers(-1000, 10**6).map(str),
                                    st.floats(-100, 100, allow_nan=False).map(lambda f: f"{f:.3g}")),
                          min_size=1, max_size=25))
    seps = draw(st.lists(st.sampled_from([" ", " ", " ", ", ", ". ", "\n", "  ", ""]),
                         min_size=len(parts), max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps)).strip()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts(), seed=st.integers(0, 2**31), chain=st.lists(st.sampled_from(STEPS), min_size=1, max_size=3))
def test_random_compositions_keep_math(text, seed, chain, augmenters):
    spans = math_spans(text)
    child = textviews.augment_text(text, [augmenters[n] for n in chain], seed)
    if child is not None:
        assert holds_in_order(child, spans)


class _Broken:
    """Stands in for an augmenter that breaks a placeholder in the way named."""

    def __init__(self, how):
        self.how = how

    def augment(self, text):
        p = PREFIX
        if self.how == "delete":
            return [text.replace(p + "A", "", 1)]
        if self.how == "swap":
            return [text.replace(p + "A", "@@").replace(p + "B", p + "A").replace("@@", p + "B")]
        if self.how == "lower":
            return [text.replace(p + "A", (p + "A").lower())]
        if self.how == "split":
            return [text.replace(p + "A", p[:2] + " " + p[2:] + "A")]
        return [text.replace("find", "find 7")]  # a digit of its own


@pytest.mark.parametrize("how", ["delete", "swap", "lower", "split", "digit"])
def test_broken_children_are_dropped(how):
    text = "find $x+1$ and $y$ now"
    assert textviews.augment_text(text, [_Broken(how)], seed=0) is None


def test_views_for_tta_are_k_per_text_and_deterministic(augmenters):
    texts_ = [t for t, _ in HARD]
    chain = [augmenters["swap"], augmenters["keyboard"]]
    views = textviews.augment_views(texts_, chain, k=3, seed=7)
    assert views == textviews.augment_views(texts_, chain, k=3, seed=7)
    assert [len(v) for v in views] == [3] * len(texts_)
    for (text, spans), vs in zip(HARD, views):
        assert all(holds_in_order(v, spans) for v in vs)
    assert sum(v != t for vs, t in zip(views, texts_) for v in vs) >= len(texts_)
    # a text's views are its own: the same in another order and beside other rows (a hidden test)
    shuffled = textviews.augment_views(["unrelated words here", *texts_[::-1]], chain, k=3, seed=7)
    assert shuffled[1:] == views[::-1]


def test_wordnet_absent_is_false(tmp_path):
    assert textaug.ensure_wordnet(tmp_path / "nltk", src=tmp_path / "none") is False


@pytest.mark.skipif(not (textaug.WORDNET_SRC / "data.noun").exists(), reason="Debian wordnet not installed")
def test_synonyms_from_debian_wordnet_keep_math(tmp_path):
    assert textaug.ensure_wordnet(tmp_path / "nltk_data")
    assert not (tmp_path / "nltk_data" / "corpora" / "wordnet" / "data.noun").is_symlink()
    aug = textaug.build_augmenter("synonym", aug_p=0.5, aug_max=5)
    children = [textviews.augment_text(t, [aug], s) for t, _ in HARD for s in range(3)]
    assert sum(c is not None for c in children) >= len(HARD)
    for (text, spans), i in zip(HARD, range(0, 3 * len(HARD), 3)):
        for c in children[i:i + 3]:
            assert c is None or holds_in_order(c, spans)


# ---------------------------------------------------------------- make augment


@contextlib.contextmanager
def project(rows: list[tuple[str, int]], n_folds: int = 3, steps=STEPS, copies: int = 2, near_dup: float = 0.8):
    """A throwaway project root with processed data and configs (hypothesis-friendly)."""
    with tempfile.TemporaryDirectory() as root:
        old = {k: os.environ.get(k) for k in ("MEDALIST_ROOT", "MEDALIST_CONFIGS")}
        os.environ["MEDALIST_ROOT"], os.environ["MEDALIST_CONFIGS"] = root, f"{root}/configs"
        try:
            cfg = Path(root) / "configs"
            (cfg / "competitions").mkdir(parents=True)
            (cfg / "competitions" / "toy.yaml").write_text(yaml.safe_dump(
                {"name": "toy", "source": "local", "labels": ["A", "B", "C"],
                 "folds": {"n": n_folds, "near_dup_threshold": near_dup}}))
            (cfg / "augment.yaml").write_text(yaml.safe_dump({
                "seed": 1, "copies": copies, "classes": "rare", "rare_fraction": 0.8,
                "steps": [{"name": s, "p": 0.6, "aug_p": 0.3, "aug_max": 4} for s in steps]}))
            train = pd.DataFrame(rows, columns=["text", "label"])
            train.insert(0, "id", [f"train-{i}" for i in range(len(train))])
            train["fold"] = [i % n_folds for i in range(len(train))]
            test = pd.DataFrame({"id": ["t0"], "text": [rows[0][0]]})
            paths = Paths("toy")
            paths.processed.mkdir(parents=True)
            train.to_csv(paths.processed / "train.csv", index=False)
            test.to_csv(paths.processed / "test.csv", index=False)
            yield paths, train
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _check_children(paths, train):
    aug = generated.read_part(paths.generated / "aug.csv")
    parents = train.set_index("id")
    n_folds = train["fold"].max() + 1
    for row in aug.itertuples():
        parent = parents.loc[row.parent_id]
        assert row.label == parent["label"]  # never a new label
        folds = generated.parse_folds(row.folds)
        assert folds == [k for k in range(n_folds) if k != parent["fold"]]  # never the parent's fold
        assert row.id.startswith("aug-") and row.source.startswith("aug:")
        assert holds_in_order(row.text, math_spans(parent["text"]))
    return aug


def test_make_augment_rows_folds_and_rebuild():
    rows = ([(t, 0) for t, _ in HARD] * 2 + [(f"Plain question number {i} about primes.", 1) for i in range(30)]
            + [("Find the value of x-2 when x = 7 and y is twice that number.", 2)])
    # a low near-duplicate threshold, so some children of the test row's twin in train fall under it
    with project(rows, near_dup=0.5) as (paths, train):
        llm = pd.DataFrame({"id": ["llm-1"], "text": ["A generated question"], "label": [1], "source": ["llm:m"],
                            "parent_id": [""], "folds": ["0;1"]})
        llm.to_csv(paths.generated.mkdir(parents=True) or paths.generated / "llm.csv", index=False)
        out = augment.run("toy")
        aug = _check_children(paths, train)
        assert set(aug["label"]) <= {0, 2} and len(aug) > len(HARD)  # rare classes only (B is the largest)
        child_keys = [normalise(t, ignore_spacing=True) for t in aug["text"]]
        assert not set(child_keys) & {normalise(t, ignore_spacing=True) for t in train["text"]}  # no copy of a row
        assert len(set(child_keys)) == len(child_keys)
        # rule 5: a near copy of a test row is dropped and counted (the test row is a parent's text)
        test = pd.read_csv(paths.processed / "test.csv")
        assert not near_duplicates(aug["text"].tolist(), test["text"].tolist(), 0.5).any()
        stats = json.loads((paths.generated / "augment_stats.json").read_text())
        assert stats["near_duplicate_test"] > 0 and stats["made"] == len(aug)
        # leakage: a child trains only in folds where its parent is not validated
        merged = aug.merge(train[["id", "fold"]], left_on="parent_id", right_on="id")
        assert not any(str(f) in fs.split(";") for f, fs in zip(merged["fold"], merged["folds"]))
        gen = pd.read_csv(paths.generated / "generated_train.csv", dtype=str, keep_default_na=False)
        assert list(gen.columns) == generated.COLUMNS
        assert len(gen) == len(aug) + 1 and gen["id"].iloc[-1] == "llm-1"
        first = out.read_bytes()
        augment.run("toy")
        assert out.read_bytes() == first  # seeded and deterministic


@settings(max_examples=6, deadline=None)
@given(st.lists(st.tuples(texts(), st.integers(0, 2)), min_size=6, max_size=12))
def test_property_labels_and_folds_never_change(rows):
    rows = rows + [(f"Filler question {i} about the largest class.", 1) for i in range(8)]
    with project(rows, steps=["swap", "delete", "spelling"], copies=1) as (paths, train):
        augment.run("toy")
        _check_children(paths, train)


def test_bad_config_is_one_line(capsys):
    with project([("a question", 0), ("b question", 1)]) as (paths, _):
        (Path(os.environ["MEDALIST_CONFIGS"]) / "augment.yaml").write_text("copies: 2\ncopise: 3\n")
        with pytest.raises(SystemExit) as e:
            augment.main(["--comp", "toy"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "copise" in err
