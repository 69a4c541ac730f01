"""`make check`: an audit of a competition's train and test files, before any modelling.

Reads   data/raw/<comp>/, configs/competitions/<comp>.yaml (check_models: tokenizers to measure)
Writes  images/<comp>/checks_classes.png, checks_lengths.png, then results/<comp>/checks.md
Run     python -m medalist.stages.checks --comp demo

Row counts; empty texts; duplicates within train and between train and test (exact and after
normalisation) with conflicting labels; class distribution; share of rows with HTML, LaTeX,
URLs, emails, code, byte-string literals, non-ASCII, likely non-English text; lengths in
characters, words and tokens per configured model; adversarial validation (TF-IDF train-vs-test
classifier: AUC and the most telling tokens).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_raw
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.io import write_text
from medalist.core.plots import pyplot, save_figure
from medalist.text.clean import RE_BYTES, RE_CODE, RE_EMAIL, RE_HTML, RE_LATEX, RE_URL, looks_english, normalise

DETECTORS = {
    "HTML": lambda t: bool(RE_HTML.search(t)),
    "LaTeX": lambda t: bool(RE_LATEX.search(t)),
    "URL": lambda t: bool(RE_URL.search(t)),
    "email": lambda t: bool(RE_EMAIL.search(t)),
    "code": lambda t: bool(RE_CODE.search(t)),
    "byte-string literal": lambda t: bool(RE_BYTES.match(t)),
    "non-ASCII": lambda t: not t.isascii(),
    "likely non-English": lambda t: not looks_english(t),
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def duplicates(train: pd.DataFrame, test: pd.DataFrame) -> dict:
    tr_norm = train["text"].map(normalise)
    te_norm = test["text"].map(normalise)
    conflicts = train.assign(key=tr_norm).groupby("key")["label"].nunique()
    return {
        "train exact duplicates": int(train["text"].duplicated().sum()),
        "train normalised duplicates": int(tr_norm.duplicated().sum()),
        "duplicate groups with conflicting labels": int((conflicts > 1).sum()),
        "test exact duplicates": int(test["text"].duplicated().sum()),
        "test rows exactly in train": int(test["text"].isin(set(train["text"])).sum()),
        "test rows in train after normalisation": int(te_norm.isin(set(tr_norm)).sum()),
    }


def token_lengths(comp: Competition, texts: list[str]) -> tuple[dict[str, np.ndarray], list[str], dict[str, int]]:
    """Token counts per configured model whose tokenizer loads from local files."""
    from medalist.models import Tokenized
    from medalist.models.backbones import load_tokenizer_offline
    from medalist.models.registry import load_model_config

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out, notes, max_lens = {}, [], {}
    for name in comp.check_models:
        try:
            _, cfg = load_model_config(name)
        except UserError as e:
            notes.append(f"{name}: skipped ({e})")
            continue
        if not isinstance(cfg, Tokenized):  # e.g. tfidf: no tokenizer to measure with
            continue
        backbone = cfg.backbone
        try:
            tok = load_tokenizer_offline(backbone)
        except Exception as e:  # noqa: BLE001 — any loading failure is a skip with a note
            notes.append(f"{name}: tokenizer '{backbone}' not available locally, skipped ({type(e).__name__})")
            continue
        out[name] = np.array([len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]])
        max_lens[name] = cfg.max_length
    return out, notes, max_lens


def adversarial(train_texts: list[str], test_texts: list[str], seed: int = 0) -> tuple[float, list[str], list[str]]:
    """TF-IDF + logistic regression telling train from test: CV AUC and its telling tokens."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    texts = train_texts + test_texts
    y = np.r_[np.zeros(len(train_texts)), np.ones(len(test_texts))]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=50000, sublinear_tf=True)
    X = vec.fit_transform(texts)
    clf = LogisticRegression(max_iter=1000, class_weight="balanced", random_state=seed)
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    p = cross_val_predict(clf, X, y, cv=cv, method="predict_proba")[:, 1]
    clf.fit(X, y)
    vocab = np.array(vec.get_feature_names_out())
    order = np.argsort(clf.coef_[0])
    return float(roc_auc_score(y, p)), vocab[order[::-1][:10]].tolist(), vocab[order[:10]].tolist()


