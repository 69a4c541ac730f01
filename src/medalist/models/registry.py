"""The one family table: a family's name, its module, how `make train` starts it, and the
source files a run of it depends on. The Makefile learns all of this from here (through the
generated `results/.make/models.mk`), never by parsing YAML itself.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Literal

import numpy as np

from medalist.core import config as C
from medalist.core.config import UserError


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    module: str
    launch: Literal["inprocess", "accelerate"]
    sources: tuple[str, ...]  # paths under src/medalist/ a run of this family depends on


_ENGINE = ("models/engine.py",)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("tfidf", "medalist.models.families.tfidf", "inprocess", ("models/families/tfidf.py",)),
    Family("embed_lr", "medalist.models.families.embed_lr", "inprocess",
           ("models/families/embed_lr.py", "models/backbones.py")),
    Family("encoder", "medalist.models.families.hf_text", "accelerate",
           ("models/families/hf_text.py", "models/backbones.py", *_ENGINE)),
    Family("decoder_lora", "medalist.models.families.hf_text", "accelerate",
           ("models/families/hf_text.py", "models/backbones.py", *_ENGINE)),
)}
COMMON_SOURCES = ("stages/train.py", "models/__init__.py", "models/registry.py")


def family(name: str, where: str = "model config") -> Family:
    if name not in FAMILIES:
        raise UserError(f"{where}: unknown family '{name}' (known: {', '.join(FAMILIES)})")
    return FAMILIES[name]


def family_module(name: str) -> ModuleType:
    return importlib.import_module(family(name).module)


def model_config_path(name: str) -> Path:
    return C.configs_dir() / "models" / f"{name}.yaml"


def model_family(name: str) -> Family:
    """The family a model config names (checked against the table)."""
    path = model_config_path(name)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"unknown model '{name}': no {path} (known: {', '.join(known)})")
    fam = C.load_yaml(path).get("family")
    if not isinstance(fam, str):
        raise UserError(f"{path.name}: needs a 'family' key ({', '.join(FAMILIES)})")
    return family(fam, path.name)


def load_model_config(name: str) -> tuple[ModuleType, Any]:
    """configs/models/<name>.yaml → (family module, its frozen Config)."""
    fam = model_family(name)
    mod = importlib.import_module(fam.module)
    path = model_config_path(name)
    return mod, C.from_dict(mod.Config, C.load_yaml(path), path.name)


def load_run_predictor(run_dir: Path, fold: int, n_classes: int,
                       weights_dir: Path | None = None) -> Callable[..., np.ndarray]:
    """A predictor (rows → probabilities) from a run's saved fold weights (or any weights
    folder, e.g. a mid-fold checkpoint), built with the run's resolved config."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise UserError(f"no resolved config in {run_dir}: train the run first")
    data = C.load_yaml(path)["model"]
    mod = family_module(data["family"])
    cfg = C.from_dict(mod.Config, data, str(path))
    return mod.load_predictor(cfg, Path(weights_dir or Path(run_dir) / f"fold{fold}"), n_classes)
