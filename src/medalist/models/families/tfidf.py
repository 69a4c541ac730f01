"""TF-IDF (word + char n-grams, sublinear tf) + logistic regression: the baseline family.

Fold weights: fold<k>/model.joblib, a scikit-learn Pipeline whose predict_proba columns are the
classes 0…K-1 (generate's label filter loads it directly).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Literal

import joblib
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from medalist.core.config import AtLeastOne, Positive, UserError
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

    def validate(self, where: str) -> None:
        super().validate(where)
        for name in ("word_ngrams", "char_ngrams"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
                raise UserError(f"{where}.{name}: expected [min, max] with 1 <= min <= max, got {list(lo_hi)}")


def build(cfg: Config) -> Pipeline:
    features = FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=tuple(cfg.word_ngrams), max_features=cfg.word_max_features,
                                 min_df=cfg.min_df, sublinear_tf=True, lowercase=True)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(cfg.char_ngrams),
                                 max_features=cfg.char_max_features, min_df=cfg.min_df, sublinear_tf=True)),
    ])
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight,
                             random_state=cfg.seed)
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
