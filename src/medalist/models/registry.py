"""The one family table: a family's name, its module, how `make train` starts it, and the
source files a run of it depends on (what its module imports, found statically). The Makefile
learns all of this from here through the plan `medalist.planner` writes, never by parsing YAML.

It also writes `.make/stamps/<comp>/` (`write_stamps`, called by the planner): `data.json` (the
competition config less the keys only runs read) and `override.<model>.json` (that model's
`model_overrides` entry), each rewritten only when its content changes, so an edit to one model's
override retrains that model's runs alone and an edit to the folds or cleaning reruns the data
stages and everything after them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Literal

import numpy as np

from medalist.core import config as C
from medalist.core.cache import PACKAGE, module_sources
from medalist.core.competition import Competition
from medalist.core.config import UserError
from medalist.core.io import write_text
from medalist.models.backbones import pretrained_name


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    module: str
    launch: Literal["inprocess", "accelerate"]


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("tfidf", "medalist.models.families.tfidf", "inprocess"),
    Family("embed_lr", "medalist.models.families.embed_lr", "inprocess"),
    Family("encoder", "medalist.models.families.hf_text", "accelerate"),
    Family("decoder_lora", "medalist.models.families.hf_text", "accelerate"),
    Family("image", "medalist.models.families.image", "accelerate"),
    Family("cnn", "medalist.models.families.cnn", "accelerate"),
    Family("image_embed", "medalist.models.families.image_embed", "inprocess"),
    Family("fusion_embed", "medalist.models.families.fusion_embed", "inprocess"),
    Family("autoencoder", "medalist.models.families.autoencoder", "accelerate"),
    Family("fusion", "medalist.models.families.fusion", "accelerate"),
)}


def sources(fam: Family) -> list[str]:
    """Paths under src/medalist/ a run of this family depends on: everything its module, the train
    stage and this table import, at any depth, found statically (`core.cache`), never listed by hand."""
    files = {*module_sources(fam.module), *module_sources("medalist.stages.train"), *module_sources(__name__)}
    return sorted(f.relative_to(PACKAGE).as_posix() for f in files)


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
    return _family_of(path)


def _family_of(path: Path) -> Family:
    fam = C.load_yaml(path).get("family")
    if not isinstance(fam, str):
        raise UserError(f"configs/models/{path.name}: needs a 'family' key ({', '.join(FAMILIES)})")
    return family(fam, f"configs/models/{path.name}")


def load_model_config(name: str, comp: Competition | None = None) -> tuple[ModuleType, Any]:
    """configs/models/<name>.yaml → (family module, its frozen Config), with the keys that `comp`'s
    model_overrides.<name> replaces."""
    fam = model_family(name)
    mod = importlib.import_module(fam.module)
    path = model_config_path(name)
    data, where = C.load_yaml(path), path.name
    override = comp.model_overrides.get(name) if comp is not None else None
    if override:
        data, where = {**data, **override}, f"{path.name} with {comp.name}.yaml's model_overrides.{name}"
    return mod, C.from_dict(mod.Config, data, where)


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


# ---------------------------------------------------------------- the planner's view of the table (medalist.planner)

def _gpus_of(path: Path) -> int:
    """The GPUs one fold job of this model takes (`core.slots`): its config's `gpus`, else none
    for TF-IDF and one for the others (which use one when there is one)."""
    gpus = C.load_yaml(path).get("gpus", 0 if C.load_yaml(path).get("family") == "tfidf" else 1)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise UserError(f"configs/models/{path.name}: gpus must be a whole number ≥ 0, not {gpus!r}")
    return gpus


def _pretrain_of(path: Path) -> str | None:
    """The pretraining a model config's `backbone: pretrain:<name>` names (checked: a plain name
    with a configs/pretrain/<name>.yaml), or None."""
    backbone = C.load_yaml(path).get("backbone")
    name = pretrained_name(backbone) if isinstance(backbone, str) else None
    if name is None:
        return None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"configs/models/{path.name}: backbone '{backbone}': expected pretrain:<name> "
                        "of a configs/pretrain/<name>.yaml")
    if not (path.parent.parent / "pretrain" / f"{name}.yaml").exists():
        raise UserError(f"configs/models/{path.name}: backbone '{backbone}': no configs/pretrain/{name}.yaml")
    return name


# keys of a competition config that only runs read: editing them must not redo folds or checks
RUN_ONLY_KEYS = ("model_overrides", "default_models")


def _stamp(path: Path, obj: object) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n"
    if not (path.exists() and path.read_text(encoding="utf-8") == text):
        write_text(path, text)


def write_stamps(stamps: Path, configs: list[Path]) -> None:
    """Per competition config, the stamps the Makefile's data stages and runs depend on. A config
    that does not parse stamps its bytes' hash everywhere: the stage that reads it says what is wrong."""
    models = sorted(p.stem for p in configs if p.parent.name != "competitions")
    for path in sorted(p for p in configs if p.parent.name == "competitions"):
        try:
            raw = C.load_yaml(path)
            overrides = raw.get("model_overrides") or {}
            if not isinstance(overrides, dict):
                raise UserError("model_overrides is not a mapping")
        except UserError:
            raw = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            overrides = {m: raw for m in models}
        _stamp(stamps / path.stem / "data.json", {k: v for k, v in raw.items() if k not in RUN_ONLY_KEYS})
        for m in models:
            _stamp(stamps / path.stem / f"override.{m}.json", overrides.get(m))
