"""Frozen sentence embeddings (mean-pooled MiniLM by default) + logistic regression.

A cheap, diverse ensemble member on a CPU: the encoder runs once per distinct text, only the
logistic regression is fitted per fold. Embeddings are kept in memory for the process and, in a
competition, on disk (data/processed/<comp>/features/text-<backbone>-<max_length>.npz, keyed by a
hash of each text), so every fold and every run with the same encoder (embed, fusion-embed, a
GEN variant that adds only new texts) embeds each text once.
Fold weights: fold<k>/model.joblib (the fitted LogisticRegression and the backbone name).
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Annotated, Literal

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression

from medalist.core.cache import key, source_digest, tree_digest
from medalist.core.config import AtLeastOne, Positive
from medalist.core.io import atomic_path
from medalist.models import FoldData, FoldResult, RunConfig, texts
from medalist.models.backbones import resolve as resolve_backbone


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    family: Literal["embed_lr"] = "embed_lr"
    backbone: str = "minilm"
    max_length: Annotated[int, AtLeastOne] = 256  # MiniLM was trained on 256-token inputs
    batch_size: Annotated[int, AtLeastOne] = 64
    C: Annotated[float, Positive] = 4.0
    class_weight: Literal["balanced"] | None = None  # balanced: weights n / (K · n_c)
    max_iter: Annotated[int, AtLeastOne] = 3000


_CACHE: dict[str, np.ndarray] = {}
_ENCODERS: dict[str, tuple] = {}


def _encoder(backbone: str):
    if backbone not in _ENCODERS:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve_backbone(backbone)
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        _ENCODERS[backbone] = (tok, model, torch)
    return _ENCODERS[backbone]


_IDENTITY: dict[str, str] = {}


def _identity(backbone: str) -> str:
    """The name, the content of a local folder's files and the embedding code (`core.cache`): new
    weights under the same name, or a new pooling, are another encoder (its embeddings are never reused)."""
    if backbone not in _IDENTITY:
        where = Path(resolve_backbone(backbone))
        _IDENTITY[backbone] = key("text-embeddings", backbone, tree_digest(where), source_digest(__name__))
    return _IDENTITY[backbone]


def _disk(cfg: Config, data_dir: Path | None) -> Path | None:
    if data_dir is None:
        return None
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{cfg.backbone}-{cfg.max_length}")
    return Path(data_dir) / "features" / f"text-{name[-120:]}.npz"


def _load_disk(path: Path | None) -> None:
    if path is not None and path.exists():
        with np.load(path) as z:
            _CACHE.update({k: v for k, v in zip(z["keys"].tolist(), z["vectors"]) if k not in _CACHE})


def _save_disk(path: Path, keys: list[str]) -> None:
    """Add these texts' embeddings to the file (what another run wrote meanwhile is kept)."""
    _load_disk(path)
    have = [k for k in dict.fromkeys(keys) if k in _CACHE]
    if path.exists():
        with np.load(path) as z:
            have = list(dict.fromkeys([*z["keys"].tolist(), *have]))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=np.array(have), vectors=np.stack([_CACHE[k] for k in have]))


def embed(cfg: Config, texts: list[str], data_dir: Path | None = None) -> np.ndarray:
    """L2-normalised mean-pooled embeddings, computed in length-sorted batches, cached by text
    (in memory; and on disk under data_dir/features/ when the competition's folder is given)."""
    who = _identity(cfg.backbone)
    keys = [hashlib.sha1(f"{who}\0{cfg.max_length}\0{t}".encode()).hexdigest() for t in texts]
    disk = _disk(cfg, data_dir)
    if any(k not in _CACHE for k in keys):
        _load_disk(disk)
    todo = sorted({k: t for k, t in zip(keys, texts) if k not in _CACHE}.items(), key=lambda kv: len(kv[1]))
    if todo:
        from medalist.core.progress import progress

        tok, model, torch = _encoder(cfg.backbone)
        # the one long step of this family (14 minutes for 8k texts on 2 cores): show it
        with torch.inference_mode(), progress(total=len(todo), desc=f"embedding ({cfg.backbone})", unit="text") as bar:
            for i in range(0, len(todo), cfg.batch_size):
                chunk = todo[i:i + cfg.batch_size]
                enc = tok([t for _, t in chunk], padding=True, truncation=True, max_length=cfg.max_length,
                          return_tensors="pt")
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                vec = torch.nn.functional.normalize(vec, dim=-1).numpy()
                for (k, _), v in zip(chunk, vec):
                    _CACHE[k] = v
                bar.update(len(chunk))
        if disk is not None:
            _save_disk(disk, keys)
    return np.stack([_CACHE[k] for k in keys])


def _proba(clf: LogisticRegression, X: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((len(X), n_classes))
    out[:, clf.classes_.astype(int)] = clf.predict_proba(X)
    return out


def fit_fold(cfg: Config, fold: FoldData, out_dir: Path) -> FoldResult:
    t0 = time.time()
    X = embed(cfg, texts(fold.train), fold.data_dir)
    clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, class_weight=cfg.class_weight, random_state=cfg.seed)
    clf.fit(X, fold.train_labels)
    with atomic_path(Path(out_dir) / "model.joblib") as tmp:
        joblib.dump({"clf": clf, "backbone": cfg.backbone}, tmp)
    fit_s = time.time() - t0
    t1 = time.time()
    val = _proba(clf, embed(cfg, texts(fold.val), fold.data_dir), fold.n_classes)
    test = _proba(clf, embed(cfg, texts(fold.test), fold.data_dir), fold.n_classes)
    return FoldResult(val, test, {"fit_seconds": fit_s, "predict_seconds": time.time() - t1,
                                  "train_samples_per_s": len(fold.train) / max(fit_s, 1e-9)})


def load_predictor(cfg: Config, fold_dir: Path, n_classes: int):
    clf = joblib.load(Path(fold_dir) / "model.joblib")["clf"]
    return lambda rows: _proba(clf, embed(cfg, texts(rows)), n_classes)
