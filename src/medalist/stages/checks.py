"""`make check`: an audit of a competition's train and test files, before any modelling.

Reads   data/raw/<comp>/, configs/competitions/<comp>.yaml (check_models: tokenizers to measure)
Writes  images/<comp>/checks_classes.png, and per declared input checks_lengths.png (text) or
        checks_sizes.png + checks_samples.png (images), then results/<comp>/checks.md
Run     python -m medalist.stages.checks --comp demo

Text: row counts; empty texts; duplicates within train and between train and test (exact and
after normalisation) with conflicting labels; class distribution; share of rows with HTML, LaTeX,
URLs, emails, code, byte-string literals, non-ASCII, likely non-English text; lengths in
characters, words and tokens per configured model; adversarial validation (TF-IDF train-vs-test
classifier: AUC and the most telling tokens).
Images (`image.audit`): files that do not decode, by name; formats and modes; width, height and
aspect; exact and near duplicates within train and between train and test, the largest group and
groups with conflicting labels; class distribution and a contact sheet of samples per class;
adversarial validation on simple image statistics.
Fold groups (`core.groups`, the grouping `make folds` assigns by): how many train rows share a
fold with a duplicate, and, with text and images, that the groups chain across modalities.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.core import config as C
from medalist.core.competition import Competition, load_competition, read_raw
from medalist.core.config import Paths, UserError, stage_parser
from medalist.core.groups import CHAINING, row_groups, summary
from medalist.core.io import write_text
from medalist.core.plots import pyplot, save_figure
from medalist.text.clean import RE_BYTES, RE_CODE, RE_EMAIL, RE_HTML, RE_LATEX, RE_URL, clean, looks_english, normalise

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
    def cell(v) -> str:  # a label or text from the data may hold a `|` or a newline
        return " ".join(str(v).split()).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
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
            _, cfg = load_model_config(name, comp)
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


def _class_plot(comp: Competition, paths: Paths, train: pd.DataFrame) -> Path:
    plt = pyplot()
    counts = train["label"].value_counts().reindex(range(comp.n_classes), fill_value=0)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh([comp.labels[i] for i in counts.index], counts.to_numpy(), color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("train rows")
    ax.set_title(f"{comp.name}: class distribution")
    fig.tight_layout()
    return save_figure(fig, paths.images / "checks_classes.png")


def _plots(comp: Competition, paths: Paths, train: pd.DataFrame, test: pd.DataFrame, toks: dict) -> list[Path]:
    plt = pyplot()
    saved = [_class_plot(comp, paths, train)]

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


def _classes(comp: Competition, train: pd.DataFrame) -> list[str]:
    counts = train["label"].value_counts().reindex(range(comp.n_classes), fill_value=0)
    return ["## Class distribution", "", _table(["class", "name", "rows", "share"], [
        [i, comp.labels[i], int(c), _pct(c / len(train))] for i, c in counts.items()
    ]), "", f"Imbalance: largest / smallest class = {counts.max() / max(counts.min(), 1):.1f}", ""]


def _pictures(comp: Competition, pngs: list[Path]) -> list[str]:
    return [line for p in pngs for line in (f"![{p.stem}](../../images/{comp.name}/{p.name})", "")]


def _text_checks(comp: Competition, paths: Paths, train: pd.DataFrame, test: pd.DataFrame) -> tuple[list[str], float]:
    md = ["## Rows", "", _table(["file", "rows", "empty texts"], [
        ["train", len(train), int((train["text"].str.strip() == "").sum())],
        ["test", len(test), int((test["text"].str.strip() == "").sum())],
    ]), ""]
    md += ["## Duplicates", "", _table(["check", "rows"], [[k, v] for k, v in duplicates(train, test).items()]), ""]
    md += _classes(comp, train)
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
    md += _pictures(comp, _plots(comp, paths, train, test, toks))
    return md, auc


def _image_files(a, rel: list[str], ids: list[str], n: int) -> list[str]:
    """Rows, files that do not decode (named, with why), formats and modes, sizes."""
    from medalist.image.decode import why_unreadable

    none = np.array([not r for r in rel], dtype=bool)
    bad = np.flatnonzero(~a.readable & ~none)

    def row(split: str, s: slice) -> list:
        k = int(none[s].sum())
        return [split, len(none[s]), f"{k} ({k / max(len(none[s]), 1):.1%})", int((~a.readable[s] & ~none[s]).sum())]

    md = ["## Rows", "", _table(["file", "rows", "without an image", "images that do not decode"],
                                [row("train", slice(0, n)), row("test", slice(n, len(rel)))]), ""]
    if none.any():
        md += ["Rows without an image stay in a competition with other inputs (image-only runs give them "
               "their fallback) and are left out of an image-only one's training.", ""]
    if len(bad):
        fate = {True: "train, left out by `make folds` in an image-only competition",
                False: "test, kept: its row gets the fallback prediction"}
        md += ["## Unreadable images", ""] + [f"- `{rel[i]}`: {fate[bool(i < n)]} — {why_unreadable(C.root() / rel[i])}"
                                               for i in bad[:20]]
        md += ([f"- and {len(bad) - 20} more"] if len(bad) > 20 else []) + [""]
    info = pd.concat([a.train_info.assign(split="train"), a.test_info.assign(split="test")])
    kinds = info.groupby(["format", "mode", "split"]).size().unstack("split", fill_value=0)
    md += ["## Formats and modes", "", _table(["format", "mode", "train", "test"], [
        [f, m, int(r.get("train", 0)), int(r.get("test", 0))] for (f, m), r in kinds.iterrows()]), ""]
    size_rows = []
    for col, fmt in (("width", "{:.0f}"), ("height", "{:.0f}"), ("aspect", "{:.2f}")):
        row = [col]
        for df in (a.train_info, a.test_info):
            v = (df["width"] / df["height"] if col == "aspect" else df[col]).dropna()
            row += [fmt.format(x) for x in (v.min(), v.median(), v.max())] if len(v) else ["", "", ""]
        size_rows.append(row)
    distinct = [len(df.dropna(subset=["width"]).groupby(["width", "height"])) for df in (a.train_info, a.test_info)]
    return md + ["## Sizes", "", _table(["", "train min", "train median", "train max", "test min", "test median",
                                         "test max"], size_rows), "",
                 f"Distinct sizes: train {distinct[0]}, test {distinct[1]}.", ""]


def _image_duplicates(comp: Competition, d, ids: list[str], labels: np.ndarray) -> list[str]:
    def named(group: list[int]) -> str:
        return ", ".join(f"`{ids[i]}`" + (f" ({comp.labels[labels[i]]})" if i < len(labels) else "") for i in group)

    largest = "No duplicates."
    if len(d.largest) > 1:
        more = " …" if len(d.largest) > 10 else ""
        largest = f"Largest duplicate group: {len(d.largest)} images: {named(d.largest[:10])}{more}."
    md = ["## Duplicates", "",
          ("Exact: the same bytes or the same decoded pixels. Near: a perceptual-hash distance confirmed by "
           "the pixels, never chained (every member of a group is near every other)."), "",
          _table(["check", "rows"], [[k, v] for k, v in d.rows.items()]), "", largest, ""]
    if d.conflicts:
        md += ["Duplicate groups with conflicting labels:", ""] + [f"- {named(g)}" for g in d.conflicts[:10]] + [""]
    return md


def _image_checks(comp: Competition, paths: Paths, train: pd.DataFrame, test: pd.DataFrame,
                  with_classes: bool) -> tuple[list[str], float]:
    from medalist.image.audit import audit

    n = len(train)
    rel = [(paths.raw / p).relative_to(C.root()).as_posix() if p else "" for p in (*train["image"], *test["image"])]
    ids = [*train["id"], *(f"{i} (test)" for i in test["id"])]
    labels = train["label"].to_numpy()
    a = audit(rel[:n], rel[n:], labels, comp.labels, paths.images)
    md = _image_files(a, rel, ids, n) + _image_duplicates(comp, a.duplicates, ids, labels)
    if with_classes:
        md += _classes(comp, train)
    auc = a.adversarial_auc
    verdict = "train and test look alike" if auc < 0.6 else "train and test differ: check the statistics below"
    md += ["## Adversarial validation", "",
           ("Gradient boosting on simple image statistics (size, file size, colour, contrast, edges) telling "
            f"train from test: AUC {auc:.3f} ({verdict})."), "",
           _table(["statistic", "AUC on its own", "train median", "test median"],
                  [[name, f"{s:.3f}", f"{tr:.3g}", f"{te:.3g}"] for name, s, tr, te in a.telling]), ""]
    md += _pictures(comp, ([_class_plot(comp, paths, train)] if with_classes else []) + a.plots)
    return md, auc


def _fold_groups(comp: Competition, paths: Paths, train: pd.DataFrame) -> list[str]:
    has_text, has_image = "text" in train.columns, "image" in train.columns
    texts = [clean(t, comp.cleaning) for t in train["text"]] if has_text else None
    images = ([(paths.raw / p).relative_to(C.root()).as_posix() if p else "" for p in train["image"]]
              if has_image else None)
    g = row_groups(texts, images, comp.folds.near_dup_threshold)
    what = [f"texts whose character 5-gram Jaccard (cleaned, normalised) is at least {comp.folds.near_dup_threshold:g}, "
            "every such pair, chained"] if has_text else []
    what += ["images that are exact or near copies (above)"] if has_image else []
    md = ["## Fold groups", "", f"Rows `make folds` keeps in one fold: {'; '.join(what)}.", "",
          _table(["grouping", "rows"], [[k, v] for k, v in summary(g.group).items()]), ""]
    return md + ([CHAINING, ""] if has_text and has_image else [])


def run(comp: Competition) -> Path:
    paths = Paths(comp.name)
    if not (paths.raw / ".complete").exists():
        raise UserError(f"no data for '{comp.name}': run `make download COMP={comp.name}` first")
    train, test, _ = read_raw(comp, paths.raw)
    md, aucs = [f"# Data checks: {comp.name}", ""], {}
    if "text" in train.columns:
        lines, aucs["text"] = _text_checks(comp, paths, train, test)
        md += lines
    if "image" in train.columns:
        lines, aucs["images"] = _image_checks(comp, paths, train, test, with_classes="text" not in train.columns)
        md += lines
    md += _fold_groups(comp, paths, train)
    out = write_text(paths.results / "checks.md", "\n".join(md))
    shown = ", ".join(f"{k} {v:.3f}" if len(aucs) > 1 else f"{v:.3f}" for k, v in aucs.items())
    print(f"checks: {out} (adversarial AUC {shown})")
    return out


@C.cli
def main(argv: list[str] | None = None) -> None:
    ap = stage_parser("medalist.stages.checks", __doc__)
    a = ap.parse_args(argv)
    run(load_competition(a.comp))


if __name__ == "__main__":
    main()
