"""TF-IDF (word + char n-grams, sublinear tf) + a linear classifier: the baseline family and its
cheap siblings (calibrated linear SVM, SGD, NB-SVM log-count-ratio features), one config each.

Fold weights: fold<k>/model.joblib, a scikit-learn Pipeline whose predict_proba columns are the
classes 0…K-1 (generate's label filter loads it directly).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Annotated, Literal

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.svm import LinearSVC

from medalist.core.config import AtLeastOne, Positive, Range, UserError
from medalist.core.io import atomic_path
from medalist.models import FoldData, FoldResult, RunConfig, texts


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    family: Literal["tfidf"] = "tfidf"
    word_ngrams: tuple[int, ...] = (1, 2)
    word_max_features: Annotated[int, AtLeastOne] = 50000
    char_ngrams: tuple[int, ...] = (3, 5)
    char_max_features: Annotated[int, AtLeastOne] = 100000
    min_df: Annotated[int, AtLeastOne] = 2
    C: Annotated[float, Positive] = 10.0
    class_weight: Literal["balanced"] | None = None  # balanced: weights n / (K · n_c)
    max_iter: Annotated[int, AtLeastOne] = 2000
    # logreg: multinomial logistic regression. linear_svm: LinearSVC, probabilities by sigmoid
    # calibration on inner folds. sgd: modified-Huber SGD (probabilities of its own, the cheapest).
    classifier: Literal["logreg", "linear_svm", "sgd"] = "logreg"
    # NB-SVM (Wang & Manning 2012): features scaled by each class's log-count ratio, one binary
    # model per class — strong on short texts
    nb_weighting: bool = False
    calibration_folds: Annotated[int, Range(ge=2)] = 3  # linear_svm only

    def validate(self, where: str) -> None:
        super().validate(where)
        for name in ("word_ngrams", "char_ngrams"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
                raise UserError(f"{where}.{name}: expected [min, max] with 1 <= min <= max, got {list(lo_hi)}")


class NBLinear(ClassifierMixin, BaseEstimator):
    """One-vs-rest NB-SVM: for class c the features are x · r_c, r_c = log((p_c/|p_c|) / (q_c/|q_c|)),
    p_c / q_c the smoothed feature sums of rows in / not in c; a binary classifier per class; the
    per-class scores are normalised into probabilities."""

    def __init__(self, make_binary, alpha: float = 1.0):
        self.make_binary, self.alpha = make_binary, alpha

    def fit(self, X, y):
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        self.r_, self.models_ = [], []
        for c in self.classes_:
            pos = np.asarray(X[y == c].sum(axis=0)).ravel() + self.alpha
            neg = np.asarray(X[y != c].sum(axis=0)).ravel() + self.alpha
            r = np.log((pos / pos.sum()) / (neg / neg.sum()))
            self.r_.append(r)
            self.models_.append(self.make_binary().fit(X.multiply(r).tocsr(), (y == c).astype(int)))
        return self

    def predict_proba(self, X):
        p = np.column_stack([m.predict_proba(X.multiply(r).tocsr())[:, 1] for m, r in zip(self.models_, self.r_)])
        return p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)


def _classifier(cfg: Config):
    if cfg.classifier == "logreg":
        return LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight,
                                  random_state=cfg.seed)
    if cfg.classifier == "sgd":
        return SGDClassifier(loss="modified_huber", alpha=1.0 / (cfg.C * 1000), max_iter=cfg.max_iter,
                             class_weight=cfg.class_weight, random_state=cfg.seed)
    svm = LinearSVC(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight, random_state=cfg.seed)
    return CalibratedClassifierCV(svm, method="sigmoid", cv=cfg.calibration_folds)


def build(cfg: Config) -> Pipeline:
    features = FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=tuple(cfg.word_ngrams), max_features=cfg.word_max_features,
                                 min_df=cfg.min_df, sublinear_tf=True, lowercase=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(cfg.char_ngrams),
                                 max_features=cfg.char_max_features, min_df=cfg.min_df, sublinear_tf=True)),
    ])
    clf = NBLinear(functools.partial(_classifier, cfg)) if cfg.nb_weighting else _classifier(cfg)
    return Pipeline([("features", features), ("clf", clf)])


def _full_proba(model: Pipeline, texts: list[str], n_classes: int) -> np.ndarray:
    """predict_proba widened to all K classes (a fold may lack a rare class)."""
    part = model.predict_proba(texts)
    out = np.zeros((len(texts), n_classes))
    out[:, model.classes_.astype(int)] = part
    return out


class _Full:
    """Pipeline wrapper whose predict_proba always has K columns in class order."""

    def __init__(self, model: Pipeline, n_classes: int):
        self.model, self.n_classes = model, n_classes
        self.classes_ = np.arange(n_classes)

    def predict_proba(self, texts) -> np.ndarray:
        return _full_proba(self.model, list(texts), self.n_classes)


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    t0 = time.time()
    model = build(cfg)
    model.fit(texts(fold.train), fold.train_labels)
    fit_s = time.time() - t0
    wrapped = _Full(model, fold.n_classes)
    with atomic_path(Path(out_dir) / "model.joblib") as tmp:
        joblib.dump(wrapped, tmp)
    t1 = time.time()
    val = wrapped.predict_proba(texts(fold.val))
    test = wrapped.predict_proba(texts(fold.test))
    return FoldResult(val, test, {"fit_seconds": fit_s, "predict_seconds": time.time() - t1})


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    model = joblib.load(Path(fold_dir) / "model.joblib")
    return lambda rows: model.predict_proba(texts(rows))