def _plots(comp: Competition, paths: Paths, train: pd.DataFrame, test: pd.DataFrame, toks: dict) -> list[Path]:
    plt = pyplot()
    saved = []
    counts = train["label"].value_counts().reindex(range(comp.n_classes), fill_value=0)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh([comp.labels[i] for i in counts.index], counts.to_numpy(), color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("train rows")
    ax.set_title(f"{comp.name}: class distribution")
    fig.tight_layout()
    saved.append(save_figure(fig, paths.images / "checks_classes.png"))

    panels = [("characters", train["text"].str.len(), test["text"].str.len())]
    for name, lens in toks.items():
        panels.append((f"{name} tokens", lens[: len(train)], lens[len(train):]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    for ax, (title, a, b) in zip(axes[0], panels):
        hi = np.percentile(np.r_[a, b], 99) if len(a) + len(b) else 1
        bins = np.linspace(0, max(hi, 1), 40)
        ax.hist(np.clip(a, 0, hi), bins=bins, alpha=0.6, density=True, label="train")
        ax.hist(np.clip(b, 0, hi), bins=bins, alpha=0.6, density=True, label="test")
        ax.set_title(f"length in {title}")
        ax.legend()
    fig.tight_layout()
    saved.append(save_figure(fig, paths.images / "checks_lengths.png"))
    return saved


def run(comp: Competition) -> Path:
    paths = Paths(comp.name)
    if not (paths.raw / ".complete").exists():
        raise UserError(f"no data for '{comp.name}': run `make download COMP={comp.name}` first")
    train, test, _ = read_raw(comp, paths.raw)
    md = [f"# Data checks: {comp.name}", ""]
    md += ["## Rows", "", _table(["file", "rows", "empty texts"], [
        ["train", len(train), int((train["text"].str.strip() == "").sum())],
        ["test", len(test), int((test["text"].str.strip() == "").sum())],
    ]), ""]
    md += ["## Duplicates", "", _table(["check", "rows"], [[k, v] for k, v in duplicates(train, test).items()]), ""]
    counts = train["label"].value_counts().reindex(range(comp.n_classes), fill_value=0)
    md += ["## Class distribution", "", _table(["class", "name", "rows", "share"], [
        [i, comp.labels[i], int(c), _pct(c / len(train))] for i, c in counts.items()
    ]), "", f"Imbalance: largest / smallest class = {counts.max() / max(counts.min(), 1):.1f}", ""]
    rows = []
    for name, fn in DETECTORS.items():
        rows.append([name, _pct(train["text"].map(fn).mean()), _pct(test["text"].map(fn).mean())])
    md += ["## Content", "", _table(["rows with", "train", "test"], rows), ""]

    all_texts = train["text"].tolist() + test["text"].tolist()
    toks, notes, max_lens = token_lengths(comp, all_texts)
    n = len(train)
    length_rows = []
    for label, lens in [("characters", (train["text"].str.len(), test["text"].str.len())),
                        ("words", (train["text"].str.split().str.len(), test["text"].str.split().str.len()))]:
        a, b = np.asarray(lens[0]), np.asarray(lens[1])
        length_rows.append([label, f"{np.median(a):.0f}", f"{np.percentile(a, 95):.0f}", int(a.max()),
                            f"{np.median(b):.0f}", f"{np.percentile(b, 95):.0f}", int(b.max()), ""])
    for name, lens in toks.items():
        a, b = lens[:n], lens[n:]
        over = f"train {_pct((a > max_lens[name]).mean())}, test {_pct((b > max_lens[name]).mean())} over {max_lens[name]}"
        length_rows.append([f"{name} tokens", f"{np.median(a):.0f}", f"{np.percentile(a, 95):.0f}", int(a.max()),
                            f"{np.median(b):.0f}", f"{np.percentile(b, 95):.0f}", int(b.max()), over])
    md += ["## Lengths", "", _table(["unit", "train median", "train p95", "train max", "test median",
                                      "test p95", "test max", "over max length"], length_rows), ""]
    md += [f"- {note}" for note in notes] + ([""] if notes else [])

    auc, test_like, train_like = adversarial(train["text"].tolist(), test["text"].tolist())
    verdict = "train and test look alike" if auc < 0.6 else "train and test differ: check the tokens below"
    md += ["## Adversarial validation", "", f"TF-IDF classifier telling train from test: AUC {auc:.3f} ({verdict}).", "",
           f"Most test-like tokens: {', '.join(f'`{t}`' for t in test_like)}", "",
           f"Most train-like tokens: {', '.join(f'`{t}`' for t in train_like)}", ""]
    for p in _plots(comp, paths, train, test, toks):
        md += [f"![{p.stem}](../../images/{comp.name}/{p.name})", ""]
    out = write_text(paths.results / "checks.md", "\n".join(md))
    print(f"checks: {out} (adversarial AUC {auc:.3f})")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.checks", __doc__)
    a = ap.parse_args(argv)
    run(load_competition(a.comp))


if __name__ == "__main__":
    main()
