"""The plain TF-IDF + logistic regression reference of math-subjects' SOURCE.md (test micro-F1 0.762).

Word 1-2 grams (10k) + char_wb 3-5 grams (5k), sublinear tf, LogisticRegression(max_iter=1000),
trained on all of train.csv. `--sizes` times fit and predict on the first n rows instead (the
bench's growth table).

Reads   --train-csv (text + label), --test-csv (id + text)
Writes  --out/test.csv (id, p_0…), --out/metrics.json
Run     python bench/tfidf_baseline.py --train-csv ../shared/competitions/math-subjects/train.csv \
            --test-csv ../shared/competitions/math-subjects/test.csv --out /tmp/tfidf
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union


def model():
    return make_pipeline(
        make_union(TfidfVectorizer(ngram_range=(1, 2), max_features=10_000, sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), max_features=5_000, sublinear_tf=True)),
        LogisticRegression(max_iter=1000))


def fit_predict(train: pd.DataFrame, test: pd.DataFrame, text: str, label: str):
    clf = model()
    t0 = time.perf_counter()
    clf.fit(train[text].astype(str), train[label])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    proba = clf.predict_proba(test[text].astype(str))
    return clf, proba, fit_s, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-csv", required=True)
    ap.add_argument("--test-csv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--text-column", default="Question")
    ap.add_argument("--label-column", default="label")
    ap.add_argument("--id-column", default="id")
    ap.add_argument("--sizes", default="", help="comma-separated train/test sizes to time (growth)")
    a = ap.parse_args()
    train, test = pd.read_csv(a.train_csv), pd.read_csv(a.test_csv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    clf, proba, fit_s, pred_s = fit_predict(train, test, a.text_column, a.label_column)
    pred = pd.DataFrame(proba, columns=[f"p_{int(k)}" for k in clf.classes_])
    pred.insert(0, "id", test[a.id_column].astype(str).to_numpy())
    pred.to_csv(out / "test.csv", index=False)
    metrics = {"train_seconds": fit_s, "predict_seconds": pred_s, "n_train": len(train), "n_test": len(test)}
    growth = []
    for n in [int(s) for s in a.sizes.split(",") if s]:
        _, _, fs, ps = fit_predict(train.iloc[:n], test.iloc[:n], a.text_column, a.label_column)
        growth.append({"n": min(n, len(train)), "train_seconds": fs, "n_test": min(n, len(test)), "predict_seconds": ps})
    if growth:
        metrics["growth"] = growth
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
