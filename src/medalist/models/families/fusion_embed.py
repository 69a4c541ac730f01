"""Frozen text embeddings + frozen image features → one head: the cheap fusion of a text+image
competition, fitted per fold in seconds on a CPU.

Each row's vector is three blocks side by side:
  text   mean-pooled sentence embedding (`embed_lr.embed`: MiniLM by default, cached per text)
  image  pooled features of a frozen timm backbone (`image_embed.extractor`: EfficientNet-Lite0 with
         the packaged ImageNet weights by default, computed once per image under
         data/processed/<comp>/features/ and shared with `image-embed` runs)
  photo  1 where the row has a readable photo, 0 where it has none or one that does not decode
Each block is standardised on the fold's training rows (the image block on the rows that have a
photo; rows without one sit at its mean, i.e. zeros) and scaled to unit total variance, so neither
modality outweighs the other by its width. The head is logistic regression or a one-hidden-layer
MLP (`head`), with one L2 knob `C` for both.

Rows without a photo train and predict like any other: their image block is the mean and the
indicator tells the head to lean on the text.
Fold weights: fold<k>/model.joblib (scalers and head).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated, Literal

import joblib
import numpy as np
import pandas as pd

from medalist.core.config import AtLeastOne, Positive, UserError
from medalist.core.io import atomic_path
from medalist.image import weights as W
from medalist.image.features import features
from medalist.models import FoldData, FoldResult, RunConfig, texts
from medalist.models.families import embed_lr, image_embed


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    family: Literal["fusion_embed"] = "fusion_embed"
    inputs: tuple[str, ...] = ("text", "image")
    text_backbone: str = "minilm"  # an alias of models/backbones.py or a local folder
    max_length: Annotated[int, AtLeastOne] = 256
    image_backbone: str = W.PACKAGED_ARCH  # a timm model name
    weights: str = W.PACKAGED  # packaged | timm | none (tests) | a local file, as in image_embed
    image_size: Annotated[int, AtLeastOne] = 128
    batch_size: Annotated[int, AtLeastOne] = 64  # texts or images per forward pass
    head: Literal["logistic", "mlp"] = "logistic"
    C: Annotated[float, Positive] = 4.0  # inverse L2 strength (the MLP's alpha is 1/C)
    hidden: Annotated[int, AtLeastOne] = 256  # MLP width
    class_weight: Literal["balanced"] | None = None  # logistic only
    max_iter: Annotated[int, AtLeastOne] = 3000

    def validate(self, where: str) -> None:
        super().validate(where)
        if set(self.inputs) != {"text", "image"}:
            raise UserError(f"{where}: family fusion_embed reads both inputs; set inputs: [text, image]")
        W.check_pair(self.image_backbone, self.weights, where)


def _text_cfg(cfg: Config) -> embed_lr.Config:
    return embed_lr.Config(backbone=cfg.text_backbone, max_length=cfg.max_length, batch_size=cfg.batch_size)


def _image_cfg(cfg: Config) -> image_embed.Config:
    return image_embed.Config(backbone=cfg.image_backbone, weights=cfg.weights, image_size=cfg.image_size,
                              batch_size=cfg.batch_size, seed=cfg.seed)


def blocks(cfg: Config, rows, data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text embeddings, image features, has-photo mask) of some rows."""
    T = embed_lr.embed(_text_cfg(cfg), texts(rows), data_dir)
    X, ok = features(image_embed.extractor(_image_cfg(cfg)), rows["image"].fillna("").astype(str).tolist(), data_dir)
    return T, np.asarray(X), np.asarray(ok, dtype=bool)


def _fit_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the per-column divisor that standardises X and gives the block unit total variance."""
    if len(X) == 0:
        return np.zeros(X.shape[1]), np.ones(X.shape[1])
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    return mu, sd * np.sqrt(X.shape[1])


def assemble(scales: dict, T: np.ndarray, X: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The head's input: scaled text block | scaled image block (zeros without a photo) | indicator."""
    t = (T - scales["text"][0]) / scales["text"][1]
    i = (X - scales["image"][0]) / scales["image"][1]
    i[~ok] = 0.0
    return np.hstack([t, i, ok[:, None].astype(np.float64)])


def _head(cfg: Config):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if cfg.head == "logistic":
        return LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight,
                                  random_state=cfg.seed)
    return MLPClassifier(hidden_layer_sizes=(cfg.hidden,), alpha=1.0 / cfg.C, max_iter=cfg.max_iter,
                         early_stopping=False, random_state=cfg.seed)


def _proba(model: dict, T: np.ndarray, X: np.ndarray, ok: np.ndarray, n_classes: int) -> np.ndarray:
    head = model["head"]
    out = np.zeros((len(T), n_classes))
    out[:, head.classes_.astype(int)] = head.predict_proba(assemble(model["scales"], T, X, ok))
    return out


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    t0 = time.time()
    n_tr, n_va = len(fold.train), len(fold.val)
    T, X, ok = blocks(cfg, pd.concat([fold.train, fold.val, fold.test], ignore_index=True), fold.data_dir)
    feat_s = time.time() - t0
    tr = slice(0, n_tr)
    scales = {"text": _fit_scale(T[tr]), "image": _fit_scale(X[tr][ok[tr]])}
    t1 = time.time()
    head = _head(cfg).fit(assemble(scales, T[tr], X[tr], ok[tr]), np.asarray(fold.train_labels, dtype=int))
    head_s = time.time() - t1
    model = {"scales": scales, "head": head}
    with atomic_path(Path(out_dir) / "model.joblib") as tmp:
        joblib.dump(model, tmp)
    fit_s = time.time() - t0
    t2 = time.time()
    parts = {"val": slice(n_tr, n_tr + n_va), "test": slice(n_tr + n_va, len(T))}
    val, test = (_proba(model, T[s], X[s], ok[s], fold.n_classes) for s in parts.values())
    return FoldResult(val, test, {
        "feature_seconds": feat_s, "head_fit_seconds": head_s,
        "fit_seconds": fit_s, "predict_seconds": time.time() - t2,
        "train_samples_per_s": n_tr / max(fit_s, 1e-9),
        "rows_without_image": {"train": int((~ok[tr]).sum()),
                               **{k: int((~ok[s]).sum()) for k, s in parts.items()}}})


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    path = Path(fold_dir) / "model.joblib"
    if not path.exists():
        raise UserError(f"no saved weights in {fold_dir}: train the run first")
    model = joblib.load(path)
    return lambda rows: _proba(model, *blocks(cfg, rows), n_classes)
